//! ggml block rows with AVX-512 VNNI: the AVX2 row loop (`avx2::blocks::rows_body`) with
//! `vpdpbusd` on 256-bit vectors as its integer dot product (four products summed into each i32
//! lane in one instruction, where AVX2 needs `vpmaddubsw` and `vpmaddwd`); for the K-quants'
//! sub-block scales, `vpmaddubsw` then `vpdpwssd`, which multiplies the i16 pair sums by the
//! scales and adds them into the i32 lanes in one instruction (`vpmulld` on `vpdpbusd`'s sums
//! was slower). Q4_K blocks take 512-bit vectors (`q4k_sums`): 64 code bytes per load against
//! the reordered activations `BlockInput::qs_k4`. The 32-value types take a group of 8 blocks
//! two blocks per 512-bit vector (`group_sums`: each block's codes in the activations' order,
//! Q8_0's as `w + 128` with `− 128 Σ q` from the input's sums, one `vpdpbusd` per pair) where
//! the 256-bit form needs one per block plus a nibble split or a sign trick, and Zen 5's
//! full-width units run the two at the same rate. The integer sums are exact either way and the
//! f32 operations after them are the shared ones, so results are bit-identical to the scalar
//! and AVX2 paths. The exact arithmetic runs the AVX2 kernel.

use super::Avx512;
use crate::block_input::{assert_block_shapes, BlockInput};
use crate::blocks::BlockMat;
use crate::isa::traits::BlockMatvec;
use crate::isa::x86::avx2::blocks::{block_bytes, rows_body, I8Dot, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use core::arch::x86_64::*;

/// `vpdpbusd` (AVX-512 VNNI with VL, on 256 bits).
#[derive(Clone, Copy, Debug)]
struct Dpbusd;

impl I8Dot for Dpbusd {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 VNNI and VL available.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512vl,avx512vnni")]
    unsafe fn dot_pairs(acc: __m256i, u: __m256i, s: __m256i, sc: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 VNNI and VL available (and AVX2); exact as AVX2's
        // `vpmaddwd` and add. Written as assembly: LLVM splits the intrinsic's chains back into
        // `vpmaddwd` and `vpaddd` (one more instruction per 32 codes); the kernels keep two
        // independent chains per block instead.
        unsafe {
            let p = _mm256_maddubs_epi16(u, s);
            let mut a = acc;
            core::arch::asm!(
                "vpdpwssd {a}, {p}, {sc}",
                a = inout(ymm_reg) a,
                p = in(ymm_reg) p,
                sc = in(ymm_reg) sc,
                options(pure, nomem, nostack, preserves_flags)
            );
            a
        }
    }

    /// On 512-bit vectors: one load of 64 code bytes gives two sub-blocks' low nibbles and
    /// two sub-blocks' high nibbles, which meet the reordered activations (`qs_k4`) in one
    /// 64-byte load each; each sub-block pair's scales are a `vpermd` of the 16 scale dwords.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    unsafe fn q4k_sums<const B: usize>(
        qs: *const u8,
        x: [*const i8; B],
        xr: [*const i8; B],
        sp: *const i32,
        lo: __m256i,
        hi: __m256i,
    ) -> [__m256i; B] {
        let _ = (x, sp);
        // SAFETY: caller contract: 128 code bytes at `qs`, 256 activation codes at each `xr`.
        // The integer sums are exact and equal to the 256-bit kernel's (each product is the
        // same, only grouped into lanes differently).
        unsafe {
            let scz = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let m4 = _mm512_set1_epi8(0x0f);
            let pick =
                |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
            let idx = [pick(0, 2), pick(1, 3), pick(8, 10), pick(9, 11)];
            let zero = _mm512_setzero_si512();
            let (mut acc, mut acc2) = ([zero; B], [zero; B]);
            for pp in 0..2 {
                let v = _mm512_loadu_si512(qs.add(64 * pp).cast());
                let l = _mm512_and_si512(v, m4);
                let h = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                let sl = _mm512_permutexvar_epi32(idx[2 * pp], scz);
                let sh = _mm512_permutexvar_epi32(idx[2 * pp + 1], scz);
                for i in 0..B {
                    let xa = _mm512_loadu_si512(xr[i].add(128 * pp).cast());
                    let xb = _mm512_loadu_si512(xr[i].add(128 * pp + 64).cast());
                    acc[i] = dpwssd512(acc[i], _mm512_maddubs_epi16(l, xa), sl);
                    acc2[i] = dpwssd512(acc2[i], _mm512_maddubs_epi16(h, xb), sh);
                }
            }
            std::array::from_fn(|i| {
                let t = _mm512_add_epi32(acc[i], acc2[i]);
                _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64::<1>(t))
            })
        }
    }

    /// The 32-value types: two blocks per 512-bit vector against 64 contiguous activation codes,
    /// one `vpdpbusd` per pair and input, then the 8 vectors of partial sums reduced to the
    /// 8 block sums (exact integers, so the same as `block_totals` of the block-by-block
    /// form); see [`group_sums`].
    #[inline(always)]
    unsafe fn group32<const T: u8, const B: usize>(
        blk: *const u8,
        m: usize,
        x: [*const i8; B],
        sums: [*const i32; B],
    ) -> Option<[__m256i; B]> {
        // SAFETY: caller contract.
        unsafe {
            match T {
                Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 => Some(group_sums::<T, B>(blk, m, x, sums)),
                _ => None,
            }
        }
    }

    #[inline(always)]
    unsafe fn merge_nibble(x: __m256i, y: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 F and VL available. Truth table 0xEC: (A & C) | B
        // with A = x, B = y, C = 0x0f.
        unsafe { _mm256_ternarylogic_epi32::<0xEC>(x, y, _mm256_set1_epi8(0x0f)) }
    }
}

