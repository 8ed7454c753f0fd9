//! The scalar path: plain Rust, no intrinsics. It is the only path without the `simd` feature and
//! the baseline every other path is tested against (together with the naive `reference` module).
//!
//! Reductions keep 8 independent partial sums so LLVM can still vectorize them for the baseline
//! target (SSE2 on x86-64) without reassociating floats itself.

use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};

/// `Σ a[i] b[i]` over the common length.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// `Σ q[i] x[i]` with the int8 values converted to f32.
pub(crate) fn dot_i8(q: &[i8], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    let (q, x) = (&q[..n], &x[..n]);
    let mut acc = [0.0f32; 8];
    let mut cq = q.chunks_exact(8);
    let mut cx = x.chunks_exact(8);
    for (a, b) in (&mut cq).zip(&mut cx) {
        for i in 0..8 {
            acc[i] += f32::from(a[i]) * b[i];
        }
    }
    let mut s = hsum8(&acc);
    for (a, b) in cq.remainder().iter().zip(cx.remainder()) {
        s += f32::from(*a) * b;
    }
    s
}

fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// `y = W x` for f32 weights (`y.len() == w.rows()`, `x.len() == w.cols()`).
pub(crate) fn matvec_f32(w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
    let cols = w.cols();
    for (yr, row) in y.iter_mut().zip(w.data().chunks_exact(cols.max(1))) {
        *yr = dot(row, x);
    }
    if cols == 0 {
        y.fill(0.0);
    }
}

/// One output of an int8 matvec, for any layout: the row is cut where groups change, each piece's
/// integer-weight dot product is divided by its group's inverse scale.
#[inline]
pub(crate) fn int8_row(
    w: &Int8Mat<'_>,
    r: usize,
    x: &[f32],
    dot: impl Fn(&[i8], &[f32]) -> f32,
) -> f32 {
    let cols = w.cols();
    let q = &w.q()[r * cols..(r + 1) * cols];
    let inv = w.inv_scales();
    let first = w.group_phase() + r * cols;
    let mut sum = 0.0f32;
    let mut c = 0;
    while c < cols {
        let g = (first + c) / GROUP_SIZE;
        let end = ((g + 1) * GROUP_SIZE - first).min(cols);
        sum += dot(&q[c..end], &x[c..end]) / inv[g];
        c = end;
    }
    sum
}

/// `y = W x` for int8 weights.
pub(crate) fn matvec_i8(w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = int8_row(w, r, x, dot_i8);
    }
}

/// Sum of all values (the read-bandwidth probe's work).
pub(crate) fn sum(x: &[f32]) -> f32 {
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
pub(crate) fn softmax(x: &mut [f32]) {
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
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `out += a * v`.
pub(crate) fn axpy(a: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += a * x;
    }
}
