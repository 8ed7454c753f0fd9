#!/usr/bin/env python3
"""Time to first token over a 10-turn chat: `torchless serve` against llama.cpp's `llama-server`.

    python3 scripts/server/prompt_cache_vs_llama.py                 # SmolLM2 Q8_0, then the 7B shape
    python3 scripts/server/prompt_cache_vs_llama.py --only smollm2 --turns 10 --words 100

For each model, in one run, starts one server at a time on a free 127.0.0.1 port (torchless
first, then llama-server; `--order` reverses it), with the same threads (`-t 2`), context
(`-c 4096`) and one slot, llama-server with weight repacking off (`--no-repack`: llama.cpp's CPU
repack crashes on this Xeon) and its prompt cache at its default (`cache_prompt` true), and
plays the same conversation through the official `openai` client, streamed: each user turn
about `--words` words (~170 tokens) of real text cut from /usr/share/common-licenses, each reply
greedy (temperature 0) and at most `max_tokens`, appended to the history as that server returned
it. Before the conversation one unrelated request warms the server (the model file's pages).

Per turn it records the time to first token (the client's: request sent to the first streamed
text), the prompt tokens and the cached tokens each server reports (torchless:
`usage.prompt_tokens_details.cached_tokens`; llama-server: the same field, else its `timings`'
`cache_n`), and the server's own prompt time (torchless: `ttft_ms` of its `--json` request log;
llama-server: `timings.prompt_ms`). Prints one markdown table per model and checks the goal of
issue 34: torchless's turn 10 within 2x its turn 1 and no slower than llama-server's turn 10.

The models (defaults are this machine's files; see IMPLEMENTATION.md, "The prompt cache"):
  smollm2  the same GGUF for both (SmolLM2-135M-Instruct Q8_0): chat completions in its ChatML
           template, replies of at most 32 tokens.
  7b       torchless on a torchless int4 file, llama-server on a Q4_K_M GGUF of the same shape.
           Both are synthetic, with different synthetic vocabularies (the same text is twice as
           many tokens in the GGUF's), so text would not make the same conversation: the chat
           goes through /v1/completions as token ids instead, the same `--tokens` ids per user
           turn for both (one per word of the same license text; any id means garbage to
           synthetic weights), and each reply of 16 tokens (`ignore_eos`) appended as a chat
           template re-encodes a reply of a real model: torchless's text through its /tokenize
           (19 ids), llama-server's as the ids it generated (its vocabulary decodes to invalid
           UTF-8, whose re-encoding is 6x as many byte tokens).
Every server started here is stopped on exit, also on failure or Ctrl-C; every wait is bounded.
"""
import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("TORCHLESS_BENCH_CACHE", os.path.expanduser("~/.cache/torchless-bench"))
LICENSES = "/usr/share/common-licenses"
MODELS = {
    "smollm2": {
        "torchless": "/work/cache/smollm2-gguf/SmolLM2-135M-Instruct-Q8_0.gguf",
        "gguf": "/work/cache/smollm2-gguf/SmolLM2-135M-Instruct-Q8_0.gguf",
        "max_tokens": 32,
        "ids": False,
        "load_timeout": 120,
        "request_timeout": 300,
    },
    "7b": {
        "torchless": "/work/cache/bench/7b-int4.bin",
        "gguf": "/work/cache/bench/mistral7b-q4_k_m.gguf",
        "max_tokens": 16,
        "ids": True,
        "load_timeout": 600,
        "request_timeout": 1200,
    },
}


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def license_words():
    """The words of the license texts, in a fixed order (varied, real English)."""
    words = []
    for path in sorted(glob.glob(os.path.join(LICENSES, "*"))):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                words.extend(f.read().split())
    if len(words) < 5000:
        raise Failure(f"too little text in {LICENSES} ({len(words)} words)")
    return words


