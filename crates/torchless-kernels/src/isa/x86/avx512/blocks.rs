//! ggml block rows with AVX-512 VNNI: the AVX2 row loop (`avx2::blocks::rows_body`) with
//! `vpdpbusd` on 256-bit vectors as its integer dot product (four products summed into each i32
//! lane in one instruction, where AVX2 needs `vpmaddubsw` and `vpmaddwd`; for the K-quants'
//! sub-block scales, `vpmaddubsw` then `vpdpwssd`, which multiplies the i16 pair sums by the
//! scales and adds them into the i32 lanes in one instruction: `vpmulld` on `vpdpbusd`'s sums
//! was slower than AVX2). The integer sums are exact either way and
//! the f32 operations after them are the shared ones, so results are bit-identical to the scalar
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

    #[inline(always)]
    unsafe fn dot_scaled(acc: __m256i, u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i {
        // SAFETY: caller contract: AVX-512 VNNI and VL available (and AVX2). The pair sums of
        // `vpmaddubsw` fit an i16 (as in AVX2) and `vpdpwssd` multiplies them by the scales and
        // adds pairs into i32, exactly.
        unsafe {
            let p = _mm256_maddubs_epi16(u, s);
            let sc = _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16));
            _mm256_dpwssd_epi32(acc, p, sc)
        }
    }

    #[inline(always)]
    unsafe fn dot_pairs(acc: __m256i, u: __m256i, s: __m256i, sc: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 VNNI and VL available (and AVX2); exact as AVX2's
        // `vpmaddwd` and add.
        unsafe { _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), sc) }
    }

    #[inline(always)]
    unsafe fn merge_nibble(x: __m256i, y: __m256i) -> __m256i {
        // SAFETY: caller contract: AVX-512 F and VL available. Truth table 0xEC: (A & C) | B
        // with A = x, B = y, C = 0x0f.
        unsafe { _mm256_ternarylogic_epi32::<0xEC>(x, y, _mm256_set1_epi8(0x0f)) }
    }
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
