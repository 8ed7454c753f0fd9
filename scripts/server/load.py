#!/usr/bin/env python3
"""Load generator for `torchless serve` (standard library only).

N clients each send streamed /v1/completions requests (greedy, fixed length via ignore_eos) and
time them. Prints aggregate decode throughput (completion tokens per second of wall time), time to
first token and per-token latency (gap between streamed tokens) as p50/p99, and one JSON line.

    python3 scripts/server/load.py http://127.0.0.1:8080 --clients 4 --requests 8 --max-tokens 64
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def one_request(url, prompt, max_tokens, api_key):
    body = json.dumps({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True,
    }).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url + "/v1/completions", data=body, headers=headers)
    start = time.perf_counter()
    stamps, usage = [], None
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if choices and choices[0].get("finish_reason") is None:
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    return start, stamps, end, usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog.")
    ap.add_argument("--api-key")
    args = ap.parse_args()

    results, errors = [], []
    lock = threading.Lock()

    def client(c):
        for r in range(args.requests):
            try:
                out = one_request(args.url, f"{args.prompt} ({c}.{r})", args.max_tokens, args.api_key)
                with lock:
                    results.append(out)
            except Exception as e:  # reported, never hidden
                with lock:
                    errors.append(repr(e))

    wall0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0

    ttft = [(s[0] - start) * 1e3 for start, s, _, _ in results if s]
    gaps = [(b - a) * 1e3 for _, s, _, _ in results for a, b in zip(s, s[1:])]
    tokens = sum((u or {}).get("completion_tokens", 0) for _, _, _, u in results)
    # Decode throughput: tokens after the first of each request, over the time all clients ran.
    summary = {
        "clients": args.clients, "requests": len(results), "errors": len(errors),
        "completion_tokens": tokens, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_ms_p50": round(percentile(ttft, 50), 1), "ttft_ms_p99": round(percentile(ttft, 99), 1),
        "token_ms_p50": round(percentile(gaps, 50), 2), "token_ms_p99": round(percentile(gaps, 99), 2),
        "token_ms_mean": round(statistics.fmean(gaps), 2) if gaps else None,
    }
    print(f"{args.clients} clients x {args.requests} requests x {args.max_tokens} tokens: "
          f"{summary['tokens_per_s']} tok/s aggregate; TTFT p50 {summary['ttft_ms_p50']} ms, "
          f"p99 {summary['ttft_ms_p99']} ms; per token p50 {summary['token_ms_p50']} ms, "
          f"p99 {summary['token_ms_p99']} ms; errors {len(errors)}")
    for e in errors[:5]:
        print("error:", e)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
