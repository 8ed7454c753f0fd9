//! ggml block rows on AVX2, bit-identical to the scalar definition (`block_input.rs`).
//!
//! Default arithmetic: each weight block's codes are unpacked into 32-byte vectors in the
//! activations' order (nibbles split with a shift and a mask, Q5's fifth bits spread from `qh`
//! by a byte shuffle and compare, Q6_K's two high bits shifted in), multiplied with the int8
//! activations by `vpmaddubsw` (unsigned codes × signed activations; Q8_0's signed weights
//! through `|w|` and `sign(q, w)`) and `vpmaddwd` (by ones, or by the sub-block scales of the
//! K-quants), giving 8 partial i32 sums per block. Eight blocks' sums are reduced to one vector
//! of 8 block sums (four `vphaddd`, a lane swap and an add); the integer corrections are vectors
//! too (Q4_0's `− 8 Σ q` from the input's sums of 8 blocks; the K-quants' mins and Q6_K's
//! `− 32 Σ sc · bsum` by one `vpmaddwd` of the unpacked scales with the input's i16 sums per
//! 16); then the f32 products and sums run on 8 lanes exactly as the scalar definition orders
//! them. No sum can saturate: a `vpmaddubsw` pair is at most `2 · 128 · 127 = 32512`.
//!
//! K-quant scales are unpacked once per block with integer operations on 32-bit words and
//! widened to dwords holding the scale in both i16 halves, read back by broadcast loads (Q4_K,
//! Q5_K: one per 32 codes) or `vpermd` (Q6_K: two per 32 codes). Blocks are taken in
//! straight-line pairs so that every vector stays in a register, with a software prefetch
//! `PF_BYTES` ahead.
//!
//! The row loop is written once ([`rows_body`], generic over the integer dot product [`I8Dot`])
//! and instantiated here with `vpmaddubsw` / `vpmaddwd` and on the AVX-512 path with `vpdpbusd`:
//! both give the same exact integers, and the same f32 operations follow.
//!
//! Exact arithmetic: each piece of up to 256 values of a row is dequantized into a small buffer
//! (codes widened to f32, times the scale, plus the min with one FMA: the same correctly rounded
//! values as the scalar dequantization), then multiplied into four 8-lane accumulators (products
//! and sums separately, lane `c % 32`), reduced as `(a0 + a2) + (a1 + a3)` and the 8-lane tree.

use super::{hsum, Avx2, MULTI_B};
use crate::block_input::{
    assert_block_shapes, assert_exact_shapes, BlockInput, EXACT_LANES, ROW_TILE,
};
use crate::blocks::{block_scales, has_min, sub_values, BlockMat, BlockType};
use crate::half::{bf16_to_f32, f16_to_f32};
use crate::isa::traits::BlockMatvec;
use core::arch::x86_64::*;

/// An exact integer dot product of 32 unsigned bytes with 32 signed bytes, into 8 i32 lanes
/// (lane `k` holds bytes `4k .. 4k + 4`; every pair product sum must fit an i16 for the AVX2
/// form: true of every code here).
pub(crate) trait I8Dot: Copy {
    /// `acc + Σ u·s` per lane.
    ///
    /// # Safety
    /// The instructions of the implementation must be available.
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;

    /// `acc + Σ u·s` per lane, each `vpmaddubsw` pair sum multiplied by the i16 in its half of
    /// `sc`'s dword (`sc`: a scale in both i16 halves of each dword).
    ///
    /// # Safety
    /// The instructions of the implementation must be available.
    #[inline(always)]
    unsafe fn dot_pairs(acc: __m256i, u: __m256i, s: __m256i, sc: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX2 available.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc)) }
    }

    /// The 8 partial i32 sums of `S = Σ_j sc_j Σ u·q` of one Q4_K block (no fifth bits) for
    /// each of `B` inputs: `qs` its 128 code bytes, `x[i]` input `i`'s 256 codes of the block,
    /// `xr[i]` the same reordered as `BlockInput::qs_k4`; `sp` the 16 scale dwords of
    /// `k_block` (`sc_j` at dword `j` for `j < 4`, `j + 4` else), also in `lo` and `hi`.
    ///
    /// # Safety
    /// The instructions of the implementation must be available; the pointers as described.
    #[inline(always)]
    unsafe fn q4k_sums<const B: usize>(
        qs: *const u8,
        x: [*const i8; B],
        xr: [*const i8; B],
        sp: *const i32,
        lo: __m256i,
        hi: __m256i,
    ) -> [__m256i; B] {
        let _ = (xr, lo, hi);
        // SAFETY: caller contract.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let (mut acc, mut acc2) = ([zero; B], [zero; B]);
            for p in 0..4 {
                let v = _mm256_loadu_si256(qs.add(32 * p).cast());
                let lo = _mm256_and_si256(v, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                let dword = |j: usize| if j < 4 { j } else { j + 4 };
                let s0 = _mm256_set1_epi32(*sp.add(dword(2 * p)));
                let s1 = _mm256_set1_epi32(*sp.add(dword(2 * p + 1)));
                for i in 0..B {
                    let q0 = _mm256_loadu_si256(x[i].add(64 * p).cast());
                    let q1 = _mm256_loadu_si256(x[i].add(64 * p + 32).cast());
                    acc[i] = Self::dot_pairs(acc[i], lo, q0, s0);
                    acc2[i] = Self::dot_pairs(acc2[i], hi, q1, s1);
                }
            }
            std::array::from_fn(|i| _mm256_add_epi32(acc[i], acc2[i]))
        }
    }

    /// The block sums `S` (as `block_totals` of the block-by-block form, plus its integer
    /// correction for Q8_0; without the other types' offset corrections and second terms,
    /// which the caller takes from the sums; lanes past `m` zero) of a group of `m` (1 to 8)
    /// blocks of type `T` at `blk` for each of `B` inputs (`x[i]`: input `i`'s
    /// codes of the group's first block, `sums[i]` its sums), where the implementation has a
    /// whole-group form for `T`; `None` (the default) takes the block-by-block one.
    ///
    /// # Safety
    /// The instructions of the implementation must be available; `m` whole blocks at `blk`,
    /// `32 · m` codes at each `x[i]` and `m` sums at each `sums[i]`.
    #[inline(always)]
    unsafe fn group32<const T: u8, const B: usize>(
        blk: *const u8,
        m: usize,
        x: [*const i8; B],
        sums: [*const i32; B],
    ) -> Option<[__m256i; B]> {
        let _ = (blk, m, x, sums);
        None
    }

    /// `(x & 0x0f) | y` per byte.
    ///
    /// # Safety
    /// The instructions of the implementation must be available.
    #[inline(always)]
    unsafe fn merge_nibble(x: __m256i, y: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX2 available.
        unsafe { _mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi8(0x0f)), y) }
    }
}

