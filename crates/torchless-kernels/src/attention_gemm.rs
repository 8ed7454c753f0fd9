//! Prefill attention for a block of tokens as two small matrix products on the GEMM micro-kernel.
//!
//! For the query heads of one KV head in a block of consecutive tokens (`rows` = tokens x heads
//! per KV head), with `K`, `V` the cache rows of the block's slots `lo..hi`:
//!
//! ```text
//! S = Q Kᵀ                      rows x n       (micro-kernel, keys packed 16 slots at a time)
//! P = softmax(scale · S)        per row, over that token's own run of slots; zero elsewhere
//! O = P V                       rows x head_dim (micro-kernel, depth n)
//! ```
//!
//! One query row at a time (`Kernels::attention`) spends its time in short dot products and in
//! `o += p · v` updates that load and store the output for every slot: in a 512-token prefill of a
//! 1B-shape model that was ~10% of the time, for ~2% of the flops. Here the outputs stay in the
//! micro-kernel's registers and every key and value row is read once per block.

use crate::attention::KvCacheView;
use crate::gemm::{Micro, F32_POOL};
use std::ops::Range;

/// The query heads of one KV head in a block of consecutive tokens: token `t` has one row of
/// `qs.len() / runs.len()` values in `qs` (all heads; those of `kv_head` start at
/// `kv_head * group * head_dim`) and attends to the cache slots `runs[t]`.
pub(crate) struct TokenBlock<'a> {
    pub(crate) qs: &'a [f32],
    pub(crate) kv: &'a KvCacheView<'a>,
    pub(crate) kv_head: usize,
    pub(crate) group: usize,
    pub(crate) runs: &'a [Range<usize>],
    pub(crate) scale: f32,
}

/// Writes the attention outputs of `block` into `outs` (laid out like `block.qs`; other heads'
/// values are left alone). Shapes were checked by the caller; `softmax` is the caller's (SIMD)
/// softmax.
pub(crate) fn attend_block<M: Micro>(
    m: M,
    block: &TokenBlock<'_>,
    softmax: impl Fn(&mut [f32]),
    outs: &mut [f32],
) {
    let TokenBlock {
        qs,
        kv,
        kv_head,
        group,
        runs,
        scale,
    } = *block;
    let (mr, nr) = (M::MR, M::NR);
    let hd = kv.head_dim();
    let tokens = runs.len();
    if tokens == 0 || hd == 0 {
        return;
    }
    let row = qs.len() / tokens;
    let heads = |r: usize| {
        let start = (r / group) * row + (kv_head * group + r % group) * hd;
        start..start + hd
    };
    let rows = tokens * group;
    let lo = runs.iter().map(|r| r.start).min().unwrap_or(0);
    let hi = runs.iter().map(|r| r.end).max().unwrap_or(0).max(lo);
    let n = hi - lo;
    let (rpad, npad, hpad) = (
        rows.div_ceil(mr) * mr,
        n.div_ceil(nr).max(1) * nr,
        hd.div_ceil(nr) * nr,
    );

    let mut buf = F32_POOL.take();
    buf.resize(
        rpad * hd + hd * nr + 2 * rpad * npad + npad * nr + rpad * hpad,
        0.0,
    );
    let (q_pack, rest) = buf.split_at_mut(rpad * hd);
    let (panel, rest) = rest.split_at_mut(hd * nr);
    let (scores, rest) = rest.split_at_mut(rpad * npad);
    let (p_pack, rest) = rest.split_at_mut(rpad * npad);
    let (v_panel, o_tile) = rest.split_at_mut(npad * nr);
    let o_tile = &mut o_tile[..rpad * hpad];

    // Q in slivers of `mr` rows, depth-major (zero rows past the end).
    pack_slivers(
        q_pack,
        mr,
        hd,
        |r, d| {
            if r < rows {
                qs[heads(r)][d]
            } else {
                0.0
            }
        },
    );

    // S = Q Kᵀ, 16 slots at a time (slots past `hi` are zero keys).
    for p in (0..npad).step_by(nr) {
        for (j, s) in (lo + p..lo + p + nr).enumerate() {
            let key = (s < hi).then(|| kv.key_row(s, kv_head));
            for d in 0..hd {
                panel[d * nr + j] = key.map_or(0.0, |k| k[d]);
            }
        }
        slivers_by_panel(m, hd, q_pack, panel, &mut scores[p..], npad);
    }

    // P: each row's softmax over its token's run, zero elsewhere (so padding adds nothing).
    for (r, srow) in scores.chunks_exact_mut(npad).enumerate() {
        let run = if r < rows {
            runs[r / group].clone()
        } else {
            lo..lo
        };
        let (a, b) = (run.start - lo, run.end - lo);
        srow[..a].fill(0.0);
        srow[b..].fill(0.0);
        if a < b {
            let own = &mut srow[a..b];
            own.iter_mut().for_each(|v| *v *= scale);
            softmax(own);
        }
    }
    pack_slivers(p_pack, mr, npad, |r, k| scores[r * npad + k]);

    // O = P V, 16 output columns at a time (columns past head_dim and slots past `hi` are zero).
    for c in (0..hpad).step_by(nr) {
        for k in 0..npad {
            let value = (k < n).then(|| kv.value_row(lo + k, kv_head));
            for j in 0..nr {
                v_panel[k * nr + j] = match value {
                    Some(v) if c + j < hd => v[c + j],
                    _ => 0.0,
                };
            }
        }
        slivers_by_panel(m, npad, p_pack, v_panel, &mut o_tile[c..], hpad);
    }
    for r in 0..rows {
        outs[heads(r)].copy_from_slice(&o_tile[r * hpad..r * hpad + hd]);
    }
    F32_POOL.give([buf]);
}

/// `c = A · panel` for every `MR`-row sliver of the packed `a` (depth `depth`) against one packed
/// `NR`-column panel: sliver `s` writes rows `s * MR..` of `c` (row stride `ldc`).
fn slivers_by_panel<M: Micro>(
    m: M,
    depth: usize,
    a: &[f32],
    panel: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    for (s, sliver) in a.chunks_exact(M::MR * depth).enumerate() {
        m.kernel(
            depth,
            sliver,
            panel,
            &mut c[s * M::MR * ldc..],
            ldc,
            false,
            &[],
        );
    }
}

/// Fills `out` (`rows_padded x depth`, rows a multiple of `mr`) as slivers of `mr` rows, depth
/// major: `out[s*mr*depth + k*mr + i] = value(s*mr + i, k)`.
fn pack_slivers(out: &mut [f32], mr: usize, depth: usize, value: impl Fn(usize, usize) -> f32) {
    for (s, sliver) in out.chunks_exact_mut(mr * depth).enumerate() {
        for k in 0..depth {
            for i in 0..mr {
                sliver[k * mr + i] = value(s * mr + i, k);
            }
        }
    }
}
