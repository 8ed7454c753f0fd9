//! The key/value cache: a rolling buffer per layer, bounded by the sliding window.
//!
//! Position `p` lives in slot `p % capacity`. With a window `W`, a query at `p` reads positions
//! `p - W + 1 ..= p`, so `W` slots would do for one token at a time; the capacity adds room for a
//! whole prefill batch (whose keys are all written before any of its queries attend) and for
//! rewinding. Without a window the capacity is the context length.
//!
//! Keys and values are each stored as f32, f16 or Q8_0 ([`KvType`], llama.cpp's
//! `--cache-type-k` / `--cache-type-v`): rows are encoded as they are stored and the attention
//! kernels read them in place.

use std::ops::Range;

use torchless_kernels::{encode_kv_row, KvCacheView, KvData, KvType, SlotRanges};

use crate::error::{ModelError, Result};

/// KV caches larger than this are refused up front (they would not fit any machine we target).
pub const MAX_CACHE_BYTES: u128 = 1 << 40;

/// Keys and values of every layer for the positions a session may still attend to.
#[derive(Debug)]
pub struct KvCache {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    window: Option<usize>,
    types: KvTypes,
    /// Per layer, `capacity` slots of `n_kv_heads * head_dim` keys (then values).
    keys: Vec<Rows>,
    values: Vec<Rows>,
}

/// The element types of a cache's keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    /// How keys are stored (`--cache-type-k`).
    pub keys: KvType,
    /// How values are stored (`--cache-type-v`).
    pub values: KvType,
}

impl KvTypes {
    /// Bytes one position takes in one layer: `kv_dim` keys and `kv_dim` values.
    pub fn bytes_per_layer_position(self, kv_dim: usize) -> u128 {
        self.keys.bytes_of(kv_dim) + self.values.bytes_of(kv_dim)
    }

    /// Checks that heads of `head_dim` values are whole blocks of both types (Q8_0: multiples
    /// of 32).
    pub fn check_head_dim(self, head_dim: usize) -> Result<()> {
        for (which, ty) in [("key", self.keys), ("value", self.values)] {
            ty.check_head_dim(head_dim)
                .map_err(|e| ModelError::InvalidOption {
                    option: format!("{which} cache type"),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// The rows of one layer's keys or values as stored.
#[derive(Debug)]
enum Rows {
    F32(Vec<f32>),
    /// f16 or Q8_0 bytes.
    Encoded(Vec<u8>),
}

impl Rows {
    fn new(ty: KvType) -> Self {
        match ty {
            KvType::F32 => Rows::F32(Vec::new()),
            _ => Rows::Encoded(Vec::new()),
        }
    }

    fn allocated_bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity() * 4,
            Rows::Encoded(v) => v.capacity(),
        }
    }

    fn data(&self, ty: KvType) -> KvData<'_> {
        match (self, ty) {
            (Rows::F32(v), _) => KvData::F32(v),
            (Rows::Encoded(b), KvType::F16) => KvData::F16(b),
            (Rows::Encoded(b), _) => KvData::Q8_0(b),
        }
    }

    /// Grows to `slots` rows of `row_bytes` (`row_values` values), at most `capacity` rows.
    fn grow(
        &mut self,
        slots: usize,
        capacity: usize,
        row_values: usize,
        row_bytes: usize,
    ) -> Result<()> {
        match self {
            Rows::F32(v) => grow(v, slots * row_values, capacity * row_values, 4),
            Rows::Encoded(v) => grow(v, slots * row_bytes, capacity * row_bytes, 1),
        }
    }

    /// Stores `row` (f32 values) in `slot`.
    fn put(&mut self, ty: KvType, slot: usize, row: &[f32], row_bytes: usize) -> Result<()> {
        match self {
            Rows::F32(v) => v[slot * row.len()..(slot + 1) * row.len()].copy_from_slice(row),
            Rows::Encoded(v) => {
                encode_kv_row(ty, row, &mut v[slot * row_bytes..(slot + 1) * row_bytes])?
            }
        }
        Ok(())
    }
}

impl KvCache {
    /// Bytes a cache with these dimensions and element types needs (keys and values of every
    /// layer; `kv_dim = n_kv_heads * head_dim`).
    pub fn bytes_needed(n_layers: usize, kv_dim: usize, capacity: usize, types: KvTypes) -> u128 {
        n_layers as u128 * capacity as u128 * types.bytes_per_layer_position(kv_dim)
    }

    /// A cache for up to `capacity` slots; memory is allocated as positions arrive. Q8_0 needs a
    /// head dimension that is a multiple of 32 (an error otherwise).
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        window: Option<usize>,
        types: KvTypes,
    ) -> Result<Self> {
        types.check_head_dim(head_dim)?;
        let bytes = Self::bytes_needed(n_layers, n_kv_heads * head_dim, capacity, types);
        if bytes > MAX_CACHE_BYTES {
            return Err(ModelError::CacheTooLarge {
                positions: capacity,
                bytes,
                limit: MAX_CACHE_BYTES,
            });
        }
        Ok(Self {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            window,
            types,
            keys: (0..n_layers).map(|_| Rows::new(types.keys)).collect(),
            values: (0..n_layers).map(|_| Rows::new(types.values)).collect(),
        })
    }

    /// How keys and values are stored.
    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// Number of slots per layer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the cache can grow to.
    pub fn max_bytes(&self) -> u128 {
        Self::bytes_needed(
            self.n_layers,
            self.n_kv_heads * self.head_dim,
            self.capacity,
            self.types,
        )
    }

    /// Bytes allocated so far.
    pub fn allocated_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(Rows::allocated_bytes)
            .sum()
    }

    fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Stores the keys and values of consecutive positions `start..start + n` (rows of
    /// `n_kv_heads * head_dim`) for `layer`.
    pub(crate) fn store(
        &mut self,
        layer: usize,
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) -> Result<()> {
        let row = self.row_len();
        debug_assert!(
            keys.len() == values.len() && keys.len().is_multiple_of(row),
            "whole rows of keys and values"
        );
        let n = keys.len() / row;
        debug_assert!(
            n <= self.max_batch_at(),
            "no slot overwritten within a batch"
        );
        let slots_needed = (start + n).min(self.capacity);
        let (kt, vt) = (self.types.keys, self.types.values);
        let (k_bytes, v_bytes) = (kt.bytes_of(row) as usize, vt.bytes_of(row) as usize);
        self.keys[layer].grow(slots_needed, self.capacity, row, k_bytes)?;
        self.values[layer].grow(slots_needed, self.capacity, row, v_bytes)?;
        for (i, (k, v)) in keys
            .chunks_exact(row)
            .zip(values.chunks_exact(row))
            .enumerate()
        {
            let slot = (start + i) % self.capacity;
            self.keys[layer].put(kt, slot, k, k_bytes)?;
            self.values[layer].put(vt, slot, v, v_bytes)?;
        }
        Ok(())
    }

    /// Slots allocated in `layer`.
    fn slots_allocated(&self, layer: usize) -> usize {
        let row = self.row_len();
        match &self.keys[layer] {
            Rows::F32(v) => v.len() / row,
            Rows::Encoded(b) => b.len() / self.types.keys.bytes_of(row) as usize,
        }
    }

    /// The cache of `layer` as the attention kernels read it.
    pub(crate) fn view(&self, layer: usize) -> Result<KvCacheView<'_>> {
        Ok(KvCacheView::contiguous_typed(
            self.keys[layer].data(self.types.keys),
            self.values[layer].data(self.types.values),
            self.slots_allocated(layer),
            self.n_kv_heads,
            self.head_dim,
        )?)
    }

    /// Positions a query at `position` attends to: the window ending at it (inclusive).
    pub fn attended_positions(&self, position: usize) -> Range<usize> {
        let first = match self.window {
            Some(w) => (position + 1).saturating_sub(w),
            None => 0,
        };
        first..position + 1
    }

    /// The cache slots holding `positions` (all of which must still be cached), oldest first.
    pub(crate) fn slots(&self, positions: Range<usize>) -> SlotRanges {
        let len = positions.len();
        debug_assert!(
            len <= self.capacity,
            "positions {positions:?} are not all cached"
        );
        if len == 0 {
            return SlotRanges::single(0..0);
        }
        let first = positions.start % self.capacity;
        if first + len <= self.capacity {
            SlotRanges::single(first..first + len)
        } else {
            SlotRanges::pair(first..self.capacity, 0..first + len - self.capacity)
        }
    }

