//! Model-agnostic CPU kernels for torchless-rs, on plain slices.
//!
//! - Matrix products: [`matvec`] (`y = W x`, decode) and [`matmul`] (`Y = X Wᵀ`, prefill) for f32,
//!   int8 and int4 weights ([`MatRef`]); int8 weights use the torchless file layout (groups of 64
//!   with one stored *inverse* scale each) and are dequantized on the fly, never copied out as
//!   f32; int4 weights (groups of 32, f16 scales) are multiplied in integers; ggml blocks
//!   ([`BlockMat`]: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, as GGUF files
//!   store them) are used in place, multiplied in integers with quantized activations as
//!   llama.cpp does, or exactly ([`Kernels::with_exact_blocks`]).
//! - [`rmsnorm`], [`softmax`], [`silu_mul`], [`add`], RoPE ([`RopeTable`]) and the attention
//!   inner loops ([`Kernels::attention`], [`KvCacheView`], [`RowsRef`]).
//! - Run-time dispatch: [`SimdPath`] (scalar / `wide` / AVX2+FMA / AVX-512 VNNI) detected once; [`cpu_path`]
//!   names the choice. Every kernel has a scalar version and a naive [`reference`](mod@reference) that the tests
//!   hold the fast ones against.
//! - Threads: kernels use the current rayon pool; [`thread_pool`] builds one of a given size, and
//!   [`with_spinning_workers`] keeps its threads spinning between the jobs of a burst of short
//!   products (one decode step), instead of waking them through rayon for each.
//! - Features: `simd`, `parallel` (default), `openblas`, `blis`, `accelerate` (macOS) for f32
//!   GEMM/GEMV through BLAS.
//!
//! # Numerics
//!
//! Everything computes in f32 with f32 activations. The reference model dequantizes int8 weights
//! as `q / inv_scale` in f32; the matvec instead divides each 64-group's f32 sum `Σ q·x` once by
//! the group's inverse scale, and the GEMM dequantizes its weight panels to exactly `q / inv_scale`
//! (bit-identical, via a corrected reciprocal). Sums run in a different order than a naive loop.
//! The tests hold every path to `|y − y_ref| ≤ 1e-5 · Σ|wᵢxᵢ| + 1e-6` against an f64 reference
//! (element-wise kernels: relative 1e-5); RoPE matches the Hugging Face formula bit for bit.
//! Our kernels' results never depend on the thread count (BLAS libraries give no such promise).
//! Exceptions to "exact f32": int4 weights ([`Int4Mat`]) always multiply int8 activations
//! (per 32 values, `round(x · 127 / max|x|)`, in decode and prefill alike); quantized ggml
//! blocks multiply llama.cpp's Q8_0 / Q8_K activations unless [`Kernels::with_exact_blocks`]
//! is on; and, opt-in, [`Kernels::with_int8_activations`] quantizes the activations of large
//! int8 GEMMs to 7-bit integers; all are tested against their own f64 definitions.
//!
//! ```
//! use torchless_kernels::{matvec, MatRef};
//! let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let m = MatRef::f32(&w, 2, 3)?;
//! let mut y = [0.0f32; 2];
//! matvec(&m, &[1.0, 1.0, 1.0], &mut y)?;
//! assert_eq!(y, [6.0, 15.0]);
//! # Ok::<(), torchless_kernels::KernelError>(())
//! ```
#![warn(missing_docs)]

// The crate's modules, from the leaves up (a module imports only modules listed before it):
//
// - data and helpers: `error`, `half`, `blocks` (ggml block types, layouts, dequantization),
//   `mat` (weight views), `int4` and `block_input` (the int4 and block input layouts), `kv_type`
//   (KV cache element types and their encoding), `team`
//   and `parallel` (threads), `rope`, `reference`;
// - `isa::traits`: what drivers ask of an instruction set (families of kernels, tile sizes,
//   operands); `isa::{scalar, wide, x86}`: one folder per instruction set implementing them;
// - drivers, generic over those traits and naming no instruction set: `gemv`, `gemm::{float,
//   int, int8, int4}`, `attention::{decode, prefill}`; `blas`;
// - `dispatch`: the paths, the table of what each runs, and the one `match` on a path (`on_isa!`);
// - `kernels` (the public `Kernels`) and `probe`, which choose a driver and dispatch to it.
mod attention;
#[cfg(any(
    feature = "openblas",
    feature = "blis",
    all(feature = "accelerate", target_os = "macos")
))]
mod blas;
mod block_input;
mod blocks;
mod codes;
mod dispatch;
mod error;
mod gemm;
mod gemv;
mod half;
mod int4;
mod isa;
mod kernels;
mod kv_type;
mod mat;
mod parallel;
#[cfg(test)]
mod path_tests;
mod probe;
pub mod reference;
mod rope;
#[cfg(feature = "parallel")]
mod team;

pub use attention::{KvCacheView, KvData, RowsRef, SlotRanges};
pub use blocks::{BlockMat, BlockType};
pub use dispatch::{blas_backend, cpu_path, SimdPath, PATH_ENV};
pub use error::KernelError;
pub use kernels::Kernels;
pub use kv_type::{decode_kv_row, encode_kv_row, KvType};
pub use mat::{F32Mat, Int4Mat, Int8Mat, MatRef, GROUP_SIZE, INT4_GROUP_SIZE};
#[cfg(feature = "parallel")]
pub use parallel::thread_pool;
pub use parallel::{current_num_threads, for_each_chunk_mut};
pub use probe::{
    measure_fma_peak, measure_read_bandwidth, measure_read_bandwidth_best, BandwidthProbe,
    LoopBandwidth, ReadLoop,
};
pub use rope::{rope_apply, rope_apply_adjacent, rope_cos_sin, rope_inv_freq, RopeTable};
#[cfg(feature = "parallel")]
pub use team::with_spinning_workers;

/// `y = W x` on the automatically chosen path; see [`Kernels::matvec`].
pub fn matvec(w: &MatRef<'_>, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    Kernels::auto().matvec(w, x, y)
}

/// `Y = X Wᵀ` for `batch` tokens; see [`Kernels::matmul`].
pub fn matmul(w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], batch: usize) -> Result<(), KernelError> {
    Kernels::auto().matmul(w, xs, ys, batch)
}

/// RMSNorm (HF semantics); see [`Kernels::rmsnorm`].
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    Kernels::auto().rmsnorm(x, weight, eps, out)
}

/// In-place numerically stable softmax; see [`Kernels::softmax`].
pub fn softmax(x: &mut [f32]) {
    Kernels::auto().softmax(x)
}

/// SwiGLU `out = silu(gate) * up`; see [`Kernels::silu_mul`].
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    Kernels::auto().silu_mul(gate, up, out)
}

/// Residual add `y += x`.
pub fn add(y: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
    Kernels::auto().add(y, x)
}
