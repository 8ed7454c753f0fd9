//! The ggml-block integer GEMM tile with `vpdpbusd` / `vpdpwssd` on 512-bit vectors (16 rows per
//! register), bit-identical to the scalar tile: exact integer sums, then the same f32 operations.

use super::{Amx, Avx512};
use crate::block_input::{ActKind, BLOCK_LANES};
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
/// The type's shape is compiled in: `OFF` (codes have an offset), `SCALED` (sub-blocks have
/// integer scales), `QUADS` (depth quads per sub-block), `MINS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn block_tile_raw<
    const OFF: bool,
    const SCALED: bool,
    const QUADS: usize,
    const MINS: bool,
>(
    t: &BlockTile<'_>,
    lanes: *mut f32,
) {
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
                let mut acc: [__m512i; QMR] = if OFF {
                    std::array::from_fn(|i| _mm512_set1_epi32(-*a_off.add(sub * QMR + i)))
                } else {
                    [_mm512_setzero_si512(); QMR]
                };
                for _ in 0..QUADS {
                    let bw = _mm512_loadu_si512(b.cast());
                    for (i, ac) in acc.iter_mut().enumerate() {
                        // Unsigned codes x the token's four signed activations, per row.
                        *ac = _mm512_dpbusd_epi32(*ac, bw, _mm512_set1_epi32(*a.add(i) as i32));
                    }
                    a = a.add(QMR);
                    b = b.add(QNR);
                }
                if SCALED {
                    let sc = _mm512_loadu_si512(b_sc.add(sub * QNR).cast());
                    for (si, ac) in s.iter_mut().zip(&acc) {
                        *si = _mm512_add_epi32(*si, _mm512_mullo_epi32(*ac, sc));
                    }
                } else {
                    s = acc;
                }
            }
            let mut m = [_mm512_setzero_si512(); QMR];
            let pairs = if MINS { t.pairs } else { 0 };
            for p in blk * pairs..(blk + 1) * pairs {
                let bp = _mm512_loadu_si512(b_pairs.add(p * QNR).cast());
                for (i, mi) in m.iter_mut().enumerate() {
                    let ap = _mm512_set1_epi32(*a_pairs.add(p * QMR + i) as i32);
                    *mi = _mm512_dpwssd_epi32(*mi, bp, ap);
                }
            }
            let dw = _mm512_loadu_ps(b_d.add(blk * QNR));
            let bm = if MINS {
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
                if MINS {
                    let mm = _mm512_mul_ps(bm, dx);
                    l = _mm512_add_ps(l, _mm512_mul_ps(_mm512_cvtepi32_ps(m[i]), mm));
                }
                _mm512_storeu_ps(at, l);
            }
        }
    }
}

/// The 16 x 16 transposition of 32-bit words (`rows[j]` holds 16 words of row `j`; afterwards
/// `rows[q]` holds word `q` of the 16 rows): 32-bit and 64-bit interleaves within 128-bit lanes,
/// then two rounds of 128-bit lane shuffles.
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512i; 16]) {
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (r0, r1, r2, r3) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (t0, t1) = (_mm512_unpacklo_epi32(r0, r1), _mm512_unpackhi_epi32(r0, r1));
        let (t2, t3) = (_mm512_unpacklo_epi32(r2, r3), _mm512_unpackhi_epi32(r2, r3));
        // u[4g + m], 128-bit lane k: word 4k + m of rows 4g..4g + 4.
        u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    for m in 0..4 {
        let a = _mm512_shuffle_i32x4::<0x88>(u[m], u[4 + m]);
        let b = _mm512_shuffle_i32x4::<0xDD>(u[m], u[4 + m]);
        let c = _mm512_shuffle_i32x4::<0x88>(u[8 + m], u[12 + m]);
        let d = _mm512_shuffle_i32x4::<0xDD>(u[8 + m], u[12 + m]);
        r[m] = _mm512_shuffle_i32x4::<0x88>(a, c);
        r[8 + m] = _mm512_shuffle_i32x4::<0xDD>(a, c);
        r[4 + m] = _mm512_shuffle_i32x4::<0x88>(b, d);
        r[12 + m] = _mm512_shuffle_i32x4::<0xDD>(b, d);
    }
}

