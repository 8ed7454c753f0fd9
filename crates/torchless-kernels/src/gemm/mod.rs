//! Cache-blocked GEMM `Y = X Wᵀ` (prefill): `X` is `batch x k` (activations, row-major), `W` is
//! `n x k` (weights), `Y` is `batch x n`. The drivers, generic over the micro-kernel traits of
//! `isa::traits`: [`float`] (f32 arithmetic: f32 weights, int8 dequantized exactly), [`int8`]
//! (int8 weights with 7-bit activations) and [`int4`] (int4 weights with int8 activations), the
//! last two sharing the panel loop of [`int`]. This module holds what all of them share: the
//! split into column tasks, the order of the panels, the edges of the tiles and buffer pools.
//!
//! BLIS-style blocking, specialised for "few activation rows, many weight rows":
//! - `X` is packed once per call into `MR`-row slivers per depth block (k-major, zero-padded).
//! - The weight rows are split into column ranges of `Y`, one rayon task each; a task owns its
//!   output columns, so threads never write the same cache lines and every weight is read (and, for
//!   int8, dequantized) by exactly one thread.
//! - Inside a task, for each group of `NR` weight rows and each depth block, the rows are packed
//!   (int8: dequantized) into a small L1-resident panel that is then reused by every `MR`-row sliver
//!   of the batch: a weight tile is dequantized once per call, never expanded into an f32 copy of
//!   the matrix, and the panel's output columns stay in cache while all depth blocks add into them.

pub(crate) mod blocks;
pub(crate) mod float;
pub(crate) mod int;
pub(crate) mod int4;
pub(crate) mod int8;

use crate::mat::MatRef;
use std::ops::Range;

/// The source cache lines of a weight panel (rows `n0..n0+nr`, columns `pc..pc+kc`), numbered row
/// by row, so the driver can spread prefetches of the next panel over the current panel's
/// micro-kernel calls: fetching a panel's 16 strided row pieces from DRAM otherwise stalls the
/// packer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PanelLines<'a> {
    /// First byte of the panel's first row.
    pub(crate) base: *const u8,
    /// Bytes between rows.
    pub(crate) row_bytes: usize,
    /// Cache lines per row.
    pub(crate) per_row: usize,
    /// Rows.
    pub(crate) rows: usize,
    _w: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> PanelLines<'a> {
    pub(crate) fn new(w: &MatRef<'a>, n0: usize, nr: usize, pc: usize, kc: usize) -> Self {
        let (base, elem, cols) = match w {
            MatRef::F32(m) => (m.data().as_ptr().cast::<u8>(), 8, m.cols()),
            MatRef::Int8(m) => (m.q().as_ptr().cast::<u8>(), 2, m.cols()),
            MatRef::Int4(m) => (m.packed().as_ptr(), 1, m.cols()),
            MatRef::Blocks(m) => {
                // The blocks holding columns pc..pc + kc of each row.
                let (bv, bb) = (m.ty().block_values(), m.ty().block_bytes());
                return Self {
                    base: m
                        .data()
                        .as_ptr()
                        .wrapping_add(n0 * m.row_bytes() + pc / bv * bb),
                    row_bytes: m.row_bytes(),
                    per_row: ((pc + kc).div_ceil(bv) - pc / bv) * bb / 64 + 1,
                    rows: nr,
                    _w: std::marker::PhantomData,
                };
            }
        };
        // `elem` is in half bytes, so int4's two codes per byte count right.
        Self {
            // Only an address for prefetching: computed with wrapping arithmetic, never read.
            base: base.wrapping_add((n0 * cols + pc) * elem / 2),
            row_bytes: cols * elem / 2,
            per_row: (kc * elem / 2).div_ceil(64),
            rows: nr,
            _w: std::marker::PhantomData,
        }
    }

    /// Total number of lines.
    pub(crate) fn len(&self) -> usize {
        self.per_row * self.rows
    }

    /// Calls `f` with the address of each line in `range` (one division per call, not per line).
    pub(crate) fn for_each(&self, range: Range<usize>, mut f: impl FnMut(*const u8)) {
        if self.per_row == 0 || range.is_empty() {
            return;
        }
        let (mut row, mut col) = (range.start / self.per_row, range.start % self.per_row);
        for _ in range {
            f(self.base.wrapping_add(row * self.row_bytes + col * 64));
            col += 1;
            if col == self.per_row {
                col = 0;
                row += 1;
            }
        }
    }

    /// Replaces the contents of `out` with the address of every line, in order (a plain nested
    /// loop, cheaper per line than stepping through `for_each`).
    pub(crate) fn collect(&self, out: &mut Vec<*const u8>) {
        out.clear();
        for row in 0..self.rows {
            let start = self.base.wrapping_add(row * self.row_bytes);
            out.extend((0..self.per_row).map(|col| start.wrapping_add(col * 64)));
        }
    }
}

