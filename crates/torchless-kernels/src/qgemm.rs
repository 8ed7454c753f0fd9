//! Opt-in integer GEMM for int8 weights ([`crate::Kernels::with_int8_activations`]): activations
//! are quantized per 64-group to 7-bit integers and multiplied with the int8 weights in integer
//! arithmetic. Faster than the exact path on AVX2 (`vpmaddubsw` does 32 multiply-adds per
//! instruction, an f32 FMA 8), but not exact: every activation is rounded to one of 127 levels of
//! its group's range.
//!
//! Arithmetic, per token `t`, weight row `n` and 64-group `g` of the depth:
//! - `d = max|x| / 63` over the token's group, `a = round_ties_even(x · 63 / max|x|)` in `-63..=63`
//!   (an all-zero group has `d = 0`; a non-finite value makes `d` NaN, so the output is NaN);
//! - `y[t][n] = Σ_g (d · s) · Σ_{k∈g} a_k q_k`, with `s = 1 / inv_scale` the weight group's scale,
//!   the integer sums exact and the group terms added in f32 with one FMA each, in group order.
//!
//! Why 7 bits: `vpmaddubsw` multiplies an unsigned byte by a signed byte and adds pairs into a
//! saturating i16. The activations are stored as `a + 64` (`1..=127`), so a pair is at most
//! `2 · 127 · 128 = 32512 < 32767` for any weight byte and the instruction never saturates; the
//! offset is cancelled by starting each group's sum at `-64 · Σ_{k∈g} q_k`. Full 8-bit activations
//! (`a + 128` up to 255) could saturate.
//!
//! Layout: activations are packed sliver by sliver (`QMR` tokens, the whole depth: 4 codes of a
//! token per `u32`, `QMR` tokens per 4 depths); weights are packed per panel (`QNR` rows x one
//! depth block: for each 4 depths, the 4 bytes of each row as one `u32`) with each group's scales
//! and offset corrections alongside. The loops and the task split are those of the f32 GEMM.

use crate::gemm::{panels, store_partial, PanelLines, Pool, F32_POOL};
use crate::mat::{Int8Mat, GROUP_SIZE};
use std::ops::Range;

/// Tokens per micro-tile.
pub(crate) const QMR: usize = 6;
/// Weight rows (output columns) per micro-tile.
pub(crate) const QNR: usize = 16;
/// Smallest batch that takes the integer GEMM. Smaller batches are bound by reading the weights,
/// and the exact small-batch kernel streams them without packing panels: 4096x4096, 2 threads,
/// exact vs integer: batch 2 38 vs 29 GFLOP/s, batch 4 54 vs 54, batch 8 66 vs 83, 12 79 vs 115.
pub(crate) const MIN_BATCH: usize = 5;
/// Largest activation code magnitude (7 bits, see the module docs).
pub(crate) const ACT_LEVELS: f32 = 63.0;
/// Offset that makes activation codes unsigned.
const ACT_OFFSET: i32 = 64;
/// `u32` words per group and token (4 codes each).
const WORDS_PER_GROUP: usize = GROUP_SIZE / 4;
/// Depth of a packed weight panel (whole groups; 16 rows x 512 bytes = 8 KiB of codes).
pub(crate) const KC: usize = 512;

/// Quantizes one group of activations into codes `a + 64` and returns the scale `d`.
pub(crate) fn quantize_group(x: &[f32], codes: &mut [u8]) -> f32 {
    // Written to vectorize: `a > m` is `maxps`, the exponent test flags infinities and NaNs.
    let amax = x.iter().fold(0.0f32, |m, v| {
        let a = v.abs();
        if a > m {
            a
        } else {
            m
        }
    });
    let non_finite = x.iter().fold(false, |acc, v| {
        acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    });
    if non_finite || amax == 0.0 {
        codes.fill(ACT_OFFSET as u8);
        return if non_finite { f32::NAN } else { 0.0 };
    }
    let inv = ACT_LEVELS / amax;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer, ties to even, exactly like
    // `round_ties_even` for |v| < 2^22 (here |v| <= 63), and vectorizes without SSE4.1.
    const ROUND: f32 = 12_582_912.0;
    for (c, &v) in codes.iter_mut().zip(x) {
        let a = ((v * inv + ROUND) - ROUND).clamp(-ACT_LEVELS, ACT_LEVELS) as i32;
        *c = (a + ACT_OFFSET) as u8;
    }
    amax / ACT_LEVELS
}

