//! Decode rows of several inputs at once (one decode step of several sequences, a prefill of a
//! few tokens): each weight row read from memory once for all of them.

use super::matvec::{dot_i8, f32_rows_multi, i8_rows_multi};
use super::{cvt_i8, hsum, Avx2, MULTI_B, PF_GROUPS};
use crate::isa::traits::MatvecMany;
use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};
use core::arch::x86_64::*;

/// Asserts the shapes the multi-input matvecs rely on: `xs` holds `batch` rows of `cols`, `yt` a
/// whole number of output rows of `batch`, all inside the matrix's `rows` from `r0`.
pub(in crate::isa::x86) fn multi_shapes(
    rows: usize,
    cols: usize,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &[f32],
) {
    let out_rows = yt.len() / batch.max(1);
    assert!(
        batch > 0
            && xs.len() == batch * cols
            && yt.len() == out_rows * batch
            && r0 + out_rows <= rows,
        "multi-input matvec shapes"
    );
}

/// `yt[i * batch + b] = Σ_c w[r0 + i][c] xs[b][c]` for the rows `r0..r0 + yt.len() / batch` of
/// `w`: the matvec of every input `xs[b]` (row-major `batch x cols`), each row bit-identical to
/// `matvec_f32`'s, with each weight row read from memory once for all inputs. One row per pass:
/// two were no faster.
fn matvec_f32_multi(_t: Avx2, w: &F32Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
    let cols = w.cols();
    multi_shapes(w.rows(), cols, xs, batch, r0, yt);
    let (wp, xp) = (w.data().as_ptr(), xs.as_ptr());
    for (i, out) in yt.chunks_exact_mut(batch).enumerate() {
        let row = r0 + i;
        for_input_blocks!(batch, |b0, B| {
            // SAFETY: token ⇒ AVX2+FMA; row < w.rows() so its `cols` values are in bounds;
            // inputs b0..b0 + B < batch each hold `cols` floats (asserted lengths).
            let v = unsafe {
                f32_rows_multi::<1, B>(
                    wp.add(row * cols),
                    cols,
                    std::array::from_fn(|j| xp.add((b0 + j) * cols)),
                )
            };
            out[b0..b0 + B].copy_from_slice(&v[0]);
        });
    }
}

/// [`matvec_f32_multi`] for int8 weights: each row bit-identical to `matvec_i8`'s.
fn matvec_i8_multi(t: Avx2, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
    let cols = w.cols();
    multi_shapes(w.rows(), cols, xs, batch, r0, yt);
    if !w.is_row_aligned() {
        for (i, out) in yt.chunks_exact_mut(batch).enumerate() {
            for (b, y) in out.iter_mut().enumerate() {
                let x = &xs[b * cols..(b + 1) * cols];
                *y = w.row_dot_by_groups(r0 + i, x, |q, x| dot_i8(t, q, x));
            }
        }
        return;
    }
    let groups = cols / GROUP_SIZE;
    assert!(w.q().len() == w.rows() * cols && w.inv_scales().len() == w.rows() * groups);
    let (qp, ip, xp) = (w.q().as_ptr(), w.inv_scales().as_ptr(), xs.as_ptr());
    // One row at a time: two rows far apart (the matvec's two streams) need twice the
    // accumulators and spill. A batch's int8 decode is compute-bound here: f32 arithmetic at 4
    // FMAs per weight byte for 4 inputs.
    for (l, out) in yt.chunks_exact_mut(batch).enumerate() {
        let g = r0 + l;
        for_input_blocks!(batch, |b0, B| {
            // SAFETY: token ⇒ AVX2+FMA; row g < w.rows(), so its weights and scales are in
            // bounds (asserted lengths); inputs b0..b0 + B < batch hold `cols = groups * 64`
            // floats each.
            let v = unsafe {
                i8_rows_multi::<1, B>(
                    [qp.add(g * cols)],
                    [ip.add(g * groups)],
                    groups,
                    std::array::from_fn(|j| xp.add((b0 + j) * cols)),
                )
            };
            out[b0..b0 + B].copy_from_slice(&v[0]);
        });
    }
}

/// Dot products of `R` int8 rows with `B` input rows, for a small batch: each 8-value piece of a
/// row is converted and scaled once and used for all `B` inputs, and each loaded piece of an input
/// serves all `R` rows. Reusing the inputs matters as much as reusing the weights: with one row at
/// a time the inputs (`B x cols` floats, in L2) are re-read for every row and L2 bandwidth caps the
/// kernel at a third of the FMA peak. `R x B` accumulators plus `B` inputs fit the 16 registers.
///
/// The dequantized value is `q * (1 / inv_scale)` (one division per row and group), within an ulp
/// of the exact `q / inv_scale`.
///
/// # Safety
/// AVX2+FMA available; for `r < R`: `q + r * cols` valid for `groups * 64` bytes and
/// `inv + r * groups` for `groups` floats; every `xs + b * cols` (b < B) valid for `groups * 64`
/// floats, where `cols == groups * 64`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_block<const R: usize, const B: usize>(
    q: *const i8,
    inv: *const f32,
    groups: usize,
    xs: *const f32,
) -> [[f32; B]; R] {
    let cols = groups * GROUP_SIZE;
    // SAFETY: caller contract; offsets stay below `cols` in each row of q and xs, `groups` in inv;
    // prefetch addresses are computed with wrapping arithmetic and prefetching never faults.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); B]; R];
        for g in 0..groups {
            // As in the matvec: the hardware prefetcher alone leaves the weight stream short of
            // the read bandwidth, which batches of a few tokens still need.
            for r in 0..R {
                let ahead = q.wrapping_add(r * cols + (g + PF_GROUPS) * GROUP_SIZE);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            let mut scale = [_mm256_setzero_ps(); R];
            for (r, s) in scale.iter_mut().enumerate() {
                *s = _mm256_set1_ps(1.0 / *inv.add(r * groups + g));
            }
            for u in 0..GROUP_SIZE / 8 {
                let col = g * GROUP_SIZE + u * 8;
                let mut x = [_mm256_setzero_ps(); B];
                for (b, v) in x.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xs.add(b * cols + col));
                }
                for (r, row_acc) in acc.iter_mut().enumerate() {
                    let w = _mm256_mul_ps(cvt_i8(q.add(r * cols + col)), scale[r]);
                    for (a, v) in row_acc.iter_mut().zip(&x) {
                        *a = _mm256_fmadd_ps(w, *v, *a);
                    }
                }
            }
        }
        let mut out = [[0.0f32; B]; R];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (ob, ab) in o.iter_mut().zip(a) {
                *ob = hsum(*ab);
            }
        }
        out
    }
}