/// The panels of a product in the order both GEMMs compute them (weight panels of `nr` rows
/// outermost, then `kc`-deep blocks): `(first row, depth, the panel after it)`, so the next
/// panel's lines can be prefetched while one is computed.
pub(crate) fn panels(
    cols: Range<usize>,
    k: usize,
    nr: usize,
    kc: usize,
) -> impl Iterator<Item = (usize, usize, Option<(usize, usize)>)> {
    let end = cols.end;
    cols.step_by(nr).flat_map(move |jr| {
        (0..k).step_by(kc).map(move |pc| {
            let next = if pc + kc < k {
                Some((jr, pc + kc))
            } else if jr + nr < end {
                Some((jr + nr, 0))
            } else {
                None
            };
            (jr, pc, next)
        })
    })
}

/// Runs `kernel` for the top-left `mr x nr` corner of `c` (row stride `ldc`), the edges of the
/// batch and of the weight rows, through a full micro-tile `tile` (row stride `stride`):
/// `kernel(tile, accumulate)` computes the whole tile. When accumulating, the corner is loaded
/// into the tile first, so each element goes through exactly the operations a full tile applies
/// to it: a row's bits never depend on whether its tile was partial, so on the batch size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn partial_tile(
    tile: &mut [f32],
    stride: usize,
    mr: usize,
    nr: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    kernel: impl FnOnce(&mut [f32], bool),
) {
    if accumulate {
        for i in 0..mr {
            tile[i * stride..i * stride + nr].copy_from_slice(&c[i * ldc..i * ldc + nr]);
        }
    }
    kernel(tile, accumulate);
    for i in 0..mr {
        c[i * ldc..i * ldc + nr].copy_from_slice(&tile[i * stride..i * stride + nr]);
    }
}

/// How many column tasks: one per thread would do, two per thread lets rayon rebalance when a
/// core is busy with something else; tiny problems stay on the calling thread.
#[cfg(feature = "parallel")]
fn n_tasks(n: usize, batch: usize, k: usize, nr: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || batch.saturating_mul(n).saturating_mul(k) < 1 << 22 {
        return 1;
    }
    (2 * threads).min(n.div_ceil(nr)).max(1)
}

/// Handles the products with nothing to compute (no rows, no tokens, or depth 0: all zeros);
/// `true` when `y` is done.
pub(crate) fn is_trivial(n: usize, k: usize, batch: usize, y: &mut [f32]) -> bool {
    if n == 0 || batch == 0 {
        return true;
    }
    if k == 0 {
        y.fill(0.0);
        return true;
    }
    false
}

/// Runs `compute(cols, c, ldc)` over the output columns of a `batch x n` product of depth `k`:
/// split into column tasks when it is big enough for several threads, else in one call on `y`.
pub(crate) fn by_columns(
    n: usize,
    nr: usize,
    batch: usize,
    k: usize,
    y: &mut [f32],
    compute: impl Fn(Range<usize>, &mut [f32], usize) + Sync,
) {
    #[cfg(feature = "parallel")]
    {
        let tasks = n_tasks(n, batch, k, nr);
        if tasks > 1 {
            return column_tasks(n, nr, batch, y, tasks, compute);
        }
    }
    #[cfg(not(feature = "parallel"))]
    let _ = (nr, batch, k);
    compute(0..n, y, n);
}

/// The outputs `cols` of every token of a `batch x n` product `y`, for one column task: rows
/// handed out one at a time, straight into `y` (no task buffer, no copy back).
pub(crate) struct OutCols<'a> {
    y: *mut f32,
    n: usize,
    batch: usize,
    cols: Range<usize>,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

impl OutCols<'_> {
    /// The columns this task writes.
    pub(crate) fn cols(&self) -> Range<usize> {
        self.cols.clone()
    }

    /// Token `t`'s outputs `cols` (index 0: column `cols.start`).
    pub(crate) fn row(&mut self, t: usize) -> &mut [f32] {
        assert!(t < self.batch, "output row out of bounds");
        // SAFETY: `y` holds `batch x n` values and `cols.end <= n` (`by_column_rows`), so the
        // slice is inside `y`; it borrows `self` mutably, so a task holds one row slice at a
        // time, and other tasks' `OutCols` cover disjoint columns: no two live slices overlap.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.y.add(t * self.n + self.cols.start),
                self.cols.len(),
            )
        }
    }
}

