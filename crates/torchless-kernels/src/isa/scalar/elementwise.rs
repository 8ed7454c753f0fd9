//! Element-wise ops and reductions in plain Rust.

use super::Scalar;
use crate::isa::traits::Elementwise;

/// `Σ a[i] b[i]` over the common length.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = hsum8(&acc);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// The fixed pairwise sum of 8 partial sums.
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Sum of all values (the read-bandwidth probe's work).
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut c = x.chunks_exact(8);
    for v in &mut c {
        for i in 0..8 {
            acc[i] += v[i];
        }
    }
    hsum8(&acc) + c.remainder().iter().sum::<f32>()
}

/// In-place numerically stable softmax.
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`.
fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `out += a * v`.
fn axpy(a: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += a * x;
    }
}

/// `n` steps of 12 independent 8-lane multiply-add chains, in arrays.
fn fma_chains(n: usize) -> f32 {
    let mut acc = [[0.0f32; 8]; 12];
    let (a, b) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..n {
        for row in acc.iter_mut() {
            for v in row.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

impl Elementwise for Scalar {
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }

    fn axpy(self, a: f32, v: &[f32], out: &mut [f32]) {
        axpy(a, v, out);
    }

    fn softmax(self, x: &mut [f32]) {
        softmax(x);
    }

    fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        silu_mul(gate, up, out);
    }

    fn sum(self, x: &[f32]) -> f32 {
        sum(x)
    }

    fn fma_chains(self, n: usize) -> f32 {
        fma_chains(n)
    }
}
