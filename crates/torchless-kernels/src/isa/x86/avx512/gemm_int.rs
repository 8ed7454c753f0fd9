//! The int4 integer GEMM tile with `vpdpbusd` on 512-bit vectors; panels are unpacked, and
//! lines prefetched, by the AVX2 code.

use super::Avx512;
use crate::isa::traits::{Q4Micro, Q4Operands, QMR, QNR};
use crate::isa::x86::avx2::{self, q4pack_b};
use core::arch::x86_64::*;

/// The 6 x 16 tile of `gemm::int4` with `vpdpbusd`: per depth quad, one load of 16 rows' codes
/// and one instruction per token for 64 multiply-adds (4 per row), each group's sum started at
/// `− 8 · Σ xq` so the codes' offset costs no instruction; then per group and token the
/// conversion and one FMA by `d · dx`, the scalar tile's operations in the same order.
///
/// # Safety
/// The token's features must be available, and `op` and `c`, `ldc` must pass
/// `Q4Operands::assert_tile` (`c` pointing to the tile's first value).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4kernel_6x16_raw(op: &Q4Operands<'_>, c: *mut f32, ldc: usize, accumulate: bool) {
    const WORDS_PER_GROUP: usize = Q4Operands::WORDS_PER_GROUP;
    let (groups, a, a_steps, a_offsets, b, b_scales) = op.pointers();
    // SAFETY: (whole body) every pointer offset below stays inside the extents of the caller
    // contract: word `kq * QMR + i` of `a` and `kq * QNR ..+16` of `b` for kq < groups * 8,
    // entries `g * QMR + i` / `g * QNR ..+16` of the per-group arrays for g < groups.
    unsafe {
        let mut out = [_mm512_setzero_ps(); QMR];
        if accumulate {
            for (i, o) in out.iter_mut().enumerate() {
                *o = _mm512_loadu_ps(c.add(i * ldc));
            }
        }
        let (mut a, mut b) = (a, b);
        for g in 0..groups {
            let mut acc: [__m512i; QMR] =
                std::array::from_fn(|i| _mm512_set1_epi32(-*a_offsets.add(g * QMR + i)));
            for _ in 0..WORDS_PER_GROUP {
                let bw = _mm512_loadu_si512(b.cast());
                for (i, ac) in acc.iter_mut().enumerate() {
                    // Codes (u8, <= 15) x the token's four activations (i8), summed per row.
                    *ac = _mm512_dpbusd_epi32(*ac, bw, _mm512_set1_epi32(*a.add(i) as i32));
                }
                a = a.add(QMR);
                b = b.add(QNR);
            }
            let ws = _mm512_loadu_ps(b_scales.add(g * QNR));
            for (i, (o, ac)) in out.iter_mut().zip(&acc).enumerate() {
                let step = _mm512_set1_ps(*a_steps.add(g * QMR + i));
                *o = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*ac), _mm512_mul_ps(ws, step), *o);
            }
        }
        for (i, o) in out.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * ldc), *o);
        }
    }
}

/// The int4 integer 6 x 16 micro-kernel with VNNI (see `gemm::int4` for the layouts and the
/// arithmetic); bit-identical to the portable and AVX2 kernels.
fn q4kernel_6x16(_t: Avx512, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    op.assert_tile(c, ldc);
    // SAFETY: the token proves the features; the operands' and the tile's extents were
    // asserted by `assert_tile`.
    unsafe { q4kernel_6x16_raw(op, c.as_mut_ptr(), ldc, accumulate) }
}

impl Q4Micro for Avx512 {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        q4kernel_6x16(self, op, c, ldc, accumulate);
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        avx2::prefetch(self.avx2(), p);
    }

    fn pack(self, packed: &[u8], row_bytes: usize, groups: usize, words: &mut [u32]) -> bool {
        q4pack_b(self.avx2(), packed, row_bytes, groups, words);
        true
    }
}
