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
//! Layout: activations are packed sliver by sliver (`QMR` tokens, the whole depth, 4 codes of a
//! token per `u32`) with each group's step and `8 · Σ xq` per token alongside; weights are
//! unpacked per panel (`QNR` rows x one depth block: for each 4 depths, one `u32` of 4 code bytes
//! per row) once per product, so each 4-bit panel is unpacked once for the whole batch. Tiles,
//! loops and the task split are those of the int8 integer GEMM (`qgemm.rs`).

use crate::gemm::{Pool, F32_POOL};
use crate::int4::quantize_group;
use crate::mat::{f16_to_f32, Int4Mat, INT4_GROUP_SIZE};
use crate::qgemm::{run_qgemm, QPanel, KC, QMR, QNR};

/// Smallest batch that takes the integer GEMM; smaller ones stream the weights once with the
/// decode kernel (bit-identical to one matvec per token).
pub(crate) const MIN_BATCH: usize = 5;
/// `u32` words (4 depths each) per 32-group.
pub(crate) const WORDS_PER_GROUP: usize = INT4_GROUP_SIZE / 4;

/// Activations packed for the kernel.
struct PackedActs {
    /// Sliver `s`, depth quad `kq`, token `i`: its four codes at `(s * k/4 + kq) * QMR + i`
    /// (0 for padding tokens).
    words: Vec<u32>,
    /// Sliver `s`, group `g`, token `i` at `(s * groups + g) * QMR + i`: the step `dx`.
    steps: Vec<f32>,
    /// Same index: `8 · Σ xq` over the group, what the codes' offset of 8 adds.
    offsets: Vec<i32>,
}

static WORD_POOL: Pool<u32> = Pool::new();
static I32_POOL: Pool<i32> = Pool::new();

/// Quantizes and packs `x` (`batch x k`, `k % 32 == 0`).
fn pack_acts(x: &[f32], batch: usize, k: usize) -> PackedActs {
    let slivers = batch.div_ceil(QMR);
    let (quads, groups) = (k / 4, k / INT4_GROUP_SIZE);
    let mut words = WORD_POOL.take();
    words.clear();
    words.resize(slivers * quads * QMR, 0);
    let mut steps = F32_POOL.take();
    steps.clear();
    steps.resize(slivers * groups * QMR, 0.0);
    let mut offsets = I32_POOL.take();
    offsets.clear();
    offsets.resize(slivers * groups * QMR, 0);
    let fill = |s: usize, w: &mut [u32], st: &mut [f32], off: &mut [i32]| {
        let mut codes = [0i8; INT4_GROUP_SIZE];
        for i in 0..QMR.min(batch - s * QMR) {
            let t = s * QMR + i;
            for (g, xg) in x[t * k..(t + 1) * k]
                .chunks_exact(INT4_GROUP_SIZE)
                .enumerate()
            {
                st[g * QMR + i] = quantize_group(xg, &mut codes);
                off[g * QMR + i] = 8 * codes.iter().map(|&q| i32::from(q)).sum::<i32>();
                for (q, c) in codes.chunks_exact(4).enumerate() {
                    let kq = g * WORDS_PER_GROUP + q;
                    w[kq * QMR + i] =
                        u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
                }
            }
        }
    };
    let chunks = |len: usize| len * QMR;
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if batch * k >= 1 << 16 {
            words
                .par_chunks_mut(chunks(quads))
                .zip(steps.par_chunks_mut(chunks(groups)))
                .zip(offsets.par_chunks_mut(chunks(groups)))
                .enumerate()
                .for_each(|(s, ((w, st), off))| fill(s, w, st, off));
            return PackedActs {
                words,
                steps,
                offsets,
            };
        }
    }
    let sliver_words = words.chunks_mut(chunks(quads));
    let sliver_steps = steps.chunks_mut(chunks(groups));
    for (s, ((w, st), off)) in sliver_words
        .zip(sliver_steps)
        .zip(offsets.chunks_mut(chunks(groups)))
        .enumerate()
    {
        fill(s, w, st, off);
    }
    PackedActs {
        words,
        steps,
        offsets,
    }
}

/// One weight panel: rows `n0..n0+nr` of a depth block, unpacked for the kernel.
struct PackedPanel {
    /// For depth quad `kq` and row `j`: the row's 4 codes (bytes `0..16`) at `kq * QNR + j`
    /// (0 past `nr`).
    words: Vec<u32>,
    /// Group `g` of the block, row `j`: the scale `d` at `g * QNR + j` (0 past `nr`).
    scales: Vec<f32>,
}

