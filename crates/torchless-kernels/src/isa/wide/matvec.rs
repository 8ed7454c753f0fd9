//! f32 and int8 decode rows on `f32x8`.

use super::{ld, ld_i8, Wide};
use crate::isa::traits::Matvec;
use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};
use wide::f32x8;

/// `Σ q[i] x[i]` with the int8 values converted to f32.
fn dot_i8(q: &[i8], x: &[f32]) -> f32 {
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

impl Matvec for Wide {
    /// Four rows at a time so each load of `x` is shared. Every row gets the same sequence of
    /// operations whichever block it falls in.
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
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

    /// Four rows at a time for row-aligned groups (same per-row arithmetic in every block), the
    /// general group-splitting loop otherwise.
    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
        if !w.is_row_aligned() || w.cols() == 0 {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = w.row_dot_by_groups(r, x, dot_i8);
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
}
