//! AVX2 + FMA kernels, selected at run time (a default build targets baseline x86-64).
//!
//! Every public-in-crate function takes a [`Token`], which can only be made after
//! `is_x86_feature_detected!` confirmed AVX2 and FMA: that is what makes calling the
//! `#[target_feature]` functions sound. The wrappers also check every length the raw-pointer loops
//! rely on, so no safe caller can make them read or write out of bounds.
//!
//! Intrinsics that take no pointer became safe to call inside `#[target_feature]` functions in Rust
//! 1.87; this module was written for older compilers and keeps them inside `unsafe` blocks, which
//! newer compilers report as unused (`avx512.rs`, written for the 1.89 MSRV, does not).
#![allow(unused_unsafe)]

use crate::int4::Int4Input;
use crate::mat::{F32Mat, Int4Mat, Int8Mat, GROUP_SIZE};
use core::arch::x86_64::*;

/// Proof that the running CPU has AVX2 and FMA.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token(());

impl Token {
    /// `Some` only when AVX2 and FMA are available.
    pub(crate) fn detect() -> Option<Self> {
        // F16C (half-precision conversion, for int4 scales) comes with every AVX2 CPU made, but is
        // a separate flag: it is checked too so the int4 kernel may use it.
        (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        .then_some(Token(()))
    }
}

/// Prefetch distance of the int8 matvec, in 64-byte groups (8 KiB ahead). Each of the kernel's
/// two streams runs through consecutive rows (contiguous memory), so the prefetch simply runs on
/// into the next row; measured on Zen 3, 3-32 KiB make no difference that the noise shows.
const PF_GROUPS: usize = 128;

// ---------------------------------------------------------------------------------------------
// Small helpers. All are `unsafe fn` only because of the target feature (see the module docs).

/// Horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Loads 8 int8 values from `p` and converts them to f32.
///
/// # Safety
/// AVX2 available; `p` valid for 8 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn cvt_i8(p: *const i8) -> __m256 {
    // SAFETY: caller contract: 8 readable bytes at `p` (movq has no alignment requirement).
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
}

/// 8x8 transpose: `out[i][j] = r[j][i]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

/// `e^x` lane-wise, same algorithm and limits as `wide_path::exp`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: __m256) -> __m256 {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2+FMA.
    unsafe {
        let lo = _mm256_set1_ps(crate::wide_path::EXP_LO);
        let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let r2 = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let y = _mm256_andnot_ps(under, y);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        _mm256_blendv_ps(y, x, nan)
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions.

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `a` and `b` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a_u) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *a_u = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *a_u);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += *a.add(i) * *b.add(i);
            i += 1;
        }
        s
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_raw(q: *const i8, x: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `q` and `x` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            acc[0] = _mm256_fmadd_ps(cvt_i8(q.add(i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            acc[1] = _mm256_fmadd_ps(cvt_i8(q.add(i + 8)), _mm256_loadu_ps(x.add(i + 8)), acc[1]);
            i += 16;
        }
        if i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(cvt_i8(q.add(i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
        while i < n {
            s += f32::from(*q.add(i)) * *x.add(i);
            i += 1;
        }
        s
    }
}

/// `Σ a[i] b[i]` over the common length.
pub(crate) fn dot(_t: Token, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { dot_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// `Σ q[i] x[i]` over the common length.
pub(crate) fn dot_i8(_t: Token, q: &[i8], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { dot_i8_raw(q.as_ptr(), x.as_ptr(), n) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dots_raw(q: *const f32, hd: usize, m: usize, k: *const f32, out: *mut f32) {
    // SAFETY: caller contract: `q` valid for m*hd reads, `k` for hd, `out` for m writes; offsets
    // are `(h + g) * hd + i + 7 < m * hd` and `i + 7 < hd`.
    unsafe {
        let mut h = 0;
        while h + 4 <= m {
            // Four heads against one key: the key is loaded once, 8 independent FMA chains.
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            let mut i = 0;
            while i + 16 <= hd {
                for (u, a) in acc.iter_mut().enumerate() {
                    let kv = _mm256_loadu_ps(k.add(i + 8 * u));
                    for (g, ag) in a.iter_mut().enumerate() {
                        *ag = _mm256_fmadd_ps(
                            _mm256_loadu_ps(q.add((h + g) * hd + i + 8 * u)),
                            kv,
                            *ag,
                        );
                    }
                }
                i += 16;
            }
            if i + 8 <= hd {
                let kv = _mm256_loadu_ps(k.add(i));
                for (g, ag) in acc[0].iter_mut().enumerate() {
                    *ag = _mm256_fmadd_ps(_mm256_loadu_ps(q.add((h + g) * hd + i)), kv, *ag);
                }
                i += 8;
            }
            let a: [__m256; 4] = [
                _mm256_add_ps(acc[0][0], acc[1][0]),
                _mm256_add_ps(acc[0][1], acc[1][1]),
                _mm256_add_ps(acc[0][2], acc[1][2]),
                _mm256_add_ps(acc[0][3], acc[1][3]),
            ];
            // Transposing reduction: lane g of `r` is head g's sum.
            let s = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), r);
            for (g, sum) in sums.iter().enumerate() {
                let mut t = *sum;
                for ii in i..hd {
                    t += *q.add((h + g) * hd + ii) * *k.add(ii);
                }
                *out.add(h + g) = t;
            }
            h += 4;
        }
        while h < m {
            *out.add(h) = dot_raw(q.add(h * hd), k, hd);
            h += 1;
        }
    }
}

/// `out[h] = q[h] · k` for the `out.len()` rows of `head_dim` values in `q`.
pub(crate) fn dots(_t: Token, q: &[f32], k: &[f32], out: &mut [f32]) {
    let (hd, m) = (k.len(), out.len());
    assert!(q.len() >= m * hd, "dots: queries too short");
    // SAFETY: the token proves AVX2+FMA; `q` holds m*hd values (asserted), `k` hd, `out` m.
    unsafe { dots_raw(q.as_ptr(), hd, m, k.as_ptr(), out.as_mut_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sum_raw(p: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `p` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (u, a_u) in acc.iter_mut().enumerate() {
                *a_u = _mm256_add_ps(*a_u, _mm256_loadu_ps(p.add(i + 8 * u)));
            }
            i += 64;
        }
        for u in 1..8 {
            acc[0] = _mm256_add_ps(acc[0], acc[u]);
        }
        let mut s = hsum(acc[0]);
        while i < n {
            s += *p.add(i);
            i += 1;
        }
        s
    }
}

/// Sum of all values (read-bandwidth probe): 8 independent 8-lane accumulators.
pub(crate) fn sum(_t: Token, x: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2; `x` holds `x.len()` values.
    unsafe { sum_raw(x.as_ptr(), x.len()) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_raw(n: usize) -> f32 {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2+FMA.
    unsafe {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        for u in 1..12 {
            acc[0] = _mm256_add_ps(acc[0], acc[u]);
        }
        hsum(acc[0])
    }
}

/// `n` steps of 12 independent 8-lane FMA chains (the FMA-peak probe).
pub(crate) fn fma_chains(_t: Token, n: usize) -> f32 {
    // SAFETY: the token proves AVX2+FMA.
    unsafe { fma_chains_raw(n) }
}

// ---------------------------------------------------------------------------------------------
// Matvec.

/// `y[r] = Σ_c w[r*cols + c] x[c]` for `R` consecutive rows. Each load prefetches the same
/// position `R` rows further on, i.e. the next pass's data: a fixed distance in bytes overshoots
/// short rows (at 2048 columns it lands in rows this pass already reads). Measured on Zen 3 with 2
/// threads: 87-97% of the read bandwidth with a 4 KiB distance, 98-103% this way.
///
/// # Safety
/// AVX2+FMA available; `w` valid for `R * cols` reads, `x` for `cols`, `y` for `R` writes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_rows<const R: usize>(w: *const f32, cols: usize, x: *const f32, y: *mut f32) {
    // SAFETY: caller contract, with one input.
    let out = unsafe { f32_rows_multi::<R, 1>(w, cols, [x]) };
    for (r, v) in out.into_iter().enumerate() {
        // SAFETY: caller contract: `y` valid for `R` writes.
        unsafe { *y.add(r) = v[0] };
    }
}

/// [`f32_rows`] for `B` inputs at once (the decode steps of `B` sequences): each weight piece is
/// loaded once and used for every input. The arithmetic of every (row, input) pair is the same
/// sequence of operations whatever `R` and `B` are, so a batch gives bit-identical rows to one
/// input at a time.
///
/// # Safety
/// AVX2+FMA available; `w` valid for `R * cols` reads, every `xs[b]` for `cols`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_rows_multi<const R: usize, const B: usize>(
    w: *const f32,
    cols: usize,
    xs: [*const f32; B],
) -> [[f32; B]; R] {
    // SAFETY: caller contract; loads use offsets `r * cols + c` with `c + 8 <= cols`; the prefetch
    // address is only computed (wrapping) and prefetching never faults.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; B]; R];
        let mut c = 0;
        while c + 16 <= cols {
            for (r, row_acc) in acc.iter_mut().enumerate() {
                let p = w.add(r * cols + c);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(R * cols).cast());
                let (w0, w1) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                for (a, x) in row_acc.iter_mut().zip(xs) {
                    a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.add(c)), a[0]);
                    a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(c + 8)), a[1]);
                }
            }
            c += 16;
        }
        if c + 8 <= cols {
            for (r, row_acc) in acc.iter_mut().enumerate() {
                let w0 = _mm256_loadu_ps(w.add(r * cols + c));
                for (a, x) in row_acc.iter_mut().zip(xs) {
                    a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.add(c)), a[0]);
                }
            }
            c += 8;
        }
        let mut out = [[0.0f32; B]; R];
        for (r, (o, row_acc)) in out.iter_mut().zip(&acc).enumerate() {
            for ((ob, a), x) in o.iter_mut().zip(row_acc).zip(xs) {
                let mut s = hsum(_mm256_add_ps(a[0], a[1]));
                for cc in c..cols {
                    s += *w.add(r * cols + cc) * *x.add(cc);
                }
                *ob = s;
            }
        }
        out
    }
}

