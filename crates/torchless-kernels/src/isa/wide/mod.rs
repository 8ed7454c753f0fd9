//! The portable SIMD path on `wide::f32x8`: native 256-bit AVX when the crate is compiled with AVX
//! enabled, two 128-bit halves otherwise (SSE2 on baseline x86-64, NEON on aarch64).

// Rows of a block live in parallel arrays (`acc[i]`, `r[i]`, `y[i]`): indexing reads clearer.
#![allow(clippy::needless_range_loop)]

mod elementwise;
mod gemm_f32;
mod matvec;

#[cfg(test)]
pub(crate) use gemm_f32::WideMicro;
pub(crate) use gemm_f32::WideTile;
use wide::f32x8;

/// The `wide` kernels: element-wise ops, f32 and int8 decode rows, the f32 GEMM tile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wide;

#[inline(always)]
fn ld(s: &[f32]) -> f32x8 {
    let a: [f32; 8] = s[..8].try_into().expect("8 lanes");
    f32x8::new(a)
}

#[inline(always)]
fn ld_i8(s: &[i8]) -> f32x8 {
    let a: [i8; 8] = s[..8].try_into().expect("8 lanes");
    f32x8::new(a.map(f32::from))
}

#[inline(always)]
fn st(v: f32x8, out: &mut [f32]) {
    out[..8].copy_from_slice(&v.to_array());
}