impl PackedPanel {
    fn new() -> Self {
        Self {
            words: vec![0; KC / 4 * QNR],
            scales: vec![0.0; KC / INT4_GROUP_SIZE * QNR],
        }
    }

    /// Unpacks rows `n0..n0+nr`, depth `pc..pc+kc` (full panels through the micro-kernel's
    /// packer, if it has one).
    fn pack<M: Q4Micro>(
        &mut self,
        m: M,
        w: &Int4Mat<'_>,
        n0: usize,
        nr: usize,
        pc: usize,
        kc: usize,
    ) {
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
}

/// What one micro-kernel call multiplies: `groups` whole groups of a sliver (`a`, `a_steps`,
/// `a_offsets`, from the depth block's first group) and of an unpacked panel (`b`, `b_scales`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4Operands<'a> {
    pub(crate) groups: usize,
    pub(crate) a: &'a [u32],
    pub(crate) a_steps: &'a [f32],
    pub(crate) a_offsets: &'a [i32],
    pub(crate) b: &'a [u32],
    pub(crate) b_scales: &'a [f32],
}

/// Raw pointers to a `Q4Operands`' arrays: `(groups, a, a_steps, a_offsets, b, b_scales)`.
// Used by the x86 SIMD kernels only.
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
pub(crate) type Q4Pointers = (
    usize,
    *const u32,
    *const f32,
    *const i32,
    *const u32,
    *const f32,
);

// Used by the x86 SIMD kernels only.
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
impl Q4Operands<'_> {
    /// The group count and the arrays' first elements, for the SIMD kernels' raw loops.
    pub(crate) fn pointers(&self) -> Q4Pointers {
        (
            self.groups,
            self.a.as_ptr(),
            self.a_steps.as_ptr(),
            self.a_offsets.as_ptr(),
            self.b.as_ptr(),
            self.b_scales.as_ptr(),
        )
    }

    /// Asserts every extent a `QMR x QNR` micro-kernel reads (`groups` whole groups of the
    /// sliver and the panel) and writes (the tile's rows in `c`, `ldc` apart).
    pub(crate) fn assert_tile(&self, c: &[f32], ldc: usize) {
        let words = self.groups * WORDS_PER_GROUP;
        assert!(
            self.a.len() >= words * QMR
                && self.a_steps.len() >= self.groups * QMR
                && self.a_offsets.len() >= self.groups * QMR
                && self.b.len() >= words * QNR
                && self.b_scales.len() >= self.groups * QNR,
            "packed int4 panels too short"
        );
        assert!(
            ldc >= QNR && c.len() >= (QMR - 1) * ldc + QNR,
            "C tile out of bounds"
        );
    }
}

/// One SIMD path's int4 micro-kernel (`QMR x QNR` tile).
pub(crate) trait Q4Micro: Copy + Send + Sync {
    /// Adds the products of `op` into the tile `c[i*ldc + j]` (or overwrites it when
    /// `!accumulate`).
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool);

    /// Prefetches one address now. Default: nothing.
    fn prefetch(self, _p: *const u8) {}

    /// Unpacks a full `QNR`-row panel of `groups` groups (`packed` from row 0's first group,
    /// rows `row_bytes` apart) into `words`; `false` leaves it to the portable packer.
    fn pack(self, _packed: &[u8], _row_bytes: usize, _groups: usize, _words: &mut [u32]) -> bool {
        false
    }
}

/// The portable kernel: the same integer sums and f32 operations in the same order as the SIMD
/// kernel, so every path gives bit-identical results.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalarQ4Micro;