/// Rows per block of the small-batch kernel.
const SMALL_R: usize = 2;
/// Inputs per block of the small-batch kernel: `2 x 4` accumulators, 4 inputs, 2 scales and the
/// weight piece fit the 16 registers (larger blocks spill; 3x3 fits but runs slower).
const SMALL_B: usize = 4;

/// Writes rows `0..R` x inputs `b0..b0 + N` of a small-batch block into `out` (`R * batch` slots).
///
/// # Safety
/// As [`i8_block`], with input rows `b0..b0 + N` below `batch` in `xs`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_block_into<const R: usize, const N: usize>(
    q: *const i8,
    inv: *const f32,
    groups: usize,
    xs: *const f32,
    batch: usize,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: caller contract.
    let v = unsafe { i8_block::<R, N>(q, inv, groups, xs.add(b0 * groups * GROUP_SIZE)) };
    for (r, row) in v.iter().enumerate() {
        out[r * batch + b0..r * batch + b0 + N].copy_from_slice(row);
    }
}

/// One `R`-row block against every input, `SMALL_B` inputs at a time, then the rest.
///
/// # Safety
/// As [`i8_block`] for rows `r0..r0 + R` of a row-aligned matrix with `groups` groups per row, and
/// `xs` holding `batch` rows of `groups * 64` floats; `out` has `R * batch` slots.
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_rows_small<const R: usize>(
    q: *const i8,
    inv: *const f32,
    groups: usize,
    xs: *const f32,
    batch: usize,
    out: &mut [f32],
) {
    const _: () = assert!(
        SMALL_B == 4,
        "the tail match below covers 1..=3 left-over inputs"
    );
    // SAFETY: caller contract; every block's input rows stay below `batch`.
    unsafe {
        let mut b0 = 0;
        while b0 + SMALL_B <= batch {
            i8_block_into::<R, SMALL_B>(q, inv, groups, xs, batch, b0, out);
            b0 += SMALL_B;
        }
        match batch - b0 {
            3 => i8_block_into::<R, 3>(q, inv, groups, xs, batch, b0, out),
            2 => i8_block_into::<R, 2>(q, inv, groups, xs, batch, b0, out),
            1 => i8_block_into::<R, 1>(q, inv, groups, xs, batch, b0, out),
            _ => {}
        }
    }
}

/// `Y = X Wᵀ` for a small batch of int8 rows (row-aligned groups), written transposed:
/// `yt[r * batch + b]` for the rows `r0..r0 + yt.len() / batch` of `w`.
fn matmul_i8_small(_t: Avx2, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
    let cols = w.cols();
    let groups = cols / GROUP_SIZE;
    let rows = yt.len() / batch.max(1);
    assert!(
        w.is_row_aligned() && cols.is_multiple_of(GROUP_SIZE),
        "matmul_i8_small layout"
    );
    assert!(xs.len() == batch * cols && yt.len() == rows * batch && r0 + rows <= w.rows());
    assert!(w.q().len() == w.rows() * cols && w.inv_scales().len() == w.rows() * groups);
    let (qp, ip, xp) = (w.q().as_ptr(), w.inv_scales().as_ptr(), xs.as_ptr());
    let mut blocks = yt.chunks_exact_mut(SMALL_R * batch);
    for (i, out) in blocks.by_ref().enumerate() {
        let r = r0 + i * SMALL_R;
        // SAFETY: token ⇒ AVX2+FMA; rows r..r+SMALL_R < w.rows() of q and their scales are in
        // bounds (asserted lengths); xs holds `batch` rows of `cols` floats.
        unsafe {
            i8_rows_small::<SMALL_R>(qp.add(r * cols), ip.add(r * groups), groups, xp, batch, out)
        };
    }
    let tail = blocks.into_remainder();
    let r_tail = r0 + rows - tail.len() / batch.max(1);
    for (i, out) in tail.chunks_exact_mut(batch.max(1)).enumerate() {
        let r = r_tail + i;
        // SAFETY: as above, for the single row r < w.rows().
        unsafe { i8_rows_small::<1>(qp.add(r * cols), ip.add(r * groups), groups, xp, batch, out) };
    }
}

impl MatvecMany for Avx2 {
    fn matvec_f32(self, w: &F32Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        matvec_f32_multi(self, w, xs, batch, r0, yt);
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        matvec_i8_multi(self, w, xs, batch, r0, yt);
    }

    fn matmul_i8_small(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        matmul_i8_small(self, w, xs, batch, r0, yt);
    }
}