/// `vpmaddubsw` then `vpmaddwd` (AVX2).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Maddubs;

impl I8Dot for Maddubs {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX2 available.
        unsafe {
            let p = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }
}

// Type codes, for monomorphizing the row loop per type.
pub(crate) const Q8_0: u8 = 0;
pub(crate) const Q4_0: u8 = 1;
pub(crate) const Q4_1: u8 = 2;
pub(crate) const Q5_0: u8 = 3;
pub(crate) const Q5_1: u8 = 4;
const Q4K: u8 = 5;
const Q5K: u8 = 6;
const Q6K: u8 = 7;

pub(crate) const fn block_bytes(t: u8) -> usize {
    match t {
        Q8_0 => 34,
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        Q4K => 144,
        Q5K => 176,
        _ => 210,
    }
}

/// Whether the block's integer extra is a second term (`f32(extra) · (m · d_x)`) rather than a
/// correction added to the integer sum.
const fn second_term(t: u8) -> bool {
    matches!(t, Q4_1 | Q5_1 | Q4K | Q5K)
}

/// Offset of the half `d` in the block.
const fn d_offset(t: u8) -> usize {
    if t == Q6K {
        208
    } else {
        0
    }
}

#[inline(always)]
unsafe fn read_u16(p: *const u8) -> u16 {
    // SAFETY: caller contract: 2 readable bytes.
    unsafe { p.cast::<u16>().read_unaligned() }
}

#[inline(always)]
unsafe fn read_u32(p: *const u8) -> u32 {
    // SAFETY: caller contract: 4 readable bytes.
    unsafe { p.cast::<u32>().read_unaligned() }
}

/// 16 bytes of nibbles at `p` as 32 codes: low nibbles (values 0-15), then high (16-31).
///
/// # Safety
/// AVX2 available; 16 readable bytes at `p`.
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    // SAFETY: caller contract.
    unsafe {
        let x = _mm_loadu_si128(p.cast());
        let v = _mm256_set_m128i(_mm_srli_epi16::<4>(x), x);
        _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
    }
}

/// Byte `i` = `0x10` where bit `i` of `qh` is set, else 0.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> __m256i {
    // SAFETY: caller contract (register-only instructions).
    unsafe {
        let v = _mm256_set1_epi32(qh as i32);
        // Byte i of the result takes byte i / 8 of `qh`.
        let spread = _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        );
        let bytes = _mm256_shuffle_epi8(v, spread);
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, sel), sel);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// Bits `k` (resp. pairs of bits `k, k + 1` with `mask = 3`) of each byte, shifted to bit 4.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn high_bits(v: __m256i, k: i32, mask: i8) -> __m256i {
    // SAFETY: caller contract (register-only instructions). A 16-bit shift moves bits of the
    // upper byte into the lower one only above the mask.
    unsafe {
        let s = _mm256_srl_epi16(v, _mm_cvtsi32_si128(k));
        _mm256_slli_epi16::<4>(_mm256_and_si256(s, _mm256_set1_epi8(mask)))
    }
}

/// 32 activation codes of `x` from `at`.
///
/// # Safety
/// AVX2 available; `at + 32 <= x.qs.len()`.
#[inline(always)]
unsafe fn load_q(x: &BlockInput, at: usize) -> __m256i {
    // SAFETY: caller contract.
    unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(at).cast()) }
}

/// `v − k` per byte.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn sub8(v: __m256i, k: i8) -> __m256i {
    // SAFETY: caller contract (register-only instructions).
    unsafe { _mm256_sub_epi8(v, _mm256_set1_epi8(k)) }
}

/// Block `b` (`blk`: its bytes) of a 32-value type `T` times `B` inputs: the 8 partial i32
/// sums of each input's `S` into `parts[i][j]` (the integer extra, a correction of `S` or the
/// sum of the second term, see [`second_term`], is taken per group from the inputs' sums).
///
/// # Safety
/// The features of `D` and AVX2 available; `blk` points to a whole block; every input holds
/// block `b`.
#[inline(always)]
unsafe fn block_sums<D: I8Dot, const T: u8, const B: usize>(
    blk: *const u8,
    xs: &[&BlockInput; B],
    b: usize,
    parts: &mut [[__m256i; 8]; B],
    j: usize,
) {
    // SAFETY: caller contract: every load below stays inside the block (see the layouts in
    // `blocks.rs`) and inside each input's codes of block `b`.
    unsafe {
        let zero = _mm256_setzero_si256();
        match T {
            Q8_0 => {
                let w = _mm256_loadu_si256(blk.add(2).cast());
                let aw = _mm256_abs_epi8(w);
                for i in 0..B {
                    parts[i][j] = D::dot(zero, aw, _mm256_sign_epi8(load_q(xs[i], b * 32), w));
                }
            }
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
                let u = match T {
                    Q4_0 => nibbles16(blk.add(2)),
                    Q4_1 => nibbles16(blk.add(4)),
                    Q5_0 => {
                        _mm256_or_si256(nibbles16(blk.add(6)), fifth_bits(read_u32(blk.add(2))))
                    }
                    _ => _mm256_or_si256(nibbles16(blk.add(8)), fifth_bits(read_u32(blk.add(4)))),
                };
                for i in 0..B {
                    parts[i][j] = D::dot(zero, u, load_q(xs[i], b * 32));
                }
            }
            _ => unreachable!("K-quant blocks take `k_block`"),
        }
    }
}

