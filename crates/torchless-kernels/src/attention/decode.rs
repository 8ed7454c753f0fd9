//! Decode attention: all heads of one query token against the KV cache, each cached row read
//! from memory once per call.

use super::views::{KvCacheView, KvData, SlotRanges};
use crate::isa::traits::{Elementwise, Isa, KvRows};
use crate::kv_type::KvType;
use crate::parallel;
use std::cell::RefCell;

/// All heads of one query token (see `Kernels::attention`); shapes were checked by the caller,
/// `group` query heads per KV head.
pub(crate) fn attention<I: Isa>(
    isa: I,
    q: &[f32],
    kv: &KvCacheView<'_>,
    slots: &SlotRanges,
    group: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim();
    if kv.slot_major() || kv.n_kv_heads() == 1 {
        by_slots(isa, q, kv, slots, group, scale, out);
        return;
    }
    parallel::for_each_chunk_mut(out, group * hd, |kvh, o| {
        let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
        heads_in_cache(isa, qg, kv, kvh, slots, scale, o);
    });
}

/// `out[h] = scale * (q[h] · k)` for the `out.len()` query heads stored one after another in
/// `q`, each as long as the key row `k` (read in place whatever its type): the key is read once
/// for all of them.
fn dots_scaled<I: Isa>(isa: I, q: &[f32], k: KvData<'_>, scale: f32, out: &mut [f32]) {
    match k {
        KvData::F32(k) => isa.elementwise().dots(q, k, out),
        KvData::F16(k) => isa.kv_rows().dots_f16(q, k, out),
        KvData::Q8_0(k) => isa.kv_rows().dots_q8_0(q, k, out),
    }
    for o in out.iter_mut() {
        *o *= scale;
    }
}

/// Prefetches the cache lines of `row` (where the instruction set prefetches; a hint, never a
/// fault).
#[inline]
fn prefetch_row<E: Elementwise>(e: E, row: KvData<'_>) {
    let p = row.ptr_at(0);
    for at in (0..row.byte_len()).step_by(64) {
        e.prefetch(p.wrapping_add(at));
    }
}

/// Cache rows of one element type gathered for weighted sums (value rows of some slots).
pub(crate) struct GatheredRows<'a> {
    ty: KvType,
    floats: Vec<&'a [f32]>,
    bytes: Vec<&'a [u8]>,
}

impl<'a> GatheredRows<'a> {
    /// Room for `n` rows of `ty`.
    pub(crate) fn new(ty: KvType, n: usize) -> Self {
        let (f, b) = match ty {
            KvType::F32 => (n, 0),
            _ => (0, n),
        };
        Self {
            ty,
            floats: Vec::with_capacity(f),
            bytes: Vec::with_capacity(b),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.floats.clear();
        self.bytes.clear();
    }

    /// Adds a row (of the type given to `new`).
    pub(crate) fn push(&mut self, row: KvData<'a>) {
        match row {
            KvData::F32(r) => self.floats.push(r),
            KvData::F16(r) | KvData::Q8_0(r) => self.bytes.push(r),
        }
    }

    /// `out += Σ_j weights[j] · rows[j]`, the rows read in place.
    pub(crate) fn weighted<I: Isa>(&self, isa: I, weights: &[f32], out: &mut [f32]) {
        match self.ty {
            KvType::F32 => isa.elementwise().weighted_rows(&self.floats, weights, out),
            KvType::F16 => isa.kv_rows().weighted_rows_f16(&self.bytes, weights, out),
            KvType::Q8_0 => isa.kv_rows().weighted_rows_q8_0(&self.bytes, weights, out),
        }
    }
}

/// Decode attention for slot-major caches (see [`attention`]).
fn by_slots<I: Isa>(
    isa: I,
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
    let e = isa.elementwise();
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
                    dots_scaled(isa, qg, kv.key_row(slot, kvh), scale, r);
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
            let mut rows = GatheredRows::new(kv.types().1, end - start);
            for kvh in 0..n_kv {
                rows.clear();
                for j in start..end {
                    rows.push(kv.value_row(slots.slot(j), kvh));
                }
                for g in 0..group {
                    let h = kvh * group + g;
                    rows.weighted(
                        isa,
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
pub(crate) fn heads_in_cache<I: Isa>(
    isa: I,
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
        for (at, slot) in slots.iter().flatten().enumerate() {
            let k = kv.key_row(slot, kv_head);
            // Heads in chunks so the key is read once per chunk.
            for (c, qc) in q.chunks(DOT_CHUNK * hd).enumerate() {
                let mut s = [0.0f32; DOT_CHUNK];
                let s = &mut s[..qc.len() / hd];
                dots_scaled(isa, qc, k, scale, s);
                for (g, &v) in s.iter().enumerate() {
                    scores[(c * DOT_CHUNK + g) * n + at] = v;
                }
            }
        }
        for s in scores.chunks_exact_mut(n.max(1)) {
            isa.elementwise().softmax(s);
        }
        // Weighted values, per query head with the output in registers across all slots
        // (the same FMAs, in slot order, as one axpy per slot).
        out.fill(0.0);
        let mut rows = GatheredRows::new(kv.types().1, n);
        for slot in slots.iter().flatten() {
            rows.push(kv.value_row(slot, kv_head));
        }
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            rows.weighted(isa, &scores[h * n..(h + 1) * n], o);
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
