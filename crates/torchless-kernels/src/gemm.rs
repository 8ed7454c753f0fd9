//! Cache-blocked GEMM `Y = X Wᵀ` (prefill): `X` is `batch x k` (activations, row-major), `W` is
//! `n x k` (weights, f32 or int8), `Y` is `batch x n`.
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

use crate::mat::{MatRef, GROUP_SIZE};
use std::ops::Range;

/// Largest depth of a packed panel. With the weight panels outermost the output panel stays in
/// cache across depth blocks, so the depth trades the weight panel's L1 footprint (16 x 384
/// floats = 24 KiB, next to a 9 KiB activation sliver in a 32 KiB L1) and a depth block of packed
/// activations (batch 512: 768 KiB) against per-panel overhead. Measured at 512x4096x4096 int8,
/// 2 threads, alternated: depth 384 ~133-145 GFLOP/s, 448 about the same, 512 ~125-135, 256
/// ~80-128 (at batch 128, 512 had been best).
const KC_MAX: usize = 384;

/// The depth block for a product of depth `k`: `k` split into equal blocks of at most `KC_MAX`,
/// rounded up to whole int8 groups (so groups never straddle a block).
fn depth_block(k: usize) -> usize {
    let blocks = k.div_ceil(KC_MAX).max(1);
    k.div_ceil(blocks).div_ceil(GROUP_SIZE) * GROUP_SIZE
}

/// One SIMD path's micro-kernel and weight packer.
pub(crate) trait Micro: Copy + Send + Sync {
    /// Batch rows per micro-tile.
    const MR: usize;
    /// Weight rows (output columns) per micro-tile.
    const NR: usize;

    /// `c[i*ldc + j] (+)= Σ_k a[k*MR + i] b[k*NR + j]` for the full `MR x NR` tile. `pf` are
    /// addresses to prefetch along the way (paths without prefetching ignore them).
    #[allow(clippy::too_many_arguments)]
    fn kernel(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
        pf: &[*const u8],
    );

    /// Packs weight rows `n0..n0+nr` (`nr <= NR`), columns `pc..pc+kc` as `out[k*NR + j]`,
    /// dequantized, zero for `j >= nr`.
    fn pack_b(self, w: &MatRef<'_>, n0: usize, nr: usize, pc: usize, kc: usize, out: &mut [f32]) {
        pack_b_generic(w, n0, nr, Self::NR, pc, kc, out);
    }

    /// Whether the kernel uses its `pf` addresses (otherwise the driver does not collect them).
    const PREFETCH: bool = false;
}

/// The source cache lines of a weight panel (rows `n0..n0+nr`, columns `pc..pc+kc`), numbered row
/// by row, so the driver can spread prefetches of the next panel over the current panel's
/// micro-kernel calls: fetching a panel's 16 strided row pieces from DRAM otherwise stalls the
/// packer (measured: 10-15% of an f32 GEMM's time).
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

