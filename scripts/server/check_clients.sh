#!/usr/bin/env bash
# Starts `torchless serve` on a fixture model (127.0.0.1, a free port), checks it with curl and
# with the official `openai` Python client (scripts/server/openai_client_check.py), then stops it
# with SIGTERM and checks that it exits cleanly; also runs scripts/server/check_structured.py
# (structured output) and scripts/server/check_metrics.py (/metrics through `prometheus_client`'s
# parser). Run by .ci/run; needs curl, python3, `openai`, `jsonschema` and `prometheus_client`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TORCHLESS_BIN:-target/debug/torchless}
[ -x "$BIN" ] || cargo build -q -p torchless-cli
KEY=ci-test-key
OUT=$(mktemp) ERR=$(mktemp)
"$BIN" serve tests/fixtures/models/small-gqa-int8.bin --port 0 --parallel 2 -b 64 --api-key "$KEY" --metrics >"$OUT" 2>"$ERR" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$OUT" && break; sleep 0.1; done
BASE=$(sed -n 's/^listening on //p' "$OUT")
[ -n "$BASE" ] || { cat "$ERR"; echo "server did not start"; exit 1; }
echo "server at $BASE"

fail() { echo "FAIL: $1"; cat "$ERR"; exit 1; }
auth=(-H "Authorization: Bearer $KEY")
# The port opens before the model is loaded: /health says "loading model" (503) until then.
health() { curl -s "$BASE/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'; }
for _ in $(seq 600); do [ "$(health)" = ok ] && break; sleep 0.1; done
[ "$(health)" = ok ] || fail "curl /health"
code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/v1/models")
[ "$code" = 401 ] || fail "curl without a key gives $code, not 401"
curl -sf "${auth[@]}" "$BASE/apply-template" -d '{"messages": [{"role": "user", "content": "Hi"}]}' \
    | python3 -c 'import json,sys; assert "Hi" in json.load(sys.stdin)["prompt"]' || fail "curl /apply-template"
curl -sf "${auth[@]}" "$BASE/slots" | python3 -c 'import json,sys; assert len(json.load(sys.stdin)) == 2' \
    || fail "curl /slots"
curl -sf "${auth[@]}" "$BASE/metrics" | grep -q '^torchless_slots_total 2$' || fail "curl /metrics"
curl -sf "${auth[@]}" "$BASE/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "Hello", "max_tokens": 8, "temperature": 0}' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["usage"]["completion_tokens"] >= 1 and r["choices"][0]["finish_reason"] in ("stop","length"), r' \
    || fail "curl /v1/completions"
stream=$(curl -sfN "${auth[@]}" "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0, "stream": true}')
[ "$(printf '%s\n' "$stream" | grep '^data: ' | tail -1)" = "data: [DONE]" ] || fail "curl chat stream does not end with [DONE]"
code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "$BASE/v1/completions" -d '{"prompt": ')
[ "$code" = 400 ] || fail "curl malformed JSON gives $code, not 400"
echo "ok: curl checks"

python3 scripts/server/openai_client_check.py "$BASE" "$KEY" || fail "openai client checks"
# /metrics through the Prometheus project's own text parser.
python3 scripts/server/check_metrics.py "$BASE" "$KEY" || fail "metrics checks"
# Structured output: every answer under a JSON schema parses and validates (`jsonschema`).
python3 scripts/server/check_structured.py "$BASE" --key "$KEY" --requests 24 --max-tokens 256 \
    --bounded-only || fail "structured output checks"

kill -TERM $PID
for _ in $(seq 100); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
trap - EXIT
wait $PID || fail "the server exited with $? after SIGTERM"
echo "ok: clean exit after SIGTERM; request log:"
cat "$ERR"
