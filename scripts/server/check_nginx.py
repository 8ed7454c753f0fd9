#!/usr/bin/env python3
"""Two `torchless serve` replicas behind nginx with deploy/nginx.conf (standard library only).

    python3 scripts/server/check_nginx.py        # run by .ci/run; needs Debian's `nginx` package

Starts, on 127.0.0.1 and free ports, two replicas of a tiny synthetic model and nginx with the
shipped config (only its three ports replaced), then checks:
  1. requests without X-Session-Id are spread over both replicas;
  2. requests with one X-Session-Id all go to one replica, and another id can go to the other;
  3. SSE passes through: the first token arrives long before the stream ends; a client that
     leaves mid-stream frees the replica's slot;
  4. kill -9 of one replica under 4 streams: its streams end at once with an error, the others
     finish, nothing is replayed, and every later request succeeds (one after a retry);
  5. restarted, the replica gets its sessions back; killed again under a plain request, that
     request gets a 502 and is not resent to the other replica.
The replica that answered is read from the config's X-Upstream header, what each replica ran
from its request log. Everything started here is stopped on exit, also on failure, SIGTERM or
the overall timeout.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, "deploy", "nginx.conf")
# The template's ports, each written once: replaced by the ports used here.
LISTEN, REPLICA_PORTS = "127.0.0.1:8080", ("127.0.0.1:8081", "127.0.0.1:8082")
OVERALL_TIMEOUT = 300
# The tiny model's sliding window bounds its KV cache, so a long context costs nothing, and
# even a release build's generations can last the seconds that the checks need.
CTX = 65536
LONG_SECONDS = 2  # of the long generations, by a calibration at the start


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def wait_for(what, predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise Failure(f"timed out after {timeout} s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_by(headers):
    """The replica that answered (the last address of X-Upstream: earlier ones were retried)."""
    value = headers.get("X-Upstream") or ""
    return value.split(",")[-1].strip(), value


def post(port, path, body, session=None, timeout=60):
    """A plain request: (status, headers, parsed JSON body or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if session:
            headers["X-Session-Id"] = session
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        return resp.status, resp.headers, parsed
    finally:
        conn.close()


def get_json(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def completion(max_tokens, stream=False):
    # ignore_eos: the random model would otherwise stop at a random length.
    return {"prompt": "Hello there", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}


class Stream(threading.Thread):
    """A streamed completion read as it arrives, on a thread of its own."""

    def __init__(self, port, max_tokens, session=None):
        super().__init__(daemon=True)
        self.port, self.max_tokens, self.session = port, max_tokens, session
        self.started = self.first_token = self.ended = None
        self.status, self.replica, self.upstream = None, None, None
        self.tokens, self.done, self.error = 0, False, None
        self.token_in = threading.Event()

    def __repr__(self):
        return (f"stream via {self.upstream!r}: status {self.status}, {self.tokens} tokens, "
                f"[DONE] {self.done}, error {self.error!r}")

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Content-Type": "application/json"}
            if self.session:
                headers["X-Session-Id"] = self.session
            self.started = time.monotonic()
            conn.request("POST", "/v1/completions", json.dumps(completion(self.max_tokens, True)),
                         headers)
            resp = conn.getresponse()
            self.status = resp.status
            self.replica, self.upstream = served_by(resp.headers)
            # read1, not readline: readline takes a connection closed in the middle of the
            # chunked body for a normal end, read1 raises IncompleteRead.
            pending = b""
            while data := resp.read1(65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self.line(line.strip())
        except Exception as e:  # the point of check 4: how a cut stream ends
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.ended = time.monotonic()
            self.token_in.set()
            conn.close()

    def line(self, line):
        if line == b"data: [DONE]":
            self.done = True
        elif line.startswith(b"data: "):
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                self.tokens = chunk["usage"]["completion_tokens"]
            if self.first_token is None and (chunk.get("choices") or [{}])[0].get("text"):
                self.first_token = time.monotonic()
                self.token_in.set()


class Plain(threading.Thread):
    """A plain (not streamed) request on a thread of its own."""

    def __init__(self, port, max_tokens, session=None):
        super().__init__(daemon=True)
        self.port, self.max_tokens, self.session = port, max_tokens, session
        self.status = self.replica = self.upstream = self.body = self.error = self.ended = None

    def __repr__(self):
        return f"request via {self.upstream!r}: status {self.status}, error {self.error!r}"

    def run(self):
        try:
            self.status, headers, self.body = post(self.port, "/v1/completions",
                                                   completion(self.max_tokens), self.session)
            self.replica, self.upstream = served_by(headers)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        self.ended = time.monotonic()


class Replica:
    """A `torchless serve` process; `start` again after a kill brings it back on its port."""

    def __init__(self, binary, model, tmp, name, procs):
        self.binary, self.model, self.tmp, self.name, self.procs = binary, model, tmp, name, procs
        self.port, self.starts = 0, 0

    def start(self):
        self.starts += 1
        self.err_path = os.path.join(self.tmp, f"{self.name}{self.starts}.err")
        out_path = os.path.join(self.tmp, f"{self.name}{self.starts}.out")
        self.sent = 0  # requests this process answered, by X-Upstream
        with open(out_path, "w") as out, open(self.err_path, "w") as err:
            # One thread each: two replicas and nginx share the machine.
            self.proc = subprocess.Popen(
                [self.binary, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                 "--parallel", "2", "--ctx-size", str(CTX), "--threads", "1"],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.procs.append(self.proc)

        def listening():
            check(self.proc.poll() is None, f"replica {self.name} exited: {self.log()}")
            with open(out_path) as f:
                for line in f:
                    if line.startswith("listening on http://"):
                        return line.split("http://", 1)[1].strip()
            return None
        self.addr = wait_for(f"replica {self.name} to listen", listening, 30)
        self.port = int(self.addr.rsplit(":", 1)[1])
        wait_for(f"replica {self.name} to load", lambda: self.health().get("status") == "ok", 60)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def health(self):
        try:
            return get_json(self.port, "/health")[1]
        except (OSError, ValueError):
            return {}

    def log(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def check_not_replayed(self):
        """The process's log has exactly the generations sent to it: nginx replayed none."""
        def ran():
            return sum(" POST /v1/completions " in line for line in self.log().splitlines())
        # A log line is written when its response ends: wait for them, then for any extra one.
        wait_for(f"{self.addr}'s request log", lambda: ran() >= self.sent, 10)
        time.sleep(0.5)
        check(ran() == self.sent, f"{self.addr} ran {ran()} requests, {self.sent} were sent to it")


def start_nginx(nginx, tmp, replicas):
    with open(TEMPLATE) as f:
        template = f.read()
    for placeholder in (LISTEN, *REPLICA_PORTS):
        check(template.count(placeholder) == 1,
              f"{TEMPLATE} no longer has {placeholder} exactly once: update this test")
    prefix = os.path.join(tmp, "nginx")
    os.mkdir(prefix)
    # Run as root, nginx's workers are `nobody`: let them reach their temporary directories.
    os.chmod(prefix, 0o755)
    conf = os.path.join(prefix, "nginx.conf")
    for _ in range(3):  # the listen port is free when chosen, but may be taken by then
        port = free_port()
        text = template.replace(LISTEN, f"127.0.0.1:{port}")
        for placeholder, replica in zip(REPLICA_PORTS, replicas):
            text = text.replace(placeholder, replica.addr)
        with open(conf, "w") as f:
            f.write(text)
        # -e: the log of the start itself, before error_log is read (not /var/log/nginx).
        proc = subprocess.Popen([nginx, "-p", prefix, "-c", conf, "-e", "error.log",
                                 "-g", "daemon off;"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def up():
            if proc.poll() is not None:
                return "exited"
            try:
                return get_json(port, "/health")[1].get("status") == "ok" and "up"
            except (OSError, ValueError):
                return None
        if wait_for("nginx to answer", up, 20) == "up":
            return proc, port
    with open(os.path.join(prefix, "error.log")) as f:
        raise Failure(f"nginx did not start:\n{f.read()}")


def run(tmp, procs):
    binary = os.environ.get("TORCHLESS_BIN") or os.path.join(ROOT, "target", "debug", "torchless")
    if not os.access(binary, os.X_OK):
        subprocess.run(["cargo", "build", "-q", "-p", "torchless-cli"], cwd=ROOT, check=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check(os.access(nginx, os.X_OK), "nginx not found (Debian: apt-get install nginx)")

    # A tiny random model with a long context, so that a generation lasts a few seconds.
    model = os.path.join(tmp, "tiny.bin")
    subprocess.run([binary, "synth", "--shape", "tiny", "--max-positions", str(CTX), model],
                   check=True, capture_output=True)
    replicas = [Replica(binary, model, tmp, name, procs) for name in ("a", "b")]
    for r in replicas:
        r.start()
    # Long generations: as many tokens as one replica streams to this script in LONG_SECONDS
    # (two at once take longer), whatever the build and the machine.
    s = Stream(replicas[0].port, 400)
    s.run()
    check(s.done and s.tokens == 400, f"calibration: {s!r}")
    replicas[0].sent += 1
    rate = 400 / (s.ended - s.started)
    long_tokens = min(CTX - 64, max(500, int(rate * LONG_SECONDS)))
    proc, port = start_nginx(nginx, tmp, replicas)
    procs.append(proc)
    by_addr = {r.addr: r for r in replicas}
    print(f"replicas {replicas[0].addr} and {replicas[1].addr} behind nginx at 127.0.0.1:{port}; "
          f"long generations of {long_tokens} tokens")

    def answered(replica, upstream):
        check(replica in by_addr, f"X-Upstream {upstream!r} is no replica")
        by_addr[replica].sent += 1
        return replica

    def short(session=None):
        status, headers, body = post(port, "/v1/completions", completion(4), session)
        check(status == 200 and body and body["usage"]["completion_tokens"] == 4,
              f"status {status}, {body}")
        replica, upstream = served_by(headers)
        return answered(replica, upstream), upstream

    def stream(max_tokens, session=None):
        s = Stream(port, max_tokens, session)
        s.start()
        s.join(60)
        check(s.done and s.tokens == max_tokens and not s.error, f"stream: {s!r}")
        answered(s.replica, s.upstream)
        return s

    def in_flight():
        states = [r.health() for r in replicas]
        return sum(h.get("slots_processing", 0) + h.get("requests_waiting", 0) for h in states)

    # 1. No session: spread (round-robin, since an empty hash key falls back to it).
    counts = {r.addr: 0 for r in replicas}
    for _ in range(20):
        counts[short()[0]] += 1
    print(f"1. 20 requests without X-Session-Id: {counts}")
    check(min(counts.values()) >= 5, "requests without a session are not spread")

    # 2. Sessions stick: all turns of one id on one replica; some other id maps to the other.
    home = {short("conversation-0")[0] for _ in range(10)}
    check(len(home) == 1, f"one session went to {home}")
    home = home.pop()
    ids = (f"conversation-{i}" for i in range(1, 40))
    away = next((i for i in ids if short(i)[0] != home), None)
    check(away, "40 session ids all hashed to one replica")
    there = {short(away)[0] for _ in range(5)}
    check(there == set(by_addr) - {home}, f"{away} went to {there}")
    print(f"2. 10 requests of conversation-0 all on {home}; {away} stays on the other")

    # 3. SSE unbuffered: tokens arrive while the replica is still generating.
    s = stream(long_tokens)
    first, total = s.first_token - s.started, s.ended - s.started
    print(f"3. stream through nginx: first token after {first * 1e3:.0f} ms, "
          f"{long_tokens} tokens in {total * 1e3:.0f} ms")
    check(first < 0.2 * total, "the stream is buffered: its first token came late")
    # A client that leaves mid-stream: nginx closes the upstream connection, which frees the
    # replica's slot (nginx does not keep the generation running for nobody).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(completion(long_tokens, True)),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    check(b"data: " in resp.read1(65536), "no first chunk")
    left = by_addr[answered(*served_by(resp.headers))]
    conn.close()
    wait_for("the slot of the client that left to be freed",
             lambda: left.health().get("slots_processing") == 0, 10)
    wait_for("the replica to log the disconnect", lambda: "finish=disconnected" in left.log(), 10)
    print("   a client leaving mid-stream frees the replica's slot")

    # 4. kill -9 of a replica with streams in flight.
    streams = [Stream(port, long_tokens) for _ in range(4)]
    for t in streams:
        t.start()
        t.token_in.wait(30)  # one after another, so that round-robin alternates
        check(t.first_token, f"stream did not start: {t!r}")
    victim = by_addr[streams[0].replica]
    survivor = next(r for r in replicas if r is not victim)
    on_victim = [t for t in streams if t.replica == victim.addr]
    check(not any(t.done for t in streams), "a stream ended before the kill: make them longer")
    killed_at = time.monotonic()
    victim.kill()
    for t in streams:
        t.join(60)
        check(not t.is_alive(), f"a stream hangs: {t!r}")
        if t.replica == victim.addr:
            check(t.error and not t.done, f"a stream on the killed replica did not fail: {t!r}")
            check(t.ended - killed_at < 10, f"a cut stream took {t.ended - killed_at:.1f} s to end")
        else:
            check(t.done and t.tokens == long_tokens and not t.error,
                  f"a stream on the live replica failed: {t!r}")
            answered(t.replica, t.upstream)
    survivor.check_not_replayed()
    errors = sorted({t.error.split(":")[0] for t in on_victim})
    cut = max(t.ended for t in on_victim) - killed_at
    print(f"4. killed {victim.addr} under {len(on_victim)} of 4 streams: they ended "
          f"{cut * 1e3:.0f} ms later ({', '.join(errors)}); "
          f"the other {4 - len(on_victim)} finished")
    # Every later request succeeds; the first one for the dead replica after a retry.
    retried = 0
    for i in range(12):
        replica, upstream = short(["conversation-0", away, None][i % 3])
        check(replica == survivor.addr, f"request {i} after the kill answered by {upstream}")
        retried += "," in upstream
    check(stream(32, "conversation-0").replica == survivor.addr, "stream after the kill")
    check(retried >= 1, "no request was retried on the live replica")
    print(f"   13 requests after it all answered by {survivor.addr}, {retried} after a retry")

    # 5. The replica restarts on its port; once fail_timeout is over, nginx sends it its
    # sessions again (its slots start empty, but the conversation stays there from then on).
    victim_session, survivor_session = (("conversation-0", away) if home == victim.addr
                                        else (away, "conversation-0"))
    victim.start()
    back_at = time.monotonic()
    wait_for("nginx to use the restarted replica",
             lambda: short(victim_session)[0] == victim.addr, 30, 0.5)
    print(f"5. restarted {victim.addr}: {victim_session} back on it after "
          f"{time.monotonic() - back_at:.1f} s")
    # A plain request sent to a replica that dies before answering gets a 502; nginx must not
    # resend the POST elsewhere (that would run the generation twice).
    plains = [Plain(port, long_tokens, session) for session in (victim_session, survivor_session)]
    for t in plains:
        t.start()
    wait_for("2 requests on the replicas", lambda: in_flight() == 2, 30)
    check(victim.health().get("slots_processing") == 1, "no plain request on the replica to kill")
    victim.kill()
    for t in plains:
        t.join(60)
        check(not t.is_alive(), f"a request hangs: {t!r}")
        check(t.error is None, f"plain request: {t.error}")
        if t.upstream == victim.addr:
            check(t.status == 502, f"request on the killed replica: {t!r}")
        else:
            check(t.status == 200 and t.body["usage"]["completion_tokens"] == long_tokens
                  and t.replica == survivor.addr, f"request on the live replica: {t!r}")
            answered(t.replica, t.upstream)
    check(sorted(t.status for t in plains) == [200, 502], f"{plains}")
    survivor.check_not_replayed()
    short()
    print("   killed it again under a plain request: 502, not resent; the next one answered")


def main():
    def stop(signum, _):
        raise Failure(f"overall timeout ({OVERALL_TIMEOUT} s)" if signum == signal.SIGALRM
                      else "terminated")
    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGTERM, stop)  # so that the cleanup below runs
    signal.alarm(OVERALL_TIMEOUT)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="torchless-nginx-")
    procs = []
    ok = False
    try:
        run(tmp, procs)
        ok = True
    except Exception as e:
        print(f"FAIL: {e}" if isinstance(e, Failure) else f"FAIL:\n{traceback.format_exc()}")
        for name in ("a1.err", "b1.err", "a2.err", "b2.err", "nginx/error.log"):
            path = os.path.join(tmp, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    print(f"--- {name} (last lines)\n" + "".join(f.readlines()[-15:]))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: replicas exit cleanly, nginx stops at once
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"{'ok' if ok else 'FAILED'}: nginx with two replicas ({elapsed:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
