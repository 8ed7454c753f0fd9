//! What the integer GEMMs (`int8`, `int4`) share: activations quantized and packed sliver by
//! sliver, the panel loop, and the column tasks. A weight format supplies its [`QPanel`]: how a
//! panel of its weights is packed and handed to its micro-kernel.
//!
//! Layout: activations are packed sliver by sliver (`QMR` tokens, the whole depth: 4 codes of a
//! token per `u32`, `QMR` tokens per 4 depths) with each group's scale (and, for int4, offset) per
//! token alongside; weights are packed per panel (`QNR` rows x one depth block: for each 4 depths,
//! one `u32` of 4 bytes per row), once per product. The loops and the task split are those of the
//! f32 GEMM.

use super::{by_columns, panels, partial_tile, run_sliver_jobs, PanelLines, Pool, F32_POOL};
use crate::isa::traits::{QMR, QNR};
use crate::mat::MatRef;
use std::ops::Range;

/// Depth of a packed weight panel (whole groups of both formats; 16 rows x 512 bytes = 8 KiB of
/// int8 codes).
pub(crate) const KC: usize = 512;

static WORD_POOL: Pool<u32> = Pool::new();
static I32_POOL: Pool<i32> = Pool::new();

/// A batch's activations quantized for an integer GEMM, sliver by sliver.
pub(crate) struct PackedActs {
    /// Sliver `s`, depth quad `kq`, token `i`: its four codes at `(s * k/4 + kq) * QMR + i`
    /// (padding tokens: the format's padding word).
    words: Vec<u32>,
    /// Sliver `s`, group `g`, token `i` at `(s * groups + g) * QMR + i`: the group's scale (0 for
    /// padding tokens).
    scales: Vec<f32>,
    /// Same index: the group's offset, for formats that have one (else empty).
    offsets: Vec<i32>,
    /// Depth quads and groups per token.
    quads: usize,
    groups: usize,
}

