//! The ggml-block integer GEMM tile with `vpdpbusd` / `vpdpwssd` on 512-bit vectors (6 tokens x
//! 32 rows, 16 rows per register), bit-identical to the scalar tile: exact integer sums, then the
//! same f32 operations; and the panel packing and lane reduction on vectors.

use super::{Amx, Avx512};
use crate::block_input::{ActKind, BLOCK_LANES};
use crate::blocks::BlockType;
use crate::isa::traits::{BlockMicro, BlockTile, QMR};
use crate::isa::x86::avx2;
use core::arch::x86_64::*;

/// Row vectors per tile: 32 rows, so each activation broadcast feeds two `vpdpbusd` and a tile
/// keeps `2 · QMR` independent chains (with one vector, a block's six chains of dependent
/// `vpdpbusd` and the f32 steps after them left half the multiply-add issue slots empty).
const NV: usize = 2;
/// Rows per panel.
const NR: usize = NV * 16;

/// A block's exact integer sums per token and row vector: the codes' (`s`) and the mins' (`m`).
type Sums = [[__m512i; NV]; QMR];

/// Loads `NV` row vectors of 16 words from `p`.
///
/// # Safety
/// AVX-512 F must be available and `p ..+NR` readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_vectors<T>(p: *const T) -> [__m512i; NV] {
    // SAFETY: the caller guarantees `NR` words at `p`.
    std::array::from_fn(|v| unsafe { _mm512_loadu_si512(p.cast::<i32>().add(16 * v).cast()) })
}

/// Block `blk`'s sums, reading its activation words from `*a` and weight words from `*b` (both
/// advanced past the block): per sub-block and token, one `vpdpbusd` per depth quad and row
/// vector (64 multiply-adds) less `o · Σ q`, times the rows' integer sub-block scales
/// (`vpmulld`) into the block sum; the mins' pairs with `vpdpwssd`.
///
/// # Safety
/// As [`block_tile_raw`], for a block below `t.blocks` whose words start at `*a` and `*b`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_sums<const OFF: bool, const SCALED: bool, const QUADS: usize, const MINS: bool>(
    t: &BlockTile<'_>,
    blk: usize,
    a: &mut *const u32,
    b: &mut *const u32,
) -> (Sums, Sums) {
    let zero = _mm512_setzero_si512();
    let mut s = [[zero; NV]; QMR];
    // SAFETY: (whole body) the offsets `block_tile_raw` lists, for this block.
    unsafe {
        for sub in blk * t.subs..(blk + 1) * t.subs {
            let mut acc = [[zero; NV]; QMR];
            for _ in 0..QUADS {
                let bw = row_vectors(*b);
                for (i, ac) in acc.iter_mut().enumerate() {
                    // Unsigned codes x the token's four signed activations, per row.
                    let x = _mm512_set1_epi32(*a.add(i) as i32);
                    for (acv, bv) in ac.iter_mut().zip(&bw) {
                        *acv = _mm512_dpbusd_epi32(*acv, *bv, x);
                    }
                }
                *a = a.add(QMR);
                *b = b.add(NR);
            }
            if OFF {
                // Off the chains' heads: the offset term joins after the products (exact).
                for (i, ac) in acc.iter_mut().enumerate() {
                    let off = _mm512_set1_epi32(*t.a_off.as_ptr().add(sub * QMR + i));
                    for acv in ac.iter_mut() {
                        *acv = _mm512_sub_epi32(*acv, off);
                    }
                }
            }
            if SCALED {
                let sc = row_vectors(t.b_sc.as_ptr().add(sub * NR));
                for (si, ac) in s.iter_mut().zip(&acc) {
                    for v in 0..NV {
                        si[v] = _mm512_add_epi32(si[v], _mm512_mullo_epi32(ac[v], sc[v]));
                    }
                }
            } else {
                s = acc;
            }
        }
        let mut m = [[zero; NV]; QMR];
        if MINS {
            for p in blk * t.pairs..(blk + 1) * t.pairs {
                let bp = row_vectors(t.b_pairs.as_ptr().add(p * NR));
                for (i, mi) in m.iter_mut().enumerate() {
                    let ap = _mm512_set1_epi32(*t.a_pairs.as_ptr().add(p * QMR + i) as i32);
                    for (miv, bpv) in mi.iter_mut().zip(&bp) {
                        *miv = _mm512_dpwssd_epi32(*miv, *bpv, ap);
                    }
                }
            }
        }
        (s, m)
    }
}