/// Lanes `0..m` set (`m <= 8`): the mask of a short last group's loads.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn first_lanes(m: usize) -> __m256i {
    // SAFETY: caller contract (register-only instructions).
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(m as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// The first `m` (at most 8) floats at `p`, zeros after: a masked load, so a short last group
/// needs no copy into a padded array (a `memcpy` call per input and group, with the registers
/// saved around it, took ~15% of a small model's decode).
///
/// # Safety
/// AVX2 available; `m` floats readable at `p` (masked-off lanes are never accessed).
#[inline(always)]
unsafe fn load_first_f32(p: *const f32, m: usize) -> __m256 {
    // SAFETY: caller contract.
    unsafe {
        if m == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, first_lanes(m))
        }
    }
}

/// As [`load_first_f32`] for `i32`.
///
/// # Safety
/// AVX2 available; `m` values readable at `p`.
#[inline(always)]
unsafe fn load_first_i32(p: *const i32, m: usize) -> __m256i {
    // SAFETY: caller contract.
    unsafe {
        if m == 8 {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskload_epi32(p, first_lanes(m))
        }
    }
}

/// The 8 block sums of 8 vectors of partial sums, in block order.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn block_totals(v: &[__m256i; 8]) -> __m256i {
    // SAFETY: caller contract (register-only instructions).
    unsafe {
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        // [v0, v1, v2, v3] low-lane sums, then high-lane sums (and the same for 4-7).
        let g0 = _mm256_hadd_epi32(h01, h23);
        let g1 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(g0, g1),
            _mm256_permute2x128_si256::<0x31>(g0, g1),
        )
    }
}

/// One row of type `T` (`row`: `nb` blocks) times `B` inputs, default arithmetic.
///
/// # Safety
/// The features of `D`, AVX2, FMA and F16C available; `row` points to `nb` blocks; every input
/// holds `nb` blocks.
#[inline(always)]
unsafe fn row_dot<D: I8Dot, const T: u8, const B: usize>(
    row: *const u8,
    nb: usize,
    xs: &[&BlockInput; B],
) -> [f32; B] {
    // SAFETY: caller contract. Whole groups pass a constant 8 (so their per-block tests
    // fold away), the last group its length.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); B];
        let whole = nb / 8 * 8;
        for g0 in (0..whole).step_by(8) {
            row_group::<D, T, B>(row, g0, 8, xs, &mut acc);
        }
        if whole < nb {
            row_group::<D, T, B>(row, whole, nb - whole, xs, &mut acc);
        }
        std::array::from_fn(|i| hsum(acc[i]))
    }
}

/// Blocks `g0 .. g0 + m` (`m` ≤ 8) of a row of type `T` times `B` inputs, added into `acc`.
///
/// # Safety
/// As [`row_dot`], with `g0 + m` at most the row's blocks.
#[inline(always)]
unsafe fn row_group<D: I8Dot, const T: u8, const B: usize>(
    row: *const u8,
    g0: usize,
    m: usize,
    xs: &[&BlockInput; B],
    acc: &mut [__m256; B],
) {
    // SAFETY: caller contract; the block pointers stay inside the row, the scale reads inside
    // each input's `d` (the last group's loads are masked to the blocks it has).
    unsafe {
        let bb = block_bytes(T);
        let mut parts = [[_mm256_setzero_si256(); 8]; B];
        // The halves gathered in registers (see `row_dot_k`); a constant loop, unrolled,
        // keeps `parts` in registers.
        let (mut dw, mut mw) = ([0u64; 2], [0u64; 2]);
        // One prefetch per cache line of the group's blocks (small blocks share lines).
        prefetch_ahead(row.wrapping_add(g0 * bb), 8 * bb);
        let group = D::group32::<T, B>(
            row.add(g0 * bb),
            m,
            std::array::from_fn(|i| xs[i].qs.as_ptr().add(g0 * 32)),
            std::array::from_fn(|i| xs[i].sums.as_ptr().add(g0)),
        );
        for j in 0..8 {
            if j < m {
                let blk = row.add((g0 + j) * bb);
                if group.is_none() {
                    block_sums::<D, T, B>(blk, xs, g0 + j, &mut parts, j);
                }
                let sh = 16 * (j % 4);
                dw[j / 4] |= u64::from(read_u16(blk.add(d_offset(T)))) << sh;
                if second_term(T) {
                    mw[j / 4] |= u64::from(read_u16(blk.add(2))) << sh;
                }
            }
        }
        let dwv = _mm256_cvtph_ps(_mm_set_epi64x(dw[1] as i64, dw[0] as i64));
        let mwv = _mm256_cvtph_ps(_mm_set_epi64x(mw[1] as i64, mw[0] as i64));
        for i in 0..B {
            let dxv = load_first_f32(xs[i].d.as_ptr().add(g0), m);
            let s = match group {
                Some(sums) => sums[i],
                None => block_totals(&parts[i]),
            };
            // The extra: `off · Σ q` per block, from the input's sums of the group.
            let e = if T == Q8_0 {
                _mm256_setzero_si256()
            } else {
                let sums = load_first_i32(xs[i].sums.as_ptr().add(g0), m);
                match T {
                    Q4_0 => _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<3>(sums)),
                    Q5_0 => _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<4>(sums)),
                    _ => sums,
                }
            };
            if second_term(T) {
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dwv, dxv));
                acc[i] = _mm256_add_ps(acc[i], t);
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(e), _mm256_mul_ps(mwv, dxv));
                acc[i] = _mm256_add_ps(acc[i], t);
            } else {
                let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s, e));
                acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(s, _mm256_mul_ps(dwv, dxv)));
            }
        }
    }
}

