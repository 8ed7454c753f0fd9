//! int4 prefill: an integer GEMM of 4-bit weights with int8 activations, the arithmetic of the
//! int4 decode kernels (`int4.rs`) organized for a batch.
//!
//! Per token `t`, weight row `n` and 32-group `g` of the depth, with `xq = round(x · 127 / max|x|)`
//! and step `dx = max|x| / 127` exactly as decode quantizes them ([`crate::int4::quantize_group`]),
//! codes `u` in `0..16` and the group's f16 scale `d`:
//! `y[t][n] = Σ_g (d · dx) · (Σ_{k∈g} u_k xq_k − 8 Σ_{k∈g} xq_k)`, the integer sums exact and the
//! group terms added in f32 with one fused multiply-add each, in group order. Only the order of
//! the f32 additions differs from decode, so prefill and decode agree to f32 rounding.
//!
//! Why it is exact in 16 bits: `vpmaddubsw` multiplies the unsigned codes (≤ 15) by the signed
//! activations (|xq| ≤ 127) and adds pairs, at most `2 · 15 · 127 = 3810`; a group's 8 such
//! results per lane add up to at most `30480 < 32767`, so a whole group is summed in i16 lanes and
//! widened once (`vpmaddwd` by 1), half the instructions of the int8 GEMM per depth.
//!
//! Layout and loops: those of `gemm::int`, each group's step and `8 · Σ xq` per token alongside
//! the activations; each 4-bit panel is unpacked to a code byte per depth once for the whole
//! batch.

use super::int::{run_qgemm, PackedActs, QPanel, KC};
use super::{is_trivial, Aligned};
use crate::int4::quantize_group;
use crate::isa::traits::{Q4Micro, Q4Operands, QNR};
use crate::mat::{f16_to_f32, Int4Mat, MatRef, INT4_GROUP_SIZE};

/// Smallest batch that takes the integer GEMM; smaller ones stream the weights once with the
/// decode kernel (bit-identical to one matvec per token).
pub(crate) const MIN_BATCH: usize = 5;
/// `u32` words (4 depths each) per 32-group.
const WORDS_PER_GROUP: usize = Q4Operands::WORDS_PER_GROUP;

/// `Y = X Wᵀ` with int8 activations; shapes validated by the caller.
pub(crate) fn qgemm4<M: Q4Micro>(m: M, w: &Int4Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    if is_trivial(w.rows(), w.cols(), batch, y) {
        return;
    }
    let acts = PackedActs::new::<INT4_GROUP_SIZE>(x, batch, w.cols(), true, 0, quantize);
    let panel = || Int4Panel::new(m, *w, &acts);
    run_qgemm(&MatRef::Int4(*w), batch, y, panel);
    acts.recycle();
}

/// Quantizes one group as decode does; returns its step `dx` and `8 · Σ xq` (what the codes'
/// offset of 8 adds).
fn quantize(x: &[f32], codes: &mut [u8; INT4_GROUP_SIZE]) -> (f32, i32) {
    let mut q = [0i8; INT4_GROUP_SIZE];
    let step = quantize_group(x, &mut q);
    *codes = q.map(|v| v as u8);
    (step, 8 * q.iter().map(|&v| i32::from(v)).sum::<i32>())
}

/// A column task's side of the int4 GEMM: the matrix, the activations, the micro-kernel, and
/// one packed weight panel (rows `n0..n0+nr` of a depth block).
struct Int4Panel<'a, M> {
    m: M,
    w: Int4Mat<'a>,
    acts: &'a PackedActs,
    /// For depth quad `kq` and row `j`: the row's 4 codes (bytes `0..16`) at `kq * QNR + j`
    /// (0 past `nr`).
    words: Aligned<u32>,
    /// Group `g` of the block, row `j`: the scale `d` at `g * QNR + j` (0 past `nr`).
    scales: Aligned<f32>,
}

impl<'a, M> Int4Panel<'a, M> {
    fn new(m: M, w: Int4Mat<'a>, acts: &'a PackedActs) -> Self {
        Self {
            m,
            w,
            acts,
            words: Aligned::new(Vec::new(), KC / 4 * QNR),
            scales: Aligned::new(Vec::new(), KC / INT4_GROUP_SIZE * QNR),
        }
    }
}

impl<M: Q4Micro> QPanel for Int4Panel<'_, M> {
    /// Full panels through the micro-kernel's packer, if it has one.
    fn pack(&mut self, n0: usize, nr: usize, pc: usize, kc: usize) {
        let (m, w) = (self.m, self.w);
        let gpr = w.groups_per_row();
        let (g0, groups) = (pc / INT4_GROUP_SIZE, kc / INT4_GROUP_SIZE);
        if nr < QNR {
            self.words[..kc / 4 * QNR].fill(0);
            self.scales[..groups * QNR].fill(0.0);
        }
        let row_bytes = gpr * 16;
        let src = &w.packed()[n0 * row_bytes + g0 * 16..];
        let packed = nr == QNR && m.pack(src, row_bytes, groups, &mut self.words);
        for j in 0..nr {
            let r = n0 + j;
            if !packed {
                let row = &w.packed()[(r * gpr + g0) * 16..(r * gpr + g0 + groups) * 16];
                for (g, codes) in row.chunks_exact(16).enumerate() {
                    let value = |i: usize| {
                        if i < 16 {
                            codes[i] & 0x0f
                        } else {
                            codes[i - 16] >> 4
                        }
                    };
                    for q in 0..WORDS_PER_GROUP {
                        let b: [u8; 4] = std::array::from_fn(|t| value(4 * q + t));
                        self.words[(g * WORDS_PER_GROUP + q) * QNR + j] = u32::from_le_bytes(b);
                    }
                }
            }
            let scales = &w.scales()[r * gpr + g0..r * gpr + g0 + groups];
            for (g, &d) in scales.iter().enumerate() {
                self.scales[g * QNR + j] = f16_to_f32(d);
            }
        }
    }

    fn scale_line(&self, r: usize, pc: usize) -> *const u8 {
        let g = r * self.w.groups_per_row() + pc / INT4_GROUP_SIZE;
        self.w.scales()[g..].as_ptr().cast()
    }

    fn prefetch(&self, p: *const u8) {
        self.m.prefetch(p);
    }

    fn tile(&self, s: usize, pc: usize, kc: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        let (g0, ng) = (pc / INT4_GROUP_SIZE, kc / INT4_GROUP_SIZE);
        let op = Q4Operands {
            groups: ng,
            a: self.acts.words(s, pc, kc),
            a_steps: self.acts.scales(s, g0, ng),
            a_offsets: self.acts.offsets(s, g0, ng),
            b: &self.words,
            b_scales: &self.scales,
        };
        self.m.kernel(&op, c, ldc, accumulate);
    }
}
