//! Element-wise ops and reductions on `f32x8`.

use super::{ld, st, Wide};
use crate::isa::traits::{Elementwise, EXP_LO};
use wide::{f32x8, i32x8};

/// `e^x` lane-wise: Cephes-style range reduction `x = n ln2 + r` and a degree-6 polynomial
/// (max rel. error ≈ 2 ulp). Inputs below −87.33 give 0 (including −∞), inputs above 88 saturate at
/// `e^88`; NaN stays NaN.
#[inline(always)]
fn exp(x: f32x8) -> f32x8 {
    let xc = x
        .fast_max(f32x8::splat(EXP_LO))
        .fast_min(f32x8::splat(88.0));
    let n = (xc * f32x8::splat(std::f32::consts::LOG2_E)).round();
    let r = n.mul_neg_add(f32x8::splat(0.693_359_4), xc);
    let r = n.mul_neg_add(f32x8::splat(-2.121_944_4e-4), r);
    let r2 = r * r;
    let mut p = f32x8::splat(1.987_569_1e-4);
    p = p.mul_add(r, f32x8::splat(1.398_199_9e-3));
    p = p.mul_add(r, f32x8::splat(8.333_452e-3));
    p = p.mul_add(r, f32x8::splat(4.166_579_6e-2));
    p = p.mul_add(r, f32x8::splat(1.666_666_5e-1));
    p = p.mul_add(r, f32x8::splat(0.5));
    p = p.mul_add(r2, r) + f32x8::ONE;
    let bits: i32x8 = (n.round_int() + i32x8::splat(127)) << 23_i32;
    let y = p * f32x8::from_bits(bits.cast_unsigned());
    let y = x.simd_lt(f32x8::splat(EXP_LO)).select(f32x8::ZERO, y);
    x.is_nan().select(x, y)
}

impl Elementwise for Wide {
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [f32x8::ZERO; 4];
        let mut ca = a.chunks_exact(32);
        let mut cb = b.chunks_exact(32);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for u in 0..4 {
                acc[u] = ld(&x[8 * u..]).mul_add(ld(&y[8 * u..]), acc[u]);
            }
        }
        let mut ra = ca.remainder().chunks_exact(8);
        let mut rb = cb.remainder().chunks_exact(8);
        for (x, y) in (&mut ra).zip(&mut rb) {
            acc[0] = ld(x).mul_add(ld(y), acc[0]);
        }
        let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])).reduce_add();
        for (x, y) in ra.remainder().iter().zip(rb.remainder()) {
            s += x * y;
        }
        s
    }

    fn axpy(self, a: f32, v: &[f32], out: &mut [f32]) {
        let av = f32x8::splat(a);
        let mut co = out.chunks_exact_mut(8);
        let mut cv = v.chunks_exact(8);
        for (o, x) in (&mut co).zip(&mut cv) {
            st(ld(x).mul_add(av, ld(o)), o);
        }
        for (o, &x) in co.into_remainder().iter_mut().zip(cv.remainder()) {
            *o += a * x;
        }
    }

    fn softmax(self, x: &mut [f32]) {
        let mut m = f32x8::splat(f32::NEG_INFINITY);
        let mut c = x.chunks_exact(8);
        for v in &mut c {
            m = m.max(ld(v));
        }
        let max = c.remainder().iter().copied().fold(
            m.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max),
            f32::max,
        );
        let mv = f32x8::splat(max);
        let mut s = f32x8::ZERO;
        let mut c = x.chunks_exact_mut(8);
        for v in &mut c {
            let e = exp(ld(v) - mv);
            s += e;
            st(e, v);
        }
        let mut sum = s.reduce_add();
        let rem = c.into_remainder();
        for v in rem.iter_mut() {
            let mut a = [0.0f32; 8];
            a[0] = *v - max;
            *v = exp(f32x8::new(a)).to_array()[0];
            sum += *v;
        }
        let inv = 1.0 / sum;
        let iv = f32x8::splat(inv);
        let mut c = x.chunks_exact_mut(8);
        for v in &mut c {
            st(ld(v) * iv, v);
        }
        for v in c.into_remainder() {
            *v *= inv;
        }
    }

    fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let n8 = n / 8 * 8;
        for i in (0..n8).step_by(8) {
            let g = ld(&gate[i..]);
            let v = g / (f32x8::ONE + exp(-g)) * ld(&up[i..]);
            st(v, &mut out[i..]);
        }
        if n8 < n {
            let mut g = [0.0f32; 8];
            let mut u = [0.0f32; 8];
            g[..n - n8].copy_from_slice(&gate[n8..n]);
            u[..n - n8].copy_from_slice(&up[n8..n]);
            let gv = f32x8::new(g);
            let v = (gv / (f32x8::ONE + exp(-gv)) * f32x8::new(u)).to_array();
            out[n8..].copy_from_slice(&v[..n - n8]);
        }
    }

    fn sum(self, x: &[f32]) -> f32 {
        let mut acc = [f32x8::ZERO; 4];
        let mut c = x.chunks_exact(32);
        for v in &mut c {
            for u in 0..4 {
                acc[u] += ld(&v[8 * u..]);
            }
        }
        ((acc[0] + acc[1]) + (acc[2] + acc[3])).reduce_add() + c.remainder().iter().sum::<f32>()
    }

    fn fma_chains(self, n: usize) -> f32 {
        let a = f32x8::splat(std::hint::black_box(0.999_999));
        let b = f32x8::splat(std::hint::black_box(1e-7));
        let mut acc = [f32x8::ZERO; 12];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
        acc.iter().fold(f32x8::ZERO, |s, &v| s + v).reduce_add()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_accurate() {
        crate::isa::traits::check_vector_exp(|a| exp(f32x8::new(a)).to_array());
    }
}
