//! Prefill attention: many query tokens, in blocks of tokens as two small matrix products on the
//! GEMM micro-kernel (or one task per token and KV head when blocks do not pay).
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
//! One query row at a time (the decode loop) spends its time in short dot products and in
//! `o += p · v` updates that load and store the output for every slot, a large share of a
//! prefill's time for a small share of its flops. Here the outputs stay in the micro-kernel's
//! registers and every key and value row is read once per block.

use super::decode::heads_in_cache;
use super::views::{KvCacheView, KvData, SlotRanges};
use crate::gemm::F32_POOL;
use crate::isa::traits::{Elementwise, Isa, Micro, Operands};
use crate::parallel;
use std::ops::Range;

/// Most tokens whose attention one task computes together.
const TOKEN_BLOCK: usize = 32;

/// Tokens per block in batched attention: up to `TOKEN_BLOCK`, but small enough to leave about
/// two blocks per thread. Every block packs the keys and values its tokens see, so a chunk of a
/// long conversation (64 new tokens after 1600 cached ones) spends in packing what it saves in
/// arithmetic when its blocks are small.
fn token_block(n_tokens: usize) -> usize {
    (n_tokens / (2 * parallel::current_num_threads())).clamp(1, TOKEN_BLOCK)
}

/// Many query tokens (see `Kernels::attention_batch`): `qs` and `outs` hold one row of
/// `row = n_heads * head_dim` per token, token `t` attends to `slots[t]`; shapes were checked by
/// the caller, `group` query heads per KV head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_batch<I: Isa>(
    isa: I,
    qs: &[f32],
    kv: &KvCacheView<'_>,
    n_heads: usize,
    scale: f32,
    slots: &[SlotRanges],
    group: usize,
    outs: &mut [f32],
) {
    let hd = kv.head_dim();
    let row = n_heads * hd;
    let block = token_block(slots.len());
    let runs: Option<Vec<Range<usize>>> = slots.iter().map(SlotRanges::single_run).collect();
    if let (true, Some(runs)) = (slots.len() > 1, runs) {
        // Blocks of tokens, each reading every key and value row once for the whole block. A
        // token's output does not depend on its block (see `attend_block`), so neither on how
        // a prompt is cut into calls of two tokens or more.
        parallel::for_each_chunk_mut(outs, block * row, |b, o| {
            let tokens = b * block..b * block + o.len() / row;
            let qs = &qs[tokens.start * row..tokens.end * row];
            for kv_head in 0..kv.n_kv_heads() {
                let block = TokenBlock {
                    qs,
                    kv,
                    kv_head,
                    group,
                    runs: &runs[tokens.clone()],
                    scale,
                };
                attend_block(isa.micro(), isa.elementwise(), &block, o);
            }
        });
        return;
    }
    // Tokens already give parallelism: always keep a KV head's query heads together.
    let tasks_per_token = n_heads / group;
    parallel::for_each_chunk_mut(outs, group * hd, |i, o| {
        let (t, kvh) = (i / tasks_per_token, i % tasks_per_token);
        let q = &qs[t * row + kvh * group * hd..t * row + (kvh + 1) * group * hd];
        heads_in_cache(isa, q, kv, kvh, &slots[t], scale, o);
    });
}

/// The query heads of one KV head in a block of consecutive tokens: token `t` has one row of
/// `qs.len() / runs.len()` values in `qs` (all heads; those of `kv_head` start at
/// `kv_head * group * head_dim`) and attends to the cache slots `runs[t]`.
struct TokenBlock<'a> {
    qs: &'a [f32],
    kv: &'a KvCacheView<'a>,
    kv_head: usize,
    group: usize,
    runs: &'a [Range<usize>],
    scale: f32,
}

/// Writes the attention outputs of `block` into `outs` (laid out like `block.qs`; other heads'
/// values are left alone). Shapes were checked by the caller.
///
/// Each output element is one chain of fused multiply-adds in slot order (the micro-kernel's
/// depth loop), from zero: the slots of other tokens' runs enter with probability 0 and leave
/// the sum as it was. So a token's output is the same in any block.
fn attend_block<M: Micro, E: Elementwise>(m: M, e: E, block: &TokenBlock<'_>, outs: &mut [f32]) {
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
        rpad * hd + hd * nr + 2 * rpad * npad + npad * nr + rpad * hpad + hd,
        0.0,
    );
    let (key_row, rest) = buf.split_at_mut(hd);
    let (q_pack, rest) = rest.split_at_mut(rpad * hd);
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

    // S = Q Kᵀ, 16 slots at a time (slots past `hi` are zero keys; f16 / Q8_0 keys decoded
    // one row at a time as they are packed).
    for p in (0..npad).step_by(nr) {
        for (j, s) in (lo + p..lo + p + nr).enumerate() {
            let key: Option<&[f32]> = (s < hi).then(|| match kv.key_row(s, kv_head) {
                KvData::F32(k) => k,
                other => {
                    other.decode_range(0, key_row);
                    &*key_row
                }
            });
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
            e.softmax(own);
        }
    }
    pack_slivers(p_pack, mr, npad, |r, k| scores[r * npad + k]);

    // O = P V, 16 output columns at a time (columns past head_dim and slots past `hi` are zero;
    // f16 / Q8_0 values decoded 16 at a time as they are packed).
    for c in (0..hpad).step_by(nr) {
        let width = nr.min(hd - c);
        for (k, panel_row) in v_panel.chunks_exact_mut(nr).enumerate() {
            if k < n {
                let value = kv.value_row(lo + k, kv_head);
                value.decode_range(c, &mut panel_row[..width]);
                panel_row[width..].fill(0.0);
            } else {
                panel_row.fill(0.0);
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
        let op = Operands {
            kc: depth,
            a: sliver,
            b: panel,
            pf: &[],
        };
        m.kernel(&op, &mut c[s * M::MR * ldc..], ldc, false);
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
