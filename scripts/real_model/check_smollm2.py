#!/usr/bin/env python3
"""Compares torchless with the `transformers` reference of smollm2_reference.py on a converted
SmolLM2 file: greedy ids (32 tokens per prompt), last-position logits of every prompt (max
absolute difference), and `torchless perplexity` on the same ids and window length.

Usage: python3 scripts/real_model/check_smollm2.py MODEL.bin REFERENCE.json [--torchless BIN]
       [--examples-dir DIR] [--logits-tol 1e-3] [--ppl-tol 0.001]
Exits non-zero when a greedy id differs, a logit is further than --logits-tol, or the perplexity
differs by more than --ppl-tol (relative). Prints one line per check.
"""

import argparse
import json
import math
import subprocess
import sys


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("reference")
    ap.add_argument("--torchless", default="target/release/torchless")
    ap.add_argument("--logits-bin", default="target/release/examples/logits")
    ap.add_argument("--logits-tol", type=float, default=1e-3)
    ap.add_argument("--ppl-tol", type=float, default=1e-3)
    ap.add_argument("--skip-logits", action="store_true",
                    help="compare greedy ids and perplexity only (e.g. for an int8 file)")
    args = ap.parse_args()
    ref = json.load(open(args.reference))
    failures = 0
    for case in ref["prompts"]:
        ids = ",".join(map(str, case["ids"]))
        out = json.loads(run([args.torchless, "generate", args.model, "--prompt-ids", ids,
                              "-n", str(len(case["greedy"])), "--temp", "0", "--ignore-eos",
                              "--json"]))
        got = out["generated_ids"]
        same = got == case["greedy"]
        first_diff = next((i for i, (a, b) in enumerate(zip(got, case["greedy"])) if a != b), None)
        line = f"{case['text']!r}: greedy {'identical' if same else f'differs at {first_diff}'}"
        if not same:
            failures += 1
        if not args.skip_logits:
            logits = json.loads(run([args.logits_bin, args.model, ids]))
            diff = max(abs(a - b) for a, b in zip(logits, case["last_logits"]))
            line += f", last logits max |diff| {diff:.2e}"
            if len(logits) != len(case["last_logits"]) or diff > args.logits_tol:
                failures += 1
                line += " FAIL"
        print(line + f"; completion {out.get('completion', '')!r}")
    ppl = ref["perplexity"]
    ids = ",".join(map(str, ppl["ids"]))
    out = json.loads(run([args.torchless, "perplexity", args.model, "--prompt-ids", ids,
                          "--ctx", str(ppl["ctx"]), "--json"]))
    ours = out["ppl"]
    rel = abs(ours - ppl["perplexity"]) / ppl["perplexity"]
    ok = rel <= args.ppl_tol and out.get("tokens", ppl["predicted"]) == ppl["predicted"]
    print(f"perplexity: torchless {ours:.4f} over {out.get('tokens')} tokens, transformers "
          f"{ppl['perplexity']:.4f} over {ppl['predicted']} ({rel * 100:.4f}% apart)"
          + ("" if ok else " FAIL"))
    failures += 0 if ok else 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
