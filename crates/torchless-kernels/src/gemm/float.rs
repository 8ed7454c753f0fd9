//! The GEMM in f32 arithmetic: f32 weights, and int8, int4 or ggml block weights dequantized
//! exactly (int8: `q / inv_scale`) into each packed panel.

use super::{by_columns, is_trivial, panels, partial_tile, Aligned, PanelLines, F32_POOL};
use crate::blocks::dequantize_range;
use crate::isa::traits::{Micro, Operands};
use crate::mat::{MatRef, GROUP_SIZE};
use std::ops::Range;

/// Largest depth of a packed panel. With the weight panels outermost the output panel stays in
/// cache across depth blocks, so the depth trades the weight panel's L1 footprint (16 x 384
/// floats = 24 KiB, next to a 9 KiB activation sliver in a 32 KiB L1) and a depth block of packed
/// activations (batch 512: 768 KiB) against per-panel overhead.
const KC_MAX: usize = 384;

/// The depth block for a product of depth `k`: `k` split into equal blocks of at most `KC_MAX`,
/// rounded up to whole int8 groups (so groups never straddle a block).
fn depth_block(k: usize) -> usize {
    let blocks = k.div_ceil(KC_MAX).max(1);
    k.div_ceil(blocks).div_ceil(GROUP_SIZE) * GROUP_SIZE
}

/// `y = x Wᵀ` with validated shapes: `x.len() == batch * w.cols()`, `y.len() == batch * w.rows()`.
pub(crate) fn gemm<M: Micro>(m: M, w: &MatRef<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    let (n, k) = (w.rows(), w.cols());
    if is_trivial(n, k, batch, y) {
        return;
    }
    let mpad = batch.div_ceil(M::MR) * M::MR;
    let apack = pack_a(x, batch, k, depth_block(k), M::MR, mpad);
    by_columns(n, M::NR, batch, k, y, |cols, c, ldc| {
        gemm_cols(m, w, &apack, batch, mpad, k, cols, c, ldc)
    });
    F32_POOL.give([apack]);
}

/// Portable packer for any layout (partial panels, int8 groups spanning rows): weight rows
/// `n0..n0+nr`, columns `pc..pc+kc` as `out[k*nr_full + j]`, dequantized, zero for `j >= nr`.
pub(crate) fn pack_b_generic(
    w: &MatRef<'_>,
    n0: usize,
    nr: usize,
    nr_full: usize,
    pc: usize,
    kc: usize,
    out: &mut [f32],
) {
    let out = &mut out[..kc * nr_full];
    if nr < nr_full {
        out.fill(0.0);
    }
    match w {
        MatRef::F32(m) => {
            let cols = m.cols();
            for j in 0..nr {
                let row = &m.data()[(n0 + j) * cols + pc..][..kc];
                for (k, &v) in row.iter().enumerate() {
                    out[k * nr_full + j] = v;
                }
            }
        }
        MatRef::Int8(m) => {
            let cols = m.cols();
            for j in 0..nr {
                let r = n0 + j;
                let row = &m.q()[r * cols + pc..][..kc];
                let first = m.group_phase() + r * cols + pc;
                let mut c = 0;
                while c < kc {
                    let g = (first + c) / GROUP_SIZE;
                    let end = ((g + 1) * GROUP_SIZE - first).min(kc);
                    let inv = m.inv_scales()[g];
                    for (k, &q) in row.iter().enumerate().take(end).skip(c) {
                        out[k * nr_full + j] = f32::from(q) / inv;
                    }
                    c = end;
                }
            }
        }
        MatRef::Int4(m) => {
            // Exact `d · (u − 8)`; depth blocks are whole 32-groups (multiples of 64 but the
            // last), so each group's scale is converted once.
            const G: usize = crate::mat::INT4_GROUP_SIZE;
            let groups = m.groups_per_row();
            for j in 0..nr {
                if !pc.is_multiple_of(G) || !kc.is_multiple_of(G) {
                    for k in 0..kc {
                        out[k * nr_full + j] = m.value_at(n0 + j, pc + k);
                    }
                    continue;
                }
                let g0 = (n0 + j) * groups + pc / G;
                for gi in 0..kc / G {
                    let d = crate::mat::f16_to_f32(m.scales()[g0 + gi]);
                    let codes = &m.packed()[(g0 + gi) * 16..(g0 + gi + 1) * 16];
                    for (i, &byte) in codes.iter().enumerate() {
                        let k = gi * G + i;
                        out[k * nr_full + j] = d * f32::from((byte & 0x0f) as i8 - 8);
                        out[(k + 16) * nr_full + j] = d * f32::from((byte >> 4) as i8 - 8);
                    }
                }
            }
        }
        MatRef::Blocks(m) => {
            // Exact dequantization of the panel's columns of each row (a block that straddles
            // two depth blocks is dequantized for each).
            let mut buf = [0.0f32; KC_MAX];
            for j in 0..nr {
                let row = &m.data()[(n0 + j) * m.row_bytes()..(n0 + j + 1) * m.row_bytes()];
                for k0 in (0..kc).step_by(KC_MAX) {
                    let vals = &mut buf[..KC_MAX.min(kc - k0)];
                    dequantize_range(m.ty(), row, pc + k0, vals);
                    for (k, &v) in vals.iter().enumerate() {
                        out[(k0 + k) * nr_full + j] = v;
                    }
                }
            }
        }
    }
}

