#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ one after the other, each for a given time, and prints for each
# the executions, executions per second, corpus size and crashes.
#
#   scripts/fuzz.sh                      # every target, 600 s each
#   scripts/fuzz.sh -t 60 model_file     # one target, 60 s
#   scripts/fuzz.sh -t 600 -n 1000000    # stop a target at 600 s or 1,000,000 executions
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler (libFuzzer is built from
# source). libFuzzer needs nightly compiler flags; on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1 for the fuzz build only. Targets are built in release mode with debug
# assertions, overflow checks and AddressSanitizer (cargo-fuzz's defaults).
#
# The committed seeds (fuzz/corpus/<target>) are only read; what the fuzzer finds goes to
# fuzz/target/corpus/<target>, logs to fuzz/target/logs/<target>.log, crash inputs to
# fuzz/artifacts/<target>/ (all git-ignored). Reproduce a crash with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<crash-file>
# (from the repository root). Exits non-zero if any target crashed.
set -euo pipefail

seconds=600
runs=-1
while getopts "t:n:h" opt; do
    case "$opt" in
    t) seconds="$OPTARG" ;;
    n) runs="$OPTARG" ;;
    *)
        sed -n '2,20p' "$0"
        exit 2
        ;;
    esac
done
shift $((OPTIND - 1))

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# The converter targets write their input to a file (the converter reads files): give them a
# private directory, removed at the end.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    TORCHLESS_FUZZ_TMP="$(mktemp -d -p /dev/shm)" # memory, not disk: 5x the executions
else
    TORCHLESS_FUZZ_TMP="$(mktemp -d)"
fi
export TORCHLESS_FUZZ_TMP
trap 'rm -rf "$TORCHLESS_FUZZ_TMP"' EXIT

echo "building fuzz targets..." >&2
cargo fuzz build >&2

mkdir -p fuzz/target/logs
summary=()
failed=0
for target in "${targets[@]}"; do
    corpus="fuzz/target/corpus/$target"
    log="fuzz/target/logs/$target.log"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    args=(-max_total_time="$seconds" -runs="$runs" -timeout=30 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/")
    if [ -f "fuzz/dicts/$target.dict" ]; then
        args+=(-dict="fuzz/dicts/$target.dict")
    fi
    echo "fuzzing $target for ${seconds}s..." >&2
    status=0
    cargo fuzz run "$target" "$corpus" "fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1 ||
        status=$?
    stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
    execs="$(stat number_of_executed_units)"
    speed="$(stat average_exec_per_sec)"
    rss="$(stat peak_rss_mb)"
    time="$(grep -m1 -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | awk '{print $5}' || true)"
    size="$(find "$corpus" -type f | wc -l)"
    crashes="$(grep -cE '^(artifact_prefix|Test unit written to)' "$log" || true)"
    if [ "$status" -ne 0 ]; then
        failed=1
        [ "$crashes" -eq 0 ] && crashes="exit $status"
        grep -E 'Test unit written to|SUMMARY|panicked at' "$log" | head -5 >&2 || true
    fi
    summary+=("$(printf '%-22s %12s %8s %8s %8s %9s  %s' "$target" "${execs:-?}" "${time:-?}" \
        "${speed:-?}" "$size" "${rss:-?}" "$crashes")")
done

printf '\n%-22s %12s %8s %8s %8s %9s  %s\n' target executions seconds exec/s corpus peak-MB crashes
printf '%s\n' "${summary[@]}"
exit "$failed"