/// See `I8Dot::group32`, for the 32-value types.
///
/// # Safety
/// AVX-512 F, BW, VNNI available; `m` (1 to 8) blocks of type `T` at `blk`; `32 m` codes at
/// each `x[i]`, `m` sums at each `sums[i]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn group_sums<const T: u8, const B: usize>(
    blk: *const u8,
    m: usize,
    x: [*const i8; B],
    sums: [*const i32; B],
) -> [__m256i; B] {
    let zero = _mm512_setzero_si512();
    // SAFETY: caller contract; a full group's pairs are all whole (straight-line code, the
    // sums in registers), a short one's last pair may hold one block.
    unsafe {
        let z: [[__m512i; 4]; B] = if m == 8 {
            let z = std::array::from_fn::<_, 4, _>(|p| pair_sums::<T, B>(blk, p, true, x));
            std::array::from_fn(|i| std::array::from_fn(|p| z[p][i]))
        } else {
            let mut z = [[zero; 4]; B];
            for p in 0..m.div_ceil(2) {
                let pair = pair_sums::<T, B>(blk, p, 2 * p + 2 <= m, x);
                for (zi, v) in z.iter_mut().zip(pair) {
                    zi[p] = v;
                }
            }
            z
        };
        std::array::from_fn(|i| {
            let s = reduce_pairs(&z[i]);
            if T == Q8_0 {
                // The codes were taken as `w + 128`: `Σ w·q = Σ (w + 128)·q − 128 Σ q`.
                let first = if m == 8 { 0xff } else { (1u8 << m) - 1 };
                let q = _mm256_maskz_loadu_epi32(first, sums[i]);
                _mm256_sub_epi32(s, _mm256_slli_epi32::<7>(q))
            } else {
                s
            }
        })
    }
}

