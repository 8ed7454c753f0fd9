//! Decode rows of f32 and int8 weights against one f32 input on 512-bit vectors.
//!
//! The AVX2 kernels (`avx2::matvec`) keep two 8-lane accumulators per row that take alternate
//! 8-value pieces; here one 16-lane vector holds both (its low half the first, its high half the
//! second), so every lane sees the same FMAs in the same order and the results are bit-identical,
//! with half the loads, conversions and FMAs. On Zen 5's full-width units that doubles what one
//! core can stream from cache; the same prefetches as the AVX2 kernels.

use super::Avx512;
use crate::isa::traits::Matvec;
use crate::isa::x86::avx2::matvec::{matvec_f32_rows, matvec_i8_rows, RowKernels};
use crate::isa::x86::avx2::{hsum, Avx2, PF_GROUPS};
use crate::mat::{F32Mat, Int8Mat, GROUP_SIZE};
use core::arch::x86_64::*;

/// The sum of a 16-lane accumulator's halves, as the AVX2 kernels add their two accumulators.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn halves(v: __m512) -> __m256 {
    _mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
    )
}

/// `R` consecutive f32 rows of `cols` values at `w` times `x` (see `avx2::matvec::f32_rows`).
///
/// # Safety
/// AVX-512 F, AVX2 and FMA available; `w` valid for `R * cols` reads, `x` for `cols`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn f32_rows<const R: usize>(w: *const f32, cols: usize, x: *const f32) -> [f32; R] {
    // SAFETY: caller contract; loads use offsets `r * cols + c` with `c + 16 <= cols` (then
    // `c + 8`); the prefetch address is only computed (wrapping) and never faults.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut c = 0;
        while c + 16 <= cols {
            let xv = _mm512_loadu_ps(x.add(c));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = w.add(r * cols + c);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(R * cols).cast());
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(p), xv, *a);
            }
            c += 16;
        }
        let mut lo: [__m256; R] = std::array::from_fn(|r| _mm512_castps512_ps256(acc[r]));
        let hi: [__m256; R] = std::array::from_fn(|r| {
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r])))
        });
        let tail8 = c + 8 <= cols;
        if tail8 {
            for (r, l) in lo.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(r * cols + c));
                *l = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(c)), *l);
            }
            c += 8;
        }
        std::array::from_fn(|r| {
            let mut s = hsum(_mm256_add_ps(lo[r], hi[r]));
            for cc in c..cols {
                s += *w.add(r * cols + cc) * *x.add(cc);
            }
            s
        })
    }
}

/// `N` row-aligned int8 rows (`q[i]`, inverse scales `inv[i]`, `groups` 64-groups each) times
/// `x`: per group, one 16-lane accumulator per row over four 16-value pieces, its halves added,
/// divided by the group's inverse scale and added into the row's 8-lane total (the arithmetic of
/// `avx2::matvec::i8_rows_multi`, lane for lane).
///
/// # Safety
/// AVX-512 F, AVX2 and FMA available; each `q[i]` valid for `groups * 64` reads, `inv[i]` for
/// `groups`, `x` for `groups * 64`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn i8_rows<const N: usize>(
    q: [*const i8; N],
    inv: [*const f32; N],
    groups: usize,
    x: *const f32,
) -> [f32; N] {
    // SAFETY: caller contract; every load is inside group `g` of its row and of `x`; the
    // prefetch is a hint and never faults.
    unsafe {
        let mut tot = [_mm256_setzero_ps(); N];
        for g in 0..groups {
            for qi in q {
                _mm_prefetch::<_MM_HINT_T0>(qi.wrapping_add((g + PF_GROUPS) * GROUP_SIZE).cast());
            }
            let mut a = [_mm512_setzero_ps(); N];
            for k in 0..4 {
                let col = g * GROUP_SIZE + 16 * k;
                let xv = _mm512_loadu_ps(x.add(col));
                for (ai, qi) in a.iter_mut().zip(q) {
                    let codes = _mm512_cvtepi8_epi32(_mm_loadu_si128(qi.add(col).cast()));
                    *ai = _mm512_fmadd_ps(_mm512_cvtepi32_ps(codes), xv, *ai);
                }
            }
            for i in 0..N {
                let inv_g = _mm256_set1_ps(*inv[i].add(g));
                tot[i] = _mm256_add_ps(tot[i], _mm256_div_ps(halves(a[i]), inv_g));
            }
        }
        tot.map(|t| hsum(t))
    }
}

impl RowKernels for Avx512 {
    unsafe fn f32_rows<const R: usize>(
        self,
        w: *const f32,
        cols: usize,
        x: *const f32,
    ) -> [f32; R] {
        // SAFETY: the token proves the features; the rest is the caller's contract.
        unsafe { f32_rows::<R>(w, cols, x) }
    }

    unsafe fn i8_rows<const N: usize>(
        self,
        q: [*const i8; N],
        inv: [*const f32; N],
        groups: usize,
        x: *const f32,
    ) -> [f32; N] {
        // SAFETY: the token proves the features; the rest is the caller's contract.
        unsafe { i8_rows::<N>(q, inv, groups, x) }
    }

    fn avx2(self) -> Avx2 {
        Avx512::avx2(self)
    }
}

/// The row loops are the AVX2 path's (`matvec_f32_rows`, four rows per pass; `matvec_i8_rows`,
/// rows `r` and `r + rows / 2` as two streams) with these rows.
impl Matvec for Avx512 {
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_f32_rows(self, w, x, y);
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_i8_rows(self, w, x, y);
    }
}