/// Prefetch distance along a row, in bytes (as the int4 decode kernels').
const PF_BYTES: usize = 2048;

/// Prefetches the cache lines `PF_BYTES` ahead of a block of `bb` bytes at `blk`.
#[inline(always)]
fn prefetch_ahead(blk: *const u8, bb: usize) {
    let mut off = 0;
    while off < bb {
        // SAFETY: a prefetch is a hint and never faults, whatever the address (SSE is part of
        // x86_64); the address is computed without `add`'s in-bounds requirement.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF_BYTES + off).cast()) };
        off += 64;
    }
}

/// Dword-aligned storage of one block's scales as dwords holding the scale in both i16 halves
/// (read back by broadcasts, which are plain loads).
#[repr(C, align(32))]
struct ScaleDwords([i32; 16]);

/// The 8 block sums of 8 vectors of partial sums, taken as pairs come (`h[k]` =
/// `vphaddd(v[2k], v[2k + 1])`): the same tree as [`block_totals`].
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn pair_totals(h: &[__m256i; 4]) -> __m256i {
    // SAFETY: caller contract (register-only instructions).
    unsafe {
        let g0 = _mm256_hadd_epi32(h[0], h[1]);
        let g1 = _mm256_hadd_epi32(h[2], h[3]);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(g0, g1),
            _mm256_permute2x128_si256::<0x31>(g0, g1),
        )
    }
}

/// One K-quant block (`T` = Q4K, Q5K or Q6K) times `B` inputs: 8 partial i32 sums of each
/// input's `S` (Q6_K: its `− 32 Σ sc · bsum` included) into `s[i]`, and for Q4K / Q5K 8 partial
/// sums of `M = Σ m_j Σ q` into `m[i]`.
///
/// Scales and mins are unpacked with integer operations on 32-bit words, widened once per block
/// to dwords holding the scale in both i16 halves, and applied by `vpmaddwd` / `vpdpwssd` on
/// the `vpmaddubsw` pair sums: Q4K / Q5K one scale per 32 codes (a broadcast load), Q6K two
/// (`vpermd`). The mins meet the activations' i16 sums per 16 in one `vpmaddwd`.
///
/// # Safety
/// The features of `D` and AVX2 available; `blk` points to a whole block; every input holds
/// block `b`.
#[inline(always)]
unsafe fn k_block<D: I8Dot, const T: u8, const B: usize>(
    blk: *const u8,
    xs: &[&BlockInput; B],
    b: usize,
    sd: &mut ScaleDwords,
    s: &mut [__m256i; B],
    m: &mut [__m256i; B],
) {
    // SAFETY: caller contract: every load below stays inside the block (layouts in `blocks.rs`)
    // and inside each input's codes and sums of block `b`; `sd` holds 16 aligned dwords.
    unsafe {
        let zero = _mm256_setzero_si256();
        let m4 = _mm256_set1_epi8(0x0f);
        // Two independent chains of products per input.
        let (mut acc, mut acc2) = ([zero; B], [zero; B]);
        if T == Q6K {
            // Words s0..s15; dwords (both halves): lo = [s0..s3 | s8..s11], hi = [s4..s7 |
            // s12..s15].
            let scw = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
            let lo = _mm256_unpacklo_epi16(scw, scw);
            let hi = _mm256_unpackhi_epi16(scw, scw);
            let m30 = _mm256_set1_epi8(0x30);
            for n in 0..2 {
                let a = _mm256_loadu_si256(blk.add(64 * n).cast());
                let c = _mm256_loadu_si256(blk.add(64 * n + 32).cast());
                let h = _mm256_loadu_si256(blk.add(128 + 32 * n).cast());
                let codes = [
                    D::merge_nibble(a, _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30)),
                    D::merge_nibble(c, _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30)),
                    D::merge_nibble(_mm256_srli_epi16::<4>(a), _mm256_and_si256(h, m30)),
                    D::merge_nibble(
                        _mm256_srli_epi16::<4>(c),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
                    ),
                ];
                for (k, &u) in codes.iter().enumerate() {
                    // Sub-blocks 8n + 2k and 8n + 2k + 1: in group g = 2n + k / 2 of four.
                    let g = 2 * n + k / 2;
                    let src = if g % 2 == 0 { lo } else { hi };
                    let o = (2 * (k % 2) + 4 * (g / 2)) as i32;
                    let idx = _mm256_setr_epi32(o, o, o, o, o + 1, o + 1, o + 1, o + 1);
                    let sc = _mm256_permutevar8x32_epi32(src, idx);
                    for i in 0..B {
                        let q = load_q(xs[i], b * 256 + 128 * n + 32 * k);
                        if k % 2 == 0 {
                            acc[i] = D::dot_pairs(acc[i], u, q, sc);
                        } else {
                            acc2[i] = D::dot_pairs(acc2[i], u, q, sc);
                        }
                    }
                }
            }
            for i in 0..B {
                let bs = _mm256_loadu_si256(xs[i].sums16.as_ptr().add(b * 16).cast());
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(scw, bs));
                s[i] = _mm256_sub_epi32(_mm256_add_epi32(acc[i], acc2[i]), corr);
            }
        } else {
            let (a, bw, c) = (
                read_u32(blk.add(4)),
                read_u32(blk.add(8)),
                read_u32(blk.add(12)),
            );
            let sc = u64::from(a & 0x3f3f_3f3f)
                | u64::from((c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030)) << 32;
            let mn = u64::from(bw & 0x3f3f_3f3f)
                | u64::from(((c >> 4) & 0x0f0f_0f0f) | ((bw >> 2) & 0x3030_3030)) << 32;
            // Words [sc0..sc7 | mn0..mn7]; dwords lo = [sc0..sc3 | mn0..mn3], hi = [sc4..sc7 |
            // mn4..mn7].
            let w = _mm256_cvtepu8_epi16(_mm_set_epi64x(mn as i64, sc as i64));
            let lo = _mm256_unpacklo_epi16(w, w);
            let hi = _mm256_unpackhi_epi16(w, w);
            _mm256_store_si256(sd.0.as_mut_ptr().cast(), lo);
            _mm256_store_si256(sd.0.as_mut_ptr().add(8).cast(), hi);
            let mins = _mm256_permute2x128_si256::<0x31>(lo, hi);
            // Read the dwords back through an opaque pointer, so that each scale is a broadcast
            // load rather than a shuffle of the register just stored.
            let sp = std::hint::black_box(sd.0.as_ptr());
            let (qs, qh) = if T == Q5K {
                (blk.add(48), _mm256_loadu_si256(blk.add(16).cast()))
            } else {
                (blk.add(16), zero)
            };
            if T == Q4K {
                let x = std::array::from_fn(|i| xs[i].qs.as_ptr().add(b * 256));
                let xr = std::array::from_fn(|i| xs[i].qs_k4.as_ptr().add(b * 256));
                acc = D::q4k_sums::<B>(qs, x, xr, sp, lo, hi);
            }
            for p in 0..4 {
                if T == Q4K {
                    break;
                }
                let v = _mm256_loadu_si256(qs.add(32 * p).cast());
                let mut lo = _mm256_and_si256(v, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                if T == Q5K {
                    lo = _mm256_or_si256(lo, high_bits(qh, 2 * p as i32, 1));
                    hi = _mm256_or_si256(hi, high_bits(qh, 2 * p as i32 + 1, 1));
                }
                // Scale of sub-block j: dword j (j < 4) or 8 + j − 4.
                let dword = |j: usize| if j < 4 { j } else { j + 4 };
                let s0 = _mm256_set1_epi32(*sp.add(dword(2 * p)));
                let s1 = _mm256_set1_epi32(*sp.add(dword(2 * p + 1)));
                for i in 0..B {
                    let at = b * 256 + 64 * p;
                    acc[i] = D::dot_pairs(acc[i], lo, load_q(xs[i], at), s0);
                    acc2[i] = D::dot_pairs(acc2[i], hi, load_q(xs[i], at + 32), s1);
                }
            }
            for i in 0..B {
                s[i] = _mm256_add_epi32(acc[i], acc2[i]);
                let bs = _mm256_loadu_si256(xs[i].sums16.as_ptr().add(b * 16).cast());
                m[i] = _mm256_madd_epi16(mins, bs);
            }
        }
    }
}