/// Pair `p` of a group (blocks `2p` and, if `two`, `2p + 1`) of a 32-value type `T` times
/// each input: per input, 16 partial sums, 8 per block, of unsigned codes (the 4-bit types'
/// nibbles, with the fifth bits of Q5_0 / Q5_1; Q8_0's `w + 128`) times the activations.
///
/// # Safety
/// AVX-512 F, BW, VNNI available; the pair's blocks at `blk + 2 p · block bytes` and their
/// `64` (`32` when not `two`) codes at each `x[i] + 64 p`.
#[inline(always)]
unsafe fn pair_sums<const T: u8, const B: usize>(
    blk: *const u8,
    p: usize,
    two: bool,
    x: [*const i8; B],
) -> [__m512i; B] {
    let bb = block_bytes(T);
    let (b0, b1) = (
        blk.wrapping_add(2 * p * bb),
        blk.wrapping_add((2 * p + 1) * bb),
    );
    // SAFETY: caller contract: every load is inside the pair's blocks or masked to the
    // activation codes it has (masked-off bytes are not accessed).
    unsafe {
        let codes = if T == Q8_0 {
            let w0 = _mm256_loadu_si256(b0.add(2).cast());
            let w1 = if two {
                _mm256_loadu_si256(b1.add(2).cast())
            } else {
                _mm256_setzero_si256()
            };
            let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
            _mm512_xor_si512(w, _mm512_set1_epi8(-128))
        } else {
            // Where the nibbles (and Q5's 32 fifth bits) start in a block.
            let (qs, qh) = match T {
                Q4_0 => (2, 0),
                Q4_1 => (4, 0),
                Q5_0 => (6, 2),
                _ => (8, 4),
            };
            let q0 = _mm_loadu_si128(b0.add(qs).cast());
            let q1 = if two {
                _mm_loadu_si128(b1.add(qs).cast())
            } else {
                _mm_setzero_si128()
            };
            // 128-bit lanes: block 0's nibbles twice, then block 1's twice; the second copy
            // of each shifted by 4 bits (16-bit counts 0, 4 per lane), then masked.
            let pair = _mm512_castsi256_si512(_mm256_set_m128i(q1, q0));
            let v = _mm512_shuffle_i64x2::<0x50>(pair, pair);
            let shift = _mm512_set_epi64(
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
                0,
                0,
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
                0,
                0,
            );
            let nibbles = _mm512_and_si512(_mm512_srlv_epi16(v, shift), _mm512_set1_epi8(0x0f));
            if T == Q5_0 || T == Q5_1 {
                // Byte `k` of the vector is value `k % 32` of block `k / 32`: bit `k` of the
                // two blocks' fifth bits side by side.
                let h0 = u64::from(b0.add(qh).cast::<u32>().read_unaligned());
                let h1 = if two {
                    u64::from(b1.add(qh).cast::<u32>().read_unaligned())
                } else {
                    0
                };
                _mm512_mask_add_epi8(nibbles, h0 | (h1 << 32), nibbles, _mm512_set1_epi8(0x10))
            } else {
                nibbles
            }
        };
        std::array::from_fn(|i| {
            let xv = if two {
                _mm512_loadu_si512(x[i].add(64 * p).cast())
            } else {
                _mm512_maskz_loadu_epi8((1 << 32) - 1, x[i].add(64 * p).cast())
            };
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, xv)
        })
    }
}

/// The 8 sums of the 8 runs of 8 dwords of four vectors (run `2k` in the low half of
/// `z[k]`, `2k + 1` in its high half), in run order: 128-bit lanes added in pairs, then two
/// rounds of interleaves, then one permutation.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn reduce_pairs(z: &[__m512i; 4]) -> __m256i {
    // Lane L of `a01`: 4 partial sums of run L (of `a23`: run L + 4).
    let fold = |u: __m512i, v: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(u, v),
            _mm512_shuffle_i32x4::<0xDD>(u, v),
        )
    };
    let (a01, a23) = (fold(z[0], z[1]), fold(z[2], z[3]));
    let w = _mm512_add_epi32(
        _mm512_unpacklo_epi32(a01, a23),
        _mm512_unpackhi_epi32(a01, a23),
    );
    // Dword 0 of lane L: run L's sum; dword 1: run L + 4's.
    let w = _mm512_add_epi32(w, _mm512_shuffle_epi32::<0b01_00_11_10>(w));
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, w))
}

/// `acc + p · sc` (`vpdpwssd` on 512 bits), as assembly so that LLVM keeps one instruction.
///
/// # Safety
/// AVX-512 F and VNNI available.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd512(acc: __m512i, p: __m512i, sc: __m512i) -> __m512i {
    let mut a = acc;
    // SAFETY: caller contract: the instruction is available; registers only.
    unsafe {
        core::arch::asm!(
            "vpdpwssd {a}, {p}, {sc}",
            a = inout(zmm_reg) a,
            p = in(zmm_reg) p,
            sc = in(zmm_reg) sc,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    a
}

/// `rows_body` with `vpdpbusd`.
///
/// # Safety
/// The token's features available; shapes checked by `assert_block_shapes`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_vnni(w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
    // SAFETY: caller contract; this function has every feature `rows_body` and `Dpbusd` need.
    unsafe { rows_body::<Dpbusd>(w, inputs, r0, yt) }
}

impl BlockMatvec for Avx512 {
    fn rows(self, w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
        assert_block_shapes(w, inputs, r0, yt);
        if inputs.is_empty() {
            return;
        }
        // SAFETY: the token proves every feature `rows_vnni` enables; the shapes were asserted.
        unsafe { rows_vnni(w, inputs, r0, yt) }
    }

    fn rows_exact(self, w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        self.avx2().rows_exact(w, xs, batch, r0, yt)
    }
}
