//! ggml block prefill: an integer GEMM of block weights with the activations quantized as decode
//! quantizes them (`block_input`: Q8_0 per 32, Q8_K per 256), in decode's arithmetic: each
//! block's exact integer sums, then the same f32 operations into lane `b % 8` of the row and the
//! same final reduction. So a prompt's logits are bit-identical to feeding its tokens one by one,
//! while each weight panel is unpacked once for the whole batch instead of once per token.
//!
//! Each type is seen as unsigned byte codes `c + o` (`o`: the type's code offset, 128 for Q8_0,
//! 8 for Q4_0, 16 for Q5_0, 32 for Q6_K, else 0) in sub-blocks with integer scales:
//! `Σ c·q = Σ (c + o)·q − o·Σ q`, the second term read from the packed activations, so the tile
//! multiplies unsigned by signed bytes (`vpdpbusd`). The mins of Q4_1/Q5_1 and the K-quants are a
//! second exact sum over pairs of i16 (`Σ_j m_j Σ q`), taken per block (`vpdpwssd`).
//!
//! Loops: those of the other integer GEMMs (column tasks, panels of `nr` rows by the whole depth,
//! or `KC` of it for very deep products,
//! slivers of `QMR` tokens), with each tile's 8 f32 lanes per token and row kept across the depth
//! and reduced after the row panel's last depth block.

use super::{
    by_column_rows, is_trivial, panels, run_sliver_jobs, Aligned, OutCols, PanelLines, Pool,
    F32_POOL,
};
use crate::block_input::{reduce8, ActKind, BLOCK_LANES};
use crate::blocks::{k_scales, BlockMat, BlockType};
use crate::half::f16_to_f32;
use crate::isa::traits::{block_tile_lanes, BlockMicro, BlockTile};
use crate::mat::MatRef;

/// Smallest batch that takes the GEMM; smaller ones stream the weights once with the decode rows
/// (bit-identical either way).
pub(crate) const MIN_BATCH: usize = 8;
/// Depth of a packed weight panel when the whole depth is too long for one (whole blocks of every
/// type; 32 rows x 8192 codes = 256 KiB of words).
const KC: usize = 8192;

/// The depth of the panels of a product of depth `k`: the whole depth up to `2 KC`, so a tile's
/// lanes are started once and stay in cache across the row (on a Zen 5, one thread, Q8_0 4096 x
/// 14336: 512-deep panels 277, 2048 deep 315-327, whole 336-342 GMAC/s), else `KC`.
fn depth_panel(k: usize) -> usize {
    if k <= 2 * KC {
        k
    } else {
        KC
    }
}

static WORD_POOL: Pool<u32> = Pool::new();
static I32_POOL: Pool<i32> = Pool::new();

/// How one type's blocks meet the tile.
#[derive(Clone, Copy, Debug)]
struct Shape {
    ty: BlockType,
    kind: ActKind,
    /// Values per block, sub-blocks per block, depth quads per sub-block.
    block_values: usize,
    subs: usize,
    quads: usize,
    /// What is added to a signed code to make it an unsigned byte.
    offset: i32,
    /// Min pairs per block (0: no mins).
    pairs: usize,
}

impl Shape {
    /// `None` for the types that take f32 activations.
    fn of(ty: BlockType) -> Option<Shape> {
        let kind = ActKind::of(ty)?;
        let (subs, offset, pairs) = match ty {
            BlockType::Q8_0 => (1, 128, 0),
            BlockType::Q4_0 => (1, 8, 0),
            BlockType::Q5_0 => (1, 16, 0),
            BlockType::Q4_1 | BlockType::Q5_1 => (1, 0, 1),
            BlockType::Q4K | BlockType::Q5K => (8, 0, 4),
            BlockType::Q6K => (16, 32, 0),
            BlockType::F16 | BlockType::BF16 => return None,
        };
        let block_values = ty.block_values();
        Some(Shape {
            ty,
            kind,
            block_values,
            subs,
            quads: block_values / subs / 4,
            offset,
            pairs,
        })
    }

    fn sub_values(&self) -> usize {
        self.block_values / self.subs
    }
}

/// Whether [`qgemm_blocks`] takes this type (the quantized ones).
pub(crate) fn supports(ty: BlockType) -> bool {
    Shape::of(ty).is_some()
}

/// `Y = X Wᵀ` for a quantized block type (`supports`); shapes validated by the caller.
pub(crate) fn qgemm_blocks<M: BlockMicro>(
    m: M,
    w: &BlockMat<'_>,
    x: &[f32],
    y: &mut [f32],
    batch: usize,
) {
    qgemm_blocks_many(m, &mut [(w, y)], x, batch);
}