/// Blocks `j0` and `j0 + 1` of the group from block `g0` of a K-quant row (those below `m`):
/// `vphaddd` of their [`k_block`] sums per input (`S`, then `M`), their halves put into `dw` and
/// `mw` (four per word, block `j` at bits `16 (j % 4)` of word `j / 4`).
///
/// # Safety
/// As [`row_dot_k`]; `g0 + m` blocks in the row and in every input.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k_pair<D: I8Dot, const T: u8, const B: usize>(
    row: *const u8,
    g0: usize,
    j0: usize,
    m: usize,
    xs: &[&BlockInput; B],
    sd: &mut ScaleDwords,
    dw: &mut [u64; 2],
    mw: &mut [u64; 2],
) -> ([__m256i; B], [__m256i; B]) {
    // SAFETY: caller contract: blocks below `m` exist in the row and in every input.
    unsafe {
        let bb = block_bytes(T);
        let zero = _mm256_setzero_si256();
        let mut s = [[zero; B]; 2];
        let mut mm = [[zero; B]; 2];
        for h in 0..2 {
            let j = j0 + h;
            if j < m {
                let blk = row.add((g0 + j) * bb);
                prefetch_ahead(blk, bb);
                k_block::<D, T, B>(blk, xs, g0 + j, sd, &mut s[h], &mut mm[h]);
                let sh = 16 * (j % 4);
                dw[j / 4] |= u64::from(read_u16(blk.add(d_offset(T)))) << sh;
                if T != Q6K {
                    mw[j / 4] |= u64::from(read_u16(blk.add(2))) << sh;
                }
            }
        }
        let hs = std::array::from_fn(|i| _mm256_hadd_epi32(s[0][i], s[1][i]));
        let hm = if T != Q6K {
            std::array::from_fn(|i| _mm256_hadd_epi32(mm[0][i], mm[1][i]))
        } else {
            [zero; B]
        };
        (hs, hm)
    }
}

