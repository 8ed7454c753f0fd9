#!/usr/bin/env bash
# Runs the unit and integration tests of the crates that contain `unsafe` code (torchless-format:
# the memory map and MADV_DONTNEED; torchless-kernels: the AVX2 intrinsics and BLAS calls) and of
# torchless-model, which drives both through every forward pass, under AddressSanitizer: any
# out-of-bounds read or write, use after free or leak in Rust code fails the run.
#
#   scripts/asan.sh                  # the three crates
#   scripts/asan.sh -p torchless-kernels -- matvec     # extra arguments go to `cargo test`
#
# Why not Miri: Miri needs a nightly toolchain with the `miri` component, and even there it could
# not run these tests: they map files (mmap), call madvise, run AVX2 intrinsics selected at run
# time and spend minutes of real compute that Miri would take days to interpret.
#
# -Zsanitizer is a nightly flag; on a stable toolchain RUSTC_BOOTSTRAP=1 enables it for this build
# only. The standard library itself is not rebuilt with the sanitizer (that needs rust-src and
# -Zbuild-std), so accesses inside std are not checked; everything compiled from this workspace
# and its dependencies is. The build goes to its own target directory ($CARGO_TARGET_DIR/asan or
# target/asan) so normal builds are not invalidated.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

host="$(rustc -vV | sed -n 's/^host: //p')"
case "$host" in
x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | x86_64-apple-darwin | aarch64-apple-darwin) ;;
*)
    echo "AddressSanitizer is not supported on $host" >&2
    exit 2
    ;;
esac

packages=(-p torchless-format -p torchless-kernels -p torchless-model)
if [ $# -gt 0 ] && [ "$1" = "-p" ]; then
    packages=()
    while [ $# -gt 1 ] && [ "$1" = "-p" ]; do
        packages+=(-p "$2")
        shift 2
    done
fi

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes ${RUSTFLAGS:-}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:abort_on_error=1:symbolize=1}"
target_dir="${CARGO_TARGET_DIR:-$root/target}/asan"

# --target keeps RUSTFLAGS away from build scripts and proc macros (which must not be
# instrumented); --lib --tests skips doc tests, which rustdoc would build without the sanitizer.
cargo test --target "$host" --target-dir "$target_dir" "${packages[@]}" --lib --tests "$@"
echo "AddressSanitizer: all tests of ${packages[*]} passed" >&2