/// `Y = X Wᵀ` for every `(W, Y)` of `products`, matrices of one quantized block type (`supports`)
/// with the same depth and one input (q/k/v, gate/up): the input is quantized and packed once,
/// and each `Y` is what [`qgemm_blocks`] gives alone. Shapes validated by the caller.
pub(crate) fn qgemm_blocks_many<M: BlockMicro>(
    m: M,
    products: &mut [(&BlockMat<'_>, &mut [f32])],
    x: &[f32],
    batch: usize,
) {
    let Some((first, _)) = products.first() else {
        return;
    };
    let (ty, k) = (first.ty(), first.cols());
    debug_assert!(products.iter().all(|(w, _)| w.ty() == ty && w.cols() == k));
    let Some(shape) = Shape::of(ty) else {
        unreachable!("the caller checks `supports`")
    };
    let mut acts = None;
    for (w, y) in products.iter_mut() {
        let n = w.rows();
        if is_trivial(n, k, batch, y) {
            continue;
        }
        let acts = acts.get_or_insert_with(|| BlockActs::new(m, shape, x, batch, k));
        by_column_rows(n, m.nr(), batch, k, y, |out| {
            run_panels(m, w, shape, acts, batch, out)
        });
    }
    if let Some(acts) = acts {
        acts.recycle();
    }
}

/// A batch's activations, quantized and packed sliver by sliver (`QMR` tokens; padding tokens
/// all zero): the layouts of [`BlockTile`]'s `a` arrays, whole rows per sliver.
struct BlockActs {
    words: Vec<u32>,
    off: Vec<i32>,
    d: Vec<f32>,
    pairs: Vec<u32>,
    /// Tokens per sliver.
    mr: usize,
    /// Per token: depth quads, sub-blocks, blocks, min pairs.
    quads: usize,
    subs: usize,
    blocks: usize,
    n_pairs: usize,
}

impl BlockActs {
    fn new<M: BlockMicro>(m: M, shape: Shape, x: &[f32], batch: usize, k: usize) -> Self {
        let mr = m.mr();
        let slivers = batch.div_ceil(mr);
        let blocks = k / shape.block_values;
        let (quads, subs, n_pairs) = (k / 4, blocks * shape.subs, blocks * shape.pairs);
        let mut acts = BlockActs {
            // Every entry is written below (padding tokens' as zeros).
            words: WORD_POOL.take_len(slivers * quads * mr),
            off: I32_POOL.take_len(slivers * subs * mr),
            d: F32_POOL.take_len(slivers * blocks * mr),
            pairs: WORD_POOL.take_len(slivers * n_pairs * mr),
            mr,
            quads,
            subs,
            blocks,
            n_pairs,
        };
        let sv = shape.sub_values();
        let fill =
            |(s, w, off, d, pairs): (usize, &mut [u32], &mut [i32], &mut [f32], &mut [u32])| {
                let (mut qs, mut dt, mut sums) =
                    (vec![0i8; k], vec![0.0f32; blocks], vec![0; subs]);
                for i in 0..mr {
                    let t = s * mr + i;
                    if t < batch {
                        m.quantize(shape.kind, &x[t * k..(t + 1) * k], &mut qs, &mut dt);
                        for (q, c) in sums.iter_mut().zip(qs.chunks_exact(sv)) {
                            *q = c.iter().map(|&v| i32::from(v)).sum();
                        }
                    } else {
                        // A padding token: all zero.
                        qs.fill(0);
                        dt.fill(0.0);
                        sums.fill(0);
                    }
                    for (b, &db) in dt.iter().enumerate() {
                        d[b * mr + i] = db;
                    }
                    for (kq, c) in qs.chunks_exact(4).enumerate() {
                        w[kq * mr + i] =
                            u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
                    }
                    for (sub, &sum) in sums.iter().enumerate() {
                        off[sub * mr + i] = shape.offset * sum;
                    }
                    for b in 0..blocks {
                        for p in 0..shape.pairs {
                            let sub = b * shape.subs + 2 * p;
                            let hi = if 2 * p + 1 < shape.subs {
                                sums[sub + 1]
                            } else {
                                0
                            };
                            // In range: each sum is at most 32 · 127 in magnitude.
                            pairs[(b * shape.pairs + p) * mr + i] =
                                pair(sums[sub] as i16, hi as i16);
                        }
                    }
                }
            };
        let mut jobs = Vec::with_capacity(slivers);
        let (mut w, mut off, mut d, mut pr) = (
            &mut acts.words[..],
            &mut acts.off[..],
            &mut acts.d[..],
            &mut acts.pairs[..],
        );
        for s in 0..slivers {
            let (w0, w1) = std::mem::take(&mut w).split_at_mut(quads * mr);
            let (o0, o1) = std::mem::take(&mut off).split_at_mut(subs * mr);
            let (d0, d1) = std::mem::take(&mut d).split_at_mut(blocks * mr);
            let (p0, p1) = std::mem::take(&mut pr).split_at_mut(n_pairs * mr);
            jobs.push((s, w0, o0, d0, p0));
            (w, off, d, pr) = (w1, o1, d1, p1);
        }
        run_sliver_jobs(jobs, batch, k, fill);
        acts
    }

    /// Sliver `s`'s operands for the blocks holding depths `pc..pc + kc`.
    fn tile<'a>(
        &'a self,
        shape: &Shape,
        s: usize,
        pc: usize,
        kc: usize,
        panel: &'a BlockPanel,
    ) -> BlockTile<'a> {
        let (b0, nb) = (pc / shape.block_values, kc / shape.block_values);
        BlockTile {
            blocks: nb,
            subs: shape.subs,
            quads: shape.quads,
            pairs: shape.pairs,
            offsets: shape.offset != 0,
            lane0: b0 % BLOCK_LANES,
            fresh: pc == 0,
            mr: self.mr,
            nr: panel.nr,
            kc,
            a: &self.words[(s * self.quads + pc / 4) * self.mr..][..kc / 4 * self.mr],
            a_off: &self.off[(s * self.subs + b0 * shape.subs) * self.mr..]
                [..nb * shape.subs * self.mr],
            a_d: &self.d[(s * self.blocks + b0) * self.mr..][..nb * self.mr],
            a_pairs: &self.pairs[(s * self.n_pairs + b0 * shape.pairs) * self.mr..]
                [..nb * shape.pairs * self.mr],
            b: &panel.words,
            b_rows: &panel.rows,
            b_sc: &panel.sc,
            b_pairs: &panel.pairs,
            b_d: &panel.d,
            b_m: &panel.m,
        }
    }

    fn recycle(self) {
        WORD_POOL.give([self.words, self.pairs]);
        I32_POOL.give([self.off]);
        F32_POOL.give([self.d]);
    }
}