/// Block `blk`'s f32 steps: per token and row, `s · (d_w · d_x)` and then (with mins)
/// `m · (m_w · d_x)` added into the block's lane.
///
/// # Safety
/// As [`block_tile_raw`], for a block below `t.blocks`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block_lanes<const MINS: bool, const FIRST: bool>(
    t: &BlockTile<'_>,
    blk: usize,
    (s, m): (Sums, Sums),
    lanes: *mut f32,
) {
    let lane = (t.lane0 + blk) % BLOCK_LANES;
    // SAFETY: (whole body) the offsets `block_tile_raw` lists, for this block.
    unsafe {
        let (b_d, b_m) = (t.b_d.as_ptr().add(blk * NR), t.b_m.as_ptr());
        let dw: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(b_d.add(16 * v)));
        for i in 0..QMR {
            let dx = _mm512_set1_ps(*t.a_d.as_ptr().add(blk * QMR + i));
            for v in 0..NV {
                let at = lanes.add((i * BLOCK_LANES + lane) * NR + 16 * v);
                // The lane's first block on a fresh tile: `0 + x` (decode's lanes start at +0).
                let mut l = if FIRST {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(at)
                };
                l = _mm512_add_ps(
                    l,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(s[i][v]), _mm512_mul_ps(dw[v], dx)),
                );
                if MINS {
                    let mm = _mm512_mul_ps(_mm512_loadu_ps(b_m.add(blk * NR + 16 * v)), dx);
                    l = _mm512_add_ps(l, _mm512_mul_ps(_mm512_cvtepi32_ps(m[i][v]), mm));
                }
                _mm512_storeu_ps(at, l);
            }
        }
    }
}

/// The tile: each block's integer sums, then its f32 steps into the lanes. For the 32-value
/// types without mins, block `b`'s f32 steps come after block `b + 1`'s products in program
/// order, so the out-of-order core overlaps them (in order, a block's steps waited for its last
/// products and the next block's products waited in the full scheduler behind them).
///
/// # Safety
/// The token's features must be available, and `t` and `lanes` must pass
/// `BlockTile::assert_tile` with `t.nr == NR`: every offset stays inside those extents (word
/// `kq * QMR + i` of `a` and `kq * NR ..+NR` of `b` for kq below blocks · subs · quads, entries
/// `sub * QMR + i` / `sub * NR ..+NR` for sub below blocks · subs (scales only when subs > 1),
/// `p * QMR + i` / `p * NR ..+NR` for p below blocks · pairs, `blk * QMR + i` / `blk * NR ..+NR`
/// below blocks (`b_m` only with pairs), and lane rows `(i * 8 + lane) * NR ..+NR` below
/// `block_tile_lanes`).
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
    let (mut a, mut b) = (t.a.as_ptr(), t.b.as_ptr());
    // SAFETY: the caller's extents, as listed above.
    unsafe {
        // Blocks `0..first` start their lanes (a fresh tile), the others add to them; each
        // form compiled separately (a run-time choice inside the f32 steps cost a third).
        let first = if t.fresh {
            t.blocks.min(BLOCK_LANES)
        } else {
            0
        };
        let lanes_of = |blk: usize, sums: (Sums, Sums)| {
            if blk < first {
                block_lanes::<MINS, true>(t, blk, sums, lanes);
            } else {
                block_lanes::<MINS, false>(t, blk, sums, lanes);
            }
        };
        if SCALED || MINS {
            for blk in 0..t.blocks {
                lanes_of(
                    blk,
                    block_sums::<OFF, SCALED, QUADS, MINS>(t, blk, &mut a, &mut b),
                );
            }
            return;
        }
        let mut pending = None;
        for blk in 0..t.blocks {
            let sums = block_sums::<OFF, SCALED, QUADS, MINS>(t, blk, &mut a, &mut b);
            if let Some(before) = pending {
                lanes_of(blk - 1, before);
            }
            pending = Some(sums);
        }
        if let Some(last) = pending {
            lanes_of(t.blocks - 1, last);
        }
    }
}