impl PackedActs {
    /// Quantizes and packs `x` (`batch x k`, `k` a multiple of `G`) in groups of `G`:
    /// `quantize(group, codes)` writes a group's codes as bytes and returns its scale and offset
    /// (the offset is kept when `offsets`). Padding tokens get `pad` words.
    pub(crate) fn new<const G: usize>(
        x: &[f32],
        batch: usize,
        k: usize,
        offsets: bool,
        pad: u32,
        quantize: impl Fn(&[f32], &mut [u8; G]) -> (f32, i32) + Sync,
    ) -> Self {
        let slivers = batch.div_ceil(QMR);
        let (quads, groups) = (k / 4, k / G);
        let mut acts = PackedActs {
            words: WORD_POOL.take(),
            scales: F32_POOL.take(),
            offsets: I32_POOL.take(),
            quads,
            groups,
        };
        acts.words.clear();
        acts.words.resize(slivers * quads * QMR, 0);
        acts.scales.clear();
        acts.scales.resize(slivers * groups * QMR, 0.0);
        acts.offsets.clear();
        let per_offsets = if offsets { groups * QMR } else { 0 };
        acts.offsets.resize(slivers * per_offsets, 0);
        let fill = |(s, w, sc, off): (usize, &mut [u32], &mut [f32], &mut [i32])| {
            let mut codes = [0u8; G];
            for i in 0..QMR {
                let t = s * QMR + i;
                if t >= batch {
                    for kq in 0..quads {
                        w[kq * QMR + i] = pad;
                    }
                    continue;
                }
                for (g, xg) in x[t * k..(t + 1) * k].chunks_exact(G).enumerate() {
                    let (scale, offset) = quantize(xg, &mut codes);
                    sc[g * QMR + i] = scale;
                    if offsets {
                        off[g * QMR + i] = offset;
                    }
                    for (q, c) in codes.chunks_exact(4).enumerate() {
                        let kq = g * (G / 4) + q;
                        w[kq * QMR + i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        };
        // One job per sliver: its words, scales and offsets.
        let mut jobs = Vec::with_capacity(slivers);
        let (mut w, mut sc, mut off) = (
            &mut acts.words[..],
            &mut acts.scales[..],
            &mut acts.offsets[..],
        );
        for s in 0..slivers {
            let (w0, w1) = std::mem::take(&mut w).split_at_mut(quads * QMR);
            let (sc0, sc1) = std::mem::take(&mut sc).split_at_mut(groups * QMR);
            let (off0, off1) = std::mem::take(&mut off).split_at_mut(per_offsets);
            jobs.push((s, w0, sc0, off0));
            (w, sc, off) = (w1, sc1, off1);
        }
        run_sliver_jobs(jobs, batch, k, fill);
        acts
    }

    /// Sliver `s`'s words for depths `pc..pc + kc`.
    pub(crate) fn words(&self, s: usize, pc: usize, kc: usize) -> &[u32] {
        &self.words[(s * self.quads + pc / 4) * QMR..][..kc / 4 * QMR]
    }

    /// Sliver `s`'s scales for groups `g0..g0 + n`.
    pub(crate) fn scales(&self, s: usize, g0: usize, n: usize) -> &[f32] {
        &self.scales[(s * self.groups + g0) * QMR..][..n * QMR]
    }

    /// Sliver `s`'s offsets for groups `g0..g0 + n`.
    pub(crate) fn offsets(&self, s: usize, g0: usize, n: usize) -> &[i32] {
        &self.offsets[(s * self.groups + g0) * QMR..][..n * QMR]
    }

    /// Returns the buffers to their pools.
    pub(crate) fn recycle(self) {
        WORD_POOL.give([self.words]);
        F32_POOL.give([self.scales]);
        I32_POOL.give([self.offsets]);
    }
}

/// One weight format's side of the integer GEMM: its packed panel, bound to the packed
/// activations and the micro-kernel.
pub(crate) trait QPanel {
    /// Packs rows `n0..n0+nr`, depth `pc..pc+kc` of the weights into the panel.
    fn pack(&mut self, n0: usize, nr: usize, pc: usize, kc: usize);
    /// The address of row `r`'s scales for depth `pc` (prefetched for the next panel).
    fn scale_line(&self, r: usize, pc: usize) -> *const u8;
    /// Prefetches one address now.
    fn prefetch(&self, p: *const u8);
    /// Runs the micro-kernel on sliver `s` against the packed panel (depth `pc..pc+kc`) into
    /// the `QMR x QNR` tile at `c` (row stride `ldc`), adding to it when `accumulate`.
    fn tile(&self, s: usize, pc: usize, kc: usize, c: &mut [f32], ldc: usize, accumulate: bool);
}

/// The column tasks of an integer GEMM (`y`: `batch x w.rows()`), each with its own panel from
/// `panel()`.
pub(crate) fn run_qgemm<P: QPanel>(
    w: &MatRef<'_>,
    batch: usize,
    y: &mut [f32],
    panel: impl Fn() -> P + Sync,
) {
    by_columns(w.rows(), QNR, batch, w.cols(), y, |cols, c, ldc| {
        run_panels(&mut panel(), w, batch, cols, c, ldc)
    });
}

/// Output columns `cols` into `c` (row stride `ldc`, column `cols.start` at offset 0): weight
/// panels outermost, then depth blocks, then the batch's slivers, as in the f32 GEMM.
fn run_panels<P: QPanel>(
    panel: &mut P,
    w: &MatRef<'_>,
    batch: usize,
    cols: Range<usize>,
    c: &mut [f32],
    ldc: usize,
) {
    let k = w.cols();
    let calls = batch.div_ceil(QMR);
    let mut tile = [0.0f32; QMR * QNR];
    for (jr, pc, next) in panels(cols.clone(), k, QNR, KC) {
        let nr = QNR.min(cols.end - jr);
        let kc = KC.min(k - pc);
        panel.pack(jr, nr, pc, kc);
        // The next panel's source lines, prefetched a few per sliver while this one runs.
        let lines =
            next.map(|(n0, p0)| PanelLines::new(w, n0, QNR.min(cols.end - n0), p0, KC.min(k - p0)));
        if let Some((n0, p0)) = next {
            // The next panel's scales: one line per row, read when it is packed.
            for r in n0..(n0 + QNR).min(cols.end) {
                panel.prefetch(panel.scale_line(r, p0));
            }
        }
        for (s, ir) in (0..batch).step_by(QMR).enumerate() {
            if let Some(l) = &lines {
                let len = l.len();
                l.for_each(s * len / calls..(s + 1) * len / calls, |p| {
                    panel.prefetch(p)
                });
            }
            let mr = QMR.min(batch - ir);
            let coff = ir * ldc + (jr - cols.start);
            let accumulate = pc > 0;
            if mr == QMR && nr == QNR {
                panel.tile(s, pc, kc, &mut c[coff..], ldc, accumulate);
            } else {
                let c = &mut c[coff..];
                partial_tile(&mut tile, QNR, mr, nr, c, ldc, accumulate, |t, acc| {
                    panel.tile(s, pc, kc, t, QNR, acc)
                });
            }
        }
    }
}
