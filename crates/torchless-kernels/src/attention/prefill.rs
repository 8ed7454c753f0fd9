//! Prefill attention: many query tokens, in blocks of tokens as two small matrix products on the
//! GEMM micro-kernel (a single token, or a wrapped cache: one task per token and KV head).
//!
//! For the query heads of one KV head in a block of consecutive tokens (`rows` = tokens x heads
//! per KV head), with `K`, `V` the cache rows of the block's slots `lo..hi`:
//!
//! ```text
//! S = Q Kᵀ                      rows x n       (micro-kernel, keys packed NR slots at a time)
//! P = softmax(scale · S)        per row, over that token's own run of slots; zero elsewhere
//! O = P V                       rows x head_dim (micro-kernel, depth n)
//! ```
//!
//! One query row at a time (the decode loop) spends its time in short dot products and in
//! `o += p · v` updates that load and store the output for every slot, a large share of a
//! prefill's time for a small share of its flops. Here the outputs stay in the micro-kernel's
//! registers, and every key and value row is packed once per call for all blocks.

use super::decode::heads_in_cache;
use super::views::{KvCacheView, KvData, SlotRanges};
use crate::gemm::F32_POOL;
use crate::isa::traits::{Elementwise, Isa, Micro, Operands};
use crate::parallel;
use std::ops::Range;

/// Most tokens whose attention one task computes together.
const TOKEN_BLOCK: usize = 32;

/// Tokens per block in batched attention: up to `TOKEN_BLOCK`, but small enough to leave about
/// two blocks per thread. Keys and values are packed once per call ([`Packed`]), but every block
/// packs its queries and its probabilities (rows x slots), so blocks stay as large as the
/// parallelism allows.
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
        // Every KV head's keys and values packed once for the whole call, then blocks of
        // tokens on the micro-kernel. A token's output does not depend on its block (see
        // `attend_block`), so neither on how a prompt is cut into calls of two tokens or more.
        let packed = Packed::new(isa.micro(), kv, &runs);
        parallel::for_each_chunk_mut(outs, block * row, |b, o| {
            let tokens = b * block..b * block + o.len() / row;
            let qs = &qs[tokens.start * row..tokens.end * row];
            for kv_head in 0..kv.n_kv_heads() {
                let block = TokenBlock {
                    qs,
                    packed: &packed,
                    kv_head,
                    group,
                    runs: &runs[tokens.clone()],
                    scale,
                };
                attend_block(isa.micro(), isa.elementwise(), &block, o);
            }
        });
        packed.recycle();
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
    packed: &'a Packed,
    kv_head: usize,
    group: usize,
    runs: &'a [Range<usize>],
    scale: f32,
}

/// Writes the attention outputs of `block` into `outs` (laid out like `block.qs`; other heads'
/// values are left alone). Shapes were checked by the caller.
///
/// Each output element is one chain of multiply-adds in slot order (the micro-kernel's depth
/// loop, fused where the path fuses), from zero: the slots of other tokens' runs enter with
/// probability 0 and leave the sum as it was. So a token's output is the same in any block.
fn attend_block<M: Micro, E: Elementwise>(m: M, e: E, block: &TokenBlock<'_>, outs: &mut [f32]) {
    let TokenBlock {
        qs,
        packed,
        kv_head,
        group,
        runs,
        scale,
    } = *block;
    let (mr, nr) = (M::MR, M::NR);
    let hd = packed.head_dim;
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
    // The block's slots from a panel boundary: `lo..hi`, `npad` of them in whole panels.
    let first = runs.iter().map(|r| r.start).min().unwrap_or(0);
    let lo = packed.panel_start(first);
    let hi = runs.iter().map(|r| r.end).max().unwrap_or(0).max(lo);
    if hi == lo {
        // Every run of the block is empty (possibly past the packed slots): zero outputs, as
        // a softmax over nothing weighs nothing.
        for r in 0..rows {
            outs[heads(r)].fill(0.0);
        }
        return;
    }
    let npad = (hi - lo).div_ceil(nr).max(1) * nr;
    let hpad = packed.hpad;

    let mut buf = F32_POOL.take();
    buf.resize(rpad_len(rows, mr) * (hd + 2 * npad + hpad), 0.0);
    let rpad = rpad_len(rows, mr);
    let (q_pack, rest) = buf.split_at_mut(rpad * hd);
    let (scores, rest) = rest.split_at_mut(rpad * npad);
    let (p_pack, o_tile) = rest.split_at_mut(rpad * npad);
    let o_tile = &mut o_tile[..rpad * hpad];

    // Q in slivers of `mr` rows, depth-major (zero rows past the end).
    pack_slivers(q_pack, mr, hd, rows, |r| &qs[heads(r)]);

    // S = Q Kᵀ, one packed panel of `nr` slots at a time.
    for p in (0..npad).step_by(nr) {
        let panel = packed.key_panel(kv_head, lo + p);
        slivers_by_panel(m, hd, q_pack, panel, &mut scores[p..], npad);
    }

    // P: each row's softmax over its token's run, zero elsewhere (so other slots add nothing).
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
    pack_slivers(p_pack, mr, npad, rpad, |r| {
        &scores[r * npad..(r + 1) * npad]
    });

    // O = P V, `nr` output columns at a time against the packed values of slots `lo..`.
    for c in (0..hpad).step_by(nr) {
        let v_panel = packed.value_panel(kv_head, c, lo, npad);
        slivers_by_panel(m, npad, p_pack, v_panel, &mut o_tile[c..], hpad);
    }
    for r in 0..rows {
        outs[heads(r)].copy_from_slice(&o_tile[r * hpad..r * hpad + hd]);
    }
    F32_POOL.give([buf]);
}

