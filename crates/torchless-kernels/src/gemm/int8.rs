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
//! Layout and loops: those of `gemm::int`, with each group's weight scales and offset corrections
//! alongside the packed panel.

use super::int::{run_qgemm, PackedActs, QPanel, KC};
use super::{is_trivial, Aligned};
use crate::isa::traits::{QMicro, QOperands, ACT_OFFSET, QNR};
use crate::mat::{Int8Mat, MatRef, GROUP_SIZE};

/// Smallest batch that takes the integer GEMM. Smaller batches are bound by reading the weights,
/// and the exact small-batch kernel streams them without packing panels (faster up to about 4
/// tokens).
pub(crate) const MIN_BATCH: usize = 5;
/// Largest activation code magnitude (7 bits, see the module docs).
pub(crate) const ACT_LEVELS: f32 = 63.0;

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

/// Whether the integer GEMM can take this matrix (whole groups per row).
pub(crate) fn supports(w: &Int8Mat<'_>) -> bool {
    w.is_row_aligned()
}

/// `Y = X Wᵀ` with quantized activations; shapes validated by the caller, `supports(w)`.
pub(crate) fn qgemm<M: QMicro>(m: M, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    if is_trivial(w.rows(), w.cols(), batch, y) {
        return;
    }
    let pad = u32::from_le_bytes([ACT_OFFSET as u8; 4]);
    let acts = PackedActs::new::<GROUP_SIZE>(x, batch, w.cols(), false, pad, |xg, codes| {
        (quantize_group(xg, codes), 0)
    });
    let panel = || Int8Panel::new(m, *w, &acts);
    run_qgemm(&MatRef::Int8(*w), batch, y, panel);
    acts.recycle();
}

/// A column task's side of the int8 GEMM: the matrix, the activations, the micro-kernel, and
/// one packed weight panel (rows `n0..n0+nr` of a depth block).
struct Int8Panel<'a, M> {
    m: M,
    w: Int8Mat<'a>,
    acts: &'a PackedActs,
    /// For depth quad `kq` and row `j`: the row's 4 int8 values at `kq * QNR + j` (0 past `nr`).
    words: Aligned<u32>,
    /// Group `g` of the block, row `j`: `1 / inv_scale` at `g * QNR + j`.
    scales: Aligned<f32>,
    /// Group `g`, row `j`: `-ACT_OFFSET · Σ q`, the start value that cancels the activation offset.
    corrections: Aligned<i32>,
}

impl<'a, M> Int8Panel<'a, M> {
    fn new(m: M, w: Int8Mat<'a>, acts: &'a PackedActs) -> Self {
        Self {
            m,
            w,
            acts,
            words: Aligned::new(Vec::new(), KC / 4 * QNR),
            scales: Aligned::new(Vec::new(), KC / GROUP_SIZE * QNR),
            corrections: Aligned::new(Vec::new(), KC / GROUP_SIZE * QNR),
        }
    }
}

impl<M: QMicro> QPanel for Int8Panel<'_, M> {
    /// Full panels through the micro-kernel's packer, if it has one.
    fn pack(&mut self, n0: usize, nr: usize, pc: usize, kc: usize) {
        let (m, w) = (self.m, self.w);
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

    fn scale_line(&self, r: usize, pc: usize) -> *const u8 {
        let g = r * (self.w.cols() / GROUP_SIZE) + pc / GROUP_SIZE;
        self.w.inv_scales()[g..].as_ptr().cast()
    }

    fn prefetch(&self, p: *const u8) {
        self.m.prefetch(p);
    }

    fn tile(&self, s: usize, pc: usize, kc: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        let (g0, ng) = (pc / GROUP_SIZE, kc / GROUP_SIZE);
        let op = QOperands {
            groups: ng,
            a: self.acts.words(s, pc, kc),
            a_scales: self.acts.scales(s, g0, ng),
            b: &self.words,
            b_scales: &self.scales,
            b_corr: &self.corrections,
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