impl Q4Micro for ScalarQ4Micro {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        let Q4Operands {
            groups,
            a,
            a_steps,
            a_offsets,
            b,
            b_scales,
        } = *op;
        let mut out = [[0.0f32; QNR]; QMR];
        if accumulate {
            for (i, row) in out.iter_mut().enumerate() {
                row.copy_from_slice(&c[i * ldc..i * ldc + QNR]);
            }
        }
        for g in 0..groups {
            let mut acc = [[0i32; QNR]; QMR];
            for kq in g * WORDS_PER_GROUP..(g + 1) * WORDS_PER_GROUP {
                let bw = &b[kq * QNR..(kq + 1) * QNR];
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let aw = a[kq * QMR + i].to_le_bytes();
                    for (acc_ij, &w) in acc_row.iter_mut().zip(bw) {
                        let wb = w.to_le_bytes();
                        *acc_ij += (0..4)
                            .map(|t| i32::from(wb[t]) * i32::from(aw[t] as i8))
                            .sum::<i32>();
                    }
                }
            }
            let ws = &b_scales[g * QNR..(g + 1) * QNR];
            for (i, (out_row, acc_row)) in out.iter_mut().zip(&acc).enumerate() {
                let (step, offset) = (a_steps[g * QMR + i], a_offsets[g * QMR + i]);
                for ((o, &d), &v) in out_row.iter_mut().zip(ws).zip(acc_row) {
                    *o = ((v - offset) as f32).mul_add(d * step, *o);
                }
            }
        }
        for (i, row) in out.iter().enumerate() {
            c[i * ldc..i * ldc + QNR].copy_from_slice(row);
        }
    }
}

/// AVX2: `vpmaddubsw` 6x16 kernel with whole groups summed in i16.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Q4Micro(pub(crate) crate::avx2::Token);

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl Q4Micro for Avx2Q4Micro {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        crate::avx2::q4kernel_6x16(self.0, op, c, ldc, accumulate);
    }

    fn prefetch(self, p: *const u8) {
        crate::avx2::prefetch(self.0, p);
    }

    fn pack(self, packed: &[u8], row_bytes: usize, groups: usize, words: &mut [u32]) -> bool {
        crate::avx2::q4pack_b(self.0, packed, row_bytes, groups, words);
        true
    }
}

/// AVX-512 VNNI: the `vpdpbusd` 6x16 kernel; panels unpacked by the AVX2 packer.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512Q4Micro(
    pub(crate) crate::avx2::Token,
    pub(crate) crate::avx512::Token,
);

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl Q4Micro for Avx512Q4Micro {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        crate::avx512::q4kernel_6x16(self.1, op, c, ldc, accumulate);
    }

    fn prefetch(self, p: *const u8) {
        crate::avx2::prefetch(self.0, p);
    }

    fn pack(self, packed: &[u8], row_bytes: usize, groups: usize, words: &mut [u32]) -> bool {
        crate::avx2::q4pack_b(self.0, packed, row_bytes, groups, words);
        true
    }
}

/// `Y = X Wᵀ` with int8 activations; shapes validated by the caller.
pub(crate) fn qgemm4<M: Q4Micro>(m: M, w: &Int4Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    if crate::gemm::is_trivial(w.rows(), w.cols(), batch, y) {
        return;
    }
    let acts = pack_acts(x, batch, w.cols());
    let panel = || Int4Panel {
        m,
        w: *w,
        acts: &acts,
        packed: PackedPanel::new(),
    };
    run_qgemm(&crate::mat::MatRef::Int4(*w), batch, y, panel);
    WORD_POOL.give([acts.words]);
    F32_POOL.give([acts.steps]);
    I32_POOL.give([acts.offsets]);
}

/// The int4 panel with its matrix, activations and micro-kernel.
struct Int4Panel<'a, M> {
    m: M,
    w: Int4Mat<'a>,
    acts: &'a PackedActs,
    packed: PackedPanel,
}

impl<M: Q4Micro> QPanel for Int4Panel<'_, M> {
    fn pack(&mut self, n0: usize, nr: usize, pc: usize, kc: usize) {
        self.packed.pack(self.m, &self.w, n0, nr, pc, kc);
    }

    fn scale_line(&self, r: usize, pc: usize) -> *const u8 {
        let g = r * self.w.groups_per_row() + pc / INT4_GROUP_SIZE;
        self.w.scales()[g..].as_ptr().cast()
    }

    fn prefetch(&self, p: *const u8) {
        self.m.prefetch(p);
    }

    fn tile(&self, s: usize, pc: usize, kc: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        let k = self.w.cols();
        let (quads, groups) = (k / 4, k / INT4_GROUP_SIZE);
        let (g0, ng) = (pc / INT4_GROUP_SIZE, kc / INT4_GROUP_SIZE);
        let at = (s * groups + g0) * QMR;
        let op = Q4Operands {
            groups: ng,
            a: &self.acts.words[(s * quads + pc / 4) * QMR..][..kc / 4 * QMR],
            a_steps: &self.acts.steps[at..][..ng * QMR],
            a_offsets: &self.acts.offsets[at..][..ng * QMR],
            b: &self.packed.words,
            b_scales: &self.packed.scales,
        };
        self.m.kernel(&op, c, ldc, accumulate);
    }
}