/// `y = W x` for f32 weights, four rows per pass so each `x` load feeds four FMAs.
pub(crate) fn matvec_f32(_t: Token, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_f32 shapes");
    let wp = w.data().as_ptr();
    let full = rows / 4 * 4;
    for r0 in (0..full).step_by(4) {
        // SAFETY: token ⇒ AVX2+FMA; `F32Mat` guarantees `rows * cols` values, so rows r0..r0+4 are
        // in bounds; `x` has `cols` values and `y[r0..r0 + 4]` exists (asserted above).
        unsafe { f32_rows::<4>(wp.add(r0 * cols), cols, x.as_ptr(), y.as_mut_ptr().add(r0)) }
    }
    for r in full..rows {
        // SAFETY: as above, for one row.
        unsafe { f32_rows::<1>(wp.add(r * cols), cols, x.as_ptr(), y.as_mut_ptr().add(r)) }
    }
}

/// One row-aligned int8 row: per 64-group, the int8·f32 products are accumulated in two
/// registers, then divided once by the group's inverse scale.
///
/// # Safety
/// AVX2+FMA available; `q` valid for `groups * 64` reads, `inv` for `groups`, `x` for
/// `groups * 64`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_row(q: *const i8, inv: *const f32, groups: usize, x: *const f32) -> f32 {
    // SAFETY: caller contract, for one row.
    unsafe { i8_rows::<1>([q], [inv], groups, x)[0] }
}

/// `N` row-aligned int8 rows far apart in memory (`q[i]`, with scales `inv[i]`), processed
/// together: `N` independent memory streams per thread and `N` times the independent work per
/// loaded `x` vector. Same arithmetic per row as [`i8_row`], so results are bit-identical.
///
/// # Safety
/// As [`i8_row`], for every row.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_rows<const N: usize>(
    q: [*const i8; N],
    inv: [*const f32; N],
    groups: usize,
    x: *const f32,
) -> [f32; N] {
    // SAFETY: caller contract, with one input.
    unsafe { i8_rows_multi::<N, 1>(q, inv, groups, [x]) }.map(|v| v[0])
}

/// [`i8_rows`] for `B` inputs at once (the decode steps of `B` sequences): each 8-value weight
/// piece is converted once and used for every input. Every (row, input) pair goes through the
/// arithmetic of [`i8_row`], so a batch gives bit-identical rows to one input at a time.
///
/// # Safety
/// As [`i8_row`], for every row and every input `xs[b]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_rows_multi<const N: usize, const B: usize>(
    q: [*const i8; N],
    inv: [*const f32; N],
    groups: usize,
    xs: [*const f32; B],
) -> [[f32; B]; N] {
    // SAFETY: caller contract, as in `i8_row` for each row and input.
    unsafe {
        let mut tot = [[_mm256_setzero_ps(); B]; N];
        for g in 0..groups {
            for qi in q {
                _mm_prefetch::<_MM_HINT_T0>(qi.wrapping_add((g + PF_GROUPS) * GROUP_SIZE).cast());
            }
            let mut a = [[[_mm256_setzero_ps(); 2]; B]; N];
            for u in 0..8 {
                let col = g * GROUP_SIZE + 8 * u;
                for i in 0..N {
                    let qv = cvt_i8(q[i].add(col));
                    for (ab, x) in a[i].iter_mut().zip(xs) {
                        ab[u & 1] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(x.add(col)), ab[u & 1]);
                    }
                }
            }
            for i in 0..N {
                let inv_g = _mm256_set1_ps(*inv[i].add(g));
                for (t, ab) in tot[i].iter_mut().zip(&a[i]) {
                    let s = _mm256_add_ps(ab[0], ab[1]);
                    *t = _mm256_add_ps(*t, _mm256_div_ps(s, inv_g));
                }
            }
        }
        tot.map(|row| row.map(|t| hsum(t)))
    }
}