/// One row of a K-quant type `T` (`row`: `nb` blocks) times `B` inputs, default arithmetic:
/// [`k_block`] per block, the block sums of each group of 8 reduced by the [`block_totals`]
/// tree as pairs come, then the shared f32 operations.
///
/// # Safety
/// As [`row_dot`].
#[inline(always)]
unsafe fn row_dot_k<D: I8Dot, const T: u8, const B: usize>(
    row: *const u8,
    nb: usize,
    xs: &[&BlockInput; B],
) -> [f32; B] {
    // SAFETY: caller contract; the block pointers stay inside the row, the scale reads inside
    // each input's `d` (a short last group's loads are masked to the blocks it has).
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); B];
        let mut sd = ScaleDwords([0; 16]);
        for g0 in (0..nb).step_by(8) {
            let m = (nb - g0).min(8);
            // The halves of the group's blocks gathered in registers (8 two-byte stores read
            // back as one vector would defeat store forwarding).
            let (mut dw, mut mw) = ([0u64; 2], [0u64; 2]);
            // Straight-line pairs (constant indices keep every vector in registers).
            let p0 = k_pair::<D, T, B>(row, g0, 0, m, xs, &mut sd, &mut dw, &mut mw);
            let p1 = k_pair::<D, T, B>(row, g0, 2, m, xs, &mut sd, &mut dw, &mut mw);
            let p2 = k_pair::<D, T, B>(row, g0, 4, m, xs, &mut sd, &mut dw, &mut mw);
            let p3 = k_pair::<D, T, B>(row, g0, 6, m, xs, &mut sd, &mut dw, &mut mw);
            let hs: [[__m256i; 4]; B] =
                std::array::from_fn(|i| [p0.0[i], p1.0[i], p2.0[i], p3.0[i]]);
            let hm: [[__m256i; 4]; B] =
                std::array::from_fn(|i| [p0.1[i], p1.1[i], p2.1[i], p3.1[i]]);
            let dwv = _mm256_cvtph_ps(_mm_set_epi64x(dw[1] as i64, dw[0] as i64));
            let mwv = _mm256_cvtph_ps(_mm_set_epi64x(mw[1] as i64, mw[0] as i64));
            for i in 0..B {
                let dxv = load_first_f32(xs[i].d.as_ptr().add(g0), m);
                let s = pair_totals(&hs[i]);
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dwv, dxv));
                acc[i] = _mm256_add_ps(acc[i], t);
                if T != Q6K {
                    let e = _mm256_sub_epi32(zero, pair_totals(&hm[i]));
                    let t = _mm256_mul_ps(_mm256_cvtepi32_ps(e), _mm256_mul_ps(mwv, dxv));
                    acc[i] = _mm256_add_ps(acc[i], t);
                }
            }
        }
        std::array::from_fn(|i| hsum(acc[i]))
    }
}

/// Rows `r0..` of `w` (type `T`) times every input, in tiles of rows.
///
/// # Safety
/// As [`rows_body`].
#[inline(always)]
unsafe fn rows_typed<D: I8Dot, const T: u8>(
    w: &BlockMat<'_>,
    inputs: &[BlockInput],
    r0: usize,
    yt: &mut [f32],
) {
    let batch = inputs.len();
    let n = yt.len() / batch;
    let nb = w.blocks_per_row();
    for t0 in (0..n).step_by(ROW_TILE) {
        let t1 = (t0 + ROW_TILE).min(n);
        for_input_blocks!(batch, |b0, B| {
            let xs: [&BlockInput; B] = std::array::from_fn(|k| &inputs[b0 + k]);
            for i in t0..t1 {
                let row = w.row(r0 + i).as_ptr();
                // SAFETY: caller contract: the row is inside `w`, each input holds its blocks.
                let out = unsafe {
                    if matches!(T, Q4K | Q5K | Q6K) {
                        row_dot_k::<D, T, B>(row, nb, &xs)
                    } else {
                        row_dot::<D, T, B>(row, nb, &xs)
                    }
                };
                yt[i * batch + b0..i * batch + b0 + B].copy_from_slice(&out);
            }
        });
    }
}

/// The default-arithmetic rows kernel on any instruction set with AVX2, FMA and F16C and the
/// integer dot product `D`: `yt[i * batch + b]` = row `r0 + i` of `w` times `inputs[b]`.
///
/// # Safety
/// The features of `D`, AVX2, FMA and F16C available (the caller is a `#[target_feature]`
/// function with them, into which this is inlined); the shapes checked by
/// [`assert_block_shapes`]; `w` of a quantized type.
#[inline(always)]
pub(crate) unsafe fn rows_body<D: I8Dot>(
    w: &BlockMat<'_>,
    inputs: &[BlockInput],
    r0: usize,
    yt: &mut [f32],
) {
    // SAFETY: caller contract.
    unsafe {
        match w.ty() {
            BlockType::Q8_0 => rows_typed::<D, Q8_0>(w, inputs, r0, yt),
            BlockType::Q4_0 => rows_typed::<D, Q4_0>(w, inputs, r0, yt),
            BlockType::Q4_1 => rows_typed::<D, Q4_1>(w, inputs, r0, yt),
            BlockType::Q5_0 => rows_typed::<D, Q5_0>(w, inputs, r0, yt),
            BlockType::Q5_1 => rows_typed::<D, Q5_1>(w, inputs, r0, yt),
            BlockType::Q4K => rows_typed::<D, Q4K>(w, inputs, r0, yt),
            BlockType::Q5K => rows_typed::<D, Q5K>(w, inputs, r0, yt),
            BlockType::Q6K => rows_typed::<D, Q6K>(w, inputs, r0, yt),
            BlockType::F16 | BlockType::BF16 => unreachable!("F16/BF16 take f32 activations"),
        }
    }
}

/// [`rows_body`] with `vpmaddubsw`.
///
/// # Safety
/// AVX2, FMA and F16C available; shapes checked by [`assert_block_shapes`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
    // SAFETY: caller contract; this function has the features `rows_body` needs.
    unsafe { rows_body::<Maddubs>(w, inputs, r0, yt) }
}

/// Values per piece of the exact arithmetic (a multiple of every block size and of 32).
const PIECE: usize = 256;

