//! The int8 rows of several inputs at once (the output head of a several-sequence decode step)
//! on 512-bit vectors: two adjacent rows side by side in each vector, every input broadcast to
//! both halves. Each (row, input) goes through exactly the f32 operations of the AVX2 kernel
//! (`avx2::matvec::i8_rows_multi`), lane for lane, so the bits are the same; the f32 products and
//! conversions take half the instructions. The other several-input products are the AVX2 ones.

use super::Avx512;
use crate::isa::traits::MatvecMany;
use crate::isa::x86::avx2::matvec_many::multi_shapes;
use crate::isa::x86::avx2::{hsum, PF_GROUPS};
use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};
use core::arch::x86_64::*;

/// Rows `q` and `q + cols` (their scales' inverses at `inv` and `inv + groups`) against `B`
/// inputs: `[row][input]`. Per row and input the arithmetic of the AVX2 kernel: per group, two
/// 8-lane accumulators taking alternate 8-value pieces, their sum divided by the group's
/// `inv_scale` and added into the lanes' total, then the same horizontal sum.
///
/// # Safety
/// AVX-512 F and AVX2+FMA available; `q` valid for `cols + groups * 64` bytes, `inv` for
/// `2 * groups` floats (when `cols == groups * 64`, two whole rows); every `xs[b]` valid for
/// `groups * 64` floats.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn i8_row_pair_multi<const B: usize>(
    q: *const i8,
    inv: *const f32,
    cols: usize,
    groups: usize,
    xs: [*const f32; B],
) -> [[f32; B]; 2] {
    // SAFETY: caller contract: every load stays inside the two rows, their scales and the
    // inputs; the prefetch is a hint and never faults.
    unsafe {
        let mut tot = [_mm512_setzero_ps(); B];
        for g in 0..groups {
            for r in 0..2 {
                let ahead = q.wrapping_add(r * cols + (g + PF_GROUPS) * GROUP_SIZE);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            let mut a = [[_mm512_setzero_ps(); 2]; B];
            for u in 0..GROUP_SIZE / 8 {
                let col = g * GROUP_SIZE + 8 * u;
                let both = _mm_unpacklo_epi64(
                    _mm_loadl_epi64(q.add(col).cast()),
                    _mm_loadl_epi64(q.add(cols + col).cast()),
                );
                let qv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(both));
                for (ab, x) in a.iter_mut().zip(xs) {
                    let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(
                        _mm256_loadu_ps(x.add(col)),
                    )));
                    ab[u & 1] = _mm512_fmadd_ps(qv, xv, ab[u & 1]);
                }
            }
            let inv_g = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(*inv.add(g)))),
                _mm256_castps_pd(_mm256_set1_ps(*inv.add(groups + g))),
            ));
            for (t, ab) in tot.iter_mut().zip(&a) {
                let s = _mm512_add_ps(ab[0], ab[1]);
                *t = _mm512_add_ps(*t, _mm512_div_ps(s, inv_g));
            }
        }
        let mut out = [[0.0f32; B]; 2];
        for (b, t) in tot.iter().enumerate() {
            out[0][b] = hsum(_mm512_castps512_ps256(*t));
            out[1][b] = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(*t),
            )));
        }
        out
    }
}

/// `yt[i * batch + b]` = row `r0 + i` of `w` times input `b`, bit-identical to the AVX2 kernel's
/// (and so to `matvec_i8`'s): rows in adjacent pairs, inputs four at a time. Matrices whose rows
/// do not start on a group, and an odd last row, take the AVX2 kernel.
fn matvec_i8_multi(
    t: Avx512,
    w: &Int8Mat<'_>,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &mut [f32],
) {
    let cols = w.cols();
    multi_shapes(w.rows(), cols, xs, batch, r0, yt);
    if !w.is_row_aligned() {
        t.avx2().matvec_i8(w, xs, batch, r0, yt);
        return;
    }
    let groups = cols / GROUP_SIZE;
    assert!(w.q().len() == w.rows() * cols && w.inv_scales().len() == w.rows() * groups);
    let (qp, ip, xp) = (w.q().as_ptr(), w.inv_scales().as_ptr(), xs.as_ptr());
    let last = r0 + yt.len() / batch - 1;
    let mut pairs = yt.chunks_exact_mut(2 * batch);
    for (l, out) in pairs.by_ref().enumerate() {
        let row = r0 + 2 * l;
        let mut b0 = 0;
        while b0 < batch {
            macro_rules! pass {
                ($B:expr) => {{
                    // SAFETY: token ⇒ AVX-512 F, AVX2, FMA; rows `row` and `row + 1` < w.rows()
                    // (the pair lies inside `yt`, inside the matrix: asserted shapes), so their
                    // weights and scales are in bounds; inputs b0..b0 + B < batch hold
                    // `cols = groups * 64` floats each.
                    let v = unsafe {
                        i8_row_pair_multi::<{ $B }>(
                            qp.add(row * cols),
                            ip.add(row * groups),
                            cols,
                            groups,
                            std::array::from_fn(|j| xp.add((b0 + j) * cols)),
                        )
                    };
                    for (r, vr) in v.iter().enumerate() {
                        out[r * batch + b0..][..$B].copy_from_slice(vr);
                    }
                    b0 += $B;
                }};
            }
            match batch - b0 {
                1 => pass!(1),
                2 => pass!(2),
                3 => pass!(3),
                _ => pass!(4),
            }
        }
    }
    let rest = pairs.into_remainder();
    if !rest.is_empty() {
        t.avx2().matvec_i8(w, xs, batch, last, rest);
    }
}

impl MatvecMany for Avx512 {
    fn matvec_f32(self, w: &F32Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        self.avx2().matvec_f32(w, xs, batch, r0, yt);
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        matvec_i8_multi(self, w, xs, batch, r0, yt);
    }

    fn matmul_i8_small(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        self.avx2().matmul_i8_small(w, xs, batch, r0, yt);
    }
}
