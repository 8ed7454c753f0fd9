#!/usr/bin/env bash
# Side-by-side speed of torchless, llama.cpp and (optionally) ik_llama.cpp on synthetic models of
# the same shapes.
#
#   bench/compare-llama-cpp.sh                # 7B (int8 vs Q8_0) and 1B (f32 vs F32), 2 threads
#   bench/compare-llama-cpp.sh --shapes 1b -r 5
#   bench/compare-llama-cpp.sh --q4_0 --torchless-7b /path/mistral-7b-int8.bin
#   bench/compare-llama-cpp.sh --shapes 7b-q4 -r 5   # torchless int4 vs llama.cpp Q4_0
#   bench/compare-llama-cpp.sh --shapes 7b-q4km --gguf-q4km F.gguf --peer llama,ik
#
# Builds llama.cpp's llama-bench from the llama-cpp-python sdist on PyPI (vendor/llama.cpp) into a
# cache outside the repository (or uses scripts/llama_cpp.sh's build of the same version there),
# with --peer ik also ik_llama.cpp's from the ik-llama-cpp-python sdist (vendor/ik_llama.cpp),
# writes GGUF files with bench/make_gguf.py and torchless files with `torchless synth`, then runs
# the engines alternately (ABBA order over rounds) and prints pp/tg tokens/s and the ratios
# torchless / each peer. See bench/README.md.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

THREADS=2
N_PROMPT=512
N_GEN=32
REPS=3
SHAPES=7b,1b
WITH_Q4=0
WITH_INT4=0
INT4_OUTPUT=int4
WITH_INT8_ACT=0
TL_BATCH=
CACHE=${TORCHLESS_BENCH_CACHE:-$HOME/.cache/torchless-bench}
MODELS=
LLAMA_VERSION=0.3.36
SKIP_BUILD=0
TORCHLESS_BIN=
LLAMA_BENCH_BIN=
TL_7B=
TL_1B=
SEED=1
CLEAN=0
WARMUP=1
PREPARE_ONLY=0
PROBE_MIB=1024
NO_AMX=auto
WITH_NO_MMAP=0
PEERS=llama
IK_VERSION=0.1.5
IK_BENCH_BIN=
IK_RTR=0
LLAMA_REPACK=
WITH_Q4KM=0
GGUF_Q4KM=
BUILD_JOBS=$(nproc)

usage() {
    cat <<EOF
Usage: bench/compare-llama-cpp.sh [OPTIONS]

Runs torchless and llama.cpp (llama-bench), and with --peer ik also ik_llama.cpp (its llama-bench),
on synthetic models of the same shapes, alternating the engines round by round, and prints pp/tg
tokens/s side by side with the ratios torchless/each peer.

Measurement:
      --peer LIST        comma-separated peers to run against torchless: llama (llama.cpp),
                         ik (ik_llama.cpp)                                     [$PEERS]
  -t, --threads N        threads for every engine (prefill and decode)         [$THREADS]
  -p, --n-prompt N       prompt tokens per prefill (pp)                        [$N_PROMPT]
  -n, --n-gen N          generated tokens (tg)                                 [$N_GEN]
  -r, --reps N           rounds; each round runs every engine once, medians
                         over rounds are reported                              [$REPS]
      --shapes LIST      comma-separated: 7b (torchless int8 vs llama.cpp Q8_0; torchless
                         also runs the Q8_0 GGUF), 7b-q4 (torchless int4 vs llama.cpp Q4_0
                         as llama-quantize makes it, output.weight Q6_K, which torchless
                         also runs; builds llama-quantize too),
                         7b-q4km (one Q4_K_M GGUF run by every engine, torchless included;
                         --gguf-q4km, or made with llama-quantize from the Q8_0 file),
                         1b (torchless f32 vs llama.cpp F32)                  [$SHAPES]
      --gguf-q4km F      shape 7b-q4km: use this Q4_K_M GGUF of the 7B shape (checked) instead
                         of quantizing one (~15 min on 2 threads)
      --q4_0             also run llama.cpp Q4_0 on the 7B shape (reference only)
      --int4-output Q    shape 7b-q4: storage of the torchless int4 file's output matrix and
                         embedding: int4, int8 or f32                          [$INT4_OUTPUT]
      --no-mmap          also run every torchless model with --no-mmap (the file read into
                         memory instead of mapped; llama.cpp's repacked weights are such a copy)
      --int8-activations also run torchless with --int8-activations on the 7B shape
                         (the optional, inexact integer prefill path)
  -b, --batch-size N     torchless prompt batch size (llama-bench's n_ubatch is 512)
                                                                               [torchless default]
      --no-warmup        no warmup: llama-bench --no-warmup (ik_llama.cpp's: -w 0), torchless
                         -r 1 (default: llama-bench's own warmup; torchless runs twice
                         per round and the first run is discarded)
      --probe-mib MIB    torchless read-bandwidth probe size (0: skip)         [$PROBE_MIB]

Files and builds:
      --cache DIR        llama.cpp and ik_llama.cpp sources and builds, default model directory
                         [\${TORCHLESS_BENCH_CACHE:-\$HOME/.cache/torchless-bench}]
      --models DIR       where the (large) model files go                      [CACHE/models]
      --llama-version V  llama-cpp-python sdist version, or "latest"         [$LLAMA_VERSION]
      --llama-no-amx W   also run a llama.cpp built without AMX (GGML_NATIVE=OFF, this CPU's
                         other x86 extensions on), as the engine "llama.cpp (no AMX)":
                         auto (when the CPU has AMX), yes, no                  [$NO_AMX]
                         (llama.cpp's AMX backend takes its Q4_0/Q8_0 products on such
                         CPUs; each build is measured, whichever is faster per test counts)
      --llama-bench BIN  use this llama-bench instead of building one
      --llama-repack R   llama-bench --repack 0|1 (weights repacked at load; AMX or the CPU
                         repack layouts)                         [llama-bench's default, 1]
      --ik-version V     ik-llama-cpp-python sdist version, or "latest"        [$IK_VERSION]
      --ik-bench BIN     use this ik_llama.cpp llama-bench instead of building one
      --ik-rtr R         ik_llama.cpp run-time repack (its -rtr): 0, 1, or both (two engines,
                         "ik_llama.cpp" and "ik_llama.cpp (rtr)")              [$IK_RTR]
  -j, --build-jobs N     parallel jobs of the llama.cpp/ik_llama.cpp builds (run under
                         nice -n 19)                                           [$BUILD_JOBS]
      --torchless BIN    use this torchless binary instead of building one
      --skip-build       build nothing: use the llama-bench builds already in the cache and
                         the torchless binary already in the cargo target directory
      --torchless-7b F   use this torchless 7B-shape int8 file instead of synthesizing one
      --torchless-1b F   use this torchless 1B-shape f32 file instead of synthesizing one
      --seed S           seed for the synthetic weights                        [$SEED]
      --prepare-only     build and write the model files, measure nothing
      --clean            delete the model files under the models directory that this run
                         used, after measuring (files given with --torchless-7b/1b or
                         --gguf-q4km are kept)
  -h, --help

Environment: TORCHLESS_BENCH_CACHE (cache directory), CARGO_TARGET_DIR (torchless build).
EOF
}

die() { echo "compare-llama-cpp: error: $*" >&2; exit 1; }
log() { echo "[compare] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -t|--threads) THREADS=$2; shift 2 ;;
        -p|--n-prompt) N_PROMPT=$2; shift 2 ;;
        -n|--n-gen) N_GEN=$2; shift 2 ;;
        -r|--reps) REPS=$2; shift 2 ;;
        --shapes) SHAPES=$2; shift 2 ;;
        --q4_0|--q4) WITH_Q4=1; shift ;;
        --int4-output) INT4_OUTPUT=$2; shift 2 ;;
        --int8-activations) WITH_INT8_ACT=1; shift ;;
        --no-mmap) WITH_NO_MMAP=1; shift ;;
        -b|--batch-size) TL_BATCH=$2; shift 2 ;;
        --no-warmup) WARMUP=0; shift ;;
        --probe-mib) PROBE_MIB=$2; shift 2 ;;
        --cache) CACHE=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        --llama-version) LLAMA_VERSION=$2; shift 2 ;;
        --llama-bench) LLAMA_BENCH_BIN=$2; shift 2 ;;
        --llama-no-amx) NO_AMX=$2; shift 2 ;;
        --torchless) TORCHLESS_BIN=$2; shift 2 ;;
        --peer|--peers) PEERS=$2; shift 2 ;;
        --llama-repack) LLAMA_REPACK=$2; shift 2 ;;
        --ik-version) IK_VERSION=$2; shift 2 ;;
        --ik-bench) IK_BENCH_BIN=$2; shift 2 ;;
        --ik-rtr) IK_RTR=$2; shift 2 ;;
        --gguf-q4km) GGUF_Q4KM=$2; shift 2 ;;
        -j|--build-jobs) BUILD_JOBS=$2; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --torchless-7b) TL_7B=$2; shift 2 ;;
        --torchless-1b) TL_1B=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --prepare-only) PREPARE_ONLY=1; shift ;;
        --clean) CLEAN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

