//! Element-wise ops and reductions in plain Rust.

use super::Scalar;
use crate::isa::traits::Elementwise;

/// `Σ a[i] b[i]` over the common length, `a`'s values converted to f32 (f32 or int8 weights).
pub(super) fn dot<T: Copy + Into<f32>>(a: &[T], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i].into() * y[i];
        }
    }
    let mut s = hsum8(&acc);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += (*x).into() * y;
    }
    s
}

/// The fixed pairwise sum of 8 partial sums.
fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

impl Elementwise for Scalar {
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }

    fn axpy(self, a: f32, v: &[f32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x;
        }
    }

    fn softmax(self, x: &mut [f32]) {
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

    fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    fn sum(self, x: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let mut c = x.chunks_exact(8);
        for v in &mut c {
            for i in 0..8 {
                acc[i] += v[i];
            }
        }
        hsum8(&acc) + c.remainder().iter().sum::<f32>()
    }

    /// 12 chains of 8 lanes in arrays.
    fn fma_chains(self, n: usize) -> f32 {
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
}
