#!/usr/bin/env python3
"""Reference figures for SmolLM2-135M-Instruct from Hugging Face `transformers`, loading the same
GGUF file torchless converts (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, float32,
eager attention). Writes one JSON file that scripts/real_model/check_smollm2.sh compares with
torchless:

- `prompts`: for each prompt, the ids (the model's own tokenizer, as transformers builds it from the
  GGUF metadata), the last-position logits of the prompt, and 32 greedy tokens with the gap between
  the best and second-best logit at each step (a gap below ~1e-3 would make a greedy id depend on
  rounding; the check reports the smallest).
- `perplexity`: ids of a text file, chunked into windows of `ctx` tokens (each window evaluated
  from an empty cache; every token but a window's first is predicted), and the mean NLL and
  perplexity over them.

Usage: python3 scripts/real_model/smollm2_reference.py GGUF TEXT_FILE OUT.json [--ctx 512]
Needs: torch, transformers, gguf (pip install ...).
"""

import argparse
import json
import math
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "Here is a recipe for pancakes:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at a temperature of",
]
NEW_TOKENS = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()

    torch.manual_seed(0)
    directory, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()

    prompts = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            seq = list(ids)
            out = model(torch.tensor([seq]))
            last = out.logits[0, -1].tolist()
            past = out.past_key_values
            logits = out.logits[0, -1]
            greedy, gaps = [], []
            for _ in range(NEW_TOKENS):
                top2 = torch.topk(logits, 2)
                nxt = int(top2.indices[0])
                gaps.append(float(top2.values[0] - top2.values[1]))
                greedy.append(nxt)
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1]
            prompts.append(
                dict(text=text, ids=ids, last_logits=last, greedy=greedy, gaps=gaps,
                     completion=tok.decode(greedy))
            )
            print(f"{text!r} -> {tok.decode(greedy)!r} (min gap {min(gaps):.4f})")

        text = open(args.text, encoding="utf-8").read()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        total_nll, count = 0.0, 0
        for start in range(0, len(ids), args.ctx):
            window = ids[start:start + args.ctx]
            if len(window) < 2:
                continue
            logits = model(torch.tensor([window])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            target = torch.tensor(window[1:])
            total_nll -= float(logp[torch.arange(len(window) - 1), target].sum())
            count += len(window) - 1
        mean_nll = total_nll / count
        print(f"perplexity: {len(ids)} ids, {count} predicted, mean NLL {mean_nll:.6f}, "
              f"perplexity {math.exp(mean_nll):.4f}")

    json.dump(
        dict(
            transformers=transformers.__version__, torch=torch.__version__,
            gguf=os.path.basename(args.gguf), prompts=prompts,
            perplexity=dict(file=args.text, ctx=args.ctx, ids=ids, predicted=count,
                            mean_nll=mean_nll, perplexity=math.exp(mean_nll)),
        ),
        open(args.out, "w"),
    )


if __name__ == "__main__":
    main()
