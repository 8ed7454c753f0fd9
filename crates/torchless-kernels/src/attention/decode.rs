//! Decode attention: all heads of one query token against the KV cache, each cached row read
//! from memory once per call.

use super::views::{KvCacheView, SlotRanges};
use crate::isa::traits::Elementwise;
use crate::parallel;
use std::cell::RefCell;

/// All heads of one query token (see `Kernels::attention`); shapes were checked by the caller,
/// `group` query heads per KV head.
pub(crate) fn attention<E: Elementwise>(
    e: E,
    q: &[f32],
    kv: &KvCacheView<'_>,
    slots: &SlotRanges,
    group: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim();
    if kv.slot_major() || kv.n_kv_heads() == 1 {
        by_slots(e, q, kv, slots, group, scale, out);
        return;
    }
    parallel::for_each_chunk_mut(out, group * hd, |kvh, o| {
        let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
        heads_in_cache(e, qg, kv, kvh, slots, scale, o);
    });
}

/// `out[h] = scale * (q[h] · k)` for the `out.len()` query heads stored one after another in
/// `q`, each `k.len()` long: the key is read once for all of them.
fn dots_scaled<E: Elementwise>(e: E, q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    e.dots(q, k, out);
    for o in out.iter_mut() {
        *o *= scale;
    }
}

/// Prefetches the cache lines of `row` (where the instruction set prefetches; a hint, never a
/// fault).
#[inline]
fn prefetch_row<E: Elementwise>(e: E, row: &[f32]) {
    for line in row.chunks(16) {
        e.prefetch(line.as_ptr().cast());
    }
}

/// Decode attention for slot-major caches (see [`attention`]).
fn by_slots<E: Elementwise>(
    e: E,
    q: &[f32],
    kv: &KvCacheView<'_>,
    slots: &SlotRanges,
    group: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (hd, n_kv) = (kv.head_dim(), kv.n_kv_heads());
    let n_heads = n_kv * group;
    let n = slots.len();
    if n == 0 {
        // Nothing to attend to: a zero output, as the head-major loop gives.
        out.fill(0.0);
        return;
    }
    let blocks = n.div_ceil(SLOT_BLOCK);
    with_scratch(n * n_heads * 2 + blocks * n_heads * hd, |buf| {
        let (scores, rest) = buf.split_at_mut(n * n_heads);
        let (probs, partial) = rest.split_at_mut(n * n_heads);
        // Scores, [slot][head]: each block reads its slots' keys once, sequentially.
        parallel::for_each_chunk_mut(scores, SLOT_BLOCK * n_heads, |b, sc| {
            for (jj, row) in sc.chunks_exact_mut(n_heads).enumerate() {
                let slot = slots.slot(b * SLOT_BLOCK + jj);
                let ahead = (b * SLOT_BLOCK + jj + PF_SLOTS < n)
                    .then(|| slots.slot(b * SLOT_BLOCK + jj + PF_SLOTS));
                for (kvh, r) in row.chunks_exact_mut(group).enumerate() {
                    if let Some(a) = ahead {
                        prefetch_row(e, kv.key_row(a, kvh));
                    }
                    let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
                    dots_scaled(e, qg, kv.key_row(slot, kvh), scale, r);
                }
            }
        });
        // Softmax per head: transpose to [head][slot] so each head's scores are contiguous.
        for (j, row) in scores.chunks_exact(n_heads).enumerate() {
            for (h, &v) in row.iter().enumerate() {
                probs[h * n + j] = v;
            }
        }
        for p in probs.chunks_exact_mut(n) {
            e.softmax(p);
        }
        let probs = &*probs;
        // Weighted values: one partial output per block, then summed in block order. Per KV
        // head and query head, the block's value rows are summed with the output in
        // registers (the same FMAs, in slot order, as one axpy per slot).
        parallel::for_each_chunk_mut(partial, n_heads * hd, |b, part| {
            part.fill(0.0);
            let (start, end) = (b * SLOT_BLOCK, ((b + 1) * SLOT_BLOCK).min(n));
            let mut rows: Vec<&[f32]> = Vec::with_capacity(end - start);
            for kvh in 0..n_kv {
                rows.clear();
                rows.extend((start..end).map(|j| kv.value_row(slots.slot(j), kvh)));
                for g in 0..group {
                    let h = kvh * group + g;
                    e.weighted_rows(
                        &rows,
                        &probs[h * n + start..h * n + end],
                        &mut part[h * hd..(h + 1) * hd],
                    );
                }
            }
        });
        out.fill(0.0);
        for part in partial.chunks_exact(n_heads * hd) {
            for (o, &v) in out.iter_mut().zip(part) {
                *o += v;
            }
        }
    });
}

/// Query heads `q` (`m` rows of `head_dim`) that all read `kv_head`; shapes were validated by
/// the caller. Each key/value row is loaded once and used by all `m` heads while in L1.
pub(crate) fn heads_in_cache<E: Elementwise>(
    e: E,
    q: &[f32],
    kv: &KvCacheView<'_>,
    kv_head: usize,
    slots: &SlotRanges,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim();
    let m = q.len() / hd;
    let n = slots.len();
    with_scratch(m * n, |scores| {
        let mut at = 0;
        for r in slots.iter() {
            if let Ok(keys) = kv.keys(kv_head, r) {
                for k in keys.iter() {
                    // Heads in chunks so the key is read once per chunk.
                    for (c, qc) in q.chunks(DOT_CHUNK * hd).enumerate() {
                        let mut s = [0.0f32; DOT_CHUNK];
                        let s = &mut s[..qc.len() / hd];
                        dots_scaled(e, qc, k, scale, s);
                        for (g, &v) in s.iter().enumerate() {
                            scores[(c * DOT_CHUNK + g) * n + at] = v;
                        }
                    }
                    at += 1;
                }
            }
        }
        for s in scores.chunks_exact_mut(n.max(1)) {
            e.softmax(s);
        }
        // Weighted values, per query head with the output in registers across all slots
        // (the same FMAs, in slot order, as one axpy per slot).
        out.fill(0.0);
        let mut rows: Vec<&[f32]> = Vec::with_capacity(n);
        for r in slots.iter() {
            if let Ok(values) = kv.values(kv_head, r) {
                rows.extend(values.iter());
            }
        }
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            e.weighted_rows(&rows, &scores[h * n..(h + 1) * n], o);
        }
    });
}

/// Slots prefetched ahead in slot-major attention (the hardware prefetcher alone falls well short
/// of the read bandwidth on these 4 KiB-per-slot streams).
const PF_SLOTS: usize = 4;

/// Query heads scored together against one key in the head-major loop.
const DOT_CHUNK: usize = 8;

/// Slots per block in slot-major decode attention: fixed (not per thread) so the summation order,
/// and so the result, does not depend on the thread count.
const SLOT_BLOCK: usize = 256;

/// Runs `f` with a zeroed-on-growth scratch buffer of `len` floats: a per-thread buffer reused
/// across calls, or a fresh one if this thread's buffer is already in use (re-entrant call).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}