/// Portable packer for any layout (partial panels, int8 groups spanning rows).
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
            for i in 0..mr {
                let row = s * mr + i;
                if row < batch {
                    let src = &x[row * k + pc..row * k + pc + kc];
                    for (kk, &v) in src.iter().enumerate() {
                        sliver[kk * mr + i] = v;
                    }
                } else {
                    for kk in 0..kc {
                        sliver[kk * mr + i] = 0.0;
                    }
                }
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

/// A 64-byte aligned window of `len` floats inside `buf`.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + 16, 0.0);
    let off = buf.as_ptr().align_offset(64).min(16);
    &mut buf[off..off + len]
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
    let mut bbuf = Vec::new();
    let kcb = depth_block(k);
    let bpack = aligned(&mut bbuf, kcb * nr_full);
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
        m.pack_b(w, jr, nr, pc, kc, bpack);
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
            if mr == mr_full && nr == nr_full {
                m.kernel(kc, a, bpack, &mut c[coff..], ldc, accumulate, pf);
            } else {
                m.kernel(kc, a, bpack, &mut tile, nr_full, false, pf);
                store_partial(&tile, nr_full, mr, nr, &mut c[coff..], ldc, accumulate);
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

/// Adds (or copies) the top-left `mr x nr` corner of a full micro-tile (`tile`, row stride
/// `stride`) into `c` (row stride `ldc`): the edges of the batch and of the weight rows.
pub(crate) fn store_partial(
    tile: &[f32],
    stride: usize,
    mr: usize,
    nr: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    for i in 0..mr {
        let dst = &mut c[i * ldc..i * ldc + nr];
        let src = &tile[i * stride..i * stride + nr];
        if accumulate {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
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

/// Packed-activation and column-task buffers are kept between calls: allocating them fresh
/// page-faults megabytes of zeroed memory on every product, which cost the 2-thread f32 GEMM
/// about 20% (128x4096x4096: 82 -> 100+ GFLOP/s with reuse).
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

/// The f32 buffers of both GEMMs (packed activations, column-task outputs).
pub(crate) static F32_POOL: Pool<f32> = Pool::new();

/// The scalar path's micro-kernel: a 4x8 tile in plain arrays (LLVM vectorizes the inner loop).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalarMicro;

impl Micro for ScalarMicro {
    const MR: usize = 4;
    const NR: usize = 8;

    fn kernel(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
        _pf: &[*const u8],
    ) {
        let mut acc = [[0.0f32; 8]; 4];
        for (ak, bk) in a[..kc * 4].chunks_exact(4).zip(b[..kc * 8].chunks_exact(8)) {
            for i in 0..4 {
                for j in 0..8 {
                    acc[i][j] += ak[i] * bk[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let dst = &mut c[i * ldc..i * ldc + 8];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}

/// The `wide` path's micro-kernel: `MR x 8*NV` tiles of `f32x8` accumulators.
#[cfg(feature = "simd")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct WideMicro<const MR: usize, const NV: usize>;

#[cfg(feature = "simd")]
impl<const MR_: usize, const NV: usize> Micro for WideMicro<MR_, NV> {
    const MR: usize = MR_;
    const NR: usize = 8 * NV;

    fn kernel(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
        _pf: &[*const u8],
    ) {
        crate::wide_path::gemm_kernel::<MR_, NV>(kc, a, b, c, ldc, accumulate);
    }
}

/// The tile the `wide` path uses: 16 accumulator registers on SSE2 fit 4x8; NEON's 32 fit 6x16.
#[cfg(all(feature = "simd", target_arch = "aarch64"))]
pub(crate) type WideDefault = WideMicro<6, 2>;
/// The tile the `wide` path uses: 16 accumulator registers on SSE2 fit 4x8; NEON's 32 fit 6x16.
#[cfg(all(feature = "simd", not(target_arch = "aarch64")))]
pub(crate) type WideDefault = WideMicro<4, 1>;

/// AVX2+FMA: 6x16 micro-kernel, transposing (and dequantizing) packers for full panels.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Micro(pub(crate) crate::avx2::Token);

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl Micro for Avx2Micro {
    const MR: usize = crate::avx2::MR;
    const NR: usize = crate::avx2::NR;

    const PREFETCH: bool = true;

    fn kernel(
        self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
        pf: &[*const u8],
    ) {
        crate::avx2::kernel_6x16(self.0, kc, a, b, c, ldc, accumulate, pf);
    }

    fn pack_b(self, w: &MatRef<'_>, n0: usize, nr: usize, pc: usize, kc: usize, out: &mut [f32]) {
        if nr == Self::NR {
            match w {
                MatRef::F32(m) => {
                    let cols = m.cols();
                    let src = &m.data()[n0 * cols + pc..];
                    return crate::avx2::pack_b_f32(self.0, src, cols, kc, out);
                }
                MatRef::Int8(m) if m.is_row_aligned() && kc.is_multiple_of(GROUP_SIZE) => {
                    let cols = m.cols();
                    let groups = cols / GROUP_SIZE;
                    let q = &m.q()[n0 * cols + pc..];
                    let inv = &m.inv_scales()[n0 * groups + pc / GROUP_SIZE..];
                    return crate::avx2::pack_b_i8(self.0, q, cols, inv, groups, kc, out);
                }
                MatRef::Int8(_) | MatRef::Int4(_) => {}
            }
        }
        pack_b_generic(w, n0, nr, Self::NR, pc, kc, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Runs one micro-kernel configuration through the driver and compares with the reference.
    fn check<M: Micro>(m: M) {
        let mut s = 7u64;
        for &(n, k, batch) in &[
            (1usize, 1usize, 2usize),
            (17, 9, 5),
            (33, 300, 7),
            (16, 64, 13),
            (40, 520, 150),
            // Several depth blocks: 4 x 384 and a 128 tail, 2 x 384 and a ragged 232 tail.
            (19, 1664, 9),
            (21, 1000, 8),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| rng(&mut s)).collect();
            let q: Vec<i8> = (0..n * k).map(|_| (rng(&mut s) * 127.0) as i8).collect();
            let inv: Vec<f32> = (0..(n * k).div_ceil(64))
                .map(|_| 10.0 + rng(&mut s) * 5.0)
                .collect();
            let x: Vec<f32> = (0..batch * k).map(|_| rng(&mut s)).collect();
            for mat in [
                MatRef::f32(&w, n, k).unwrap(),
                MatRef::int8(&q, &inv, n, k).unwrap(),
            ] {
                let mut y = vec![f32::NAN; batch * n];
                gemm(m, &mat, &x, &mut y, batch);
                let want = crate::reference::matmul(&mat, &x, batch);
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    let scale: f64 = (0..k)
                        .map(|c| {
                            (f64::from(mat.get(i % n, c).unwrap()) * f64::from(x[(i / n) * k + c]))
                                .abs()
                        })
                        .sum();
                    let err = f64::from(a - b).abs();
                    assert!(
                        err <= 1e-5 * scale + 1e-6,
                        "{n}x{k} b{batch} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

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

    #[test]
    fn scalar_micro_kernel() {
        check(ScalarMicro);
    }

    #[cfg(feature = "simd")]
    #[test]
    fn wide_micro_kernels_of_both_tile_shapes() {
        // 4x8 is the SSE2 choice, 6x16 the NEON one: both run here.
        check(WideMicro::<4, 1>);
        check(WideMicro::<6, 2>);
        check(WideMicro::<3, 3>);
    }

    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    #[test]
    fn avx2_micro_kernel_and_packers() {
        let Some(t) = crate::avx2::Token::detect() else {
            return; // no AVX2 on this CPU: nothing to test
        };
        check(Avx2Micro(t));
        // The vectorized packers produce exactly what the generic packer does.
        let (n, k) = (32, 512);
        let mut s = 3u64;
        let w: Vec<f32> = (0..n * k).map(|_| rng(&mut s)).collect();
        let q: Vec<i8> = (0..n * k).map(|_| (rng(&mut s) * 127.0) as i8).collect();
        let mut inv: Vec<f32> = (0..n * k / 64)
            .map(|_| 1.0 + 1000.0 * rng(&mut s).abs())
            .collect();
        inv[9] = f32::INFINITY; // all-zero group as the exporter writes it
        for mat in [
            MatRef::f32(&w, n, k).unwrap(),
            MatRef::int8(&q, &inv, n, k).unwrap(),
        ] {
            for (n0, pc, kc) in [(0, 0, 256), (16, 256, 256), (0, 64, 128)] {
                let mut fast = vec![0.0; kc * 16];
                let mut slow = vec![0.0; kc * 16];
                Avx2Micro(t).pack_b(&mat, n0, 16, pc, kc, &mut fast);
                pack_b_generic(&mat, n0, 16, 16, pc, kc, &mut slow);
                assert!(fast
                    .iter()
                    .zip(&slow)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}