/// Two i16 in one word, `lo` first (as `vpdpwssd` reads them).
fn pair(lo: i16, hi: i16) -> u32 {
    u32::from(lo as u16) | (u32::from(hi as u16) << 16)
}

/// A half at byte `at` of a block.
fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Whole blocks of one row (`blocks`) as the tile multiplies their codes: `c + o` as unsigned
/// bytes (`block_codes` plus the type's offset), into `out` (their values' length).
fn row_codes(ty: BlockType, blocks: &[u8], out: &mut [u8]) {
    let bb = ty.block_bytes();
    if ty.block_values() == 32 {
        for (o, b) in out
            .as_chunks_mut::<32>()
            .0
            .iter_mut()
            .zip(blocks.chunks_exact(bb))
        {
            codes_32(ty, b, o);
        }
    } else {
        for (o, b) in out
            .as_chunks_mut::<256>()
            .0
            .iter_mut()
            .zip(blocks.chunks_exact(bb))
        {
            codes_256(ty, b, o);
        }
    }
}

/// The `N` bytes at byte `at` of a whole block (`b` is one of `chunks_exact` of the block size,
/// so the field lies inside it).
fn arr<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    &b[at..].as_chunks::<N>().0[0]
}

/// [`row_codes`] for one block of a 32-value type. Fixed-size arrays, so the loops vectorize.
fn codes_32(ty: BlockType, b: &[u8], out: &mut [u8; 32]) {
    match ty {
        BlockType::Q8_0 => {
            // Eight codes per word: byte loops here stayed scalar and their byte stores stalled
            // the wide reload behind them.
            let qs: &[u8; 32] = arr(b, 2);
            for (o, q) in out
                .as_chunks_mut::<8>()
                .0
                .iter_mut()
                .zip(qs.as_chunks::<8>().0)
            {
                *o = (u64::from_le_bytes(*q) ^ 0x8080_8080_8080_8080).to_le_bytes();
            }
        }
        BlockType::Q4_0 | BlockType::Q4_1 => {
            let qs: &[u8; 16] = arr(b, if ty == BlockType::Q4_0 { 2 } else { 4 });
            for j in 0..16 {
                out[j] = qs[j] & 0xf;
                out[j + 16] = qs[j] >> 4;
            }
        }
        BlockType::Q5_0 | BlockType::Q5_1 => {
            let at = if ty == BlockType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes(*arr(b, at));
            let qs: &[u8; 16] = arr(b, at + 4);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) as u8;
                let h1 = ((qh >> (j + 16)) & 1) as u8;
                out[j] = (qs[j] & 0xf) | (h0 << 4);
                out[j + 16] = (qs[j] >> 4) | (h1 << 4);
            }
        }
        _ => unreachable!("not a 32-value quantized type"),
    }
}

