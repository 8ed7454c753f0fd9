//! The ggml-block integer GEMM tile with `vpdpbusd` / `vpdpwssd` on 512-bit vectors (16 rows per
//! register), bit-identical to the scalar tile: exact integer sums, then the same f32 operations.

use super::Avx512;
use crate::block_input::BLOCK_LANES;
use crate::isa::traits::{BlockMicro, BlockTile, QMR, QNR};
use crate::isa::x86::avx2;
use core::arch::x86_64::*;

/// Per block: per sub-block and token, one `vpdpbusd` per depth quad (64 multiply-adds) from
/// `−o · Σ q`, times the rows' integer sub-block scales (`vpmulld`) into the block sum; the mins'
/// pairs with `vpdpwssd`; then per token the two scaled additions into the block's lane.
///
/// # Safety
/// The token's features must be available, and `t` and `lanes` must pass
/// `BlockTile::assert_tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn block_tile_raw(t: &BlockTile<'_>, lanes: *mut f32) {
    let (a_off, a_d, a_pairs) = (t.a_off.as_ptr(), t.a_d.as_ptr(), t.a_pairs.as_ptr());
    let (b_sc, b_pairs, b_d, b_m) = (
        t.b_sc.as_ptr(),
        t.b_pairs.as_ptr(),
        t.b_d.as_ptr(),
        t.b_m.as_ptr(),
    );
    // SAFETY: (whole body) every offset stays inside the extents `assert_tile` checked: word
    // `kq * QMR + i` of `a` and `kq * QNR ..+16` of `b` for kq below blocks · subs · quads,
    // entries `sub * QMR + i` / `sub * QNR ..+16` for sub below blocks · subs (scales only when
    // subs > 1), `p * QMR + i` / `p * QNR ..+16` for p below blocks · pairs, `blk * QMR + i` /
    // `blk * QNR ..+16` below blocks (`b_m` only with pairs), and lane rows
    // `(i * 8 + lane) * QNR ..+16` below `BLOCK_TILE_LANES`.
    unsafe {
        let (mut a, mut b) = (t.a.as_ptr(), t.b.as_ptr());
        for blk in 0..t.blocks {
            let lane = (t.lane0 + blk) % BLOCK_LANES;
            let mut s = [_mm512_setzero_si512(); QMR];
            for sub in blk * t.subs..(blk + 1) * t.subs {
                let mut acc: [__m512i; QMR] =
                    std::array::from_fn(|i| _mm512_set1_epi32(-*a_off.add(sub * QMR + i)));
                for _ in 0..t.quads {
                    let bw = _mm512_loadu_si512(b.cast());
                    for (i, ac) in acc.iter_mut().enumerate() {
                        // Unsigned codes x the token's four signed activations, per row.
                        *ac = _mm512_dpbusd_epi32(*ac, bw, _mm512_set1_epi32(*a.add(i) as i32));
                    }
                    a = a.add(QMR);
                    b = b.add(QNR);
                }
                if t.subs > 1 {
                    let sc = _mm512_loadu_si512(b_sc.add(sub * QNR).cast());
                    for (si, ac) in s.iter_mut().zip(&acc) {
                        *si = _mm512_add_epi32(*si, _mm512_mullo_epi32(*ac, sc));
                    }
                } else {
                    s = acc;
                }
            }
            let mut m = [_mm512_setzero_si512(); QMR];
            for p in blk * t.pairs..(blk + 1) * t.pairs {
                let bp = _mm512_loadu_si512(b_pairs.add(p * QNR).cast());
                for (i, mi) in m.iter_mut().enumerate() {
                    let ap = _mm512_set1_epi32(*a_pairs.add(p * QMR + i) as i32);
                    *mi = _mm512_dpwssd_epi32(*mi, bp, ap);
                }
            }
            let dw = _mm512_loadu_ps(b_d.add(blk * QNR));
            let bm = if t.pairs > 0 {
                _mm512_loadu_ps(b_m.add(blk * QNR))
            } else {
                _mm512_setzero_ps()
            };
            for i in 0..QMR {
                let dx = _mm512_set1_ps(*a_d.add(blk * QMR + i));
                let at = lanes.add((i * BLOCK_LANES + lane) * QNR);
                let mut l = _mm512_loadu_ps(at);
                l = _mm512_add_ps(
                    l,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(s[i]), _mm512_mul_ps(dw, dx)),
                );
                if t.pairs > 0 {
                    let mm = _mm512_mul_ps(bm, dx);
                    l = _mm512_add_ps(l, _mm512_mul_ps(_mm512_cvtepi32_ps(m[i]), mm));
                }
                _mm512_storeu_ps(at, l);
            }
        }
    }
}

impl BlockMicro for Avx512 {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        op.assert_tile(lanes);
        // SAFETY: the token proves the features; the operands' and the lanes' extents were
        // asserted by `assert_tile`.
        unsafe { block_tile_raw(op, lanes.as_mut_ptr()) }
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        avx2::prefetch(self.avx2(), p);
    }
}