for v in THREADS N_PROMPT N_GEN REPS SEED PROBE_MIB BUILD_JOBS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, not '${!v}'"
done
[[ $THREADS -ge 1 && $REPS -ge 1 ]] || die "--threads and --reps must be at least 1"
[[ -z $TL_BATCH || $TL_BATCH =~ ^[1-9][0-9]*$ ]] || die "--batch-size must be a positive integer, not '$TL_BATCH'"
[[ $N_PROMPT -ge 1 || $N_GEN -ge 1 ]] || die "nothing to measure (-p 0 and -n 0)"
[[ $INT4_OUTPUT =~ ^(int4|int8|f32)$ ]] || die "--int4-output must be int4, int8 or f32, not '$INT4_OUTPUT'"
[[ $NO_AMX =~ ^(auto|yes|no)$ ]] || die "--llama-no-amx must be auto, yes or no, not '$NO_AMX'"
[[ -z $LLAMA_REPACK || $LLAMA_REPACK =~ ^[01]$ ]] || die "--llama-repack must be 0 or 1, not '$LLAMA_REPACK'"
[[ $IK_RTR =~ ^(0|1|both)$ ]] || die "--ik-rtr must be 0, 1 or both, not '$IK_RTR'"
[[ $BUILD_JOBS -ge 1 ]] || die "--build-jobs must be at least 1"
RUN_LLAMA=0; RUN_IK=0
IFS=, read -r -a peer_list <<< "$PEERS"
for p in "${peer_list[@]}"; do
    case "$p" in
        llama|llama.cpp) RUN_LLAMA=1 ;;
        ik|ik_llama|ik_llama.cpp|ik-llama) RUN_IK=1 ;;
        *) die "unknown peer '$p' (use llama, ik)" ;;
    esac
done
[[ $RUN_LLAMA == 1 || $RUN_IK == 1 ]] || die "no peer selected (--peer llama,ik)"
[[ $RUN_LLAMA == 1 ]] || NO_AMX=no   # the no-AMX build is a llama.cpp engine
if [[ $NO_AMX == auto ]]; then
    if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then NO_AMX=yes; else NO_AMX=no; fi
fi

want_7b=0; want_1b=0
IFS=, read -r -a shape_list <<< "$SHAPES"
for s in "${shape_list[@]}"; do
    case "$s" in
        7b|7B|mistral-7b) want_7b=1 ;;
        7b-q4|7B-q4) WITH_INT4=1 ;;
        7b-q4km|7B-q4km|7b-q4_k_m|7B-Q4_K_M) WITH_Q4KM=1 ;;
        1b|1B|mistral-1b) want_1b=1 ;;
        *) die "unknown shape '$s' (use 7b, 7b-q4, 7b-q4km, 1b)" ;;
    esac
done
[[ -z $GGUF_Q4KM || $WITH_Q4KM == 1 ]] || die "--gguf-q4km is for the shape 7b-q4km: add it to --shapes"
# llama-quantize (of the llama.cpp build) makes the 7b-q4 file and, unless given, the Q4_K_M one.
NEED_QUANTIZE=0
[[ $WITH_INT4 == 0 && ( $WITH_Q4KM == 0 || -n $GGUF_Q4KM ) ]] || NEED_QUANTIZE=1

