#!/usr/bin/env bash
# Builds llama.cpp's command-line tools once, for every script that needs them (GGUF fixtures,
# real-model references, the llama.cpp comparison), from the llama-cpp-python sdist on PyPI
# (its vendor/llama.cpp), outside the repository:
#
#   scripts/llama_cpp.sh                      # llama-cpp-python 0.3.36, 2 build jobs
#   scripts/llama_cpp.sh --version 0.3.36 -j 4
#   scripts/llama_cpp.sh --print-bin          # the bin directory (builds first if needed)
#
# Layout (under ${TORCHLESS_BENCH_CACHE:-$HOME/.cache/torchless-bench}):
#   llama.cpp-src/                 the unpacked vendor/llama.cpp (convert_hf_to_gguf.py, gguf-py/)
#   llama.cpp-src/VERSION          the llama-cpp-python version it came from
#   llama.cpp-tools/build/         the cmake build tree
#   llama.cpp-tools/bin/           llama-quantize llama-tokenize llama-perplexity llama-bench
#                                  llama-server (without its web UI), and llama-completion /
#                                  llama-simple / llama-eval-callback when this llama.cpp defines them
#   llama.cpp-tools/READY          written last; others wait for it
#
# Python scripts that must write GGUFs as this llama.cpp does use its gguf-py:
#   PYTHONPATH=$CACHE/llama.cpp-src/gguf-py python3 $CACHE/llama.cpp-src/convert_hf_to_gguf.py ...

set -euo pipefail

CACHE=${TORCHLESS_BENCH_CACHE:-$HOME/.cache/torchless-bench}
VERSION=0.3.36
JOBS=2
PRINT_BIN=0
FORCE=0

usage() {
    cat <<EOF
Usage: scripts/llama_cpp.sh [--version V] [-j N] [--cache DIR] [--force] [--print-bin]

Downloads the llama-cpp-python sdist (pip download --no-binary), unpacks its vendor/llama.cpp into
CACHE/llama.cpp-src and builds llama.cpp's tools (CPU, Release, GGML_NATIVE=ON, static) into
CACHE/llama.cpp-tools/bin, then writes CACHE/llama.cpp-tools/READY.

  --version V   llama-cpp-python sdist version                         [$VERSION]
  -j, --jobs N  parallel build jobs                                    [$JOBS]
  --cache DIR   cache directory    [\${TORCHLESS_BENCH_CACHE:-\$HOME/.cache/torchless-bench}]
  --force       rebuild even if READY exists (same version)
  --print-bin   print the bin directory on stdout (after building if needed)
EOF
}

die() { echo "llama_cpp.sh: error: $*" >&2; exit 1; }
log() { echo "[llama_cpp] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) VERSION=$2; shift 2 ;;
        -j|--jobs) JOBS=$2; shift 2 ;;
        --cache) CACHE=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        --print-bin) PRINT_BIN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
SRC=$CACHE/llama.cpp-src
TOOLS=$CACHE/llama.cpp-tools
BUILD=$TOOLS/build
BIN=$TOOLS/bin
READY=$TOOLS/READY

done_already() {
    # llama-server too: a build made before it was a target gets it added (incrementally).
    [[ -f $READY && -f $SRC/VERSION && $(cat "$SRC/VERSION") == "$VERSION" && -x $BIN/llama-quantize
       && -x $BIN/llama-server ]]
}

if [[ $FORCE == 0 ]] && done_already; then
    log "already built: $BIN (llama-cpp-python $VERSION)"
    [[ $PRINT_BIN == 0 ]] || echo "$BIN"
    exit 0
fi
# A finished build of this version that only lacks a newer target (llama-server) keeps its READY
# while the target is added: its tools stay usable by the other scripts meanwhile.
if [[ $FORCE == 1 || ! -f $SRC/VERSION || $(cat "$SRC/VERSION") != "$VERSION" || ! -x $BIN/llama-quantize ]]; then
    rm -f "$READY"
fi