/// `y = W x` for int8 weights.
pub(crate) fn matvec_i8(t: Token, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_i8 shapes");
    if !w.is_row_aligned() {
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = crate::scalar::int8_row(w, r, x, |q, x| dot_i8(t, q, x));
        }
        return;
    }
    let groups = cols / GROUP_SIZE;
    // Row-aligned: `Int8Mat` guarantees rows*cols values and rows*groups scales.
    assert!(w.q().len() == rows * cols && w.inv_scales().len() == rows * groups);
    let (qp, ip) = (w.q().as_ptr(), w.inv_scales().as_ptr());
    // Rows r and r + rows/2 go together: two memory streams per thread. Measured on Zen 3 (2
    // threads, 14336x4096): one stream 70-80% of the read bandwidth, two 91-94%, three or four
    // 75-85%. An odd last row goes alone.
    const STREAMS: usize = 2;
    let stride = rows / STREAMS;
    for r in 0..stride {
        let rs: [usize; STREAMS] = std::array::from_fn(|i| r + i * stride);
        // SAFETY: token ⇒ AVX2+FMA; every row rs[i] < rows, so its weights and scales are in
        // bounds (asserted lengths); `x` has `cols = groups * 64` values.
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
        *yr = unsafe { i8_row(qp.add(r * cols), ip.add(r * groups), groups, x.as_ptr()) };
    }
}

/// Inputs per pass of the multi-input matvecs (their accumulators fill the 16 registers); more
/// inputs take further passes over the same rows, which are then in cache.
const MULTI_B: usize = 4;

/// Runs `$body` with a `const $B` for input blocks `$b0..$b0 + $B` covering `0..batch`,
/// `$B <= MULTI_B`.
macro_rules! for_input_blocks {
    ($batch:expr, |$b0:ident, $B:ident| $body:expr) => {{
        let batch: usize = $batch;
        let mut $b0 = 0;
        while $b0 + MULTI_B <= batch {
            {
                const $B: usize = MULTI_B;
                $body;
            }
            $b0 += MULTI_B;
        }
        match batch - $b0 {
            3 => {
                const $B: usize = 3;
                $body
            }
            2 => {
                const $B: usize = 2;
                $body
            }
            1 => {
                const $B: usize = 1;
                $body
            }
            _ => {}
        }
    }};
}

/// Prefetch distance of the int4 matvec, in bytes of codes (as for int8, a few KiB ahead along
/// the row stream).
const PF_INT4_BYTES: usize = 4096;

/// `N` int4 rows (far apart in memory: `N` streams per thread, as in the int8 matvec) with `B`
/// quantized inputs, each (row, input) in the lane order and f32 operation order of
/// `int4::row_dot` (bit-identical to it).
///
/// # Safety
/// AVX2, FMA and F16C must be available; each `packed[i]` must point to `groups * 16` bytes and
/// each `scales[i]` to `groups` halves; each input must hold `groups.div_ceil(8)` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i4_rows_multi<const N: usize, const B: usize>(
    packed: [*const u8; N],
    scales: [*const u16; N],
    groups: usize,
    inputs: [&Int4Input; B],
) -> [[f32; B]; N] {
    use crate::int4::BLOCK_GROUPS;
    // SAFETY: caller contract: every load below stays inside the rows' codes and scales (a short
    // last block is copied into zero-padded buffers first) and the inputs' blocks; the prefetch
    // is a hint and never faults.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); B]; N];
        let full = groups / BLOCK_GROUPS;
        for b in 0..full {
            for i in 0..N {
                let codes = packed[i].add(b * BLOCK_GROUPS * 16);
                for line in [0, 64] {
                    _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(PF_INT4_BYTES + line).cast());
                }
                i4_block(
                    codes,
                    scales[i].add(b * BLOCK_GROUPS),
                    b,
                    &mut acc[i],
                    inputs,
                );
            }
        }
        let rest = groups - full * BLOCK_GROUPS;
        if rest > 0 {
            for i in 0..N {
                let mut codes = [0u8; BLOCK_GROUPS * 16];
                let mut halves = [0u16; BLOCK_GROUPS];
                let first = full * BLOCK_GROUPS;
                std::ptr::copy_nonoverlapping(
                    packed[i].add(first * 16),
                    codes.as_mut_ptr(),
                    rest * 16,
                );
                std::ptr::copy_nonoverlapping(scales[i].add(first), halves.as_mut_ptr(), rest);
                i4_block(codes.as_ptr(), halves.as_ptr(), full, &mut acc[i], inputs);
            }
        }
        acc.map(|row| row.map(|a| hsum(a)))
    }
}

/// Block `b` (8 groups: `codes` 128 bytes, `scales` 8 halves) of one row, added into the row's
/// lane accumulators for each input (see `int4.rs` for the lane order and the arithmetic).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `codes` must point to 128 bytes, `scales` to 8 halves,
/// and every input must hold block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i4_block<const B: usize>(
    codes: *const u8,
    scales: *const u16,
    b: usize,
    acc: &mut [__m256; B],
    inputs: [&Int4Input; B],
) {
    // SAFETY: caller contract (extents above).
    unsafe {
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        // The 8 scales in lane order: groups 0, 2, 4, 6, 1, 3, 5, 7.
        let order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
        let d = _mm256_cvtph_ps(_mm_shuffle_epi8(_mm_loadu_si128(scales.cast()), order));
        let (mut lo, mut hi) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
        for q in 0..4 {
            let c = _mm256_loadu_si256(codes.add(q * 32).cast());
            lo[q] = _mm256_and_si256(c, mask);
            hi[q] = _mm256_and_si256(_mm256_srli_epi16::<4>(c), mask);
        }
        for (a, input) in acc.iter_mut().zip(inputs) {
            let x = input.xq.as_ptr().add(b * crate::int4::BLOCK_X_BYTES);
            let mut sums = [_mm256_setzero_si256(); 4];
            for q in 0..4 {
                // Codes (u8) x activations (i8) in pairs: lanes 0..4 of a pair's sums belong to
                // its first group, 4..8 to its second. Pair q's activations are half of quad
                // q / 2's low (values 0..16) and high (16..32) rows (see `Int4Input`).
                let xa = x.add((q / 2) * 128 + (q % 2) * 32);
                let plo = _mm256_maddubs_epi16(lo[q], _mm256_loadu_si256(xa.cast()));
                let phi = _mm256_maddubs_epi16(hi[q], _mm256_loadu_si256(xa.add(64).cast()));
                sums[q] = _mm256_madd_epi16(_mm256_add_epi16(plo, phi), ones);
            }
            // Three horizontal adds leave one sum per group, in lane order 0, 2, 4, 6, 1, 3, 5, 7.
            let h = _mm256_hadd_epi32(
                _mm256_hadd_epi32(sums[0], sums[1]),
                _mm256_hadd_epi32(sums[2], sums[3]),
            );
            let offsets = _mm256_loadu_si256(input.offsets.as_ptr().add(b * 8).cast());
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(h, offsets));
            let scale = _mm256_mul_ps(d, _mm256_loadu_ps(input.steps.as_ptr().add(b * 8)));
            *a = _mm256_fmadd_ps(v, scale, *a);
        }
    }
}