/// Packs all of `x` (`batch x k`): for each `kcb`-deep block starting at `pc`, sliver `s` holds
/// `x[s*MR + i][pc + kk]` at `pc*mpad + s*MR*kc + kk*MR + i`, zero for padding rows.
fn pack_a(x: &[f32], batch: usize, k: usize, kcb: usize, mr: usize, mpad: usize) -> Vec<f32> {
    // Every element is written below (padding rows with zeros), so a reused buffer needs no
    // clearing first.
    let mut a = F32_POOL.take();
    a.resize(mpad * k, 0.0);
    let fill = |bi: usize, block: &mut [f32]| {
        let pc = bi * kcb;
        let kc = block.len() / mpad;
        for (s, sliver) in block.chunks_exact_mut(mr * kc).enumerate() {
            let rows = mr.min(batch.saturating_sub(s * mr));
            // Depth by depth, so the writes are contiguous (`mr` rows' values of one depth
            // side by side) and the reads `mr` sequential streams.
            for (kk, depth) in sliver.chunks_exact_mut(mr).enumerate() {
                let (present, padding) = depth.split_at_mut(rows);
                for (i, v) in present.iter_mut().enumerate() {
                    *v = x[(s * mr + i) * k + pc + kk];
                }
                padding.fill(0.0);
            }
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if batch * k >= 1 << 16 {
            a.par_chunks_mut(kcb * mpad)
                .enumerate()
                .for_each(|(bi, b)| fill(bi, b));
            return a;
        }
    }
    for (bi, b) in a.chunks_mut(kcb * mpad).enumerate() {
        fill(bi, b);
    }
    a
}

/// Computes output columns `cols` of `Y` into `c`: row stride `ldc`, column `cols.start` at offset 0
/// of each row (so `c` is either `Y` itself or a task's own buffer).
#[allow(clippy::too_many_arguments)]
fn gemm_cols<M: Micro>(
    m: M,
    w: &MatRef<'_>,
    apack: &[f32],
    batch: usize,
    mpad: usize,
    k: usize,
    cols: Range<usize>,
    c: &mut [f32],
    ldc: usize,
) {
    let (mr_full, nr_full) = (M::MR, M::NR);
    let kcb = depth_block(k);
    let mut bbuf = Aligned::new(Vec::new(), kcb * nr_full);
    let bpack: &mut [f32] = &mut bbuf;
    let mut tile = vec![0.0f32; mr_full * nr_full];
    let c_col0 = cols.start;
    let mut next_lines: Vec<*const u8> = Vec::new();
    // One packed panel (weight rows jr.., depth pc..) against the whole batch; `next` is the
    // panel that follows, whose lines are prefetched meanwhile.
    let mut panel = |jr: usize, pc: usize, next: Option<(usize, usize)>| {
        let kc = kcb.min(k - pc);
        let ablock = &apack[pc * mpad..pc * mpad + kc * mpad];
        let accumulate = pc > 0;
        let nr = nr_full.min(cols.end - jr);
        if !m.pack_b(w, jr, nr, pc, kc, bpack) {
            pack_b_generic(w, jr, nr, nr_full, pc, kc, bpack);
        }
        next_lines.clear();
        if let (true, Some((n0, p0))) = (M::PREFETCH, next) {
            let nr = nr_full.min(cols.end - n0);
            PanelLines::new(w, n0, nr, p0, kcb.min(k - p0)).collect(&mut next_lines);
        }
        let calls = batch.div_ceil(mr_full);
        for (call, ir) in (0..batch).step_by(mr_full).enumerate() {
            // This call's share of the next panel's lines, spread over the kernel's k loop.
            let n = next_lines.len();
            let pf = &next_lines[call * n / calls..(call + 1) * n / calls];
            let mr = mr_full.min(batch - ir);
            let a = &ablock[(ir / mr_full) * mr_full * kc..][..mr_full * kc];
            let coff = ir * ldc + (jr - c_col0);
            let op = Operands {
                kc,
                a,
                b: bpack,
                pf,
            };
            if mr == mr_full && nr == nr_full {
                m.kernel(&op, &mut c[coff..], ldc, accumulate);
            } else {
                let c = &mut c[coff..];
                partial_tile(&mut tile, nr_full, mr, nr, c, ldc, accumulate, |t, acc| {
                    m.kernel(&op, t, nr_full, acc)
                });
            }
        }
    };
    // Weight panels outermost: a panel's output columns (`batch x 16`) stay in cache while every
    // depth block is added into them, each weight row is read front to back, and the packed
    // activations stream sequentially from L3 once per panel.
    for (jr, pc, next) in panels(cols.clone(), k, nr_full, kcb) {
        panel(jr, pc, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_blocks_are_whole_groups_and_cover_k() {
        for k in [1, 63, 64, 700, 768, 769, 1000, 4096, 14336] {
            let kcb = depth_block(k);
            assert!(
                kcb.is_multiple_of(GROUP_SIZE) && kcb <= KC_MAX.max(GROUP_SIZE),
                "k {k}: {kcb}"
            );
            assert!(
                k.div_ceil(kcb) == k.div_ceil(KC_MAX),
                "k {k}: {kcb} adds a block"
            );
        }
        assert_eq!(depth_block(4096), 384);
        assert_eq!(depth_block(14336), 384);
        assert_eq!(depth_block(5632), 384);
        assert_eq!(depth_block(1000), 384);
    }
}
