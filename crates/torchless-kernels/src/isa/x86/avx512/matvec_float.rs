//! Decode rows of f32 and int8 weights against one f32 input on 512-bit vectors.
//!
//! The AVX2 kernels (`avx2::matvec`) keep two 8-lane accumulators per row that take alternate
//! 8-value pieces; here one 16-lane vector holds both (its low half the first, its high half the
//! second), so every lane sees the same FMAs in the same order and the results are bit-identical,
//! with half the loads, conversions and FMAs. On Zen 5's full-width units that doubles what one
//! core can stream from cache; the same prefetches as the AVX2 kernels.

use super::Avx512;
use crate::isa::traits::Matvec;
use crate::isa::x86::avx2::{hsum, PF_GROUPS};
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

/// `y = W x` for f32 weights, four rows per pass (as the AVX2 kernel).
fn matvec_f32(_t: Avx512, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_f32 shapes");
    let wp = w.data().as_ptr();
    let full = rows / 4 * 4;
    for r0 in (0..full).step_by(4) {
        // SAFETY: the token proves the features; `F32Mat` holds `rows * cols` values, so rows
        // r0..r0 + 4 are in bounds; `x` has `cols` values (asserted).
        let out = unsafe { f32_rows::<4>(wp.add(r0 * cols), cols, x.as_ptr()) };
        y[r0..r0 + 4].copy_from_slice(&out);
    }
    for (r, yr) in y.iter_mut().enumerate().skip(full) {
        // SAFETY: as above, for one row.
        *yr = unsafe { f32_rows::<1>(wp.add(r * cols), cols, x.as_ptr()) }[0];
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

/// `y = W x` for int8 weights: rows `r` and `r + rows / 2` together (two streams per thread, as
/// the AVX2 kernel); matrices whose groups straddle rows take the AVX2 kernel.
fn matvec_i8(t: Avx512, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
    if !w.is_row_aligned() {
        return t.avx2().matvec_i8(w, x, y);
    }
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_i8 shapes");
    let groups = cols / GROUP_SIZE;
    // Row-aligned: `Int8Mat` guarantees rows*cols values and rows*groups scales.
    assert!(w.q().len() == rows * cols && w.inv_scales().len() == rows * groups);
    let (qp, ip) = (w.q().as_ptr(), w.inv_scales().as_ptr());
    const STREAMS: usize = 2;
    let stride = rows / STREAMS;
    for r in 0..stride {
        let rs: [usize; STREAMS] = std::array::from_fn(|i| r + i * stride);
        // SAFETY: the token proves the features; every row rs[i] < rows, so its weights and
        // scales are in bounds (asserted lengths); `x` has `groups * 64` values.
        let out = unsafe {
            i8_rows::<STREAMS>(
                rs.map(|r| qp.add(r * cols)),
                rs.map(|r| ip.add(r * groups)),
                groups,
                x.as_ptr(),
            )
        };
        for (i, v) in out.into_iter().enumerate() {
            y[rs[i]] = v;
        }
    }
    for (r, yr) in y.iter_mut().enumerate().skip(stride * STREAMS) {
        // SAFETY: as above, for one row.
        *yr = unsafe { i8_rows::<1>([qp.add(r * cols)], [ip.add(r * groups)], groups, x.as_ptr()) }
            [0];
    }
}

impl Matvec for Avx512 {
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_f32(self, w, x, y);
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_i8(self, w, x, y);
    }
}