/// [`by_columns`] for kernels that write each output once, a token's row at a time: the tasks
/// write their columns straight into `y` (a small model's products spent ~3% of the prefill
/// copying task buffers back).
pub(crate) fn by_column_rows(
    n: usize,
    nr: usize,
    batch: usize,
    k: usize,
    y: &mut [f32],
    compute: impl Fn(&mut OutCols<'_>) + Sync,
) {
    assert_eq!(y.len(), batch * n, "output shape");
    let out = |cols: Range<usize>, y: *mut f32| OutCols {
        y,
        n,
        batch,
        cols,
        _y: std::marker::PhantomData,
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        /// `y`'s address, shared by the column tasks (each writes only its own columns).
        struct Shared(*mut f32);
        // SAFETY: the tasks write disjoint columns of `y` through `OutCols`, and `y` outlives
        // the parallel loop, which ends before this function returns.
        unsafe impl Sync for Shared {}
        impl Shared {
            fn ptr(&self) -> *mut f32 {
                self.0
            }
        }
        let tasks = n_tasks(n, batch, k, nr);
        if tasks > 1 {
            let per = n.div_ceil(tasks).div_ceil(nr) * nr;
            let shared = Shared(y.as_mut_ptr());
            (0..tasks).into_par_iter().for_each(|t| {
                let cols = (t * per).min(n)..((t + 1) * per).min(n);
                if !cols.is_empty() {
                    compute(&mut out(cols, shared.ptr()));
                }
            });
            return;
        }
    }
    #[cfg(not(feature = "parallel"))]
    let _ = (nr, k);
    compute(&mut out(0..n, y.as_mut_ptr()));
}

/// The multi-threaded form: `tasks` column ranges, each computed into its own buffer by one rayon
/// task (`compute(cols, c, ldc)`), then copied into the rows of `y` (cheap next to the
/// O(batch·n·k) work, and needs no unsafe sharing of `y`). Ranges are whole multiples of `nr`.
#[cfg(feature = "parallel")]
fn column_tasks(
    n: usize,
    nr: usize,
    batch: usize,
    y: &mut [f32],
    tasks: usize,
    compute: impl Fn(Range<usize>, &mut [f32], usize) + Sync,
) {
    use rayon::prelude::*;
    let per = n.div_ceil(tasks).div_ceil(nr) * nr;
    let parts: Vec<(Range<usize>, Vec<f32>)> = (0..tasks)
        .into_par_iter()
        .filter_map(|t| {
            let r = (t * per).min(n)..((t + 1) * per).min(n);
            if r.is_empty() {
                return None;
            }
            // Every element is written by the first depth block, so the buffer needs no zeroing;
            // reusing one per thread saves page-faulting fresh memory on each call.
            let mut c = F32_POOL.take();
            c.resize(batch * r.len(), 0.0);
            let width = r.len();
            compute(r.clone(), &mut c, width);
            Some((r, c))
        })
        .collect();
    y.par_chunks_mut(n).enumerate().for_each(|(row, yr)| {
        for (r, c) in &parts {
            let width = r.len();
            yr[r.clone()].copy_from_slice(&c[row * width..(row + 1) * width]);
        }
    });
    F32_POOL.give(parts.into_iter().map(|(_, c)| c));
}

/// Runs one job per sliver of packed activations: on rayon's threads when the batch is big
/// enough (`batch * k` values) to pay for them, else in order on this thread.
pub(crate) fn run_sliver_jobs<J: Send>(
    jobs: Vec<J>,
    batch: usize,
    k: usize,
    fill: impl Fn(J) + Sync + Send,
) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if batch * k >= 1 << 16 {
            jobs.into_par_iter().for_each(fill);
            return;
        }
    }
    #[cfg(not(feature = "parallel"))]
    let _ = (batch, k);
    jobs.into_iter().for_each(fill);
}

/// A buffer whose elements start on a 64-byte boundary: the micro-kernels' 512-bit loads and
/// stores of it then never straddle two cache lines (each such access costs two).
pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    at: usize,
    len: usize,
}

impl<T: Clone + Default> Aligned<T> {
    /// Wraps `buf` (grown as needed; its contents are left as they were, so callers write
    /// before they read) as `len` aligned elements.
    pub(crate) fn new(mut buf: Vec<T>, len: usize) -> Self {
        let slack = 64 / std::mem::size_of::<T>().max(1);
        buf.truncate(len + slack);
        buf.resize(len + slack, T::default());
        let at = buf.as_ptr().align_offset(64).min(slack);
        Self { buf, at, len }
    }

    /// The vector back, for a pool.
    pub(crate) fn into_inner(self) -> Vec<T> {
        self.buf
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// Packed-activation and column-task buffers are kept between calls: allocating them fresh
/// page-faults megabytes of zeroed memory on every product.
const MAX_POOLED: usize = 8;

/// A pool of reusable buffers (a poisoned lock only means a panic elsewhere; the buffers are plain
/// memory, so the pool stays usable).
pub(crate) struct Pool<T>(std::sync::Mutex<Vec<Vec<T>>>);

impl<T> Pool<T> {
    pub(crate) const fn new() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<T>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer from the pool (contents unspecified), or a new empty one.
    pub(crate) fn take(&self) -> Vec<T> {
        self.lock().pop().unwrap_or_default()
    }

    /// A buffer from the pool of `len` elements, left as they were (stale values from an earlier
    /// use, or defaults): for buffers whose every element is written before it is read.
    pub(crate) fn take_len(&self, len: usize) -> Vec<T>
    where
        T: Clone + Default,
    {
        let mut v = self.take();
        v.truncate(len);
        v.resize(len, T::default());
        v
    }

    /// Returns buffers to the pool (beyond `MAX_POOLED` they are freed).
    pub(crate) fn give(&self, bufs: impl IntoIterator<Item = Vec<T>>) {
        let mut pool = self.lock();
        for b in bufs {
            if pool.len() < MAX_POOLED {
                pool.push(b);
            }
        }
    }
}

/// The f32 buffers of the GEMMs (packed activations, column-task outputs, attention blocks).
pub(crate) static F32_POOL: Pool<f32> = Pool::new();
