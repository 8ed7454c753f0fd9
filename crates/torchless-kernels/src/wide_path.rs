//! The portable SIMD path on `wide::f32x8`: native 256-bit AVX when the crate is compiled with AVX
//! enabled, two 128-bit halves otherwise (SSE2 on baseline x86-64, NEON on aarch64).

// Rows of a block live in parallel arrays (`acc[i]`, `r[i]`, `y[i]`): indexing reads clearer.
#![allow(clippy::needless_range_loop)]

use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};
use wide::{f32x8, i32x8};

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

/// `Σ a[i] b[i]` over the common length.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// `Σ q[i] x[i]` with the int8 values converted to f32.
pub(crate) fn dot_i8(q: &[i8], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    let (q, x) = (&q[..n], &x[..n]);
    let mut acc = [f32x8::ZERO; 2];
    let mut cq = q.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for (a, b) in (&mut cq).zip(&mut cx) {
        acc[0] = ld_i8(a).mul_add(ld(b), acc[0]);
        acc[1] = ld_i8(&a[8..]).mul_add(ld(&b[8..]), acc[1]);
    }
    let mut s = (acc[0] + acc[1]).reduce_add();
    for (a, b) in cq.remainder().iter().zip(cx.remainder()) {
        s += f32::from(*a) * b;
    }
    s
}

/// `y = W x` for f32 weights, four rows at a time so each load of `x` is shared. Every row gets the
/// same sequence of operations whichever block it falls in, so results do not depend on how rows
/// are split (threads, sub-views).
pub(crate) fn matvec_f32(w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
    let cols = w.cols();
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    let mut rows = w.data().chunks_exact(4 * cols);
    let mut ys = y.chunks_exact_mut(4);
    for (block, yb) in (&mut rows).zip(&mut ys) {
        f32_rows::<4>(block, cols, x, yb);
    }
    for (row, yr) in rows
        .remainder()
        .chunks_exact(cols)
        .zip(ys.into_remainder().chunks_exact_mut(1))
    {
        f32_rows::<1>(row, cols, x, yr);
    }
}

#[inline(always)]
fn f32_rows<const R: usize>(block: &[f32], cols: usize, x: &[f32], y: &mut [f32]) {
    let c8 = cols / 8 * 8;
    let r: [&[f32]; R] = std::array::from_fn(|i| &block[i * cols..(i + 1) * cols]);
    let mut acc = [f32x8::ZERO; R];
    for c in (0..c8).step_by(8) {
        let xv = ld(&x[c..]);
        for i in 0..R {
            acc[i] = ld(&r[i][c..]).mul_add(xv, acc[i]);
        }
    }
    for i in 0..R {
        let tail: f32 = r[i][c8..].iter().zip(&x[c8..]).map(|(a, b)| a * b).sum();
        y[i] = acc[i].reduce_add() + tail;
    }
}

/// `y = W x` for int8 weights: four rows at a time for row-aligned groups (same per-row arithmetic
/// in every block), the general group-splitting loop otherwise.
pub(crate) fn matvec_i8(w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
    if !w.is_row_aligned() || w.cols() == 0 {
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = crate::scalar::int8_row(w, r, x, dot_i8);
        }
        return;
    }
    let cols = w.cols();
    let groups = cols / GROUP_SIZE;
    let full = w.rows() / 4 * 4;
    for r0 in (0..full).step_by(4) {
        i8_rows::<4>(w, r0, groups, x, &mut y[r0..r0 + 4]);
    }
    for r in full..w.rows() {
        i8_rows::<1>(w, r, groups, x, &mut y[r..r + 1]);
    }
}

#[inline(always)]
fn i8_rows<const R: usize>(w: &Int8Mat<'_>, r0: usize, groups: usize, x: &[f32], y: &mut [f32]) {
    let cols = groups * GROUP_SIZE;
    let (q, inv) = (w.q(), w.inv_scales());
    let mut tot = [f32x8::ZERO; R];
    for g in 0..groups {
        let xg = &x[g * GROUP_SIZE..(g + 1) * GROUP_SIZE];
        let mut acc = [f32x8::ZERO; R];
        for c in (0..GROUP_SIZE).step_by(8) {
            let xv = ld(&xg[c..]);
            for i in 0..R {
                let off = (r0 + i) * cols + g * GROUP_SIZE + c;
                acc[i] = ld_i8(&q[off..]).mul_add(xv, acc[i]);
            }
        }
        for i in 0..R {
            tot[i] += acc[i] / f32x8::splat(inv[(r0 + i) * groups + g]);
        }
    }
    for i in 0..R {
        y[i] = tot[i].reduce_add();
    }
}

/// Sum of all values (read-bandwidth probe).
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [f32x8::ZERO; 4];
    let mut c = x.chunks_exact(32);
    for v in &mut c {
        for u in 0..4 {
            acc[u] += ld(&v[8 * u..]);
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])).reduce_add() + crate::scalar::sum(c.remainder())
}

/// Below this `e^x` would be subnormal; the vector exps return 0 there.
pub(crate) const EXP_LO: f32 = -87.336_54;

/// `n` steps of 12 independent `f32x8` multiply-add chains (the FMA-peak probe).
pub(crate) fn fma_chains(n: usize) -> f32 {
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

/// `e^x` lane-wise: Cephes-style range reduction `x = n ln2 + r` and a degree-6 polynomial
/// (max rel. error ≈ 2 ulp). Inputs below −87.33 give 0 (including −∞), inputs above 88 saturate at
/// `e^88`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32x8) -> f32x8 {
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

/// In-place numerically stable softmax.
pub(crate) fn softmax(x: &mut [f32]) {
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

/// `out = silu(gate) * up`.
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
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

/// `out += a * v`.
pub(crate) fn axpy(a: f32, v: &[f32], out: &mut [f32]) {
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

/// The GEMM micro-kernel (see `gemm.rs`): `c[i][j] (+)= Σ_k a[k][i] b[k][j]` for an `MR x NR` tile,
/// `NR = 8 * NV`.
pub(crate) fn gemm_kernel<const MR: usize, const NV: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let nr = 8 * NV;
    let mut acc = [[f32x8::ZERO; NV]; MR];
    for (ak, bk) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * nr].chunks_exact(nr))
    {
        let bv: [f32x8; NV] = std::array::from_fn(|v| ld(&bk[8 * v..]));
        for i in 0..MR {
            let av = f32x8::splat(ak[i]);
            for v in 0..NV {
                acc[i][v] = av.mul_add(bv[v], acc[i][v]);
            }
        }
    }
    for i in 0..MR {
        let row = &mut c[i * ldc..i * ldc + nr];
        for v in 0..NV {
            let o = &mut row[8 * v..8 * v + 8];
            let val = if accumulate {
                acc[i][v] + ld(o)
            } else {
                acc[i][v]
            };
            st(val, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_accurate() {
        let mut xs: Vec<f32> = (-8800..=8800).map(|i| i as f32 / 100.0).collect();
        xs.extend([
            -87.3,
            -87.33,
            -87.4,
            -100.0,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-8,
        ]);
        for &x in &xs {
            let y = exp(f32x8::splat(x)).to_array()[0];
            let want = f64::from(x).exp();
            if x < EXP_LO {
                assert_eq!(y, 0.0, "exp({x})");
            } else {
                let rel = (f64::from(y) - want).abs() / want;
                assert!(rel < 3e-7, "exp({x}) = {y}, want {want}, rel {rel:e}");
            }
        }
        assert!(exp(f32x8::splat(f32::NAN)).to_array()[0].is_nan());
    }
}