    /// The oldest position still cached once `written` positions were stored.
    pub fn oldest_cached(&self, written: usize) -> usize {
        written.saturating_sub(self.capacity)
    }

    /// How many positions can be processed in one batch at `position` without a later token of
    /// the batch overwriting a slot an earlier token of it still reads.
    pub fn max_batch_at(&self) -> usize {
        match self.window {
            Some(w) if w < self.capacity => self.capacity - w + 1,
            _ => self.capacity,
        }
    }
}

/// Grows `buffer` (zero-filled) to at least `needed` elements of `size` bytes, at most doubling,
/// never past `max`; an allocation failure is an error, not an abort.
fn grow<T: Copy + Default>(
    buffer: &mut Vec<T>,
    needed: usize,
    max: usize,
    size: usize,
) -> Result<()> {
    if buffer.len() >= needed {
        return Ok(());
    }
    let target = needed.max(buffer.len() * 2).min(max);
    buffer
        .try_reserve_exact(target - buffer.len())
        .map_err(|_| ModelError::CacheTooLarge {
            positions: target,
            bytes: (target * size) as u128,
            limit: (buffer.capacity() * size) as u128,
        })?;
    buffer.resize(target, T::default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_positions_and_ring_slots() {
        let cache = KvCache::new(1, 1, 2, 6, Some(4), KvTypes::default()).unwrap();
        assert_eq!(cache.attended_positions(2), 0..3);
        // W = 4: position 4 no longer sees position 0, position 3 still does.
        assert_eq!(cache.attended_positions(3), 0..4);
        assert_eq!(cache.attended_positions(4), 1..5);
        assert_eq!(cache.slots(1..5), SlotRanges::single(1..5));
        // Positions 4..8 sit in slots 4, 5, 0, 1.
        assert_eq!(cache.slots(4..8), SlotRanges::pair(4..6, 0..2));
        assert_eq!(cache.max_batch_at(), 3);
    }

    #[test]
    fn stores_wrap_around() {
        let mut cache = KvCache::new(1, 1, 1, 3, None, KvTypes::default()).unwrap();
        cache.store(0, 0, &[0.5, 1.5], &[-0.5, -1.5]).unwrap();
        cache.store(0, 2, &[20.0, 30.0], &[-20.0, -30.0]).unwrap();
        // Position 2 -> slot 2, position 3 -> slot 0.
        assert!(matches!(&cache.keys[0], Rows::F32(k) if k == &[30.0, 1.5, 20.0]));
        assert!(matches!(&cache.values[0], Rows::F32(v) if v == &[-30.0, -1.5, -20.0]));
    }

    #[test]
    fn sizes_follow_the_types_and_q8_0_needs_whole_blocks() {
        let q8 = KvTypes {
            keys: KvType::Q8_0,
            values: KvType::F16,
        };
        // 64 values: 68 bytes of Q8_0 keys, 128 of f16 values, per layer and position.
        assert_eq!(KvCache::bytes_needed(2, 64, 10, q8), 2 * 10 * (68 + 128));
        assert_eq!(
            KvCache::bytes_needed(2, 64, 10, KvTypes::default()),
            2 * 10 * 64 * 8
        );
        let e = KvCache::new(1, 2, 48, 8, None, q8).unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        let mut cache = KvCache::new(1, 2, 32, 4, None, q8).unwrap();
        let k: Vec<f32> = (0..128).map(|i| i as f32 / 10.0).collect();
        cache.store(0, 0, &k, &k).unwrap();
        assert_eq!(cache.allocated_bytes(), 2 * (68 + 128));
        let view = cache.view(0).unwrap();
        assert_eq!(view.n_slots(), 2);
        assert_eq!(view.types(), (KvType::Q8_0, KvType::F16));
    }

    #[test]
    fn absurd_caches_are_refused_before_allocating() {
        let e = KvCache::new(1 << 20, 1 << 20, 128, 1 << 20, None, KvTypes::default()).unwrap_err();
        assert!(matches!(e, ModelError::CacheTooLarge { .. }), "{e}");
    }
}
