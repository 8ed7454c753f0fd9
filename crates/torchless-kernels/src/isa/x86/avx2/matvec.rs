//! Decode rows for f32, int8 and int4 weights, one input or several (the row kernels
//! `matvec_many.rs` builds on).

use super::{cvt_i8, hsum, Avx2, MULTI_B, PF_GROUPS};
use crate::int4::{assert_row_shapes, Int4Input, BLOCK_GROUPS, BLOCK_X_BYTES};
use crate::isa::traits::{Int4Matvec, Matvec};
use crate::mat::{F32Mat, Int4Mat, Int8Mat, GROUP_SIZE};
use core::arch::x86_64::*;

/// `Σ q[i] x[i]` for `i < n`, the int8 values converted to f32.
///
/// # Safety
/// AVX2 and FMA must be available; `q` and `x` must be valid for `n` reads.
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

/// `Σ q[i] x[i]` over the common length.
pub(super) fn dot_i8(_t: Avx2, q: &[i8], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { dot_i8_raw(q.as_ptr(), x.as_ptr(), n) }
}

/// `Σ_c w[r*cols + c] x[c]` for `R` consecutive rows. Each load prefetches the same position
/// `R` rows further on, i.e. the next pass's data: a fixed distance in bytes overshoots short
/// rows (at 2048 columns it lands in rows this pass already reads).
///
/// # Safety
/// AVX2+FMA available; `w` valid for `R * cols` reads, `x` for `cols`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_rows<const R: usize>(w: *const f32, cols: usize, x: *const f32) -> [f32; R] {
    // SAFETY: caller contract, with one input.
    unsafe { f32_rows_multi::<R, 1>(w, cols, [x]) }.map(|v| v[0])
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
pub(super) unsafe fn f32_rows_multi<const R: usize, const B: usize>(
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

/// One instruction set's f32 and row-aligned int8 decode rows, for the row loops
/// [`matvec_f32_rows`] and [`matvec_i8_rows`] that the x86 paths share.
pub(in crate::isa::x86) trait RowKernels: Copy {
    /// `Σ_c w[r*cols + c] x[c]` for `R` consecutive rows.
    ///
    /// # Safety
    /// The implementation's features available; `w` valid for `R * cols` reads, `x` for `cols`.
    unsafe fn f32_rows<const R: usize>(self, w: *const f32, cols: usize, x: *const f32)
        -> [f32; R];

    /// `N` row-aligned int8 rows (`q[i]`, inverse scales `inv[i]`) times `x`, in the arithmetic
    /// of [`i8_rows_multi`].
    ///
    /// # Safety
    /// The implementation's features available; each `q[i]` valid for `groups * 64` reads,
    /// `inv[i]` for `groups`, `x` for `groups * 64`.
    unsafe fn i8_rows<const N: usize>(
        self,
        q: [*const i8; N],
        inv: [*const f32; N],
        groups: usize,
        x: *const f32,
    ) -> [f32; N];

    /// The AVX2 token (for the int8 matrices whose groups straddle rows).
    fn avx2(self) -> Avx2;
}

impl RowKernels for Avx2 {
    unsafe fn f32_rows<const R: usize>(
        self,
        w: *const f32,
        cols: usize,
        x: *const f32,
    ) -> [f32; R] {
        // SAFETY: the token proves AVX2+FMA; the rest is the caller's contract.
        unsafe { f32_rows::<R>(w, cols, x) }
    }

    unsafe fn i8_rows<const N: usize>(
        self,
        q: [*const i8; N],
        inv: [*const f32; N],
        groups: usize,
        x: *const f32,
    ) -> [f32; N] {
        // SAFETY: the token proves AVX2+FMA; the rest is the caller's contract.
        unsafe { i8_rows::<N>(q, inv, groups, x) }
    }

    fn avx2(self) -> Avx2 {
        self
    }
}

/// `y = W x` for f32 weights, four rows per pass so each `x` load feeds four FMAs.
pub(in crate::isa::x86) fn matvec_f32_rows<K: RowKernels>(
    k: K,
    w: &F32Mat<'_>,
    x: &[f32],
    y: &mut [f32],
) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_f32 shapes");
    let wp = w.data().as_ptr();
    let full = rows / 4 * 4;
    for r0 in (0..full).step_by(4) {
        // SAFETY: the token proves the features; `F32Mat` guarantees `rows * cols` values, so
        // rows r0..r0+4 are in bounds; `x` has `cols` values (asserted above).
        let out = unsafe { k.f32_rows::<4>(wp.add(r0 * cols), cols, x.as_ptr()) };
        y[r0..r0 + 4].copy_from_slice(&out);
    }
    for (r, yr) in y.iter_mut().enumerate().skip(full) {
        // SAFETY: as above, for one row.
        *yr = unsafe { k.f32_rows::<1>(wp.add(r * cols), cols, x.as_ptr()) }[0];
    }
}