/// Activations packed for the integer kernel.
pub(crate) struct PackedActs {
    /// Sliver `s` holds, for depth quad `kq`, token `s*QMR + i`'s four codes at
    /// `(s * k/4 + kq) * QMR + i`; padding tokens are all-offset codes (value 0).
    words: Vec<u32>,
    /// Scale `d` of sliver `s`, group `g`, token `i` at `(s * groups + g) * QMR + i` (0 for padding).
    scales: Vec<f32>,
}

static WORD_POOL: Pool<u32> = Pool::new();

/// Quantizes and packs `x` (`batch x k`, `k % 64 == 0`).
fn pack_acts(x: &[f32], batch: usize, k: usize) -> PackedActs {
    let slivers = batch.div_ceil(QMR);
    let (quads, groups) = (k / 4, k / GROUP_SIZE);
    let mut words = WORD_POOL.take();
    words.clear();
    words.resize(slivers * quads * QMR, 0);
    let mut scales = F32_POOL.take();
    scales.clear();
    scales.resize(slivers * groups * QMR, 0.0);
    let offset_word = u32::from_le_bytes([ACT_OFFSET as u8; 4]);
    let fill = |s: usize, w: &mut [u32], sc: &mut [f32]| {
        for i in 0..QMR {
            let t = s * QMR + i;
            if t >= batch {
                for kq in 0..quads {
                    w[kq * QMR + i] = offset_word;
                }
                continue;
            }
            for (g, xg) in x[t * k..(t + 1) * k].chunks_exact(GROUP_SIZE).enumerate() {
                let mut codes = [0u8; GROUP_SIZE];
                sc[g * QMR + i] = quantize_group(xg, &mut codes);
                for (q, c) in codes.chunks_exact(4).enumerate() {
                    let kq = g * WORDS_PER_GROUP + q;
                    w[kq * QMR + i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if batch * k >= 1 << 16 {
            words
                .par_chunks_mut(quads * QMR)
                .zip(scales.par_chunks_mut(groups * QMR))
                .enumerate()
                .for_each(|(s, (w, sc))| fill(s, w, sc));
            return PackedActs { words, scales };
        }
    }
    let word_chunks = words.chunks_mut(quads * QMR);
    for (s, (w, sc)) in word_chunks.zip(scales.chunks_mut(groups * QMR)).enumerate() {
        fill(s, w, sc);
    }
    PackedActs { words, scales }
}

/// One weight panel: rows `n0..n0+nr` of a depth block, packed for the kernel.
struct PackedPanel {
    /// For depth quad `kq` and row `j`: the row's 4 int8 values at `kq * QNR + j` (0 past `nr`).
    words: Vec<u32>,
    /// Group `g` of the block, row `j`: `1 / inv_scale` at `g * QNR + j`.
    scales: Vec<f32>,
    /// Group `g`, row `j`: `-64 · Σ q`, the start value that cancels the activation offset.
    corrections: Vec<i32>,
}

impl PackedPanel {
    fn new() -> Self {
        Self {
            words: vec![0; KC / 4 * QNR],
            scales: vec![0.0; KC / GROUP_SIZE * QNR],
            corrections: vec![0; KC / GROUP_SIZE * QNR],
        }
    }

    /// Packs rows `n0..n0+nr`, depth `pc..pc+kc` of a row-aligned matrix (full panels through
    /// the micro-kernel's packer, if it has one).
    fn pack<M: QMicro>(
        &mut self,
        m: M,
        w: &Int8Mat<'_>,
        n0: usize,
        nr: usize,
        pc: usize,
        kc: usize,
    ) {
        let cols = w.cols();
        let groups_per_row = cols / GROUP_SIZE;
        let (quads, groups) = (kc / 4, kc / GROUP_SIZE);
        if nr < QNR {
            self.words[..quads * QNR].fill(0);
            self.scales[..groups * QNR].fill(0.0);
            self.corrections[..groups * QNR].fill(0);
        }
        let src = &w.q()[n0 * cols + pc..];
        let packed = nr == QNR && m.pack(src, cols, kc, &mut self.words, &mut self.corrections);
        for j in 0..nr {
            let r = n0 + j;
            let row = &w.q()[r * cols + pc..r * cols + pc + kc];
            if !packed {
                for (kq, b) in row.chunks_exact(4).enumerate() {
                    self.words[kq * QNR + j] =
                        u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
                }
                for (g, qg) in row.chunks_exact(GROUP_SIZE).enumerate() {
                    let sum: i32 = qg.iter().map(|&q| i32::from(q)).sum();
                    self.corrections[g * QNR + j] = -ACT_OFFSET * sum;
                }
            }
            let inv = &w.inv_scales()[r * groups_per_row + pc / GROUP_SIZE..][..groups];
            for (g, &iv) in inv.iter().enumerate() {
                self.scales[g * QNR + j] = 1.0 / iv;
            }
        }
    }
}

/// What one micro-kernel call multiplies: `groups` whole groups of a sliver (`a`, `a_scales`, from
/// the depth block's first group) and of a packed panel (`b`, `b_scales`, `b_corr`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QOperands<'a> {
    pub(crate) groups: usize,
    pub(crate) a: &'a [u32],
    pub(crate) a_scales: &'a [f32],
    pub(crate) b: &'a [u32],
    pub(crate) b_scales: &'a [f32],
    pub(crate) b_corr: &'a [i32],
}

/// One SIMD path's integer micro-kernel (`QMR x QNR` tile).
pub(crate) trait QMicro: Copy + Send + Sync {
    /// Adds the products of `op` into the tile `c[i*ldc + j]` (or overwrites it when
    /// `!accumulate`).
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool);

    /// Prefetches one address now. Default: nothing.
    fn prefetch(self, _p: *const u8) {}

    /// Packs a full `QNR`-row panel's words and corrections (`q` from row 0's first byte, rows
    /// `row_stride` apart); `false` leaves it to the portable packer. Default: `false`.
    fn pack(
        self,
        _q: &[i8],
        _row_stride: usize,
        _kc: usize,
        _w: &mut [u32],
        _c: &mut [i32],
    ) -> bool {
        false
    }
}

/// The portable kernel: the same integer sums and the same f32 operations in the same order as
/// the SIMD kernels, so every path gives bit-identical results.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalarQMicro;

impl QMicro for ScalarQMicro {
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        let QOperands {
            groups,
            a,
            a_scales,
            b,
            b_scales,
            b_corr,
        } = *op;
        let mut out = [[0.0f32; QNR]; QMR];
        if accumulate {
            for (i, row) in out.iter_mut().enumerate() {
                row.copy_from_slice(&c[i * ldc..i * ldc + QNR]);
            }
        }
        for g in 0..groups {
            let corr = &b_corr[g * QNR..(g + 1) * QNR];
            let mut acc = [[0i32; QNR]; QMR];
            for row in acc.iter_mut() {
                row.copy_from_slice(corr);
            }
            for kq in g * WORDS_PER_GROUP..(g + 1) * WORDS_PER_GROUP {
                let bw = &b[kq * QNR..(kq + 1) * QNR];
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let aw = a[kq * QMR + i].to_le_bytes();
                    for (acc_ij, &w) in acc_row.iter_mut().zip(bw) {
                        let wb = w.to_le_bytes();
                        *acc_ij += (0..4)
                            .map(|t| i32::from(aw[t]) * i32::from(wb[t] as i8))
                            .sum::<i32>();
                    }
                }
            }
            let ws = &b_scales[g * QNR..(g + 1) * QNR];
            for (i, (out_row, acc_row)) in out.iter_mut().zip(&acc).enumerate() {
                let sa = a_scales[g * QMR + i];
                for ((o, &s), &v) in out_row.iter_mut().zip(ws).zip(acc_row) {
                    *o = (v as f32).mul_add(s * sa, *o);
                }
            }
        }
        for (i, row) in out.iter().enumerate() {
            c[i * ldc..i * ldc + QNR].copy_from_slice(row);
        }
    }
}