/// Q8_0, Q4_0 or Q5_0 blocks to the panel's unsigned codes (Q8_0: `q ^ 0x80`; Q4_0: the 16
/// low nibbles, then the 16 high ones; Q5_0: those with each value's fifth bit from `qh` as 16)
/// and their scales (F16C).
///
/// # Safety
/// AVX-512 BW/VL and F16C must be available; `ty` is one of those three types, `blocks` holds
/// `d.len()` of its blocks and `codes` 32 bytes per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn unpack_row_raw(ty: BlockType, blocks: *const u8, codes: *mut u8, d: &mut [f32]) {
    let (bb, low, fifth) = (ty.block_bytes(), _mm_set1_epi8(0x0f), _mm_set1_epi8(0x10));
    for (bi, db) in d.iter_mut().enumerate() {
        // SAFETY: block `bi`'s bytes and its 32 codes are inside the caller's extents.
        unsafe {
            let blk = blocks.add(bi * bb);
            let half = u16::from_le_bytes([*blk, *blk.add(1)]);
            *db = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(half))));
            let out = codes.add(32 * bi);
            if ty == BlockType::Q8_0 {
                let q = _mm256_loadu_si256(blk.add(2).cast());
                let c = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
                _mm256_storeu_si256(out.cast(), c);
                continue;
            }
            let (qh, at) = if ty == BlockType::Q5_0 {
                (std::ptr::read_unaligned(blk.add(2).cast::<u32>()), 6)
            } else {
                (0, 2)
            };
            let q = _mm_loadu_si128(blk.add(at).cast());
            let lo = _mm_and_si128(q, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
            let lo = _mm_or_si128(lo, _mm_maskz_mov_epi8(qh as u16, fifth));
            let hi = _mm_or_si128(hi, _mm_maskz_mov_epi8((qh >> 16) as u16, fifth));
            _mm_storeu_si128(out.cast(), lo);
            _mm_storeu_si128(out.add(16).cast(), hi);
        }
    }
}

/// `reduce8`'s tree over 16 rows at a time: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`,
/// the last partial group under a mask.
///
/// # Safety
/// AVX-512 F must be available; `lanes` holds `8 * nr` values, `out` `len <= nr`.
#[target_feature(enable = "avx512f")]
unsafe fn reduce_lanes_raw(lanes: *const f32, nr: usize, out: *mut f32, len: usize) {
    for j in (0..len).step_by(16) {
        // SAFETY: lane `l`'s rows `j..j + 16` are below `8 * nr` (j < len <= nr, nr a multiple
        // of 16); the store writes only rows below `len`.
        unsafe {
            let l = |k: usize| _mm512_loadu_ps(lanes.add(k * nr + j));
            let sum = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(l(0), l(4)), _mm512_add_ps(l(2), l(6))),
                _mm512_add_ps(_mm512_add_ps(l(1), l(5)), _mm512_add_ps(l(3), l(7))),
            );
            let mask = if len - j >= 16 {
                0xffff
            } else {
                (1u16 << (len - j)) - 1
            };
            _mm512_mask_storeu_ps(out.add(j), mask, sum);
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

/// See [`BlockMicro::transpose`]: 64 bytes of 16 rows at a time.
///
/// # Safety
/// AVX-512 F must be available; `rows` holds `nr * kc` bytes and `words` `kc / 4 * nr` words,
/// `kc` a multiple of 64 and `nr` of 16.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_raw(rows: *const u8, kc: usize, nr: usize, words: *mut u32) {
    for g in (0..nr).step_by(16) {
        for c in (0..kc).step_by(64) {
            // SAFETY: row `g + j`'s bytes `c..c + 64` and words `(c / 4 + q) * nr + g ..+16`
            // are inside the extents the caller guarantees.
            unsafe {
                let mut r: [__m512i; 16] =
                    std::array::from_fn(|j| _mm512_loadu_si512(rows.add((g + j) * kc + c).cast()));
                transpose16(&mut r);
                for (q, v) in r.iter().enumerate() {
                    _mm512_storeu_si512(words.add((c / 4 + q) * nr + g).cast(), *v);
                }
            }
        }
    }
}