/// [`row_codes`] for one block of a K-quant (256 values).
fn codes_256(ty: BlockType, b: &[u8], out: &mut [u8; 256]) {
    match ty {
        BlockType::Q4K => {
            let qs: &[u8; 128] = arr(b, 16);
            for p in 0..4 {
                for l in 0..32 {
                    out[64 * p + l] = qs[32 * p + l] & 0xf;
                    out[64 * p + 32 + l] = qs[32 * p + l] >> 4;
                }
            }
        }
        BlockType::Q5K => {
            let (qh, qs): (&[u8; 32], &[u8; 128]) = (arr(b, 16), arr(b, 48));
            for p in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * p + l];
                    out[64 * p + l] = (q & 0xf) | (((qh[l] >> (2 * p)) & 1) << 4);
                    out[64 * p + 32 + l] = (q >> 4) | (((qh[l] >> (2 * p + 1)) & 1) << 4);
                }
            }
        }
        BlockType::Q6K => {
            let (ql, qh): (&[u8; 128], &[u8; 64]) = (arr(b, 0), arr(b, 128));
            for n in 0..2 {
                for l in 0..32 {
                    let (lo, hi, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
                    out[128 * n + l] = (lo & 0xf) | ((h & 3) << 4);
                    out[128 * n + 32 + l] = (hi & 0xf) | (((h >> 2) & 3) << 4);
                    out[128 * n + 64 + l] = (lo >> 4) | (((h >> 4) & 3) << 4);
                    out[128 * n + 96 + l] = (hi >> 4) | (((h >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("not a K-quant"),
    }
}

/// One unpacked weight panel: the layouts of [`BlockTile`]'s `b` arrays (zero past the rows).
struct BlockPanel {
    /// Rows per panel.
    nr: usize,
    /// Scratch: the panel's codes row by row.
    rows: Aligned<u8>,
    words: Aligned<u32>,
    sc: Aligned<i32>,
    pairs: Aligned<u32>,
    d: Aligned<f32>,
    m: Aligned<f32>,
}

impl BlockPanel {
    fn new(shape: &Shape, nr: usize, kc: usize) -> Self {
        let blocks = kc / shape.block_values;
        Self {
            nr,
            rows: Aligned::new(Vec::new(), nr * kc),
            words: Aligned::new(Vec::new(), kc / 4 * nr),
            sc: Aligned::new(Vec::new(), blocks * shape.subs * nr),
            pairs: Aligned::new(Vec::new(), blocks * shape.pairs * nr),
            d: Aligned::new(Vec::new(), blocks * nr),
            m: Aligned::new(Vec::new(), blocks * nr),
        }
    }

    /// Unpacks rows `n0..n0 + nr`, the blocks of depths `pc..pc + kc`.
    #[allow(clippy::too_many_arguments)]
    fn pack<M: BlockMicro>(
        &mut self,
        m: M,
        w: &BlockMat<'_>,
        shape: &Shape,
        n0: usize,
        nr: usize,
        pc: usize,
        kc: usize,
    ) {
        let (bv, bb) = (shape.block_values, shape.ty.block_bytes());
        let (b0, nb, full) = (pc / bv, kc / bv, self.nr);
        if nr < full {
            self.words.fill(0);
            self.sc.fill(0);
            self.pairs.fill(0);
            self.d.fill(0.0);
            self.m.fill(0.0);
        }
        // Each row's codes as unsigned bytes, row after row, then transposed into words.
        let rows = &mut self.rows[..full * kc];
        let mut scales = [0.0f32; 2 * KC / 32];
        for j in 0..nr {
            let row = w.row(n0 + j);
            let out = &mut rows[j * kc..(j + 1) * kc];
            if nb <= scales.len()
                && m.unpack_row(
                    shape.ty,
                    &row[b0 * bb..(b0 + nb) * bb],
                    out,
                    &mut scales[..nb],
                )
            {
                for (bi, &d) in scales[..nb].iter().enumerate() {
                    self.d[bi * full + j] = d;
                }
                continue;
            }
            row_codes(shape.ty, &row[b0 * bb..(b0 + nb) * bb], out);
            for bi in 0..nb {
                let blk = &row[(b0 + bi) * bb..(b0 + bi + 1) * bb];
                let at = bi * full + j;
                match shape.ty {
                    BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q5_0 => {
                        self.d[at] = half_at(blk, 0);
                    }
                    BlockType::Q4_1 | BlockType::Q5_1 => {
                        self.d[at] = half_at(blk, 0);
                        self.m[at] = half_at(blk, 2);
                        self.pairs[at] = pair(1, 0);
                    }
                    BlockType::Q4K | BlockType::Q5K => {
                        self.d[at] = half_at(blk, 0);
                        self.m[at] = half_at(blk, 2);
                        let (sc, mn) = k_scales(&blk[4..16]);
                        for (s, &v) in sc.iter().enumerate() {
                            self.sc[(bi * 8 + s) * full + j] = i32::from(v);
                        }
                        for p in 0..4 {
                            self.pairs[(bi * 4 + p) * full + j] =
                                pair(-i16::from(mn[2 * p]), -i16::from(mn[2 * p + 1]));
                        }
                    }
                    BlockType::Q6K => {
                        self.d[at] = half_at(blk, 208);
                        for s in 0..16 {
                            self.sc[(bi * 16 + s) * full + j] = i32::from(blk[192 + s] as i8);
                        }
                    }
                    BlockType::F16 | BlockType::BF16 => unreachable!("not a quantized type"),
                }
            }
        }
        if nr < full {
            rows[nr * kc..].fill(0);
        }
        if m.reads_words()
            && !(kc.is_multiple_of(64) && m.transpose(rows, kc, full, &mut self.words))
        {
            for (j, row) in rows.chunks_exact(kc).enumerate() {
                for (q, c) in row.chunks_exact(4).enumerate() {
                    self.words[q * full + j] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }
}

/// The output columns of `c` (its task's), token by token.
#[allow(clippy::too_many_arguments)]
fn run_panels<M: BlockMicro>(
    m: M,
    w: &BlockMat<'_>,
    shape: Shape,
    acts: &BlockActs,
    batch: usize,
    c: &mut OutCols<'_>,
) {
    let (k, cols) = (w.cols(), c.cols());
    let (mr, full, by_row) = (m.mr(), m.nr(), m.lanes_by_row());
    let tile_lanes_len = block_tile_lanes(mr, full);
    let slivers = batch.div_ceil(mr);
    // Each sliver's lanes are zeroed before its first depth block.
    let mut lanes = Aligned::new(F32_POOL.take(), slivers * tile_lanes_len);
    let wref = MatRef::Blocks(*w);
    let depth = depth_panel(k);
    let mut panel = BlockPanel::new(&shape, full, depth);
    for (jr, pc, next) in panels(cols.clone(), k, full, depth) {
        let nr = full.min(cols.end - jr);
        let kc = depth.min(k - pc);
        panel.pack(m, w, &shape, jr, nr, pc, kc);
        // The next panel's blocks, prefetched a few lines per sliver while this one runs.
        let lines = next.map(|(n0, p0)| {
            PanelLines::new(&wref, n0, full.min(cols.end - n0), p0, depth.min(k - p0))
        });
        for (s, tile_lanes) in lanes.chunks_exact_mut(tile_lanes_len).enumerate() {
            if let Some(l) = &lines {
                let len = l.len();
                l.for_each(s * len / slivers..(s + 1) * len / slivers, |p| {
                    m.prefetch(p)
                });
            }
            // Each sliver's lanes start at +0 with the row panel and are reduced, in decode's
            // order, right after its last depth block (while they are in cache).
            if pc == 0 {
                if !m.starts_lanes() {
                    tile_lanes.fill(0.0);
                } else if kc / shape.block_values < BLOCK_LANES {
                    // Lanes this panel's blocks do not reach (nor do later ones: one panel).
                    let per_lane = tile_lanes_len / (mr * BLOCK_LANES);
                    for token in tile_lanes.chunks_exact_mut(BLOCK_LANES * per_lane) {
                        token[kc / shape.block_values * per_lane..].fill(0.0);
                    }
                }
            }
            m.kernel(&acts.tile(&shape, s, pc, kc, &panel), tile_lanes);
            if pc + kc < k {
                continue;
            }
            for i in 0..mr.min(batch - s * mr) {
                let out = &mut c.row(s * mr + i)[jr - cols.start..][..nr];
                if by_row {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = reduce8(std::array::from_fn(|l| {
                            tile_lanes[(j * BLOCK_LANES + l) * mr + i]
                        }));
                    }
                } else {
                    let token = &tile_lanes[i * BLOCK_LANES * full..][..BLOCK_LANES * full];
                    m.reduce_lanes(token, full, out);
                }
            }
        }
    }
    F32_POOL.give([lanes.into_inner()]);
}