/// Rows padded to whole slivers of `mr`.
fn rpad_len(rows: usize, mr: usize) -> usize {
    rows.div_ceil(mr) * mr
}

/// Every KV head's keys and values of the slots a call attends to, packed once for all its
/// token blocks in the micro-kernel's panel layout (f16 / Q8_0 rows decoded on the way):
/// slots `base..end` (`base` a panel boundary, `end` rounded up to a whole panel; slots past
/// the cache's last attended one are zero).
struct Packed {
    head_dim: usize,
    /// The head dimension rounded up to whole panels (output columns of `P V`).
    hpad: usize,
    nr: usize,
    base: usize,
    /// Slots packed: `end - base`, a multiple of `nr`.
    len: usize,
    /// Per KV head, per panel of `nr` slots: `head_dim x nr` keys, depth-major.
    keys: Vec<f32>,
    /// Per KV head, per group of `nr` output columns: `len x nr` values, slot-major.
    values: Vec<f32>,
}

impl Packed {
    fn new<M: Micro>(_m: M, kv: &KvCacheView<'_>, runs: &[Range<usize>]) -> Self {
        let nr = M::NR;
        let hd = kv.head_dim();
        let hpad = hd.div_ceil(nr) * nr;
        let first = runs.iter().map(|r| r.start).min().unwrap_or(0);
        let last = runs.iter().map(|r| r.end).max().unwrap_or(0);
        let base = first / nr * nr;
        let len = last.saturating_sub(base).div_ceil(nr).max(1) * nr;
        let end = base + len;
        let n_kv = kv.n_kv_heads();
        let mut keys = F32_POOL.take();
        keys.resize(n_kv * len * hd, 0.0);
        let mut values = F32_POOL.take();
        values.resize(n_kv * hpad * len, 0.0);
        let written = last.max(base);
        parallel::for_each_chunk_mut(&mut keys, len * hd, |kv_head, out| {
            let mut key_row = vec![0.0f32; hd];
            for (p, panel) in out.chunks_exact_mut(hd * nr).enumerate() {
                for j in 0..nr {
                    let s = base + p * nr + j;
                    if s >= written || s >= end {
                        for d in 0..hd {
                            panel[d * nr + j] = 0.0;
                        }
                        continue;
                    }
                    let key: &[f32] = match kv.key_row(s, kv_head) {
                        KvData::F32(k) => k,
                        other => {
                            other.decode_range(0, &mut key_row);
                            &key_row
                        }
                    };
                    for (d, &v) in key.iter().enumerate() {
                        panel[d * nr + j] = v;
                    }
                }
            }
        });
        parallel::for_each_chunk_mut(&mut values, hpad * len, |kv_head, out| {
            for (g, group) in out.chunks_exact_mut(len * nr).enumerate() {
                let c = g * nr;
                let width = nr.min(hd - c);
                for (k, panel_row) in group.chunks_exact_mut(nr).enumerate() {
                    let s = base + k;
                    if s < written {
                        kv.value_row(s, kv_head)
                            .decode_range(c, &mut panel_row[..width]);
                        panel_row[width..].fill(0.0);
                    } else {
                        panel_row.fill(0.0);
                    }
                }
            }
        });
        Packed {
            head_dim: hd,
            hpad,
            nr,
            base,
            len,
            keys,
            values,
        }
    }

    /// The panel boundary at or before `slot` (at or after `base`).
    fn panel_start(&self, slot: usize) -> usize {
        (slot.max(self.base) / self.nr) * self.nr
    }

    /// The `head_dim x nr` key panel of `kv_head` starting at slot `start` (a panel boundary).
    fn key_panel(&self, kv_head: usize, start: usize) -> &[f32] {
        let hd = self.head_dim;
        let at = kv_head * self.len * hd + (start - self.base) * hd;
        &self.keys[at..at + hd * self.nr]
    }

    /// The values of `kv_head`, output columns `c..c + nr`, slots `start..start + n` (`n` x `nr`).
    fn value_panel(&self, kv_head: usize, c: usize, start: usize, n: usize) -> &[f32] {
        let nr = self.nr;
        let at =
            kv_head * self.hpad * self.len + (c / nr) * self.len * nr + (start - self.base) * nr;
        &self.values[at..at + n * nr]
    }

    fn recycle(self) {
        F32_POOL.give([self.keys, self.values]);
    }
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
/// major: `out[s*mr*depth + k*mr + i] = row(s*mr + i)[k]` for rows below `rows`, zero past them
/// (each row looked up once: per value, the lookup's divisions were ~3% of a small model's
/// prefill).
fn pack_slivers<'a>(
    out: &mut [f32],
    mr: usize,
    depth: usize,
    rows: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    for (s, sliver) in out.chunks_exact_mut(mr * depth).enumerate() {
        for i in 0..mr {
            let r = s * mr + i;
            if r < rows {
                let src = &row(r)[..depth];
                for (k, &v) in src.iter().enumerate() {
                    sliver[k * mr + i] = v;
                }
            } else {
                for k in 0..depth {
                    sliver[k * mr + i] = 0.0;
                }
            }
        }
    }
}