/// See [`BlockMicro::transpose`]: 64 bytes of each row at a time.
///
/// # Safety
/// AVX-512 F must be available; `rows` holds `QNR * kc` bytes and `words` `kc / 4 * QNR`
/// words, `kc` a multiple of 64.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_raw(rows: *const u8, kc: usize, words: *mut u32) {
    for c in (0..kc).step_by(64) {
        // SAFETY: row `j`'s bytes `c..c + 64` and words `(c / 4 + q) * QNR ..+16` are inside
        // the extents the caller guarantees.
        unsafe {
            let mut r: [__m512i; 16] =
                std::array::from_fn(|j| _mm512_loadu_si512(rows.add(j * kc + c).cast()));
            transpose16(&mut r);
            for (q, v) in r.iter().enumerate() {
                _mm512_storeu_si512(words.add((c / 4 + q) * QNR).cast(), *v);
            }
        }
    }
}

impl BlockMicro for Avx512 {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        assert_eq!(op.mr, QMR, "a tile of QMR tokens");
        op.assert_tile(lanes, true);
        // SAFETY: the token proves the features; the operands' and the lanes' extents were
        // asserted by `assert_tile`.
        unsafe {
            let l = lanes.as_mut_ptr();
            match (op.offsets, op.subs > 1, op.quads, op.pairs > 0) {
                // Q8_0, Q4_0, Q5_0; Q4_1, Q5_1; Q4_K, Q5_K; Q6_K.
                (true, false, 8, false) => block_tile_raw::<true, false, 8, false>(op, l),
                (false, false, 8, true) => block_tile_raw::<false, false, 8, true>(op, l),
                (false, true, 8, true) => block_tile_raw::<false, true, 8, true>(op, l),
                (true, true, 4, false) => block_tile_raw::<true, true, 4, false>(op, l),
                _ => unreachable!("no ggml block type has this shape"),
            }
        }
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        avx2::prefetch(self.avx2(), p);
    }

    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        super::quantize::quantize(self, kind, x, qs, d)
    }

    fn transpose(self, rows: &[u8], kc: usize, words: &mut [u32]) -> bool {
        assert!(
            QNR == 16
                && kc.is_multiple_of(64)
                && rows.len() >= QNR * kc
                && words.len() >= kc / 4 * QNR,
            "block panel transposition out of bounds"
        );
        // SAFETY: the token proves the features; the extents were asserted above.
        unsafe { transpose_raw(rows.as_ptr(), kc, words.as_mut_ptr()) };
        true
    }
}

/// The block GEMM tile the AVX-512 path runs: AMX where the CPU has it and the OS grants it, else
/// VNNI (both bit-identical to decode).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Avx512Blocks {
    Vnni(Avx512),
    Amx(Amx),
}

impl BlockMicro for Avx512Blocks {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        match self {
            Avx512Blocks::Vnni(t) => t.kernel(op, lanes),
            Avx512Blocks::Amx(t) => t.kernel(op, lanes),
        }
    }

    fn mr(self) -> usize {
        match self {
            Avx512Blocks::Vnni(t) => t.mr(),
            Avx512Blocks::Amx(t) => t.mr(),
        }
    }

    fn reads_words(self) -> bool {
        matches!(self, Avx512Blocks::Vnni(_))
    }

    fn lanes_by_row(self) -> bool {
        matches!(self, Avx512Blocks::Amx(_))
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        match self {
            Avx512Blocks::Vnni(t) => t.prefetch(p),
            Avx512Blocks::Amx(t) => t.prefetch(p),
        }
    }

    fn transpose(self, rows: &[u8], kc: usize, words: &mut [u32]) -> bool {
        match self {
            Avx512Blocks::Vnni(t) => t.transpose(rows, kc, words),
            Avx512Blocks::Amx(_) => false,
        }
    }

    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        match self {
            Avx512Blocks::Vnni(t) => t.quantize(kind, x, qs, d),
            Avx512Blocks::Amx(t) => t.quantize(kind, x, qs, d),
        }
    }
}