# ---- tools needed to build --------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is required"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "a C++ compiler is required"
if ! command -v cmake >/dev/null; then
    log "cmake missing: pip install cmake"
    python3 -m pip install --quiet cmake >&2 || die "cannot install cmake (pip install cmake, or apt-get install cmake)"
fi
GENERATOR=()
if command -v ninja >/dev/null || python3 -m pip install --quiet ninja >&2; then
    command -v ninja >/dev/null && GENERATOR=(-G Ninja)
fi

# ---- sources ----------------------------------------------------------------------------------
if [[ ! -f $SRC/CMakeLists.txt || ! -f $SRC/VERSION || $(cat "$SRC/VERSION" 2>/dev/null) != "$VERSION" ]]; then
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "downloading the llama-cpp-python $VERSION sdist"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$tmp" \
        "llama-cpp-python==$VERSION" >&2 || die "cannot download llama-cpp-python==$VERSION (sdist)"
    tarball=$(ls "$tmp"/llama_cpp_python-*.tar.gz | head -n 1)
    [[ -f $tarball ]] || die "pip left no sdist in $tmp"
    log "unpacking vendor/llama.cpp of $(basename "$tarball") into $SRC"
    tar -xzf "$tarball" -C "$tmp"
    [[ -f $tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/CMakeLists.txt ]] \
        || die "the sdist has no vendor/llama.cpp/CMakeLists.txt"
    rm -rf "$SRC" "$BUILD"
    mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
    echo "$VERSION" > "$SRC/VERSION"
    rm -rf "$tmp"
    trap - EXIT
fi

# ---- build ------------------------------------------------------------------------------------
mkdir -p "$TOOLS" "$BIN"
log "configuring in $BUILD"
# CPU only, tuned for this machine, static so the binaries do not depend on the build tree.
# Examples on (llama-simple, llama-eval-callback live there); tests off. The server on (the API
# comparison of scripts/server/prompt_cache_turns.py runs llama-server), without its web UI: the
# UI would be built with npm or downloaded from Hugging Face, neither of which a build here may
# do; with both off the server embeds an empty asset table and serves the API alone.
cmake -S "$SRC" -B "$BUILD" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    > "$TOOLS/configure.log" 2>&1 || { tail -n 30 "$TOOLS/configure.log" >&2; die "cmake configure failed (log: $TOOLS/configure.log)"; }

TARGETS=(llama-quantize llama-tokenize llama-perplexity llama-bench llama-server)
# llama-completion is the classic prompt-in, text-out CLI (what llama-cli was before it became a
# front end of the server in newer llama.cpp; nothing here uses that llama-cli, so it is not built).
OPTIONAL=(llama-completion llama-simple llama-eval-callback)
# Which optional targets this version defines.
avail=$(cmake --build "$BUILD" --target help 2>/dev/null || true)
for t in "${OPTIONAL[@]}"; do
    if grep -qE "(^|[^-[:alnum:]])$t(:|[[:space:]]|$)" <<< "$avail"; then TARGETS+=("$t"); fi
done
log "building ${TARGETS[*]} (-j $JOBS; log: $TOOLS/build.log)"
cmake --build "$BUILD" --config Release --target "${TARGETS[@]}" -j "$JOBS" \
    > "$TOOLS/build.log" 2>&1 || { tail -n 30 "$TOOLS/build.log" >&2; die "build failed (log: $TOOLS/build.log)"; }

for t in "${TARGETS[@]}"; do
    [[ -x $BUILD/bin/$t ]] || die "the build did not produce $BUILD/bin/$t"
    cp -f "$BUILD/bin/$t" "$BIN/$t"
done
{
    echo "llama-cpp-python $VERSION (vendor/llama.cpp)"
    date -u +%Y-%m-%dT%H:%M:%SZ
    echo "${TARGETS[*]}"
} > "$READY"
log "ready: $BIN (${TARGETS[*]})"
[[ $PRINT_BIN == 0 ]] || echo "$BIN"