/// `yt[i * batch + b]` = row `r0 + i` of `w` times input `b`, for every row of `yt / batch`:
/// each weight row is read once for all inputs, each result bit-identical to `int4::row_dot`.
pub(crate) fn matvec_i4_multi(
    _t: Token,
    w: &Int4Mat<'_>,
    inputs: &[Int4Input],
    r0: usize,
    yt: &mut [f32],
) {
    let (batch, groups, out_rows) = crate::int4::assert_row_shapes(w, inputs, r0, yt);
    let (pp, sp) = (w.packed().as_ptr(), w.scales().as_ptr());
    if batch == 1 {
        // One input (decode): rows i and i + out_rows/2 go together, two memory streams per
        // thread as in the int8 matvec (Zen 3, 2 threads, 14336x4096: one stream 75-89% of the
        // read bandwidth). An odd last row goes alone.
        const STREAMS: usize = 2;
        let stride = out_rows / STREAMS;
        for i in 0..stride {
            let rows: [usize; STREAMS] = std::array::from_fn(|s| r0 + i + s * stride);
            // SAFETY: token ⇒ AVX2+FMA+F16C; every row < r0 + out_rows <= w.rows(), so its
            // `groups * 16` code bytes and `groups` scales are in bounds, and the input holds
            // the pairs (asserted above).
            let v = unsafe {
                i4_rows_multi::<STREAMS, 1>(
                    rows.map(|r| pp.add(r * groups * 16)),
                    rows.map(|r| sp.add(r * groups)),
                    groups,
                    [&inputs[0]],
                )
            };
            for (s, row) in v.into_iter().enumerate() {
                yt[i + s * stride] = row[0];
            }
        }
        for (i, out) in yt.iter_mut().enumerate().skip(stride * STREAMS) {
            let row = r0 + i;
            // SAFETY: as above, for one row.
            let v = unsafe {
                i4_rows_multi::<1, 1>(
                    [pp.add(row * groups * 16)],
                    [sp.add(row * groups)],
                    groups,
                    [&inputs[0]],
                )
            };
            *out = v[0][0];
        }
        return;
    }
    for (i, out) in yt.chunks_exact_mut(batch).enumerate() {
        let row = r0 + i;
        for_input_blocks!(batch, |b0, B| {
            // SAFETY: token ⇒ AVX2+FMA+F16C; row < w.rows(), so its `groups * 16` code bytes and
            // `groups` scales are in bounds, and every input holds the pairs (asserted above).
            let v = unsafe {
                i4_rows_multi::<1, B>(
                    [pp.add(row * groups * 16)],
                    [sp.add(row * groups)],
                    groups,
                    std::array::from_fn(|j| &inputs[b0 + j]),
                )
            };
            out[b0..b0 + B].copy_from_slice(&v[0]);
        });
    }
}

/// Asserts the shapes the multi-input matvecs rely on: `xs` holds `batch` rows of `cols`, `yt` a
/// whole number of output rows of `batch`, all inside the matrix's `rows` from `r0`.
fn multi_shapes(rows: usize, cols: usize, xs: &[f32], batch: usize, r0: usize, yt: &[f32]) {
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
/// [`matvec_f32`]'s, with each weight row read from memory once for all inputs. (Two rows per
/// pass measured no faster than one at 22528x2048, 2 threads, Zen 3: 4 inputs cost 1.25-1.3x
/// one input either way.)
pub(crate) fn matvec_f32_multi(
    _t: Token,
    w: &F32Mat<'_>,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &mut [f32],
) {
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

/// [`matvec_f32_multi`] for int8 weights: each row bit-identical to [`matvec_i8`]'s.
pub(crate) fn matvec_i8_multi(
    t: Token,
    w: &Int8Mat<'_>,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &mut [f32],
) {
    let cols = w.cols();
    multi_shapes(w.rows(), cols, xs, batch, r0, yt);
    if !w.is_row_aligned() {
        for (i, out) in yt.chunks_exact_mut(batch).enumerate() {
            for (b, y) in out.iter_mut().enumerate() {
                let x = &xs[b * cols..(b + 1) * cols];
                *y = crate::scalar::int8_row(w, r0 + i, x, |q, x| dot_i8(t, q, x));
            }
        }
        return;
    }
    let groups = cols / GROUP_SIZE;
    assert!(w.q().len() == w.rows() * cols && w.inv_scales().len() == w.rows() * groups);
    let (qp, ip, xp) = (w.q().as_ptr(), w.inv_scales().as_ptr(), xs.as_ptr());
    // One row at a time: two rows far apart (the matvec's two streams) need twice the
    // accumulators and spill; measured 22528x2048, 2 threads, Zen 3: 4 inputs in 6.2 ms with
    // two rows, 4.3 ms with one (one input: 1.8 ms). A batch's int8 decode is compute-bound
    // here: f32 arithmetic at 4 FMAs per weight byte for 4 inputs.
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
/// weight piece fit the 16 registers (measured at batch 12, 4096x4096, 2 threads: 4x3 spills and
/// runs at 51 GFLOP/s, 3x3 at 61, 2x4 at 72, the former one-row kernel at 57).
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
pub(crate) fn matmul_i8_small(
    t: Token,
    w: &Int8Mat<'_>,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &mut [f32],
) {
    let _ = t;
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

// ---------------------------------------------------------------------------------------------
// Element-wise ops.

#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_raw(p: *mut f32, n: usize) {
    // SAFETY: caller contract: `p` valid for `n` reads and writes; offsets stay below `n`.
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for j in i..n {
            max = max.max(*p.add(j));
        }
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            s = _mm256_add_ps(s, e);
            _mm256_storeu_ps(p.add(i), e);
            i += 8;
        }
        let mut sum = hsum(s);
        if i < n {
            let mut t = [f32::NEG_INFINITY; 8];
            for j in i..n {
                t[j - i] = *p.add(j) - max;
            }
            _mm256_storeu_ps(t.as_mut_ptr(), exp256(_mm256_loadu_ps(t.as_ptr())));
            for j in i..n {
                *p.add(j) = t[j - i];
                sum += t[j - i];
            }
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
            i += 8;
        }
        for j in i..n {
            *p.add(j) *= inv;
        }
    }
}

/// In-place numerically stable softmax.
pub(crate) fn softmax(_t: Token, x: &mut [f32]) {
    // SAFETY: the token proves AVX2+FMA; `x` is valid for its length.
    unsafe { softmax_raw(x.as_mut_ptr(), x.len()) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_raw(g: *const f32, u: *const f32, o: *mut f32, n: usize) {
    // SAFETY: caller contract: all three pointers valid for `n` elements; offsets stay below `n`.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + 8 <= n {
            let gv = _mm256_loadu_ps(g.add(i));
            let den = _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, neg)));
            let v = _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u.add(i)));
            _mm256_storeu_ps(o.add(i), v);
            i += 8;
        }
        if i < n {
            let (mut tg, mut tu) = ([0.0f32; 8], [0.0f32; 8]);
            for j in i..n {
                tg[j - i] = *g.add(j);
                tu[j - i] = *u.add(j);
            }
            let gv = _mm256_loadu_ps(tg.as_ptr());
            let den = _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, neg)));
            let v = _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(tu.as_ptr()));
            _mm256_storeu_ps(tg.as_mut_ptr(), v);
            for j in i..n {
                *o.add(j) = tg[j - i];
            }
        }
    }
}

