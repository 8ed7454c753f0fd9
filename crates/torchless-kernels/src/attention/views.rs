//! Views over a KV cache for the attention loops: keys/values are rows with a stride, so a
//! model's cache (e.g. `[slot][kv_head][head_dim]`, or a rolling ring buffer) is read in place.

use crate::error::{check_len, KernelError};
use crate::kv_type::{decode_values, KvType};
use std::ops::Range;

/// `len` rows of `dim` floats inside `data`; row `i` starts at `offset + i * stride`.
#[derive(Clone, Copy, Debug)]
pub struct RowsRef<'a> {
    data: &'a [f32],
    offset: usize,
    stride: usize,
    len: usize,
    dim: usize,
}

impl<'a> RowsRef<'a> {
    /// Checks that every row lies inside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        stride: usize,
        len: usize,
        dim: usize,
    ) -> Result<Self, KernelError> {
        check_extent(len, offset, stride, dim, data.len())?;
        Ok(Self {
            data,
            offset,
            stride,
            len,
            dim,
        })
    }

    /// Consecutive rows: `data.len()` must be a multiple of `dim`.
    pub fn contiguous(data: &'a [f32], dim: usize) -> Result<Self, KernelError> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(KernelError::Shape(format!(
                "{} values are not whole rows of {dim}",
                data.len()
            )));
        }
        Self::new(data, 0, dim, data.len() / dim, dim)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i` (panics if `i >= len`, like slice indexing).
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(i < self.len, "row {i} of {}", self.len);
        let s = self.offset + i * self.stride;
        &self.data[s..s + self.dim]
    }

    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [f32]> + '_ {
        (0..self.len).map(move |i| self.row(i))
    }
}

/// Checks that `len` rows of `dim` values, row `i` at `offset + i * stride`, lie in `available`
/// values.
fn check_extent(
    len: usize,
    offset: usize,
    stride: usize,
    dim: usize,
    available: usize,
) -> Result<(), KernelError> {
    if len == 0 {
        return Ok(());
    }
    let end = (len - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(offset))
        .and_then(|v| v.checked_add(dim));
    match end {
        Some(e) if e <= available => Ok(()),
        _ => Err(KernelError::Shape(format!(
            "{len} rows of {dim} at offset {offset}, stride {stride} exceed {available} values"
        ))),
    }
}

/// Up to two runs of cache slots, attended in this order: one run for a linear cache, two for a
/// ring buffer that has wrapped (oldest first, so summation order follows positions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotRanges {
    first: Range<usize>,
    second: Range<usize>,
}

impl SlotRanges {
    /// One run of slots.
    pub fn single(r: Range<usize>) -> Self {
        Self {
            first: r,
            second: 0..0,
        }
    }

    /// Two runs of slots.
    pub fn pair(first: Range<usize>, second: Range<usize>) -> Self {
        Self { first, second }
    }

    /// The valid slots of a ring buffer of `capacity` slots after `written` tokens were stored
    /// (token `t` in slot `t % capacity`), oldest first. With a sliding window `W` and
    /// `capacity == W` this is exactly the window of the newest token.
    pub fn ring(capacity: usize, written: usize) -> Self {
        if written <= capacity || capacity == 0 {
            Self::single(0..written.min(capacity))
        } else {
            let head = written % capacity;
            Self::pair(head..capacity, 0..head)
        }
    }

    /// Total number of slots.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// True when no slot is selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `j`-th selected slot (`j < len()`), following the runs in order.
    pub(crate) fn slot(&self, j: usize) -> usize {
        if j < self.first.len() {
            self.first.start + j
        } else {
            self.second.start + (j - self.first.len())
        }
    }

    /// The slots as one run, when they are (an unwrapped cache); `None` for two runs.
    pub(crate) fn single_run(&self) -> Option<Range<usize>> {
        self.second.is_empty().then(|| self.first.clone())
    }

    /// The runs, skipping empty ones.
    pub fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        [self.first.clone(), self.second.clone()]
            .into_iter()
            .filter(|r| !r.is_empty())
    }

    fn check(&self, n_slots: usize) -> Result<(), KernelError> {
        for r in [&self.first, &self.second] {
            if r.start > r.end || r.end > n_slots {
                return Err(KernelError::Shape(format!(
                    "slot range {}..{} outside cache of {n_slots} slots",
                    r.start, r.end
                )));
            }
        }
        Ok(())
    }
}

/// The stored keys (or values) of a KV cache, or one row of them: f32, or the bytes of IEEE
/// halves or ggml Q8_0 blocks (see [`KvType`]).
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Halves, 2 bytes per value (little-endian).
    F16(&'a [u8]),
    /// Q8_0 blocks, 34 bytes per 32 values.
    Q8_0(&'a [u8]),
}

impl<'a> KvData<'a> {
    /// The element type.
    pub fn kv_type(&self) -> KvType {
        match self {
            KvData::F32(_) => KvType::F32,
            KvData::F16(_) => KvType::F16,
            KvData::Q8_0(_) => KvType::Q8_0,
        }
    }

    /// Whole values held (Q8_0: whole blocks).
    pub fn values(&self) -> usize {
        match self {
            KvData::F32(d) => d.len(),
            KvData::F16(d) => d.len() / 2,
            KvData::Q8_0(d) => d.len() / 34 * 32,
        }
    }

    /// Values `start..start + len` (for Q8_0 both multiples of 32; in range).
    fn slice(&self, start: usize, len: usize) -> KvData<'a> {
        match *self {
            KvData::F32(d) => KvData::F32(&d[start..start + len]),
            KvData::F16(d) => KvData::F16(&d[2 * start..2 * (start + len)]),
            KvData::Q8_0(d) => KvData::Q8_0(&d[start / 32 * 34..(start + len) / 32 * 34]),
        }
    }

    /// Address of value `i` (a prefetch hint).
    pub(crate) fn ptr_at(&self, i: usize) -> *const u8 {
        match *self {
            KvData::F32(d) => d.as_ptr().wrapping_add(i).cast(),
            KvData::F16(d) => d.as_ptr().wrapping_add(2 * i),
            KvData::Q8_0(d) => d.as_ptr().wrapping_add(i / 32 * 34),
        }
    }

    /// Bytes held.
    pub(crate) fn byte_len(&self) -> usize {
        match self {
            KvData::F32(d) => 4 * d.len(),
            KvData::F16(d) | KvData::Q8_0(d) => d.len(),
        }
    }

    /// Values `c0..c0 + out.len()` decoded exactly into `out` (in range).
    pub(crate) fn decode_range(&self, c0: usize, out: &mut [f32]) {
        match *self {
            KvData::F32(d) => out.copy_from_slice(&d[c0..c0 + out.len()]),
            KvData::F16(d) => decode_values(KvType::F16, d, c0, out),
            KvData::Q8_0(d) => decode_values(KvType::Q8_0, d, c0, out),
        }
    }
}

/// A KV cache of `n_slots` positions: key of (`slot`, `kv_head`) at values
/// `slot * slot_stride + kv_head * head_stride ..` (`head_dim` of them) of the keys, values
/// alike. Keys and values may each be f32, f16 or Q8_0 (then `head_dim` and the strides are
/// multiples of 32).
#[derive(Clone, Copy, Debug)]
pub struct KvCacheView<'a> {
    keys: KvData<'a>,
    values: KvData<'a>,
    n_slots: usize,
    n_kv_heads: usize,
    head_dim: usize,
    slot_stride: usize,
    head_stride: usize,
}

impl<'a> KvCacheView<'a> {
    /// An f32 cache with explicit strides; checks that the last slot of the last head is in
    /// bounds.
    pub fn new(
        keys: &'a [f32],
        values: &'a [f32],
        n_slots: usize,
        n_kv_heads: usize,
        head_dim: usize,
        slot_stride: usize,
        head_stride: usize,
    ) -> Result<Self, KernelError> {
        Self::new_typed(
            KvData::F32(keys),
            KvData::F32(values),
            n_slots,
            n_kv_heads,
            head_dim,
            slot_stride,
            head_stride,
        )
    }

    /// A cache of any element types with explicit strides (in values); checks that the last slot
    /// of the last head is in bounds and that Q8_0 rows are whole blocks.
    pub fn new_typed(
        keys: KvData<'a>,
        values: KvData<'a>,
        n_slots: usize,
        n_kv_heads: usize,
        head_dim: usize,
        slot_stride: usize,
        head_stride: usize,
    ) -> Result<Self, KernelError> {
        if n_kv_heads == 0 || head_dim == 0 {
            return Err(KernelError::Shape(
                "KV cache needs n_kv_heads > 0 and head_dim > 0".into(),
            ));
        }
        for data in [keys, values] {
            let ty = data.kv_type();
            ty.check_head_dim(head_dim)?;
            let bv = ty.block_values();
            if !slot_stride.is_multiple_of(bv) || !head_stride.is_multiple_of(bv) {
                return Err(KernelError::Shape(format!(
                    "a {ty} KV cache needs strides that are multiples of {bv}, got {slot_stride} \
                     and {head_stride}"
                )));
            }
        }
        let view = Self {
            keys,
            values,
            n_slots,
            n_kv_heads,
            head_dim,
            slot_stride,
            head_stride,
        };
        if n_slots > 0 {
            for data in [keys, values] {
                view.check_rows(data.values(), n_kv_heads - 1, 0..n_slots)?;
            }
        }
        Ok(view)
    }

    /// The usual contiguous f32 layout `[slot][kv_head][head_dim]`; `keys` and `values` must
    /// hold at least `n_slots * n_kv_heads * head_dim` values.
    pub fn contiguous(
        keys: &'a [f32],
        values: &'a [f32],
        n_slots: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, KernelError> {
        Self::contiguous_typed(
            KvData::F32(keys),
            KvData::F32(values),
            n_slots,
            n_kv_heads,
            head_dim,
        )
    }

    /// The contiguous layout `[slot][kv_head][head_dim]` for any element types.
    pub fn contiguous_typed(
        keys: KvData<'a>,
        values: KvData<'a>,
        n_slots: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, KernelError> {
        Self::new_typed(
            keys,
            values,
            n_slots,
            n_kv_heads,
            head_dim,
            n_kv_heads * head_dim,
            head_dim,
        )
    }

    /// Number of slots (positions) in the cache.
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Number of KV heads.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The key and value element types.
    pub fn types(&self) -> (KvType, KvType) {
        (self.keys.kv_type(), self.values.kv_type())
    }

    /// Checks that the rows of `kv_head` for `slots` lie in `available` values.
    fn check_rows(
        &self,
        available: usize,
        kv_head: usize,
        slots: Range<usize>,
    ) -> Result<(), KernelError> {
        if kv_head >= self.n_kv_heads || slots.start > slots.end || slots.end > self.n_slots {
            return Err(KernelError::Shape(format!(
                "kv head {kv_head}, slots {}..{} outside {} heads x {} slots",
                slots.start, slots.end, self.n_kv_heads, self.n_slots
            )));
        }
        check_extent(
            slots.len(),
            slots.start * self.slot_stride + kv_head * self.head_stride,
            self.slot_stride,
            self.head_dim,
            available,
        )
    }

    fn rows(
        &self,
        data: KvData<'a>,
        kv_head: usize,
        slots: Range<usize>,
    ) -> Result<RowsRef<'a>, KernelError> {
        let KvData::F32(floats) = data else {
            return Err(KernelError::Shape(format!(
                "the cache holds {} rows, not f32 rows",
                data.kv_type()
            )));
        };
        self.check_rows(floats.len(), kv_head, slots.clone())?;
        RowsRef::new(
            floats,
            slots.start * self.slot_stride + kv_head * self.head_stride,
            self.slot_stride,
            slots.len(),
            self.head_dim,
        )
    }

    /// The keys of `kv_head` for `slots` (an f32 cache only).
    pub fn keys(&self, kv_head: usize, slots: Range<usize>) -> Result<RowsRef<'a>, KernelError> {
        self.rows(self.keys, kv_head, slots)
    }

    /// The values of `kv_head` for `slots` (an f32 cache only).
    pub fn values(&self, kv_head: usize, slots: Range<usize>) -> Result<RowsRef<'a>, KernelError> {
        self.rows(self.values, kv_head, slots)
    }

    /// True when the heads of one slot sit closer together than consecutive slots of one head
    /// (e.g. `[slot][kv_head][head_dim]`): the attention loops then walk slots in the outer loop so
    /// memory is read sequentially instead of one strided row per page.
    pub(crate) fn slot_major(&self) -> bool {
        self.head_stride < self.slot_stride
    }

    /// Key row of (`slot`, `kv_head`); both must be in range (panics otherwise).
    pub(crate) fn key_row(&self, slot: usize, kv_head: usize) -> KvData<'a> {
        let o = slot * self.slot_stride + kv_head * self.head_stride;
        self.keys.slice(o, self.head_dim)
    }

    /// Value row of (`slot`, `kv_head`); both must be in range (panics otherwise).
    pub(crate) fn value_row(&self, slot: usize, kv_head: usize) -> KvData<'a> {
        let o = slot * self.slot_stride + kv_head * self.head_stride;
        self.values.slice(o, self.head_dim)
    }
}

/// Shape checks shared by the multi-head entry points; returns the query heads per KV head.
pub(crate) fn check_heads(
    kv: &KvCacheView<'_>,
    n_heads: usize,
    q_len: usize,
    out_len: usize,
    slots: &[&SlotRanges],
) -> Result<usize, KernelError> {
    if n_heads == 0 || !n_heads.is_multiple_of(kv.n_kv_heads) {
        return Err(KernelError::Shape(format!(
            "{n_heads} query heads is not a multiple of {} KV heads",
            kv.n_kv_heads
        )));
    }
    check_len("attention queries", q_len, out_len)?;
    for s in slots {
        s.check(kv.n_slots)?;
    }
    Ok(n_heads / kv.n_kv_heads)
}
