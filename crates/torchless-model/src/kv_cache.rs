//! The key/value cache: a rolling buffer per layer, bounded by the sliding window.
//!
//! Position `p` lives in slot `p % capacity`. With a window `W`, a query at `p` reads positions
//! `p - W + 1 ..= p`, so `W` slots would do for one token at a time; the capacity adds room for a
//! whole prefill batch (whose keys are all written before any of its queries attend) and for
//! rewinding. Without a window the capacity is the context length.

use std::ops::Range;

use torchless_kernels::{KvCacheView, SlotRanges};

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
    /// Per layer, `capacity` slots of `n_kv_heads * head_dim` keys (then values).
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// Bytes a cache with these dimensions needs (f32 keys and values).
    pub fn bytes_needed(n_layers: usize, kv_dim: usize, capacity: usize) -> u128 {
        2 * 4 * n_layers as u128 * kv_dim as u128 * capacity as u128
    }

    /// A cache for up to `capacity` slots; memory is allocated as positions arrive.
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        window: Option<usize>,
    ) -> Result<Self> {
        let bytes = Self::bytes_needed(n_layers, n_kv_heads * head_dim, capacity);
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
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
        })
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
        )
    }

    /// Bytes allocated so far.
    pub fn allocated_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * 4)
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
        for buffer in [&mut self.keys[layer], &mut self.values[layer]] {
            grow(buffer, slots_needed * row, self.capacity * row)?;
        }
        for (i, (k, v)) in keys
            .chunks_exact(row)
            .zip(values.chunks_exact(row))
            .enumerate()
        {
            let slot = (start + i) % self.capacity;
            self.keys[layer][slot * row..(slot + 1) * row].copy_from_slice(k);
            self.values[layer][slot * row..(slot + 1) * row].copy_from_slice(v);
        }
        Ok(())
    }

    /// The cache of `layer` as the attention kernels read it.
    pub(crate) fn view(&self, layer: usize) -> Result<KvCacheView<'_>> {
        let keys = &self.keys[layer];
        Ok(KvCacheView::contiguous(
            keys,
            &self.values[layer],
            keys.len() / self.row_len(),
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

/// Grows `buffer` (zero-filled) to at least `needed` values, at most doubling, never past `max`;
/// an allocation failure is an error, not an abort.
fn grow(buffer: &mut Vec<f32>, needed: usize, max: usize) -> Result<()> {
    if buffer.len() >= needed {
        return Ok(());
    }
    let target = needed.max(buffer.len() * 2).min(max);
    buffer
        .try_reserve_exact(target - buffer.len())
        .map_err(|_| ModelError::CacheTooLarge {
            positions: target,
            bytes: target as u128 * 4,
            limit: buffer.capacity() as u128 * 4,
        })?;
    buffer.resize(target, 0.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_positions_and_ring_slots() {
        let cache = KvCache::new(1, 1, 2, 6, Some(4)).unwrap();
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
        let mut cache = KvCache::new(1, 1, 1, 3, None).unwrap();
        cache.store(0, 0, &[0.5, 1.5], &[-0.5, -1.5]).unwrap();
        cache.store(0, 2, &[20.0, 30.0], &[-20.0, -30.0]).unwrap();
        // Position 2 -> slot 2, position 3 -> slot 0.
        assert_eq!(cache.keys[0], [30.0, 1.5, 20.0]);
        assert_eq!(cache.values[0], [-30.0, -1.5, -20.0]);
    }

    #[test]
    fn absurd_caches_are_refused_before_allocating() {
        let e = KvCache::new(1 << 20, 1 << 20, 128, 1 << 20, None).unwrap_err();
        assert!(matches!(e, ModelError::CacheTooLarge { .. }), "{e}");
    }
}