impl BlockMicro for Avx512 {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        assert!(
            op.mr == QMR && op.nr == NR,
            "a tile of QMR tokens and NR rows"
        );
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

    fn nr(self) -> usize {
        NR
    }

    fn starts_lanes(self) -> bool {
        true
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        avx2::prefetch(self.avx2(), p);
    }

    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        super::quantize::quantize(self, kind, x, qs, d)
    }

    fn unpack_row(self, ty: BlockType, blocks: &[u8], codes: &mut [u8], d: &mut [f32]) -> bool {
        let nb = d.len();
        if !matches!(ty, BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q5_0) {
            return false;
        }
        assert!(
            blocks.len() >= nb * ty.block_bytes() && codes.len() >= nb * 32,
            "block row unpacking out of bounds"
        );
        // SAFETY: the token proves the features; the extents were asserted above.
        unsafe { unpack_row_raw(ty, blocks.as_ptr(), codes.as_mut_ptr(), d) };
        true
    }

    fn reduce_lanes(self, lanes: &[f32], nr: usize, out: &mut [f32]) {
        assert!(
            nr.is_multiple_of(16) && out.len() <= nr && lanes.len() >= BLOCK_LANES * nr,
            "lane rows out of bounds"
        );
        // SAFETY: the token proves the features; the extents were asserted above.
        unsafe { reduce_lanes_raw(lanes.as_ptr(), nr, out.as_mut_ptr(), out.len()) }
    }

    fn transpose(self, rows: &[u8], kc: usize, nr: usize, words: &mut [u32]) -> bool {
        assert!(
            kc.is_multiple_of(64)
                && nr.is_multiple_of(16)
                && rows.len() >= nr * kc
                && words.len() >= kc / 4 * nr,
            "block panel transposition out of bounds"
        );
        // SAFETY: the token proves the features; the extents were asserted above.
        unsafe { transpose_raw(rows.as_ptr(), kc, nr, words.as_mut_ptr()) };
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

    fn nr(self) -> usize {
        match self {
            Avx512Blocks::Vnni(t) => t.nr(),
            Avx512Blocks::Amx(t) => t.nr(),
        }
    }

    fn starts_lanes(self) -> bool {
        match self {
            Avx512Blocks::Vnni(t) => t.starts_lanes(),
            Avx512Blocks::Amx(t) => t.starts_lanes(),
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

    fn transpose(self, rows: &[u8], kc: usize, nr: usize, words: &mut [u32]) -> bool {
        match self {
            Avx512Blocks::Vnni(t) => t.transpose(rows, kc, nr, words),
            Avx512Blocks::Amx(_) => false,
        }
    }

    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        match self {
            Avx512Blocks::Vnni(t) => t.quantize(kind, x, qs, d),
            Avx512Blocks::Amx(t) => t.quantize(kind, x, qs, d),
        }
    }

    fn unpack_row(self, ty: BlockType, blocks: &[u8], codes: &mut [u8], d: &mut [f32]) -> bool {
        match self {
            Avx512Blocks::Vnni(t) => t.unpack_row(ty, blocks, codes, d),
            Avx512Blocks::Amx(t) => t.unpack_row(ty, blocks, codes, d),
        }
    }

    fn reduce_lanes(self, lanes: &[f32], nr: usize, out: &mut [f32]) {
        match self {
            Avx512Blocks::Vnni(t) => t.reduce_lanes(lanes, nr, out),
            Avx512Blocks::Amx(t) => t.reduce_lanes(lanes, nr, out),
        }
    }
}
