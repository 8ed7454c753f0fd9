#!/usr/bin/env python3
"""Parses a running `torchless serve --metrics` endpoint with the Prometheus project's own Python
parser (`prometheus_client.parser`), after some traffic, and checks what it finds.

    python3 scripts/server/check_metrics.py http://127.0.0.1:PORT [API_KEY]

Checks: every family parses with its declared type; the counters and gauges the server documents
are present; each histogram's buckets are cumulative, end with `+Inf`, and `+Inf` equals
`_count`; the successful completions the script itself sends are counted. Exits non-zero on the
first failure.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

base = sys.argv[1]
key = sys.argv[2] if len(sys.argv) > 2 else None
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = f"Bearer {key}"


def fail(what):
    print("FAIL:", what)
    sys.exit(1)


def get(path):
    req = urllib.request.Request(base + path, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def families():
    out = {}
    for family in text_string_to_metric_families(get("/metrics")):
        if family.name in out:
            fail(f"family {family.name} appears twice")
        out[family.name] = family
    return out


def completions_2xx(fams):
    fam = fams.get("torchless_requests")  # the parser drops a counter's `_total`
    if fam is None:
        fail("no torchless_requests_total")
    return sum(s.value for s in fam.samples
               if s.name == "torchless_requests_total"
               and s.labels.get("endpoint") == "/v1/completions"
               and s.labels.get("status") == "2xx")


before = completions_2xx(families())
sent = 3
for i in range(sent):
    body = {"prompt": f"Metrics check {i}:", "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        json.loads(r.read())

fams = families()
expected = {
    "torchless_requests": "counter",
    "torchless_prompt_tokens": "counter",
    "torchless_tokens_predicted": "counter",
    "torchless_prompt_cache_hits": "counter",
    "torchless_cached_prompt_tokens": "counter",
    "torchless_requests_processing": "gauge",
    "torchless_requests_deferred": "gauge",
    "torchless_slots_busy": "gauge",
    "torchless_slots_total": "gauge",
    "torchless_request_duration_seconds": "histogram",
    "torchless_time_to_first_token_seconds": "histogram",
}
for name, kind in expected.items():
    if name not in fams:
        fail(f"family {name} missing (have {sorted(fams)})")
    if fams[name].type != kind:
        fail(f"{name} is a {fams[name].type}, not a {kind}")
print(f"ok: {len(fams)} families parse with their declared types")

for name, fam in fams.items():
    if fam.type != "histogram":
        continue
    buckets = [(s.labels["le"], s.value) for s in fam.samples if s.name == name + "_bucket"]
    count = [s.value for s in fam.samples if s.name == name + "_count"]
    if not buckets or buckets[-1][0] != "+Inf" or len(count) != 1:
        fail(f"{name}: buckets {buckets}, count {count}")
    values = [v for _, v in buckets]
    if values != sorted(values) or values[-1] != count[0]:
        fail(f"{name}: buckets not cumulative or +Inf != _count: {buckets} {count}")
    bounds = [float(le) for le, _ in buckets]
    if bounds != sorted(bounds):
        fail(f"{name}: bucket bounds out of order: {bounds}")
print("ok: histograms cumulative, +Inf = _count")

after = completions_2xx(fams)
if after - before != sent:
    # A response is counted when its body has ended: allow one more scrape.
    after = completions_2xx(families())
    if after - before != sent:
        fail(f"{sent} completions sent, counter went {before} -> {after}")
print(f"ok: torchless_requests_total{{endpoint=\"/v1/completions\",status=\"2xx\"}} {before} -> {after}")
