//! The scalar path: plain Rust, no intrinsics. It is the only path without the `simd` feature and
//! the baseline every other path is tested against (together with the naive `reference` module);
//! its int4, integer-GEMM and ggml block kernels define the operation order the SIMD ones reproduce bit for
//! bit.
//!
//! Reductions keep 8 independent partial sums so LLVM can still vectorize them for the baseline
//! target (SSE2 on x86-64) without reassociating floats itself.

pub(crate) mod blocks;
mod elementwise;
mod gemm_blocks;
mod gemm_f32;
mod gemm_int;
pub(crate) mod kv_rows;
mod matvec;

/// The scalar kernels (every family).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;