/// `out = silu(gate) * up` (equal lengths, checked).
pub(crate) fn silu_mul(_t: Token, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(gate.len() == n && up.len() == n, "silu_mul lengths");
    // SAFETY: the token proves AVX2+FMA; all three slices hold `n` values (asserted).
    unsafe { silu_mul_raw(gate.as_ptr(), up.as_ptr(), out.as_mut_ptr(), n) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_raw(a: f32, v: *const f32, o: *mut f32, n: usize) {
    // SAFETY: caller contract: both pointers valid for `n` elements.
    unsafe {
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            let o0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(v.add(i)), _mm256_loadu_ps(o.add(i)));
            let o1 = _mm256_fmadd_ps(
                av,
                _mm256_loadu_ps(v.add(i + 8)),
                _mm256_loadu_ps(o.add(i + 8)),
            );
            _mm256_storeu_ps(o.add(i), o0);
            _mm256_storeu_ps(o.add(i + 8), o1);
            i += 16;
        }
        while i + 8 <= n {
            let o0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(v.add(i)), _mm256_loadu_ps(o.add(i)));
            _mm256_storeu_ps(o.add(i), o0);
            i += 8;
        }
        while i < n {
            *o.add(i) += a * *v.add(i);
            i += 1;
        }
    }
}

/// `out += a * v` over the common length.
pub(crate) fn axpy(_t: Token, a: f32, v: &[f32], out: &mut [f32]) {
    let n = v.len().min(out.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { axpy_raw(a, v.as_ptr(), out.as_mut_ptr(), n) }
}

/// Rows ahead whose first lines `weighted_rows` prefetches (rows of a slot-major KV cache are
/// a page apart, where the hardware prefetcher does not follow).
const PF_ROWS: usize = 4;

/// `out += Σ_j weights[j] · rows[j]`, the rows taken in order, each output element accumulated
/// exactly as repeated `axpy` calls would (one FMA per row, in row order), but 64 elements at a
/// time held in registers across all the rows instead of loaded and stored once per row.
///
/// # Safety
/// AVX2 and FMA must be available; every row must hold at least `n` values, `out` `n`.
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_raw(rows: &[&[f32]], weights: &[f32], o: *mut f32, n: usize) {
    // SAFETY: caller contract: each row pointer is valid for `n` reads and `o` for `n` reads and
    // writes; the prefetches are hints and never fault.
    unsafe {
        let mut c = 0;
        while c + 64 <= n {
            let mut acc: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(o.add(c + 8 * k)));
            for (j, (row, &w)) in rows.iter().zip(weights).enumerate() {
                if let Some(ahead) = rows.get(j + PF_ROWS) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().wrapping_add(c).cast());
                }
                let wv = _mm256_set1_ps(w);
                let r = row.as_ptr().add(c);
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8 * k)), *a);
                }
            }
            for (k, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(c + 8 * k), *a);
            }
            c += 64;
        }
        while c + 8 <= n {
            let mut a = _mm256_loadu_ps(o.add(c));
            for (row, &w) in rows.iter().zip(weights) {
                a = _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(row.as_ptr().add(c)), a);
            }
            _mm256_storeu_ps(o.add(c), a);
            c += 8;
        }
        while c < n {
            // As `axpy_raw`'s tail: a product, then a sum.
            for (row, &w) in rows.iter().zip(weights) {
                *o.add(c) += w * *row.as_ptr().add(c);
            }
            c += 1;
        }
    }
}

/// `out += Σ_j weights[j] · rows[j]` over the first `out.len()` values of each row (see
/// `weighted_rows_raw`); extra weights or rows are ignored.
pub(crate) fn weighted_rows(_t: Token, rows: &[&[f32]], weights: &[f32], out: &mut [f32]) {
    let n = out.len();
    let m = rows.len().min(weights.len());
    assert!(
        rows[..m].iter().all(|r| r.len() >= n),
        "weighted_rows: short row"
    );
    // SAFETY: the token proves AVX2+FMA; the first `m` rows hold at least `n` values (asserted)
    // and `out` holds `n`.
    unsafe { weighted_rows_raw(&rows[..m], &weights[..m], out.as_mut_ptr(), n) }
}

// ---------------------------------------------------------------------------------------------
// GEMM pieces (the driver is `gemm.rs`).

/// Prefetches the cache line holding `p` into L1 (any address: prefetching never faults).
#[inline]
pub(crate) fn prefetch(_t: Token, p: *const u8) {
    // SAFETY: `prefetcht0` is an SSE instruction (implied by AVX2, proven by the token) that only
    // hints the cache; it does not dereference `p` and cannot fault on any address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Micro-kernel rows (batch rows per tile).
pub(crate) const MR: usize = 6;
/// Micro-kernel columns (weight rows per tile): 12 accumulators + 2 B + 1 broadcast = 15 ymm.
pub(crate) const NR: usize = 16;

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16_raw(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    pf: *const *const u8,
    npf: usize,
) {
    // SAFETY: caller contract: `a` holds kc*6 values, `b` kc*16, `c` rows i*ldc..i*ldc+16 for i < 6,
    // `pf` npf addresses (only prefetched, which never faults).
    unsafe {
        if accumulate {
            // The C tile is read back after the k loop: fetch it now so that load does not stall
            // (C is batch x n, far larger than L2; every depth block revisits it).
            for i in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1).cast());
            }
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        // The k loop runs in `npf` stretches, each starting with one prefetch of the next weight
        // panel: spread evenly, the prefetches never queue for miss buffers, and the FMA loop
        // itself carries no prefetch bookkeeping.
        let mut k = 0;
        for next in 0..=npf {
            let end = if next < npf {
                _mm_prefetch::<_MM_HINT_T0>((*pf.add(next)).cast());
                kc * (next + 1) / npf
            } else {
                kc
            };
            while k < end {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (i, ac) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(i));
                    ac[0] = _mm256_fmadd_ps(av, b0, ac[0]);
                    ac[1] = _mm256_fmadd_ps(av, b1, ac[1]);
                }
                a = a.add(MR);
                b = b.add(NR);
                k += 1;
            }
        }
        for (i, ac) in acc.iter().enumerate() {
            let p = c.add(i * ldc);
            let (mut v0, mut v1) = (ac[0], ac[1]);
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
            }
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        }
    }
}