/// Dequantizes values `c0 .. c0 + n` of a row (`row`: its bytes; `n <= PIECE`, `c0` a multiple
/// of `PIECE`) into `buf`, zero past `n` up to a multiple of 32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_piece(ty: BlockType, row: &[u8], c0: usize, n: usize, buf: &mut [f32; PIECE]) {
    let padded = n.next_multiple_of(EXACT_LANES);
    buf[n..padded].fill(0.0);
    match ty {
        BlockType::F16 | BlockType::BF16 => {
            let src = &row[2 * c0..2 * (c0 + n)];
            let full = n / 8 * 8;
            for k in (0..full).step_by(8) {
                // SAFETY: 16 bytes of `src` from 2k (k + 8 <= n), 8 floats of `buf` from k.
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().add(2 * k).cast());
                    let v = if ty == BlockType::F16 {
                        _mm256_cvtph_ps(h)
                    } else {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                    };
                    _mm256_storeu_ps(buf.as_mut_ptr().add(k), v);
                }
            }
            for k in full..n {
                let h = u16::from_le_bytes([src[2 * k], src[2 * k + 1]]);
                buf[k] = if ty == BlockType::F16 {
                    f16_to_f32(h)
                } else {
                    bf16_to_f32(h)
                };
            }
        }
        _ => {
            let (bv, bb) = (ty.block_values(), ty.block_bytes());
            let sub = sub_values(ty);
            let with_min = has_min(ty);
            let mut codes = [0i8; 256];
            let (mut scale, mut min) = ([0.0f32; 16], [0.0f32; 16]);
            for (bi, out) in buf[..n].chunks_exact_mut(bv).enumerate() {
                let b = c0 / bv + bi;
                let blk = &row[b * bb..(b + 1) * bb];
                block_codes_simd(ty, blk, &mut codes[..bv]);
                block_scales(ty, blk, &mut scale, &mut min);
                for k in (0..bv).step_by(8) {
                    // SAFETY: 8 codes from k (k + 8 <= bv), 8 floats of `out` from k.
                    unsafe {
                        let c = _mm_loadl_epi64(codes.as_ptr().add(k).cast());
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
                        let s = _mm256_set1_ps(scale[k / sub]);
                        let v = if with_min {
                            _mm256_fmadd_ps(v, s, _mm256_set1_ps(min[k / sub]))
                        } else {
                            _mm256_mul_ps(v, s)
                        };
                        _mm256_storeu_ps(out.as_mut_ptr().add(k), v);
                    }
                }
            }
        }
    }
}

/// Stores 32 bytes at `o + at`.
///
/// # Safety
/// AVX2 available; 32 writable bytes at `o + at`.
#[inline(always)]
unsafe fn store32(o: *mut i8, at: usize, v: __m256i) {
    // SAFETY: caller contract.
    unsafe { _mm256_storeu_si256(o.add(at).cast(), v) }
}

/// The codes of a block as `blocks::block_codes` gives them, unpacked with the vector code.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_codes_simd(ty: BlockType, blk: &[u8], out: &mut [i8]) {
    assert!(blk.len() >= ty.block_bytes() && out.len() >= ty.block_values());
    let p = blk.as_ptr();
    let o = out.as_mut_ptr();
    // SAFETY: the loads stay inside the block (asserted size, layouts of `blocks.rs`) and the
    // stores inside `out` (asserted length).
    unsafe {
        match ty {
            BlockType::Q8_0 => store32(o, 0, _mm256_loadu_si256(p.add(2).cast())),
            BlockType::Q4_0 => store32(o, 0, sub8(nibbles16(p.add(2)), 8)),
            BlockType::Q4_1 => store32(o, 0, nibbles16(p.add(4))),
            BlockType::Q5_0 => store32(
                o,
                0,
                sub8(
                    _mm256_or_si256(nibbles16(p.add(6)), fifth_bits(read_u32(p.add(2)))),
                    16,
                ),
            ),
            BlockType::Q5_1 => store32(
                o,
                0,
                _mm256_or_si256(nibbles16(p.add(8)), fifth_bits(read_u32(p.add(4)))),
            ),
            BlockType::Q4K | BlockType::Q5K => {
                let five = ty == BlockType::Q5K;
                let qs = if five { p.add(48) } else { p.add(16) };
                let qh = if five {
                    _mm256_loadu_si256(p.add(16).cast())
                } else {
                    _mm256_setzero_si256()
                };
                for k in 0..4 {
                    let v = _mm256_loadu_si256(qs.add(32 * k).cast());
                    let mut lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
                    let mut hi =
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(0x0f));
                    if five {
                        lo = _mm256_or_si256(lo, high_bits(qh, 2 * k as i32, 1));
                        hi = _mm256_or_si256(hi, high_bits(qh, 2 * k as i32 + 1, 1));
                    }
                    store32(o, 64 * k, lo);
                    store32(o, 64 * k + 32, hi);
                }
            }
            BlockType::Q6K => {
                let m4 = _mm256_set1_epi8(0x0f);
                for n in 0..2 {
                    let a = _mm256_loadu_si256(p.add(64 * n).cast());
                    let c = _mm256_loadu_si256(p.add(64 * n + 32).cast());
                    let h = _mm256_loadu_si256(p.add(128 + 32 * n).cast());
                    let at = 128 * n;
                    store32(
                        o,
                        at,
                        sub8(
                            _mm256_or_si256(_mm256_and_si256(a, m4), high_bits(h, 0, 3)),
                            32,
                        ),
                    );
                    store32(
                        o,
                        at + 32,
                        sub8(
                            _mm256_or_si256(_mm256_and_si256(c, m4), high_bits(h, 2, 3)),
                            32,
                        ),
                    );
                    store32(
                        o,
                        at + 64,
                        sub8(
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(a), m4),
                                high_bits(h, 4, 3),
                            ),
                            32,
                        ),
                    );
                    store32(
                        o,
                        at + 96,
                        sub8(
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(c), m4),
                                high_bits(h, 6, 3),
                            ),
                            32,
                        ),
                    );
                }
            }
            BlockType::F16 | BlockType::BF16 => unreachable!("F16/BF16 have no codes"),
        }
    }
}