command -v python3 >/dev/null || die "python3 is required"
python3 -c "import gguf, numpy" 2>/dev/null || die "the gguf and numpy Python packages are required (pip install gguf)"

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
MODELS=${MODELS:-$CACHE/models}
mkdir -p "$MODELS"
MODELS=$(cd "$MODELS" && pwd)
case "$MODELS/" in
    "$REPO_ROOT"/*) die "the models directory $MODELS is inside the repository; use --models or --cache elsewhere" ;;
esac
case "$CACHE/" in
    "$REPO_ROOT"/*) die "the cache directory $CACHE is inside the repository; use --cache elsewhere" ;;
esac

# ------------------------------------------------------------------------------------------------
# llama.cpp

sdist_version=$LLAMA_VERSION

fetch_sdist() {
    # Downloads the llama-cpp-python sdist (with pip, the ordinary client) into $1; prints its path.
    local dir=$1 spec
    if [[ $LLAMA_VERSION == latest ]]; then spec=llama-cpp-python; else spec="llama-cpp-python==$LLAMA_VERSION"; fi
    mkdir -p "$dir"
    # --no-binary for this package only: pip still prepares its metadata, for which it installs
    # scikit-build-core (and cmake/ninja wheels if missing) into a throwaway environment.
    if ! python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$dir" "$spec" >&2; then
        if [[ $LLAMA_VERSION != latest ]]; then
            log "WARNING: llama-cpp-python $LLAMA_VERSION is not available; falling back to the latest version"
            python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$dir" llama-cpp-python >&2 \
                || die "cannot download the llama-cpp-python sdist"
        else
            die "cannot download the llama-cpp-python sdist"
        fi
    fi
    ls -t "$dir"/llama_cpp_python-*.tar.gz | head -n 1
}

LLAMA_TARGETS=(llama-bench)

ensure_cmake() {
    if ! command -v cmake >/dev/null; then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            log "installing cmake with apt-get"
            apt-get install -y cmake >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y cmake >/dev/null; }
        else
            die "cmake is required (e.g. apt-get install cmake)"
        fi
    fi
}

build_llama_bench() {
    local src_root tarball tmp
    [[ $NEED_QUANTIZE == 0 ]] || LLAMA_TARGETS+=(llama-quantize)
    if [[ -n $LLAMA_BENCH_BIN ]]; then
        [[ -x $LLAMA_BENCH_BIN ]] || die "--llama-bench $LLAMA_BENCH_BIN is not executable"
        return
    fi
    if [[ $LLAMA_VERSION != latest && -x $CACHE/llama.cpp-$LLAMA_VERSION/build/bin/llama-bench
          && ( $NEED_QUANTIZE == 0 || -x $CACHE/llama.cpp-$LLAMA_VERSION/build/bin/llama-quantize ) ]]; then
        LLAMA_BENCH_BIN=$CACHE/llama.cpp-$LLAMA_VERSION/build/bin/llama-bench
        log "llama-bench: $LLAMA_BENCH_BIN (already built)"
        return
    fi
    # The shared build of scripts/llama_cpp.sh (same sdist version), if there is one.
    if [[ $LLAMA_VERSION != latest && -f $CACHE/llama.cpp-tools/READY && -x $CACHE/llama.cpp-tools/bin/llama-bench
          && $(cat "$CACHE/llama.cpp-src/VERSION" 2>/dev/null) == "$LLAMA_VERSION"
          && ( $NEED_QUANTIZE == 0 || -x $CACHE/llama.cpp-tools/bin/llama-quantize ) ]]; then
        LLAMA_BENCH_BIN=$CACHE/llama.cpp-tools/bin/llama-bench
        log "llama-bench: $LLAMA_BENCH_BIN (scripts/llama_cpp.sh's build)"
        return
    fi
    [[ $SKIP_BUILD == 0 ]] || die "--skip-build, but there is no $CACHE/llama.cpp-$LLAMA_VERSION/build/bin/llama-bench"
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    tarball=$(fetch_sdist "$tmp")
    sdist_version=$(basename "$tarball" .tar.gz); sdist_version=${sdist_version#llama_cpp_python-}
    src_root=$CACHE/llama.cpp-$sdist_version
    LLAMA_BENCH_BIN=$src_root/build/bin/llama-bench
    if [[ -x $LLAMA_BENCH_BIN && ( $NEED_QUANTIZE == 0 || -x $src_root/build/bin/llama-quantize ) ]]; then
        rm -rf "$tmp"
        log "llama-bench: $LLAMA_BENCH_BIN (already built)"
        return
    fi
    if [[ ! -f $src_root/vendor/llama.cpp/CMakeLists.txt ]]; then
        log "extracting $(basename "$tarball") into $src_root"
        rm -rf "$src_root"
        tar -xzf "$tarball" -C "$tmp"
        mv "$tmp/llama_cpp_python-$sdist_version" "$src_root"
    fi
    rm -rf "$tmp"
    ensure_cmake
    log "building llama-bench (llama-cpp-python $sdist_version, vendor/llama.cpp) in $src_root/build"
    # CPU only, tuned for this machine; static so the binary does not depend on the build tree.
    nice -n 19 cmake -S "$src_root/vendor/llama.cpp" -B "$src_root/build" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        > "$src_root/configure.log" 2>&1 || { tail -n 30 "$src_root/configure.log" >&2; die "cmake configure failed (log: $src_root/configure.log)"; }
    nice -n 19 cmake --build "$src_root/build" --config Release --target "${LLAMA_TARGETS[@]}" -j "$BUILD_JOBS" \
        > "$src_root/build.log" 2>&1 || { tail -n 30 "$src_root/build.log" >&2; die "llama-bench build failed (log: $src_root/build.log)"; }
    [[ -x $LLAMA_BENCH_BIN ]] || die "the build did not produce $LLAMA_BENCH_BIN"
}

# The same sources built without AMX: GGML_NATIVE=OFF with every other x86 extension this CPU
# has (what -march=native gives ggml, minus its AMX backend). Sets LLAMA_BENCH_NOAMX.
LLAMA_BENCH_NOAMX=
build_llama_bench_noamx() {
    local src_root build flags=() f llama_src
    src_root=$(cd "$(dirname "$LLAMA_BENCH_BIN")/../.." && pwd)
    build=$src_root/build-noamx
    llama_src=$src_root/vendor/llama.cpp
    if [[ $LLAMA_BENCH_BIN == "$CACHE/llama.cpp-tools/bin/llama-bench" ]]; then
        # scripts/llama_cpp.sh's layout: sources in llama.cpp-src, builds in llama.cpp-tools.
        llama_src=$CACHE/llama.cpp-src
        build=$CACHE/llama.cpp-tools/build-noamx
    fi
    LLAMA_BENCH_NOAMX=$build/bin/llama-bench
    if [[ -x $LLAMA_BENCH_NOAMX ]]; then
        log "llama-bench without AMX: $LLAMA_BENCH_NOAMX (already built)"
        return
    fi
    [[ -f $llama_src/CMakeLists.txt ]] \
        || die "--llama-no-amx needs the llama.cpp sources beside $LLAMA_BENCH_BIN (in $llama_src)"
    [[ $SKIP_BUILD == 0 ]] || die "--skip-build, but there is no $LLAMA_BENCH_NOAMX"
    for f in sse4_2:SSE42 f16c:F16C fma:FMA bmi2:BMI2 avx:AVX avx2:AVX2 avx_vnni:AVX_VNNI avx512f:AVX512 \
             avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        if grep -qw "${f%%:*}" /proc/cpuinfo; then flags+=("-DGGML_${f#*:}=ON"); else flags+=("-DGGML_${f#*:}=OFF"); fi
    done
    log "building llama-bench without AMX in $build (${flags[*]})"
    nice -n 19 cmake -S "$llama_src" -B "$build" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${flags[@]}" -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        > "$build.configure.log" 2>&1 || { tail -n 30 "$build.configure.log" >&2; die "cmake configure (no AMX) failed"; }
    nice -n 19 cmake --build "$build" --config Release --target llama-bench -j "$BUILD_JOBS" \
        > "$build.build.log" 2>&1 || { tail -n 30 "$build.build.log" >&2; die "llama-bench build (no AMX) failed"; }
    [[ -x $LLAMA_BENCH_NOAMX ]] || die "the build did not produce $LLAMA_BENCH_NOAMX"
}

# ------------------------------------------------------------------------------------------------
# ik_llama.cpp (llama.cpp's CPU-focused fork), from the ik-llama-cpp-python sdist's vendor/ik_llama.cpp

ik_sdist_version=$IK_VERSION

build_ik_bench() { # sets IK_BENCH_BIN
    local spec tmp tarball f src_root src
    if [[ -n $IK_BENCH_BIN ]]; then
        [[ -x $IK_BENCH_BIN ]] || die "--ik-bench $IK_BENCH_BIN is not executable"
        ik_sdist_version="given binary"
        return
    fi
    if [[ $IK_VERSION != latest && -x $CACHE/ik_llama.cpp-$IK_VERSION/build/bin/llama-bench ]]; then
        IK_BENCH_BIN=$CACHE/ik_llama.cpp-$IK_VERSION/build/bin/llama-bench
        log "ik_llama.cpp llama-bench: $IK_BENCH_BIN (already built)"
        return
    fi
    [[ $SKIP_BUILD == 0 ]] || die "--skip-build, but there is no $CACHE/ik_llama.cpp-$IK_VERSION/build/bin/llama-bench"
    if [[ $IK_VERSION == latest ]]; then spec=ik-llama-cpp-python; else spec="ik-llama-cpp-python==$IK_VERSION"; fi
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    log "downloading the $spec sdist"
    python3 -m pip download --quiet --no-deps --no-binary ik-llama-cpp-python -d "$tmp" "$spec" >&2 \
        || { rm -rf "$tmp"; die "cannot download the ik-llama-cpp-python sdist ($spec)"; }
    tarball=
    for f in "$tmp"/ik_llama_cpp_python-*.tar.gz; do tarball=$f; done   # a fresh directory: one file
    [[ -f $tarball ]] || { rm -rf "$tmp"; die "pip left no ik-llama-cpp-python sdist in $tmp"; }
    ik_sdist_version=$(basename "$tarball" .tar.gz); ik_sdist_version=${ik_sdist_version#ik_llama_cpp_python-}
    src_root=$CACHE/ik_llama.cpp-$ik_sdist_version
    src=$src_root/src
    IK_BENCH_BIN=$src_root/build/bin/llama-bench
    if [[ -x $IK_BENCH_BIN ]]; then
        rm -rf "$tmp"
        log "ik_llama.cpp llama-bench: $IK_BENCH_BIN (already built)"
        return
    fi
    if [[ ! -f $src/CMakeLists.txt ]]; then
        log "extracting vendor/ik_llama.cpp of $(basename "$tarball") into $src"
        tar -xzf "$tarball" -C "$tmp"
        local vendored=$tmp/ik_llama_cpp_python-$ik_sdist_version/vendor/ik_llama.cpp
        [[ -f $vendored/CMakeLists.txt ]] || { rm -rf "$tmp"; die "the sdist has no vendor/ik_llama.cpp/CMakeLists.txt"; }
        # The sdist lacks common/cmake/build-info-gen-cpp.cmake, which a custom command in
        # common/CMakeLists.txt runs to write common/build-info.cpp from git: write that file here
        # and drop the command (in the cache's copy only).
        if [[ ! -f $vendored/common/cmake/build-info-gen-cpp.cmake ]]; then
            python3 - "$vendored" "$(${CC:-cc} --version 2>/dev/null | head -n 1)" "$(${CC:-cc} -dumpmachine 2>/dev/null)" <<'PY' \
                || { rm -rf "$tmp"; die "cannot patch ik_llama.cpp's build-info generation"; }
import re, sys
root, compiler, target = sys.argv[1:]
esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"')
text = open(f"{root}/common/build-info.cpp.in").read()
for key, value in (("BUILD_NUMBER", "0"), ("BUILD_COMMIT", "unknown"),
                   ("BUILD_COMPILER", esc(compiler or "unknown")), ("BUILD_TARGET", esc(target or "unknown"))):
    text = text.replace(f"@{key}@", value)
assert "@" not in text, text
open(f"{root}/common/build-info.cpp", "w").write(text)
path = f"{root}/common/CMakeLists.txt"
cmake = open(path).read()
cmake, n = re.subn(r'add_custom_command\(\s*OUTPUT\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}/build-info\.cpp".*?\n\)\n', "",
                   cmake, flags=re.S)
assert n == 1 and "build-info-gen-cpp" not in cmake, "custom command not found"
open(path, "w").write(cmake)
PY
        fi
        mkdir -p "$src_root"
        rm -rf "$src"
        mv "$vendored" "$src"
    fi
    rm -rf "$tmp"
    ensure_cmake
    log "building ik_llama.cpp's llama-bench (ik-llama-cpp-python $ik_sdist_version) in $src_root/build (-j $BUILD_JOBS, nice 19)"
    # As llama.cpp's: CPU only, -march=native, static. llama-bench is among its examples. The
    # flash-attention kernels for quantized KV caches (GGML_IQK_FA_ALL_QUANTS) are left out: they
    # take a large part of the build time and the benchmarks use an f16 cache.
    nice -n 19 cmake -S "$src" -B "$src_root/build" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_IQK_FA_ALL_QUANTS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF \
        > "$src_root/configure.log" 2>&1 || { tail -n 30 "$src_root/configure.log" >&2; die "cmake configure of ik_llama.cpp failed (log: $src_root/configure.log)"; }
    nice -n 19 cmake --build "$src_root/build" --config Release --target llama-bench -j "$BUILD_JOBS" \
        > "$src_root/build.log" 2>&1 || { tail -n 30 "$src_root/build.log" >&2; die "ik_llama.cpp llama-bench build failed (log: $src_root/build.log)"; }
    [[ -x $IK_BENCH_BIN ]] || die "the build did not produce $IK_BENCH_BIN"
}

# ------------------------------------------------------------------------------------------------
# torchless

build_torchless() {
    if [[ -n $TORCHLESS_BIN ]]; then
        [[ -x $TORCHLESS_BIN ]] || die "--torchless $TORCHLESS_BIN is not executable"
        return
    fi
    local target
    target=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') \
        || die "cargo metadata failed (is cargo installed?)"
    TORCHLESS_BIN=$target/release/torchless
    if [[ $SKIP_BUILD == 1 ]]; then
        [[ -x $TORCHLESS_BIN ]] || die "--skip-build, but there is no $TORCHLESS_BIN"
        return
    fi
    log "building torchless (cargo build --release -p torchless-cli)"
    (cd "$REPO_ROOT" && cargo build --release -p torchless-cli >&2) || die "cargo build failed"
}

# ------------------------------------------------------------------------------------------------
# model files

free_bytes() { python3 -c 'import shutil,sys; print(shutil.disk_usage(sys.argv[1]).free)' "$1"; }

ensure_space() { # dir bytes what
    local free
    free=$(free_bytes "$1")
    if (( free < $2 + (1 << 30) )); then
        die "not enough disk space for $3 in $1: $(( $2 >> 20 )) MiB needed (+1 GiB margin), $(( free >> 20 )) MiB free (use --models DIR)"
    fi
}

USED_FILES=()

# torchless_info FILE -> "hidden layers quant vocab"
torchless_info() {
    "$TORCHLESS_BIN" info --json "$1" 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)["config"]
print(c["hidden_size"], c["n_layers"], c["quant"], c["vocab_size"])'
}

ensure_torchless_model() { # shape quant hidden layers given-file [output-quant]; sets MODEL_PATH
    local shape=$1 quant=$2 hidden=$3 layers=$4 given=$5 output=${6:-f32} path info need suffix=
    [[ $output == f32 ]] || suffix=-output-$output
    if [[ -n $given ]]; then
        [[ -f $given ]] || die "$given does not exist"
        path=$given
    else
        path=$MODELS/torchless-$shape-$quant$suffix-seed$SEED.bin
    fi
    if [[ -f $path ]]; then
        info=$(torchless_info "$path") || die "$path is not a readable torchless model file"
        [[ $info == "$hidden $layers $quant 32000" ]] \
            || die "$path has hidden/layers/quant/vocab '$info', expected '$hidden $layers $quant 32000'"
        log "torchless model: $path"
    else
        case $shape/$quant in
            mistral-7b/int8) need=8466000000 ;;
            mistral-1b/f32) need=3412000000 ;;
            mistral-7b/int4) need=4600000000 ;;
            *) need=$((10 << 30)) ;;
        esac
        ensure_space "$MODELS" "$need" "$(basename "$path")"
        log "writing $path (torchless synth --shape $shape --quant $quant --quant-output $output --seed $SEED)"
        "$TORCHLESS_BIN" synth --shape "$shape" --quant "$quant" --quant-output "$output" --seed "$SEED" "$path.partial" >&2 \
            || { rm -f "$path.partial"; die "torchless synth failed"; }
        mv "$path.partial" "$path"
    fi
    [[ -n $given ]] || USED_FILES+=("$path")
    MODEL_PATH=$path
}

ensure_gguf_model() { # shape type; sets MODEL_PATH
    local shape=$1 type=$2 path need
    path=$MODELS/llama-$shape-$type-seed$SEED.gguf
    if [[ ! -f $path ]]; then
        need=$(python3 "$SCRIPT_DIR/make_gguf.py" --shape "$shape" --type "$type" --print-size x)
        ensure_space "$MODELS" "$need" "$(basename "$path")"
        log "writing $path (bench/make_gguf.py --shape $shape --type $type --seed $SEED)"
        python3 "$SCRIPT_DIR/make_gguf.py" --shape "$shape" --type "$type" --seed "$SEED" "$path" \
            || { rm -f "$path.partial"; die "make_gguf.py failed"; }
    else
        log "GGUF model: $path"
    fi
    USED_FILES+=("$path")
    MODEL_PATH=$path
}

# A file as llama-quantize makes it (type $1: Q4_0 gives output.weight Q6_K, Q4_K_M its usual
# Q4_K/Q6_K mix) from the GGUF in MODEL_PATH (make_gguf.py's Q4_0 or Q8_0 file: the gguf package
# cannot write K-quants); sets MODEL_PATH.
ensure_llama_quantized() {
    local type=$1 source=$MODEL_PATH path quantize
    path=$MODELS/llama-mistral-7b-${type,,}-llama-quantize-seed$SEED.gguf
    quantize=$(dirname "$LLAMA_BENCH_BIN")/llama-quantize
    [[ -x $quantize ]] || die "a llama-quantize'd $type file needs llama-quantize beside $LLAMA_BENCH_BIN"
    if [[ ! -f $path ]]; then
        ensure_space "$MODELS" 4600000000 "$(basename "$path")"
        log "writing $path (llama-quantize --allow-requantize $(basename "$source") $type; minutes)"
        # Not measured: niced, like the builds.
        nice -n 19 "$quantize" --allow-requantize "$source" "$path.partial" "$type" > "$path.log" 2>&1 \
            || { tail -n 20 "$path.log" >&2; rm -f "$path.partial"; die "llama-quantize failed"; }
        mv "$path.partial" "$path"
    else
        log "GGUF model: $path"
    fi
    USED_FILES+=("$path")
    MODEL_PATH=$path
}

# Checks that a given GGUF has the 7B shape (and says so when it is not Q4_K_M).
check_gguf_7b() {
    python3 - "$1" <<'EOF' || die "$1 is not a GGUF of the 7B shape (llama, 4096 hidden, 14336 FFN, 32 layers, 32/8 heads, 32000 tokens)"
import sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
def val(key):
    f = r.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return len(f.data)
    return int(f.parts[f.data[0]][0])
want = {"general.architecture": "llama", "llama.embedding_length": 4096, "llama.feed_forward_length": 14336,
        "llama.block_count": 32, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "tokenizer.ggml.tokens": 32000}
bad = {k: val(k) for k, v in want.items() if val(k) != v}
if bad:
    sys.exit(f"unexpected: {bad}")
if val("general.file_type") != 15:
    print(f"[compare] WARNING: {sys.argv[1]}: general.file_type {val('general.file_type')}, not 15 (Q4_K_M)", file=sys.stderr)
EOF
}

# ------------------------------------------------------------------------------------------------

[[ $want_1b == 1 || $want_7b == 1 || $WITH_INT4 == 1 || $WITH_Q4KM == 1 ]] || die "no shapes selected"
# llama.cpp is built for its own runs and for llama-quantize.
[[ $RUN_LLAMA == 0 && $NEED_QUANTIZE == 0 ]] || build_llama_bench
[[ $NO_AMX == no ]] || build_llama_bench_noamx
[[ $RUN_IK == 0 ]] || build_ik_bench
build_torchless
[[ $RUN_LLAMA == 0 ]] || log "llama-bench: $LLAMA_BENCH_BIN"
[[ $RUN_IK == 0 ]] || log "ik_llama.cpp llama-bench: $IK_BENCH_BIN"
log "torchless:   $TORCHLESS_BIN"

add_peers() { # label weights gguf-file: a run of every selected peer on that file
    [[ $RUN_LLAMA == 0 ]] || RUNS+=("$1|llama.cpp|$2|$3")
    [[ $RUN_IK == 0 ]] || RUNS+=("$1|ik_llama.cpp|$2|$3")
}

# Runs: "label|engine|weights|model file" in the order of the first round.
RUNS=()
if [[ $want_7b == 1 ]]; then
    ensure_torchless_model mistral-7b int8 4096 32 "$TL_7B"; tl=$MODEL_PATH
    ensure_gguf_model mistral-7b q8_0; q8=$MODEL_PATH
    add_peers 7B Q8_0 "$q8"
    RUNS+=("7B|torchless|int8|$tl")
    RUNS+=("7B|torchless|Q8_0 (same GGUF)|$q8")
    if [[ $WITH_INT8_ACT == 1 ]]; then
        RUNS+=("7B|torchless|int8 (int8 activations)|$tl")
    fi
    if [[ $WITH_Q4 == 1 ]]; then
        ensure_gguf_model mistral-7b q4_0
        add_peers 7B Q4_0 "$MODEL_PATH"
    fi
fi
if [[ $WITH_INT4 == 1 ]]; then
    ensure_gguf_model mistral-7b q4_0
    ensure_llama_quantized Q4_0; q40=$MODEL_PATH
    add_peers 7B "Q4_0 (Q6_K output)" "$q40"
    ensure_torchless_model mistral-7b int4 4096 32 "" "$INT4_OUTPUT"
    RUNS+=("7B|torchless|int4 ($INT4_OUTPUT output)|$MODEL_PATH")
    RUNS+=("7B|torchless|Q4_0 (Q6_K output, same GGUF)|$q40")
fi
if [[ $WITH_Q4KM == 1 ]]; then
    # One file for every engine: torchless reads GGUF too. Its own shape label, so that its
    # ratios pair the runs of this file only.
    if [[ -n $GGUF_Q4KM ]]; then
        [[ -f $GGUF_Q4KM ]] || die "$GGUF_Q4KM does not exist"
        check_gguf_7b "$GGUF_Q4KM"
        MODEL_PATH=$(cd "$(dirname "$GGUF_Q4KM")" && pwd)/$(basename "$GGUF_Q4KM")
        log "GGUF model: $MODEL_PATH"
    else
        ensure_gguf_model mistral-7b q8_0
        ensure_llama_quantized Q4_K_M
    fi
    add_peers 7B-q4km Q4_K_M "$MODEL_PATH"
    RUNS+=("7B-q4km|torchless|Q4_K_M (same GGUF)|$MODEL_PATH")
fi
if [[ $want_1b == 1 ]]; then
    ensure_torchless_model mistral-1b f32 2048 16 "$TL_1B"; tl=$MODEL_PATH
    ensure_gguf_model mistral-1b f32; f32=$MODEL_PATH
    add_peers 1B F32 "$f32"
    RUNS+=("1B|torchless|f32|$tl")
fi

if [[ $WITH_NO_MMAP == 1 ]]; then
    with_copy=()
    for r in "${RUNS[@]}"; do
        with_copy+=("$r")
        IFS='|' read -r label engine weights file <<< "$r"
        [[ $engine != torchless ]] || with_copy+=("$label|torchless|$weights, --no-mmap|$file")
    done
    RUNS=("${with_copy[@]}")
fi
if [[ $NO_AMX == yes ]]; then
    with_noamx=()
    for r in "${RUNS[@]}"; do
        with_noamx+=("$r")
        IFS='|' read -r label engine weights file <<< "$r"
        [[ $engine != llama.cpp ]] || with_noamx+=("$label|llama.cpp (no AMX)|$weights|$file")
    done
    RUNS=("${with_noamx[@]}")
fi
if [[ $RUN_IK == 1 && $IK_RTR != 0 ]]; then
    with_rtr=()
    for r in "${RUNS[@]}"; do
        IFS='|' read -r label engine weights file <<< "$r"
        [[ $engine == ik_llama.cpp && $IK_RTR == 1 ]] || with_rtr+=("$r")
        [[ $engine != ik_llama.cpp ]] || with_rtr+=("$label|ik_llama.cpp (rtr)|$weights|$file")
    done
    RUNS=("${with_rtr[@]}")
fi

if [[ $PREPARE_ONLY == 1 ]]; then
    log "prepared; runs (shape, engine, weights: file):"
    for r in "${RUNS[@]}"; do
        IFS='|' read -r label engine weights file <<< "$r"
        log "  $label, $engine, $weights: $file"
    done
    exit 0
fi

load_1min() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?"; }
LOAD_BEFORE=$(load_1min)
if [[ $LOAD_BEFORE != "?" ]] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.5 else 1)' "$LOAD_BEFORE"; then
    log "WARNING: the machine is not idle (1-minute load average $LOAD_BEFORE): the figures will be noisy;"
    log "         llama.cpp's spinning OpenMP thread pool suffers most when cores are oversubscribed"
fi

RUN_DIR=$CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
RESULTS=$RUN_DIR/results.jsonl
: > "$RESULTS"
log "raw results and logs: $RUN_DIR"

run_peer() { # round label weights file engine: a llama-bench, of llama.cpp or ik_llama.cpp
    local bin tag test n_p n_g out log status args=() parts=()
    case "$5" in
        llama.cpp|"llama.cpp (no AMX)")
            bin=$LLAMA_BENCH_BIN; tag=llama
            if [[ $5 != llama.cpp ]]; then bin=$LLAMA_BENCH_NOAMX; tag=llama-noamx; fi
            [[ -z $LLAMA_REPACK ]] || args+=(--repack "$LLAMA_REPACK")
            [[ $WARMUP == 1 ]] || args+=(--no-warmup) ;;
        ik_llama.cpp*)
            # ik's llama-bench: -rtr is its run-time repack (off by default; it was slower on a
            # Zen 5), -w its warmup switch. Its other defaults are llama.cpp's apart from flash
            # attention (on).
            bin=$IK_BENCH_BIN; tag=ik; args+=(-rtr 0)
            if [[ $5 != ik_llama.cpp ]]; then tag=ik-rtr; args=(-rtr 1); fi
            [[ $WARMUP == 1 ]] || args+=(-w 0) ;;
        *) die "internal: unknown engine $5" ;;
    esac
    # pp and tg in separate processes, so that a crash in one (llama.cpp's AMX path has crashed on
    # prompt batches) is recorded for that test and the other is still measured.
    for test in pp tg; do
        if [[ $test == pp ]]; then n_p=$N_PROMPT; n_g=0; else n_p=0; n_g=$N_GEN; fi
        (( n_p + n_g > 0 )) || continue
        out=$RUN_DIR/$tag-$2-$3-$test-r$1.json
        log=$RUN_DIR/$tag-$2-$3-$test-r$1.log
        status=0
        "$bin" -m "$4" -p "$n_p" -n "$n_g" -t "$THREADS" -r 1 -o json "${args[@]}" > "$out" 2> "$log" || status=$?
        if (( status != 0 )); then
            local why="exit status $status"
            (( status <= 128 )) || why="signal $(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
            log "WARNING: $5 $test failed on $(basename "$4") ($why); log: $log"
            printf '[{"failed": "%s", "status": %d}]\n' "$test" "$status" > "$out"
        fi
        parts+=("$out")
    done
    python3 - "$1" "$2" "$3" "$4" "$5" "${parts[@]}" >> "$RESULTS" <<'EOF'
import json, sys
rnd, label, weights, model, engine, *paths = sys.argv[1:]
rec = {"round": int(rnd), "shape": label, "engine": engine, "weights": weights, "model": model}
for path in paths:
    rows = json.load(open(path))
    for row in rows:
        if "failed" in row:
            rec[row["failed"] + "_failed"] = row["status"]
        elif row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            rec["pp"] = row["avg_ts"]
        elif row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            rec["tg"] = row["avg_ts"]
    first = rows[0] if rows and "failed" not in rows[0] else {}
    for key in ("build_commit", "build_number", "cpu_info", "backends", "model_size", "model_type", "n_threads",
                "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v", "use_mmap", "repack"):
        if key in first:
            rec[key] = first[key]
print(json.dumps(rec))
EOF
}

run_torchless() { # round label weights file
    local tag=${3//[^A-Za-z0-9]/_}
    local reps=1 extra=() test n_p n_g probe out log parts=()
    [[ $WARMUP == 0 ]] || reps=2
    [[ $3 != *"int8 activations"* ]] || extra+=(--int8-activations)
    [[ $3 != *"--no-mmap"* ]] || extra+=(--no-mmap)
    [[ -z $TL_BATCH ]] || extra+=(-b "$TL_BATCH")
    # pp and tg in separate processes, as llama-bench runs them: generation starts from an empty
    # cache in both engines (after a 512-token prompt, attention over the cache costs torchless
    # ~15% of a 7B int4 token).
    for test in pp tg; do
        if [[ $test == pp ]]; then n_p=$N_PROMPT; n_g=0; probe=0; else n_p=0; n_g=$N_GEN; probe=$PROBE_MIB; fi
        (( n_p + n_g > 0 )) || continue
        out=$RUN_DIR/torchless-$2-$tag-$test-r$1.json
        log=$RUN_DIR/torchless-$2-$tag-$test-r$1.log
        "$TORCHLESS_BIN" bench "$4" -p "$n_p" -n "$n_g" -r "$reps" -t "$THREADS" --batch-threads "$THREADS" \
            "${extra[@]}" --probe-mib "$probe" --json > "$out" 2> "$log" \
            || { tail -n 20 "$log" >&2; die "torchless bench failed on $4"; }
        parts+=("$out")
    done
    python3 - "$1" "$2" "$3" "$4" "${parts[@]}" >> "$RESULTS" <<'EOF'
import json, sys
rnd, label, weights, model, *paths = sys.argv[1:]
rec = {"round": int(rnd), "shape": label, "engine": "torchless", "weights": weights, "model": model}
for path in paths:
    data = json.load(open(path))
    # With warmup, two repetitions ran in the same process: the last one is the measurement.
    if data.get("n_prompt", 0) > 0 and data.get("pp_runs"):
        rec["pp"] = data["pp_runs"][-1]
    if data.get("n_gen", 0) > 0 and data.get("tg_runs"):
        rec["tg"] = data["tg_runs"][-1]
    for key in ("bytes_per_token", "read_bandwidth_gb_per_s", "kernels", "threads", "residency", "load_s",
                "batch_size"):
        if data.get(key) is not None and key not in rec:
            rec[key] = data[key]
print(json.dumps(rec))
EOF
}

n_runs=${#RUNS[@]}
for ((round = 1; round <= REPS; round++)); do
    # ABBA: even rounds run the engines in the reverse order, so slow drift cancels out.
    order=()
    if (( round % 2 == 1 )); then
        for ((i = 0; i < n_runs; i++)); do order+=("$i"); done
    else
        for ((i = n_runs - 1; i >= 0; i--)); do order+=("$i"); done
    fi
    for i in "${order[@]}"; do
        IFS='|' read -r label engine weights file <<< "${RUNS[$i]}"
        log "round $round/$REPS: $label $engine $weights"
        if [[ $engine == torchless ]]; then
            run_torchless "$round" "$label" "$weights" "$file"
        else
            run_peer "$round" "$label" "$weights" "$file" "$engine"
        fi
    done
done

torchless_rev=$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$REPO_ROOT" && git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    torchless_rev+="+dirty"
fi

# Bytes a generated token reads from a GGUF file, counted as torchless counts its own: every
# tensor except the token embedding, plus one embedding row.
python3 - "${RUNS[@]}" > "$RUN_DIR/gguf-bytes.json" <<'EOF'
import json, sys
import gguf
out = {}
for run in sys.argv[1:]:
    path = run.split("|", 3)[3]
    if not path.endswith(".gguf"):
        continue
    reader = gguf.GGUFReader(path)
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1])
        else:
            total += int(t.n_bytes)
    out[path] = total
print(json.dumps(out))
EOF

cpu_model=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
python3 - "$RESULTS" "$RUN_DIR/gguf-bytes.json" "$sdist_version" "$LLAMA_BENCH_BIN" "$torchless_rev" \
    "$THREADS" "$N_PROMPT" "$N_GEN" "$REPS" "$WARMUP" "${cpu_model:-?} ($(nproc) CPUs)" \
    "$LOAD_BEFORE" "$(load_1min)" "$ik_sdist_version" "$IK_BENCH_BIN" <<'EOF' | tee "$RUN_DIR/table.md"
import json, statistics, sys
(results, gguf_bytes, version, llama_bin, tl_rev, threads, n_prompt, n_gen, reps, warmup, cpu,
 load_before, load_after, ik_version, ik_bin) = sys.argv[1:]
recs = [json.loads(line) for line in open(results) if line.strip()]
gbytes = json.load(open(gguf_bytes))
keys = []
for r in recs:
    k = (r["shape"], r["engine"], r["weights"])
    if k not in keys:
        keys.append(k)

def med(values):
    return statistics.median(values) if values else None

def fmt(values, digits):
    if not values:
        return "-"
    m = med(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

stats = {}
for k in keys:
    rows = [r for r in recs if (r["shape"], r["engine"], r["weights"]) == k]
    pp = [r["pp"] for r in rows if "pp" in r]
    tg = [r["tg"] for r in rows if "tg" in r]
    failed = {t: sum(1 for r in rows if f"{t}_failed" in r) for t in ("pp", "tg")}
    if k[1] == "torchless":
        bpt = rows[0].get("bytes_per_token")
    else:
        bpt = gbytes.get(rows[0]["model"])
    stats[k] = (pp, tg, bpt, rows[0], failed)

def family(engine):
    # The builds of one peer (llama.cpp with and without AMX; ik_llama.cpp with and without -rtr).
    return "ik_llama.cpp" if engine.startswith("ik_llama.cpp") else engine.split(" (")[0]

def onoff(v):
    return {-1: "auto", 0: "off", 1: "on", False: "off", True: "on"}.get(v, v)

def peer_line(name, source, fam):
    runs = {k[1]: s[3] for k, s in stats.items() if family(k[1]) == fam and "build_number" in s[3]}
    if not runs:
        return
    first = next(iter(runs.values()))
    repacks = {e: onoff(r.get("repack", "?")) for e, r in runs.items()}
    repack = (next(iter(repacks.values())) if len(set(repacks.values())) == 1
              else ", ".join(f"{v} ({e})" for e, v in repacks.items()))
    print(f"{name}: {source}, build {first.get('build_number', '?')} ({first.get('build_commit', '?')}), "
          f"{first.get('backends', 'CPU')}, flash_attn {onoff(first.get('flash_attn', '?'))}, "
          f"n_batch {first.get('n_batch', '?')}, n_ubatch {first.get('n_ubatch', '?')}, "
          f"KV {first.get('type_k', '?')}, repack {repack}")

peer_line("llama.cpp", f"llama-cpp-python {version} sdist (vendor/llama.cpp)", "llama.cpp")
peer_line("ik_llama.cpp", f"ik-llama-cpp-python {ik_version} sdist (vendor/ik_llama.cpp)"
          if ik_version != "given binary" else ik_bin, "ik_llama.cpp")
first_tl = next((s[3] for k, s in stats.items() if k[1] == "torchless"), {})
print(f"torchless: {tl_rev}, kernels {first_tl.get('kernels', '?')}, {first_tl.get('residency', '?')}, "
      f"batch size {first_tl.get('batch_size', '?')}")
bw = [r["read_bandwidth_gb_per_s"] for r in recs if r.get("read_bandwidth_gb_per_s")]
line = f"CPU: {cpu}; threads {threads}; load average {load_before} before, {load_after} after"
if bw:
    line += f"; read-bandwidth probe (torchless) {med(bw):.1f} GB/s"
print(line)
print(f"medians of {reps} rounds (min–max), engines alternated ABBA; "
      f"{'warmup run before each measurement' if warmup == '1' else 'no warmup'}")
print()
pp_h, tg_h = f"pp{n_prompt} tok/s", f"tg{n_gen} tok/s"
print(f"| shape | engine | weights | {pp_h} | {tg_h} | GB read/token | tg GB/s |")
print("|---|---|---|---|---|---|---|")
def cell(values, digits, failures):
    text = fmt(values, digits)
    if failures:
        text = (f"crashed in {failures} of {reps}" if text == "-" else f"{text}, crashed in {failures}")
    return text

for k, (pp, tg, bpt, _, failed) in stats.items():
    gbs = f"{bpt * med(tg) / 1e9:.2f}" if bpt and tg else "-"
    gbt = f"{bpt / 1e9:.3f}" if bpt else "-"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {cell(pp, 2, failed['pp'])} | {cell(tg, 3, failed['tg'])} | {gbt} | {gbs} |")
print()
print(f"| shape | ratio | {pp_h} | {tg_h} |")
print("|---|---|---|---|")
for k, (pp, tg, _, _, _) in stats.items():
    if k[1] != "torchless":
        continue
    best, builds = {}, {}
    for k2, (pp2, tg2, _, _, _) in stats.items():
        if k2[0] != k[0] or k2[1] == "torchless":
            continue
        rp = f"{med(pp) / med(pp2):.2f}×" if pp and pp2 else "-"
        rt = f"{med(tg) / med(tg2):.2f}×" if tg and tg2 else "-"
        print(f"| {k[0]} | torchless {k[2]} / {k2[1]} {k2[2]} | {rp} | {rt} |")
        fam = family(k2[1])
        builds.setdefault(fam, set()).add(k2[1])
        for t, v in (("pp", pp2), ("tg", tg2)):
            if v and ((fam, t) not in best or med(v) > med(best[(fam, t)])):
                best[(fam, t)] = v
    for fam, engines in builds.items():
        if len(engines) < 2:
            continue
        rp = f"{med(pp) / med(best[(fam, 'pp')]):.2f}×" if pp and (fam, "pp") in best else "-"
        rt = f"{med(tg) / med(best[(fam, 'tg')]):.2f}×" if tg and (fam, "tg") in best else "-"
        print(f"| {k[0]} | torchless {k[2]} / the faster {fam} build per test | {rp} | {rt} |")
EOF

if [[ $CLEAN == 1 ]]; then
    for f in "${USED_FILES[@]}"; do
        case "$f" in
            "$MODELS"/*) log "removing $f"; rm -f "$f" ;;
        esac
    done
fi