/// The 6x16 FMA micro-kernel: `c[i*ldc + j] (+)= Σ_k a[k*6 + i] b[k*16 + j]`, prefetching the
/// addresses in `pf` along the way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kernel_6x16(
    _t: Token,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    pf: &[*const u8],
) {
    assert!(
        a.len() >= kc * MR && b.len() >= kc * NR,
        "packed panels too short"
    );
    assert!(
        ldc >= NR && c.len() >= (MR - 1) * ldc + NR,
        "C tile out of bounds"
    );
    // SAFETY: the token proves AVX2+FMA; panel and tile extents were asserted above; `pf` is
    // valid for `pf.len()` reads.
    unsafe {
        kernel_6x16_raw(
            kc,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            ldc,
            accumulate,
            pf.as_ptr(),
            pf.len(),
        )
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b_f32_raw(w: *const f32, ldw: usize, kc: usize, out: *mut f32) {
    // SAFETY: caller contract: `w` rows j*ldw..j*ldw+kc (j < 16) readable, `out` has kc*16 slots.
    unsafe {
        let k8 = kc / 8 * 8;
        let mut k = 0;
        while k < k8 {
            for h in 0..2 {
                let mut r = [_mm256_setzero_ps(); 8];
                for (j, rj) in r.iter_mut().enumerate() {
                    *rj = _mm256_loadu_ps(w.add((h * 8 + j) * ldw + k));
                }
                for (i, ti) in transpose8(r).iter().enumerate() {
                    _mm256_storeu_ps(out.add((k + i) * NR + h * 8), *ti);
                }
            }
            k += 8;
        }
        for kk in k8..kc {
            for j in 0..NR {
                *out.add(kk * NR + j) = *w.add(j * ldw + kk);
            }
        }
    }
}

/// Packs 16 full weight rows `w[j*ldw + k]` (`j < 16`, `k < kc`) as `out[k*16 + j]`.
pub(crate) fn pack_b_f32(_t: Token, w: &[f32], ldw: usize, kc: usize, out: &mut [f32]) {
    assert!(
        kc <= ldw && w.len() >= (NR - 1) * ldw + kc,
        "weight rows out of bounds"
    );
    assert!(out.len() >= kc * NR, "packed panel too short");
    // SAFETY: the token proves AVX2+FMA; the extents were asserted above.
    unsafe { pack_b_f32_raw(w.as_ptr(), ldw, kc, out.as_mut_ptr()) }
}

/// Inverse scales in this range take the refined-reciprocal dequantization (which needs a
/// normal reciprocal); others (0, ±inf, NaN, extremes) are divided directly.
fn refine_ok(v: f32) -> bool {
    (1e-30..=1e30).contains(&v.abs())
}

#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b_i8_raw(
    q: *const i8,
    ldq: usize,
    inv: *const f32,
    groups: usize,
    kc: usize,
    out: *mut f32,
) {
    // SAFETY: caller contract: q rows j*ldq..j*ldq+kc and scales j*groups..j*groups+kc/64 (j < 16)
    // readable, `out` has kc*16 slots, kc % 64 == 0.
    unsafe {
        for gg in 0..kc / GROUP_SIZE {
            for h in 0..2 {
                // Lanes are weight rows after the transpose, so the 8 rows' scales form one vector.
                let mut s = [0.0f32; 8];
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = *inv.add((h * 8 + j) * groups + gg);
                }
                let refine = s.iter().all(|&v| refine_ok(v));
                let iv = _mm256_loadu_ps(s.as_ptr());
                let rc = _mm256_div_ps(_mm256_set1_ps(1.0), iv);
                for sub in 0..GROUP_SIZE / 8 {
                    let k = gg * GROUP_SIZE + sub * 8;
                    let mut r = [_mm256_setzero_ps(); 8];
                    for (j, rj) in r.iter_mut().enumerate() {
                        *rj = cvt_i8(q.add((h * 8 + j) * ldq + k));
                    }
                    for (i, v) in transpose8(r).iter().enumerate() {
                        // q / inv, correctly rounded: y = q*(1/inv), then one Markstein correction
                        // y + (q - y*inv) * (1/inv); bit-identical to the division (tested), but
                        // three FMA-port ops instead of a slow vdivps.
                        let d = if refine {
                            let y = _mm256_mul_ps(*v, rc);
                            let e = _mm256_fnmadd_ps(y, iv, *v);
                            _mm256_fmadd_ps(e, rc, y)
                        } else {
                            _mm256_div_ps(*v, iv)
                        };
                        _mm256_storeu_ps(out.add((k + i) * NR + h * 8), d);
                    }
                }
            }
        }
    }
}

/// Packs and dequantizes 16 full row-aligned int8 rows: `out[k*16 + j] = q[j*ldq + k] / inv[j*groups
/// + k/64]` for `k < kc` (`kc % 64 == 0`, `q` and `inv` start at a group boundary).
pub(crate) fn pack_b_i8(
    _t: Token,
    q: &[i8],
    ldq: usize,
    inv: &[f32],
    groups: usize,
    kc: usize,
    out: &mut [f32],
) {
    assert!(
        kc.is_multiple_of(GROUP_SIZE) && kc <= ldq,
        "kc must be whole groups"
    );
    assert!(q.len() >= (NR - 1) * ldq + kc, "weight rows out of bounds");
    assert!(
        inv.len() >= (NR - 1) * groups + kc / GROUP_SIZE,
        "scales out of bounds"
    );
    assert!(out.len() >= kc * NR, "packed panel too short");
    // SAFETY: the token proves AVX2+FMA; the extents were asserted above.
    unsafe { pack_b_i8_raw(q.as_ptr(), ldq, inv.as_ptr(), groups, kc, out.as_mut_ptr()) }
}

/// The same refined-reciprocal dequantization as [`pack_b_i8`], for one value (tests compare it
/// bit for bit with `q / inv` over every int8 value and many scales).
#[cfg(test)]
pub(crate) fn dequant_refined(_t: Token, q: i8, inv: f32) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn one(q: i8, inv: f32) -> f32 {
        // SAFETY: register-only intrinsics; the caller guarantees AVX2+FMA.
        unsafe {
            let v = _mm256_set1_ps(f32::from(q));
            let iv = _mm256_set1_ps(inv);
            let rc = _mm256_div_ps(_mm256_set1_ps(1.0), iv);
            let d = if refine_ok(inv) {
                let y = _mm256_mul_ps(v, rc);
                let e = _mm256_fnmadd_ps(y, iv, v);
                _mm256_fmadd_ps(e, rc, y)
            } else {
                _mm256_div_ps(v, iv)
            };
            _mm256_cvtss_f32(d)
        }
    }
    // SAFETY: the token proves AVX2+FMA.
    unsafe { one(q, inv) }
}