/// One row of `w` times `B` f32 inputs (`xs[k]`: `cols` values), exact arithmetic.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_exact<const B: usize>(w: &BlockMat<'_>, r: usize, xs: [&[f32]; B]) -> [f32; B] {
    let (ty, cols, row) = (w.ty(), w.cols(), w.row(r));
    let mut acc = [[_mm256_setzero_ps(); 4]; B];
    let mut buf = [0.0f32; PIECE];
    let mut xpad = [[0.0f32; PIECE]; B];
    for c0 in (0..cols).step_by(PIECE) {
        let n = PIECE.min(cols - c0);
        dequantize_piece(ty, row, c0, n, &mut buf);
        let padded = n.next_multiple_of(EXACT_LANES);
        for i in 0..B {
            // The input's values of the piece; a short last piece is copied, zero-padded.
            let src = &xs[i][c0..c0 + n];
            let x: &[f32] = if padded == n {
                src
            } else {
                xpad[i][..n].copy_from_slice(src);
                xpad[i][n..padded].fill(0.0);
                &xpad[i][..padded]
            };
            for k in (0..padded).step_by(EXACT_LANES) {
                for (l, a) in acc[i].iter_mut().enumerate() {
                    // SAFETY: 8 floats from k + 8l < padded in `buf` and `x`.
                    unsafe {
                        let wv = _mm256_loadu_ps(buf.as_ptr().add(k + 8 * l));
                        let xv = _mm256_loadu_ps(x.as_ptr().add(k + 8 * l));
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, xv));
                    }
                }
            }
        }
    }
    std::array::from_fn(|i| {
        let [a0, a1, a2, a3] = acc[i];
        hsum(_mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3)))
    })
}

/// Rows `r0..` times every input, exact arithmetic, inputs two at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_exact_avx2(w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
    let cols = w.cols();
    let n = yt.len() / batch;
    let x = |b: usize| &xs[b * cols..(b + 1) * cols];
    for t0 in (0..n).step_by(ROW_TILE) {
        let t1 = (t0 + ROW_TILE).min(n);
        let mut b0 = 0;
        while b0 < batch {
            for i in t0..t1 {
                let at = i * batch + b0;
                if b0 + 2 <= batch {
                    yt[at..at + 2].copy_from_slice(&row_exact::<2>(w, r0 + i, [x(b0), x(b0 + 1)]));
                } else {
                    yt[at] = row_exact::<1>(w, r0 + i, [x(b0)])[0];
                }
            }
            b0 += 2;
        }
    }
}

impl BlockMatvec for Avx2 {
    fn rows(self, w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
        assert_block_shapes(w, inputs, r0, yt);
        if inputs.is_empty() {
            return;
        }
        // SAFETY: the token proves AVX2, FMA and F16C; the shapes were asserted (a quantized
        // type: inputs of its kind exist only for those).
        unsafe { rows_avx2(w, inputs, r0, yt) }
    }

    fn rows_exact(self, w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        assert_exact_shapes(w, xs, batch, r0, yt);
        if batch == 0 || w.cols() == 0 {
            yt.fill(0.0);
            return;
        }
        // SAFETY: the token proves AVX2, FMA and F16C; the shapes were asserted.
        unsafe { rows_exact_avx2(w, xs, batch, r0, yt) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{block_codes, dequantize_range};

    #[test]
    fn vector_unpacking_and_dequantization_match_the_scalar_ones() {
        let Some(t) = Avx2::detect() else { return };
        let _ = t;
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for ty in BlockType::ALL {
            let (bv, bb) = (ty.block_values(), ty.block_bytes());
            let blocks = (2 * PIECE / bv).max(2) + 1;
            let mut row: Vec<u8> = (0..blocks * bb).map(|_| next() as u8).collect();
            // Finite halves where scales live (random exponents 0..29, signs).
            for b in row.chunks_exact_mut(bb) {
                let mut h = || ((next() as u16) & 0x83ff) | (((next() % 30) as u16) << 10);
                match ty {
                    BlockType::F16 => b.copy_from_slice(&h().to_le_bytes()),
                    BlockType::BF16 => {}
                    BlockType::Q6K => b[208..210].copy_from_slice(&h().to_le_bytes()),
                    _ => {
                        b[0..2].copy_from_slice(&h().to_le_bytes());
                        b[2..4].copy_from_slice(&h().to_le_bytes());
                    }
                }
            }
            if ty.is_quantized() {
                for b in row.chunks_exact(bb) {
                    let (mut want, mut got) = ([0i8; 256], [0i8; 256]);
                    block_codes(ty, b, &mut want[..bv]);
                    // SAFETY: the token proves the features.
                    unsafe { block_codes_simd(ty, b, &mut got[..bv]) };
                    assert_eq!(want, got, "{}", ty.name());
                }
            }
            let cols = blocks * bv;
            for c0 in (0..cols).step_by(PIECE) {
                let n = PIECE.min(cols - c0);
                let mut want = vec![0.0f32; n];
                dequantize_range(ty, &row, c0, &mut want);
                let mut got = [f32::NAN; PIECE];
                // SAFETY: the token proves the features.
                unsafe { dequantize_piece(ty, &row, c0, n, &mut got) };
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                        "{} {c0}+{i}",
                        ty.name()
                    );
                }
            }
        }
    }
}