/// AVX2: `vpmaddubsw` + `vpmaddwd` 6x16 kernel.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2QMicro(pub(crate) crate::avx2::Token);

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl QMicro for Avx2QMicro {
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        crate::avx2::qkernel_6x16(self.0, op, c, ldc, accumulate);
    }

    fn prefetch(self, p: *const u8) {
        crate::avx2::prefetch(self.0, p);
    }

    fn pack(self, q: &[i8], row_stride: usize, kc: usize, w: &mut [u32], c: &mut [i32]) -> bool {
        crate::avx2::qpack_b(self.0, q, row_stride, kc, w, c);
        true
    }
}

/// Whether the integer GEMM can take this matrix (whole groups per row).
pub(crate) fn supports(w: &Int8Mat<'_>) -> bool {
    w.is_row_aligned()
}

/// `Y = X Wᵀ` with quantized activations; shapes validated by the caller, `supports(w)`.
pub(crate) fn qgemm<M: QMicro>(m: M, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    if crate::gemm::is_trivial(w.rows(), w.cols(), batch, y) {
        return;
    }
    let acts = pack_acts(x, batch, w.cols());
    let panel = || Int8Panel {
        m,
        w: *w,
        acts: &acts,
        packed: PackedPanel::new(),
    };
    run_qgemm(&crate::mat::MatRef::Int8(*w), batch, y, panel);
    WORD_POOL.give([acts.words]);
    F32_POOL.give([acts.scales]);
}