// ---------------------------------------------------------------------------------------------
// Integer GEMM kernel (quantized activations; the driver is `qgemm.rs`).

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn qkernel_6x16_raw(
    groups: usize,
    a: *const u32,
    a_scales: *const f32,
    b: *const u32,
    b_scales: *const f32,
    b_corr: *const i32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use crate::qgemm::{QMR, QNR};
    const WORDS: usize = crate::mat::GROUP_SIZE / 4;
    // SAFETY: caller contract: `a` holds groups*16*6 words and `a_scales` groups*6 values, `b`
    // groups*16*16 words, `b_scales`/`b_corr` groups*16 values, `c` rows i*ldc..i*ldc+16, i < 6.
    unsafe {
        let mut out = [[_mm256_setzero_ps(); 2]; QMR];
        if accumulate {
            for (i, o) in out.iter_mut().enumerate() {
                o[0] = _mm256_loadu_ps(c.add(i * ldc));
                o[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        let ones = _mm256_set1_epi16(1);
        let (mut a, mut b) = (a, b);
        for g in 0..groups {
            // Each group's integer sums start at -64·Σq, cancelling the activations' offset.
            let corr0 = _mm256_loadu_si256(b_corr.add(g * QNR).cast());
            let corr1 = _mm256_loadu_si256(b_corr.add(g * QNR + 8).cast());
            let mut acc = [[corr0, corr1]; QMR];
            for _ in 0..WORDS {
                let b0 = _mm256_loadu_si256(b.cast());
                let b1 = _mm256_loadu_si256(b.add(8).cast());
                for (i, ac) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(*a.add(i) as i32);
                    // u8 x i8 pairs into i16 (never saturates: codes <= 127), then pairs of those
                    // into i32: each lane is one weight row's sum over 4 depths.
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                    ac[0] = _mm256_add_epi32(ac[0], p0);
                    ac[1] = _mm256_add_epi32(ac[1], p1);
                }
                a = a.add(QMR);
                b = b.add(QNR);
            }
            let ws0 = _mm256_loadu_ps(b_scales.add(g * QNR));
            let ws1 = _mm256_loadu_ps(b_scales.add(g * QNR + 8));
            for (i, (o, ac)) in out.iter_mut().zip(&acc).enumerate() {
                let sa = _mm256_set1_ps(*a_scales.add(g * QMR + i));
                o[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ac[0]), _mm256_mul_ps(ws0, sa), o[0]);
                o[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ac[1]), _mm256_mul_ps(ws1, sa), o[1]);
            }
        }
        for (i, o) in out.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), o[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), o[1]);
        }
    }
}

/// The integer 6x16 micro-kernel (see `qgemm.rs` for the layouts and the arithmetic).
pub(crate) fn qkernel_6x16(
    _t: Token,
    op: &crate::qgemm::QOperands<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    use crate::qgemm::{QMR, QNR};
    let groups = op.groups;
    let words = groups * crate::mat::GROUP_SIZE / 4;
    assert!(
        op.a.len() >= words * QMR
            && op.a_scales.len() >= groups * QMR
            && op.b.len() >= words * QNR
            && op.b_scales.len() >= groups * QNR
            && op.b_corr.len() >= groups * QNR,
        "packed panels too short"
    );
    assert!(
        ldc >= QNR && c.len() >= (QMR - 1) * ldc + QNR,
        "C tile out of bounds"
    );
    // SAFETY: the token proves AVX2+FMA; all extents were asserted above.
    unsafe {
        qkernel_6x16_raw(
            groups,
            op.a.as_ptr(),
            op.a_scales.as_ptr(),
            op.b.as_ptr(),
            op.b_scales.as_ptr(),
            op.b_corr.as_ptr(),
            c.as_mut_ptr(),
            ldc,
            accumulate,
        )
    }
}

/// Transposes 8 rows of 8 `u32` words: `out[w]` holds word `w` of rows 0..8, in row order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose_words(r: [__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        // Per 128-bit lane, `u[w]` holds word w (low lane) and w + 4 (high lane) of rows 0..4.
        let u = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let v = [
            _mm256_unpacklo_epi64(t4, t6),
            _mm256_unpackhi_epi64(t4, t6),
            _mm256_unpacklo_epi64(t5, t7),
            _mm256_unpackhi_epi64(t5, t7),
        ];
        [
            _mm256_permute2x128_si256::<0x20>(u[0], v[0]),
            _mm256_permute2x128_si256::<0x20>(u[1], v[1]),
            _mm256_permute2x128_si256::<0x20>(u[2], v[2]),
            _mm256_permute2x128_si256::<0x20>(u[3], v[3]),
            _mm256_permute2x128_si256::<0x31>(u[0], v[0]),
            _mm256_permute2x128_si256::<0x31>(u[1], v[1]),
            _mm256_permute2x128_si256::<0x31>(u[2], v[2]),
            _mm256_permute2x128_si256::<0x31>(u[3], v[3]),
        ]
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn qpack_b_raw(q: *const i8, row_stride: usize, kc: usize, words: *mut u32, corr: *mut i32) {
    use crate::qgemm::QNR;
    // SAFETY: caller contract: rows 0..16 of `q` (stride `row_stride`) hold `kc` bytes each
    // (kc % 64 == 0); `words` has kc/4*16 slots and `corr` kc/64*16.
    unsafe {
        let offsets = _mm256_set1_epi8(64);
        let ones = _mm256_set1_epi16(1);
        for half in 0..2 {
            let rows = q.add(half * 8 * row_stride);
            for g in 0..kc / 64 {
                let mut sums = _mm256_setzero_si256();
                for d in [g * 64, g * 64 + 32] {
                    // 8 rows x 8 words (4 bytes each), transposed so that each register holds
                    // one word position of the 8 rows.
                    let r: [__m256i; 8] = std::array::from_fn(|i| {
                        _mm256_loadu_si256(rows.add(i * row_stride + d).cast())
                    });
                    let t = transpose_words(r);
                    for (w, &x) in t.iter().enumerate() {
                        let kq = d / 4 + w;
                        _mm256_storeu_si256(words.add(kq * QNR + half * 8).cast(), x);
                        // 64 · (sum of the 4 bytes), per row: what the activation offset adds.
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(offsets, x), ones);
                        sums = _mm256_add_epi32(sums, p);
                    }
                }
                let neg = _mm256_sub_epi32(_mm256_setzero_si256(), sums);
                _mm256_storeu_si256(corr.add(g * QNR + half * 8).cast(), neg);
            }
        }
    }
}