/// `N` row-aligned int8 rows far apart in memory (`q[i]`, with scales `inv[i]`), processed
/// together: `N` independent memory streams per thread and `N` times the independent work per
/// loaded `x` vector: per 64-group, the int8·f32 products accumulated in two registers, then
/// divided once by the group's inverse scale.
///
/// # Safety
/// AVX2+FMA available; each `q[i]` valid for `groups * 64` reads, `inv[i]` for `groups`, `x`
/// for `groups * 64`.
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
/// arithmetic of [`i8_rows`], so a batch gives bit-identical rows to one input at a time.
///
/// # Safety
/// As [`i8_rows`], for every row and every input `xs[b]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn i8_rows_multi<const N: usize, const B: usize>(
    q: [*const i8; N],
    inv: [*const f32; N],
    groups: usize,
    xs: [*const f32; B],
) -> [[f32; B]; N] {
    // SAFETY: caller contract, as in `i8_rows` for each row and input.
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
pub(in crate::isa::x86) fn matvec_i8_rows<K: RowKernels>(
    k: K,
    w: &Int8Mat<'_>,
    x: &[f32],
    y: &mut [f32],
) {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(x.len() == cols && y.len() == rows, "matvec_i8 shapes");
    if !w.is_row_aligned() {
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = w.row_dot_by_groups(r, x, |q, x| dot_i8(k.avx2(), q, x));
        }
        return;
    }
    let groups = cols / GROUP_SIZE;
    // Row-aligned: `Int8Mat` guarantees rows*cols values and rows*groups scales.
    assert!(w.q().len() == rows * cols && w.inv_scales().len() == rows * groups);
    let (qp, ip) = (w.q().as_ptr(), w.inv_scales().as_ptr());
    // Rows r and r + rows/2 go together: two memory streams per thread reach more of the read
    // bandwidth than one, three or four. An odd last row goes alone.
    const STREAMS: usize = 2;
    let stride = rows / STREAMS;
    for r in 0..stride {
        let rs: [usize; STREAMS] = std::array::from_fn(|i| r + i * stride);
        // SAFETY: the token proves the features; every row rs[i] < rows, so its weights and
        // scales are in bounds (asserted lengths); `x` has `cols = groups * 64` values.
        let out = unsafe {
            k.i8_rows::<STREAMS>(
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
        *yr =
            unsafe { k.i8_rows::<1>([qp.add(r * cols)], [ip.add(r * groups)], groups, x.as_ptr()) }
                [0];
    }
}

/// Prefetch distance of the int4 matvec, in bytes of codes (as for int8, a few KiB ahead along
/// the row stream).
const PF_INT4_BYTES: usize = 4096;

/// `N` int4 rows (far apart in memory: `N` streams per thread, as in the int8 matvec) with `B`
/// quantized inputs, each (row, input) in the lane order and f32 operation order of
/// the scalar `row_dot` (bit-identical to it).
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
            let x = input.xq.as_ptr().add(b * BLOCK_X_BYTES);
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
/// each weight row is read once for all inputs, each result bit-identical to the scalar `row_dot`.
fn matvec_i4_multi(_t: Avx2, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
    let (batch, groups, out_rows) = assert_row_shapes(w, inputs, r0, yt);
    let (pp, sp) = (w.packed().as_ptr(), w.scales().as_ptr());
    if batch == 1 {
        // One input (decode): rows i and i + out_rows/2 go together, two memory streams per
        // thread as in the int8 matvec. An odd last row goes alone.
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

impl Matvec for Avx2 {
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_f32_rows(self, w, x, y);
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
        matvec_i8_rows(self, w, x, y);
    }
}

impl Int4Matvec for Avx2 {
    fn rows(self, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
        matvec_i4_multi(self, w, inputs, r0, yt);
    }
}