/// The column tasks of an integer GEMM (`y`: `batch x w.rows()`), each with its own panel from
/// `panel()`.
pub(crate) fn run_qgemm<P: QPanel>(
    w: &crate::mat::MatRef<'_>,
    batch: usize,
    y: &mut [f32],
    panel: impl Fn() -> P + Sync,
) {
    crate::gemm::by_columns(w.rows(), QNR, batch, w.cols(), y, |cols, c, ldc| {
        run_panels(&mut panel(), w, batch, cols, c, ldc)
    });
}

/// One weight format's side of the integer GEMM (int8 here, int4 in `qgemm4.rs`): its packed
/// panel, bound to the packed activations and the micro-kernel.
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

/// Output columns `cols` into `c` (row stride `ldc`, column `cols.start` at offset 0): weight
/// panels outermost, then depth blocks, then the batch's slivers, as in the f32 GEMM.
pub(crate) fn run_panels<P: QPanel>(
    panel: &mut P,
    w: &crate::mat::MatRef<'_>,
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
                panel.tile(s, pc, kc, &mut tile, QNR, false);
                store_partial(&tile, QNR, mr, nr, &mut c[coff..], ldc, accumulate);
            }
        }
    }
}

/// The int8 panel with its matrix, activations and micro-kernel.
struct Int8Panel<'a, M> {
    m: M,
    w: Int8Mat<'a>,
    acts: &'a PackedActs,
    packed: PackedPanel,
}

impl<M: QMicro> QPanel for Int8Panel<'_, M> {
    fn pack(&mut self, n0: usize, nr: usize, pc: usize, kc: usize) {
        self.packed.pack(self.m, &self.w, n0, nr, pc, kc);
    }

    fn scale_line(&self, r: usize, pc: usize) -> *const u8 {
        let g = r * (self.w.cols() / GROUP_SIZE) + pc / GROUP_SIZE;
        self.w.inv_scales()[g..].as_ptr().cast()
    }

    fn prefetch(&self, p: *const u8) {
        self.m.prefetch(p);
    }

    fn tile(&self, s: usize, pc: usize, kc: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        let k = self.w.cols();
        let (quads, groups) = (k / 4, k / GROUP_SIZE);
        let (g0, ng) = (pc / GROUP_SIZE, kc / GROUP_SIZE);
        let op = QOperands {
            groups: ng,
            a: &self.acts.words[(s * quads + pc / 4) * QMR..][..kc / 4 * QMR],
            a_scales: &self.acts.scales[(s * groups + g0) * QMR..][..ng * QMR],
            b: &self.packed.words,
            b_scales: &self.packed.scales,
            b_corr: &self.packed.corrections,
        };
        self.m.kernel(&op, c, ldc, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_to_63_levels_of_the_group_range() {
        let mut x = [0.0f32; GROUP_SIZE];
        x[0] = -2.0;
        x[1] = 1.0; // 31.5 levels: ties to even -> 32
        x[2] = 2.0;
        x[3] = 0.01; // 0.315 -> 0
        let mut codes = [0u8; GROUP_SIZE];
        let d = quantize_group(&x, &mut codes);
        assert_eq!(d, 2.0 / 63.0);
        assert_eq!(&codes[..4], &[1, 96, 127, 64]);
        assert!(codes[4..].iter().all(|&c| c == 64));
        assert_eq!(quantize_group(&[0.0; GROUP_SIZE], &mut codes), 0.0);
        x[5] = f32::INFINITY;
        assert!(quantize_group(&x, &mut codes).is_nan());
    }
}
