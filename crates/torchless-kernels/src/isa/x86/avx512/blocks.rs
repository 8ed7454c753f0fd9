//! ggml block rows with AVX-512 VNNI: the AVX2 row loop (`avx2::blocks::rows_body`) with
//! `vpdpbusd` on 256-bit vectors as its integer dot product (four products summed into each i32
//! lane in one instruction, where AVX2 needs `vpmaddubsw` and `vpmaddwd`); for the K-quants'
//! sub-block scales, `vpmaddubsw` then `vpdpwssd`, which multiplies the i16 pair sums by the
//! scales and adds them into the i32 lanes in one instruction (`vpmulld` on `vpdpbusd`'s sums
//! was slower). Q4_K blocks take 512-bit vectors (`q4k_sums`): 64 code bytes per load against
//! the reordered activations `BlockInput::qs_k4`. The integer sums are exact either way and the
//! f32 operations after them are the shared ones, so results are bit-identical to the scalar
//! and AVX2 paths. The exact arithmetic runs the AVX2 kernel.

use super::Avx512;
use crate::block_input::{assert_block_shapes, BlockInput};
use crate::blocks::BlockMat;
use crate::isa::traits::BlockMatvec;
use crate::isa::x86::avx2::blocks::{rows_body, I8Dot};
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

    #[inline(always)]
    unsafe fn merge_nibble(x: __m256i, y: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 F and VL available. Truth table 0xEC: (A & C) | B
        // with A = x, B = y, C = 0x0f.
        unsafe { _mm256_ternarylogic_epi32::<0xEC>(x, y, _mm256_set1_epi8(0x0f)) }
    }
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
