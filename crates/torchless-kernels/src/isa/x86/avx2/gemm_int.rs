//! The integer GEMM tiles (6x16) and their panel packers: int8 weights with 7-bit activations,
//! int4 weights with int8 activations.

use super::{transpose_words, Avx2};
use crate::isa::traits::{Q4Micro, Q4Operands, QMicro, QOperands, ACT_OFFSET, QMR, QNR};
use core::arch::x86_64::*;

/// See [`qkernel_6x16`]; the operands' arrays as pointers.
///
/// # Safety
/// AVX2 and FMA must be available; `a` must be valid for `groups * 16 * 6` reads and `a_scales`
/// for `groups * 6`, `b` for `groups * 16 * 16` and `b_scales`, `b_corr` for `groups * 16`, and
/// `c` for reads and writes of `c[i*ldc..i*ldc + 16]` for `i < 6`.
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
    const WORDS: usize = QOperands::WORDS_PER_GROUP;
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

/// The int8 integer 6x16 micro-kernel: `vpmaddubsw` + `vpmaddwd` (see `gemm::int8` for the
/// layouts and the arithmetic).
fn qkernel_6x16(_t: Avx2, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    op.assert_tile(c, ldc);
    // SAFETY: the token proves AVX2+FMA; the operands' and the tile's extents were asserted by
    // `assert_tile`.
    unsafe {
        qkernel_6x16_raw(
            op.groups,
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

/// See [`qpack_b`].
///
/// # Safety
/// AVX2 must be available; `kc % 64 == 0`; `q` must be valid for reads of
/// `q[j*row_stride..j*row_stride + kc]` for `j < 16`, `words` for `kc / 4 * 16` writes and `corr`
/// for `kc / 64 * 16`.
#[target_feature(enable = "avx2,fma")]
unsafe fn qpack_b_raw(q: *const i8, row_stride: usize, kc: usize, words: *mut u32, corr: *mut i32) {
    // SAFETY: caller contract: rows 0..16 of `q` (stride `row_stride`) hold `kc` bytes each
    // (kc % 64 == 0); `words` has kc/4*16 slots and `corr` kc/64*16.
    unsafe {
        let offsets = _mm256_set1_epi8(ACT_OFFSET as i8);
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
                        // ACT_OFFSET · (sum of the 4 bytes), per row: what the activation offset
                        // adds.
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
/// `4kq..4kq+4`, `corr[g*16 + j] = -ACT_OFFSET · Σ` of row `j`'s group `g`. `q` starts at row 0's
/// first byte; rows are `row_stride` apart; `kc % 64 == 0`.
fn qpack_b(_t: Avx2, q: &[i8], row_stride: usize, kc: usize, words: &mut [u32], corr: &mut [i32]) {
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

/// See [`q4kernel_6x16`].
///
/// # Safety
/// AVX2 and FMA must be available, and `op` and `c`, `ldc` must pass
/// `Q4Operands::assert_tile` (`c` pointing to the tile's first value).
#[target_feature(enable = "avx2,fma")]
unsafe fn q4kernel_6x16_raw(op: &Q4Operands<'_>, c: *mut f32, ldc: usize, accumulate: bool) {
    const WORDS_PER_GROUP: usize = Q4Operands::WORDS_PER_GROUP;
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
                    // i16 lanes: at most 8 · 3810 < 32767 (see `gemm::int4`), so nothing wraps.
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

/// The int4 integer 6x16 micro-kernel: `vpmaddubsw` with whole groups summed in i16 (see
/// `gemm::int4` for the layouts and the arithmetic).
fn q4kernel_6x16(_t: Avx2, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    op.assert_tile(c, ldc);
    // SAFETY: the token proves AVX2+FMA; the operands' and the tile's extents were
    // asserted by `assert_tile`.
    unsafe { q4kernel_6x16_raw(op, c.as_mut_ptr(), ldc, accumulate) }
}

/// See [`q4pack_b`].
///
/// # Safety
/// AVX2 must be available; `packed` must be valid for reads of
/// `packed[j*row_bytes..j*row_bytes + groups*16]` for `j < 16`, and `words` for
/// `groups * 8 * 16` writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn q4pack_b_raw(packed: *const u8, row_bytes: usize, groups: usize, words: *mut u32) {
    const WORDS_PER_GROUP: usize = Q4Operands::WORDS_PER_GROUP;
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
    _t: Avx2,
    packed: &[u8],
    row_bytes: usize,
    groups: usize,
    words: &mut [u32],
) {
    assert!(
        packed.len() >= (QNR - 1) * row_bytes + groups * 16
            && words.len() >= groups * Q4Operands::WORDS_PER_GROUP * QNR,
        "int4 panel out of bounds"
    );
    // SAFETY: the token proves AVX2; extents asserted above.
    unsafe { q4pack_b_raw(packed.as_ptr(), row_bytes, groups, words.as_mut_ptr()) }
}

impl QMicro for Avx2 {
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        qkernel_6x16(self, op, c, ldc, accumulate);
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        super::prefetch(self, p);
    }

    fn pack(self, q: &[i8], row_stride: usize, kc: usize, w: &mut [u32], c: &mut [i32]) -> bool {
        qpack_b(self, q, row_stride, kc, w, c);
        true
    }
}

impl Q4Micro for Avx2 {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        q4kernel_6x16(self, op, c, ldc, accumulate);
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        super::prefetch(self, p);
    }

    fn pack(self, packed: &[u8], row_bytes: usize, groups: usize, words: &mut [u32]) -> bool {
        q4pack_b(self, packed, row_bytes, groups, words);
        true
    }
}
