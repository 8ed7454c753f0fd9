#!/usr/bin/env python3
"""Time to first token over the turns of one conversation, with and without the prompt cache.

    python3 scripts/server/prompt_cache_turns.py http://127.0.0.1:8080 [--turns 10] [--words 130]

Each turn re-sends the whole history plus a new user message of about `--words` words (about 170
tokens for SmolLM2) and streams a greedy answer of `--max-tokens` tokens; the first run uses the
cache (`cache_prompt` true, the default), the second sends `cache_prompt: false`. Prints, per
turn, the prompt tokens, the cached tokens and the time to first token of both runs, and checks
that both runs answer the same.
"""
import argparse
import json
import time
import urllib.request

WORDS = ("river mountain lantern copper meadow harbor quiet signal orchard violet thunder pebble "
         "compass winter garden silver market candle feather island").split()


def message(turn, words):
    # Deterministic, varied text: each turn walks the word list with its own stride.
    out = [WORDS[(turn * 7 + i * (turn + 3)) % len(WORDS)] for i in range(words)]
    return f"Turn {turn}: " + " ".join(out) + ". Summarize this in one sentence."


def ask(base, messages, max_tokens, cache_prompt):
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "cache_prompt": cache_prompt}
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, text, usage = None, [], None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage") and not chunk["choices"]:
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                piece = choice.get("delta", {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter() - start
                    text.append(piece)
    return "".join(text), first or (time.perf_counter() - start), usage


def conversation(base, turns, words, max_tokens, cache_prompt):
    messages = [{"role": "system", "content": "You are a concise assistant."}]
    rows = []
    for t in range(1, turns + 1):
        messages.append({"role": "user", "content": message(t, words)})
        text, ttft, usage = ask(base, messages, max_tokens, cache_prompt)
        messages.append({"role": "assistant", "content": text})
        rows.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], ttft, text))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--words", type=int, default=130)
    p.add_argument("--max-tokens", type=int, default=32)
    a = p.parse_args()
    cached = conversation(a.base, a.turns, a.words, a.max_tokens, True)
    fresh = conversation(a.base, a.turns, a.words, a.max_tokens, False)
    print("turn  prompt  cached  ttft cached (s)  ttft uncached (s)")
    for t, (c, f) in enumerate(zip(cached, fresh), 1):
        print(f"{t:4}  {c[0]:6}  {c[1]:6}  {c[2]:15.3f}  {f[2]:17.3f}")
        assert c[3] == f[3], f"turn {t}: the answers differ"
    print(f"turn {a.turns} / turn 1: {cached[-1][2] / cached[0][2]:.2f}x with the cache, "
          f"{fresh[-1][2] / fresh[0][2]:.2f}x without; answers identical")


if __name__ == "__main__":
    main()