def user_messages(turns, words_per_turn):
    words = license_words()
    # Each turn reads a different stretch, spread over the texts (not one long license).
    stride = max(words_per_turn, (len(words) - words_per_turn) // max(turns, 1))
    out = []
    for t in range(turns):
        start = (t * stride) % (len(words) - words_per_turn)
        text = " ".join(words[start:start + words_per_turn])
        out.append(f"Turn {t + 1}. Read this passage and say in one sentence what it is about:\n\n{text}")
    return out


def user_ids(turns, tokens_per_turn):
    """Per turn, `tokens_per_turn` token ids in 1000..31000: one per word of the license text
    (a stable hash), the same ids for both servers."""
    words = license_words()
    stride = max(tokens_per_turn, (len(words) - tokens_per_turn) // max(turns, 1))
    out = []
    for t in range(turns):
        start = (t * stride) % (len(words) - tokens_per_turn)
        out.append([1000 + zlib.crc32(w.encode()) % 30000 for w in words[start:start + tokens_per_turn]])
    return out


class Server:
    """One server process in its own process group, its stderr kept in a file."""

    def __init__(self, name, argv, port, log_path):
        self.name, self.port, self.log_path = name, port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w")
        print(f"[{name}] {' '.join(argv)}", file=sys.stderr, flush=True)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode} while loading "
                              f"(log: {self.log_path}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise Failure(f"{self.name} not ready after {timeout} s (log: {self.log_path})")

    def tail(self, n=20):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        self.log.close()


def torchless_ttfts(log_path):
    """`ttft_ms` of each generation request in a `torchless serve --json` log, in order."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("path", "").endswith("completions") and "ttft_ms" in entry:
                    out.append(entry["ttft_ms"])
    return out


def ask(client, messages, max_tokens, timeout):
    """One streamed greedy chat request: (text, client TTFT s, prompt, cached, server ms)."""
    start = time.perf_counter()
    first = None
    pieces, usage, timings = [], None, None
    stream = client.chat.completions.create(
        model="model", messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, timeout=timeout)
    for chunk in stream:
        extra_fields = chunk.model_extra or {}
        if extra_fields.get("timings"):
            timings = extra_fields["timings"]
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if choice.delta else None
            if piece:
                if first is None:
                    first = time.perf_counter() - start
                pieces.append(piece)
    if usage is None:
        raise Failure("the stream carried no usage")
    cached = None
    details = getattr(usage, "prompt_tokens_details", None)
    if details is not None and getattr(details, "cached_tokens", None) is not None:
        cached = details.cached_tokens
    elif timings and "cache_n" in timings:
        cached = timings["cache_n"]
    server_ms = timings.get("prompt_ms") if timings else None
    # A reply of no text at all (EOS first) still has a first event: the end of the stream.
    ttft = first if first is not None else time.perf_counter() - start
    return "".join(pieces), ttft, usage.prompt_tokens, cached, server_ms


def conversation(client, turns, max_tokens, timeout, label):
    messages, rows = [], []
    for t, user in enumerate(turns, 1):
        messages.append({"role": "user", "content": user})
        text, ttft, prompt, cached, server_ms = ask(client, messages, max_tokens, timeout)
        messages.append({"role": "assistant", "content": text})
        rows.append({"ttft": ttft, "prompt": prompt, "cached": cached, "server_ms": server_ms})
        print(f"[{label}] turn {t}: ttft {ttft:.3f} s, prompt {prompt}, cached {cached}",
              file=sys.stderr, flush=True)
    return rows


def tokenize(base, text):
    """The server's own ids of `text` (no BOS): llama-server's /tokenize, which torchless has."""
    body = json.dumps({"content": text, "add_special": False}).encode()
    req = urllib.request.Request(base + "/tokenize", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [t if isinstance(t, int) else t["id"] for t in json.load(r)["tokens"]]


def ask_ids(client, prompt, max_tokens, timeout, want_ids):
    """One streamed greedy completion of token ids, as `ask`; with `want_ids` (llama-server)
    the text is replaced by the generated ids, read from the log-probabilities' `id`s."""
    start = time.perf_counter()
    first = None
    pieces, ids, usage, timings = [], [], None, None
    stream = client.completions.create(
        model="model", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        logprobs=1 if want_ids else None, timeout=timeout)
    for chunk in stream:
        extra_fields = chunk.model_extra or {}
        if extra_fields.get("timings"):
            timings = extra_fields["timings"]
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            got = bool(choice.text)
            if want_ids and choice.logprobs is not None:
                content = (choice.logprobs.model_extra or {}).get("content") or []
                ids += [entry["id"] for entry in content]
                got = got or bool(content)
            if got and first is None:
                first = time.perf_counter() - start
            if choice.text:
                pieces.append(choice.text)
    cached = None
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    if details is not None and getattr(details, "cached_tokens", None) is not None:
        cached = details.cached_tokens
    elif timings and "cache_n" in timings:
        cached = timings["cache_n"]
    if usage is not None:
        prompt_tokens = usage.prompt_tokens
    elif timings:
        prompt_tokens = timings.get("prompt_n", 0) + timings.get("cache_n", 0)
    else:
        raise Failure("the stream carried no usage and no timings")
    server_ms = timings.get("prompt_ms") if timings else None
    ttft = first if first is not None else time.perf_counter() - start
    if want_ids and len(ids) != usage_completion(usage, max_tokens):
        # llama-server leaves a token out of the log-probabilities now and then.
        print(f"warning: {len(ids)} ids in the log-probabilities for "
              f"{usage_completion(usage, max_tokens)} tokens", file=sys.stderr)
    return ("".join(pieces), ids), ttft, prompt_tokens, cached, server_ms


def usage_completion(usage, default):
    return usage.completion_tokens if usage is not None else default


def conversation_ids(client, base, turns, max_tokens, timeout, label, generated_ids):
    """The chat as token ids. The reply joins the history as a chat template would re-encode
    it: torchless's text through its /tokenize; llama-server's as the ids it generated, since
    the GGUF's synthetic vocabulary decodes to invalid UTF-8 whose re-encoding (~6x as many byte
    tokens) would neither match what its cache holds nor what a real vocabulary gives."""
    history, rows = [1], []  # BOS
    for t, user in enumerate(turns, 1):
        history += user
        (text, ids), ttft, prompt, cached, server_ms = ask_ids(
            client, list(history), max_tokens, timeout, generated_ids)
        history += ids if generated_ids else tokenize(base, text)
        rows.append({"ttft": ttft, "prompt": prompt, "cached": cached, "server_ms": server_ms})
        print(f"[{label}] turn {t}: ttft {ttft:.3f} s, prompt {prompt}, cached {cached}",
              file=sys.stderr, flush=True)
    return rows


def run_engine(engine, name, spec, args, turns, workdir):
    from openai import OpenAI

    port = free_port()
    log_path = os.path.join(workdir, f"{name}-{engine}.log")
    common = ["--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads),
              "-c", str(args.ctx)]
    if engine == "torchless":
        argv = [args.torchless, "serve", spec["torchless"], *common, "--parallel", "1", "--json",
                *args.torchless_args.split()]
    else:
        argv = [args.llama_server, "-m", spec["gguf"], *common, "-tb", str(args.threads),
                "-np", "1", "--no-repack", "--no-webui"]
    server = Server(engine, argv, port, log_path)
    try:
        server.wait_ready(spec["load_timeout"])
        client = OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)
        # Warm-up: an unrelated request maps the model's pages (not timed).
        client.completions.create(model="model", prompt="The weather today is", max_tokens=4,
                                  temperature=0, timeout=spec["request_timeout"])
        if spec["ids"]:
            rows = conversation_ids(client, server.base, turns["ids"], spec["max_tokens"],
                                    spec["request_timeout"], f"{name} {engine}",
                                    engine == "llama-server")
        else:
            rows = conversation(client, turns["text"], spec["max_tokens"], spec["request_timeout"],
                                f"{name} {engine}")
    except Exception as e:
        raise Failure(f"{engine} on {name}: {e}\n(log {log_path}):\n{server.tail()}") from e
    finally:
        server.stop()
    if engine == "torchless":
        # The warm-up is the log's first request; the conversation's TTFTs follow in order.
        for row, ms in zip(rows, torchless_ttfts(log_path)[1:]):
            row["server_ms"] = ms
    return rows, argv


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def report(name, spec, results, args):
    tl, ll = results["torchless"], results["llama-server"]
    print(f"\n### {name}: torchless {os.path.basename(spec['torchless'])}, "
          f"llama-server {os.path.basename(spec['gguf'])}\n")
    print("| turn | prompt tokens (tl / llama) | torchless TTFT (s) | cached | server (ms) "
          "| llama-server TTFT (s) | cached | server prompt (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, (a, b) in enumerate(zip(tl, ll), 1):
        print(f"| {t} | {a['prompt']} / {b['prompt']} | {fmt(a['ttft'])} | {a['cached']} "
              f"| {fmt(a['server_ms'], 1)} | {fmt(b['ttft'])} | {b['cached']} | {fmt(b['server_ms'], 1)} |")
    first, last, other = tl[0]["ttft"], tl[-1]["ttft"], ll[-1]["ttft"]
    within_2x = last <= 2 * first
    not_slower = last <= other
    print(f"\ntorchless turn {len(tl)} / turn 1: {last / first:.2f}x (goal <= 2x: "
          f"{'met' if within_2x else 'MISSED'}); turn {len(tl)} against llama-server's: "
          f"{last:.3f} s / {other:.3f} s = {last / other:.2f}x (goal <= 1x: "
          f"{'met' if not_slower else 'MISSED'}); llama-server turn {len(ll)} / turn 1: "
          f"{other / ll[0]['ttft']:.2f}x")
    sys.stdout.flush()
    return within_2x and not_slower


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(MODELS), action="append",
                   help="run only this model (repeatable) [both]")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--words", type=int, default=100, help="words of new text per user turn (~170 tokens)")
    p.add_argument("--tokens", type=int, default=170, help="token ids per user turn (7b)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--order", choices=["torchless-first", "llama-first"], default="torchless-first")
    p.add_argument("--torchless", default=os.path.join(ROOT, "target", "release", "torchless"),
                   help="the binary (or a wrapper script, e.g. one that runs it under perf)")
    p.add_argument("--llama-server", default=os.path.join(CACHE, "llama.cpp-tools", "bin", "llama-server"),
                   help="scripts/llama_cpp.sh builds it")
    p.add_argument("--smollm2-gguf", default=MODELS["smollm2"]["gguf"])
    p.add_argument("--7b-torchless", dest="b7_torchless", default=MODELS["7b"]["torchless"])
    p.add_argument("--7b-gguf", dest="b7_gguf", default=MODELS["7b"]["gguf"])
    p.add_argument("--torchless-args", default="",
                   help="more arguments for `torchless serve`, e.g. \"-b 256\"")
    p.add_argument("--torchless-only", action="store_true",
                   help="run torchless alone (prints its column; for profiling)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (path printed)")
    args = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    MODELS["smollm2"]["torchless"] = MODELS["smollm2"]["gguf"] = args.smollm2_gguf
    MODELS["7b"]["torchless"], MODELS["7b"]["gguf"] = args.b7_torchless, args.b7_gguf
    for path in (args.torchless, args.llama_server):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"not an executable: {path} (cargo build --release -p torchless-cli; "
                             "scripts/llama_cpp.sh)")
    names = args.only or ["smollm2", "7b"]
    turns = {"text": user_messages(args.turns, args.words), "ids": user_ids(args.turns, args.tokens)}
    engines = ["torchless", "llama-server"]
    if args.order == "llama-first":
        engines.reverse()
    if args.torchless_only:
        engines = ["torchless"]
    workdir = tempfile.mkdtemp(prefix="prompt-cache-vs-llama.")
    with open("/proc/cpuinfo") as f:
        cpu = re.search(r"model name\s*:\s*(.*)", f.read())
    print(f"CPU: {cpu.group(1) if cpu else '?'} ({os.cpu_count()} CPUs); load average "
          f"{os.getloadavg()[0]:.2f} at the start; {args.turns} turns of {args.words} words; "
          f"threads {args.threads}, context {args.ctx}, one slot")
    all_met = True
    try:
        for name in names:
            spec = MODELS[name]
            for path in {spec["torchless"], spec["gguf"]}:
                if not os.path.isfile(path):
                    raise SystemExit(f"missing model file: {path}")
            results = {}
            for engine in engines:
                results[engine], argv = run_engine(engine, name, spec, args, turns, workdir)
                print(f"{engine}: {' '.join(argv)}")
            if "llama-server" in results:
                all_met &= report(name, spec, results, args)
            else:
                for t, row in enumerate(results["torchless"], 1):
                    print(f"turn {t}: ttft {row['ttft']:.3f} s, prompt {row['prompt']}, cached {row['cached']}")
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    finally:
        if args.keep_logs:
            print(f"server logs: {workdir}", file=sys.stderr)
        else:
            for path in glob.glob(os.path.join(workdir, "*")):
                os.remove(path)
            os.rmdir(workdir)
    sys.exit(0 if all_met else 1)


if __name__ == "__main__":
    main()