/// Packs a full 16-row int8 panel for the integer kernel: `words[kq*16 + j]` = row `j`'s bytes
/// `4kq..4kq+4`, `corr[g*16 + j] = -64 · Σ` of row `j`'s group `g`. `q` starts at row 0's first
/// byte; rows are `row_stride` apart; `kc % 64 == 0`.
pub(crate) fn qpack_b(
    _t: Token,
    q: &[i8],
    row_stride: usize,
    kc: usize,
    words: &mut [u32],
    corr: &mut [i32],
) {
    use crate::qgemm::QNR;
    assert!(kc.is_multiple_of(64), "whole groups");
    assert!(
        q.len() >= (QNR - 1) * row_stride + kc
            && words.len() >= kc / 4 * QNR
            && corr.len() >= kc / 64 * QNR,
        "panel out of bounds"
    );
    // SAFETY: the token proves AVX2; extents asserted above.
    unsafe {
        qpack_b_raw(
            q.as_ptr(),
            row_stride,
            kc,
            words.as_mut_ptr(),
            corr.as_mut_ptr(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// int4 integer GEMM kernel (the driver is `qgemm4.rs`).

/// The AVX2 6 x 16 int4 tile (see `q4kernel_6x16`).
///
/// # Safety
/// AVX2 and FMA must be available, and `op` and `c`, `ldc` must pass
/// `Q4Operands::assert_tile` (`c` pointing to the tile's first value).
#[target_feature(enable = "avx2,fma")]
unsafe fn q4kernel_6x16_raw(
    op: &crate::qgemm4::Q4Operands<'_>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use crate::qgemm::{QMR, QNR};
    use crate::qgemm4::WORDS_PER_GROUP;
    let (groups, a, a_steps, a_offsets, b, b_scales) = op.pointers();
    // SAFETY: caller contract: `a` holds groups*8*6 words, `a_steps`/`a_offsets` groups*6
    // values, `b` groups*8*16 words, `b_scales` groups*16 values, `c` rows i*ldc..i*ldc+16, i < 6.
    unsafe {
        let mut out = [[_mm256_setzero_ps(); 2]; QMR];
        if accumulate {
            for (i, o) in out.iter_mut().enumerate() {
                o[0] = _mm256_loadu_ps(c.add(i * ldc));
                o[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        let ones = _mm256_set1_epi16(1);
        let (mut a, mut b) = (a, b);
        for g in 0..groups {
            let mut acc = [[_mm256_setzero_si256(); 2]; QMR];
            for _ in 0..WORDS_PER_GROUP {
                let b0 = _mm256_loadu_si256(b.cast());
                let b1 = _mm256_loadu_si256(b.add(8).cast());
                for (i, ac) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(*a.add(i) as i32);
                    // Codes (u8, <= 15) x activations (i8) in pairs, summed over the group in
                    // i16 lanes: at most 8 · 3810 < 32767 (see qgemm4.rs), so nothing wraps.
                    ac[0] = _mm256_add_epi16(ac[0], _mm256_maddubs_epi16(b0, av));
                    ac[1] = _mm256_add_epi16(ac[1], _mm256_maddubs_epi16(b1, av));
                }
                a = a.add(QMR);
                b = b.add(QNR);
            }
            let ws0 = _mm256_loadu_ps(b_scales.add(g * QNR));
            let ws1 = _mm256_loadu_ps(b_scales.add(g * QNR + 8));
            for (i, (o, ac)) in out.iter_mut().zip(&acc).enumerate() {
                let offset = _mm256_set1_epi32(*a_offsets.add(g * QMR + i));
                let step = _mm256_set1_ps(*a_steps.add(g * QMR + i));
                // Pairs of i16 into one i32 per row, minus 8 · Σ xq (the codes' offset).
                let v0 = _mm256_sub_epi32(_mm256_madd_epi16(ac[0], ones), offset);
                let v1 = _mm256_sub_epi32(_mm256_madd_epi16(ac[1], ones), offset);
                o[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v0), _mm256_mul_ps(ws0, step), o[0]);
                o[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v1), _mm256_mul_ps(ws1, step), o[1]);
            }
        }
        for (i, o) in out.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), o[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), o[1]);
        }
    }
}

/// The int4 integer 6x16 micro-kernel (see `qgemm4.rs` for the layouts and the arithmetic).
pub(crate) fn q4kernel_6x16(
    _t: Token,
    op: &crate::qgemm4::Q4Operands<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    op.assert_tile(c, ldc);
    // SAFETY: the token proves AVX2+FMA; the operands' and the tile's extents were
    // asserted by `assert_tile`.
    unsafe { q4kernel_6x16_raw(op, c.as_mut_ptr(), ldc, accumulate) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn q4pack_b_raw(packed: *const u8, row_bytes: usize, groups: usize, words: *mut u32) {
    use crate::qgemm::QNR;
    use crate::qgemm4::WORDS_PER_GROUP;
    // SAFETY: caller contract: rows 0..16 of `packed` (stride `row_bytes`) hold `groups * 16`
    // bytes each; `words` has groups*8*16 slots.
    unsafe {
        let mask = _mm_set1_epi8(0x0f);
        for half in 0..2 {
            let rows = packed.add(half * 8 * row_bytes);
            for g in 0..groups {
                // Each row's group as 32 code bytes: values 0..16 (low nibbles), then 16..32.
                let r: [__m256i; 8] = std::array::from_fn(|i| {
                    let x = _mm_loadu_si128(rows.add(i * row_bytes + g * 16).cast());
                    let lo = _mm_and_si128(x, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), mask);
                    _mm256_set_m128i(hi, lo)
                });
                let t = transpose_words(r);
                for (w, &x) in t.iter().enumerate() {
                    let kq = g * WORDS_PER_GROUP + w;
                    _mm256_storeu_si256(words.add(kq * QNR + half * 8).cast(), x);
                }
            }
        }
    }
}

/// Unpacks a full 16-row int4 panel for the integer kernel: `words[kq*16 + j]` = row `j`'s codes
/// `4kq..4kq+4` as bytes. `packed` starts at row 0's first group; rows are `row_bytes` apart.
pub(crate) fn q4pack_b(
    _t: Token,
    packed: &[u8],
    row_bytes: usize,
    groups: usize,
    words: &mut [u32],
) {
    use crate::qgemm::QNR;
    assert!(
        packed.len() >= (QNR - 1) * row_bytes + groups * 16
            && words.len() >= groups * crate::qgemm4::WORDS_PER_GROUP * QNR,
        "int4 panel out of bounds"
    );
    // SAFETY: the token proves AVX2; extents asserted above.
    unsafe { q4pack_b_raw(packed.as_ptr(), row_bytes, groups, words.as_mut_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refined_reciprocal_dequantization_is_bit_exact() {
        let Some(t) = Token::detect() else { return };
        // Every int8 value against many scales, log-uniform over a wide range, plus specials.
        let mut s = 0x1234_5678_u64;
        let mut scales = vec![
            1.0f32,
            127.0,
            0.5,
            3.0,
            1e-30,
            1e30,
            f32::INFINITY,
            0.0,
            -2.5,
        ];
        for _ in 0..20_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let e = ((s >> 11) as f64 / (1u64 << 53) as f64) * 120.0 - 40.0;
            let m = 1.0 + ((s >> 20) & 0xFFFF) as f64 / 65536.0;
            scales.push((m * 2f64.powf(e)) as f32);
        }
        for &inv in &scales {
            for q in -128i8..=127 {
                let want = f32::from(q) / inv;
                let got = dequant_refined(t, q, inv);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "q {q} inv {inv:e}: {got:e} vs {want:e}"
                );
            }
        }
    }

    #[test]
    fn vector_exp_is_accurate() {
        let Some(t) = Token::detect() else { return };
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
        for c in xs.chunks(8) {
            let mut a = [0.0f32; 8];
            a[..c.len()].copy_from_slice(c);
            let _ = t;
            // SAFETY: the token proves AVX2+FMA.
            let v = unsafe {
                let mut o = [0.0f32; 8];
                _mm256_storeu_ps(o.as_mut_ptr(), exp256(_mm256_loadu_ps(a.as_ptr())));
                o
            };
            for (&x, &y) in c.iter().zip(&v) {
                let want = f64::from(x).exp();
                if x < crate::wide_path::EXP_LO {
                    assert_eq!(y, 0.0, "exp({x})");
                } else {
                    let rel = (f64::from(y) - want).abs() / want;
                    assert!(rel < 3e-7, "exp({x}) = {y}, want {want}, rel {rel:e}");
                }
            }
        }
    }
}
