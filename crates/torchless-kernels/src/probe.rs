//! Machine probes the kernels are judged against: a STREAM-like read bandwidth (decode is
//! bandwidth-bound) and the FMA peak (prefill is compute-bound).

use crate::dispatch::{auto_path, on_isa, wide_sum, Path};
use crate::isa::traits::{Elementwise, Isa};
use std::sync::Barrier;
use std::time::Instant;

/// Sum of `x` on the given path (the bandwidth probe's per-thread work).
fn sum(path: Path, x: &[f32]) -> f32 {
    on_isa!(path, |isa| isa.elementwise().sum(x))
}

/// Values per chunk when a thread interleaves streams or prefetches: 16 KiB, long enough that
/// the call per chunk costs nothing next to its loads, short enough that the streams advance
/// together.
const CHUNK: usize = 4096;

/// How far ahead of the chunk being summed [`ReadLoop::Prefetched`] asks for lines: one chunk.
const PREFETCH_AHEAD: usize = CHUNK;

/// Bytes per cache line, the prefetch stride.
const LINE: usize = 64;

/// One way a thread reads its part of the probe's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadLoop {
    /// The element-wise sum (eight independent accumulators of the path's vector width), left
    /// to the hardware prefetchers.
    Plain,
    /// The same sum chunk by chunk, each chunk's successor prefetched line by line first.
    Prefetched,
    /// 512-bit loads (AVX-512 paths only).
    Wide,
}

impl ReadLoop {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            ReadLoop::Plain => "plain",
            ReadLoop::Prefetched => "prefetched",
            ReadLoop::Wide => "zmm",
        }
    }
}

/// What one read loop achieved: `streams` sequential streams per thread (each thread's part cut
/// into that many pieces walked chunk by chunk in lockstep, as the decode kernels walk two rows
/// at once).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopBandwidth {
    /// The loop each thread ran.
    pub read_loop: ReadLoop,
    /// Streams per thread.
    pub streams: usize,
    /// 10⁹ bytes per second, median pass.
    pub gb_per_s: f64,
}

/// Sum of `x` the way `read_loop` reads, `None` if the path has no such loop.
fn read(path: Path, read_loop: ReadLoop, x: &[f32]) -> Option<f32> {
    match read_loop {
        ReadLoop::Plain => Some(sum(path, x)),
        ReadLoop::Wide => wide_sum(path, x),
        ReadLoop::Prefetched => Some(on_isa!(path, |isa| {
            let e = isa.elementwise();
            let mut total = 0.0;
            for (c, chunk) in x.chunks(CHUNK).enumerate() {
                let ahead = x
                    .as_ptr()
                    .wrapping_add(c * CHUNK + PREFETCH_AHEAD)
                    .cast::<u8>();
                for line in (0..CHUNK * 4).step_by(LINE) {
                    // A hint: addresses past the end are never dereferenced.
                    e.prefetch(ahead.wrapping_add(line));
                }
                total += e.sum(chunk);
            }
            total
        })),
    }
}

/// `parts` (equal lengths but the last) read in lockstep, chunk by chunk.
fn read_streams(path: Path, read_loop: ReadLoop, parts: &[&[f32]]) -> Option<f32> {
    if let [one] = parts {
        return read(path, read_loop, one);
    }
    let longest = parts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut total = 0.0;
    for start in (0..longest).step_by(CHUNK) {
        for part in parts {
            if start < part.len() {
                total += read(
                    path,
                    read_loop,
                    &part[start..(start + CHUNK).min(part.len())],
                )?;
            }
        }
    }
    Some(total)
}

/// `n` steps of 24 independent 16-lane FMA chains, on paths with 512-bit FMA.
fn fma_chains_zmm(path: Path, n: usize) -> Option<f32> {
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    if let Path::Avx512(t) = path {
        return Some(t.fma_chains_zmm(n));
    }
    let _ = (path, n);
    None
}

/// `n` steps of 12 independent 8-lane FMA chains on the given path (the FMA probe's per-thread
/// work).
fn fma_chains(path: Path, n: usize) -> f32 {
    on_isa!(path, |isa| isa.elementwise().fma_chains(n))
}

/// Runs `warm_up(input)` then `passes` times `pass(input)` on one scoped thread per input, every
/// pass started together (a barrier) and timed from the first start to the last finish; returns
/// the median pass in seconds, `None` if no pass completed.
fn median_pass<T: Sync>(
    inputs: &[T],
    passes: usize,
    warm_up: impl Fn(&T) + Sync,
    pass: impl Fn(&T) + Sync,
) -> Option<f64> {
    let barrier = Barrier::new(inputs.len());
    let spans: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|input| {
                let (barrier, warm_up, pass) = (&barrier, &warm_up, &pass);
                s.spawn(move || {
                    let mut out = Vec::with_capacity(passes);
                    warm_up(input);
                    for _ in 0..passes {
                        barrier.wait();
                        let t0 = Instant::now();
                        pass(input);
                        out.push((t0, Instant::now()));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut secs: Vec<f64> = (0..passes)
        .filter_map(|p| {
            let start = spans.iter().filter_map(|s| s.get(p)).map(|s| s.0).min()?;
            let end = spans.iter().filter_map(|s| s.get(p)).map(|s| s.1).max()?;
            Some(end.duration_since(start).as_secs_f64())
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    secs.get(secs.len() / 2).copied()
}

/// A STREAM-like read-bandwidth probe over a buffer allocated and written once, so it can be
/// measured repeatedly, e.g. interleaved with the kernel it is compared with (on a shared,
/// noisy machine only measurements taken side by side give a meaningful ratio).
#[derive(Debug)]
pub struct BandwidthProbe {
    buf: Vec<f32>,
}

impl BandwidthProbe {
    /// Allocates `bytes` (rounded down to whole floats, at least 64 KiB) and writes every value, so
    /// page faults are not timed later. Use a buffer much larger than the last-level cache (e.g.
    /// 1 GiB) to measure DRAM rather than cache bandwidth.
    ///
    /// On Linux the buffer asks for transparent huge pages (`MADV_HUGEPAGE`), as the model
    /// loader does for its file mapping, so both are read through the same page size (with 4 KiB
    /// pages, TLB misses and prefetchers stopping at page ends make the probe read less than the
    /// weights' 2 MiB mapping streams).
    pub fn new(bytes: usize) -> Self {
        let n = (bytes / 4).max(16 * 1024);
        let mut buf: Vec<f32> = Vec::with_capacity(n);
        advise_huge_pages(&buf);
        buf.extend((0..n).map(|i| (i % 251) as f32));
        Self { buf }
    }

    /// Bytes read per pass.
    pub fn bytes(&self) -> usize {
        self.buf.len() * 4
    }

    /// The best of [`measure_each`](Self::measure_each): the read bandwidth `threads` threads
    /// reach with the fastest loop this CPU has, in GB/s (10⁹ bytes per second). Kernels are
    /// compared with this, so their share of it cannot exceed 100% for want of a better loop.
    pub fn measure(&self, threads: usize, passes: usize) -> f64 {
        self.best(threads, passes).map_or(0.0, |b| b.gb_per_s)
    }

    /// The fastest of [`measure_each`](Self::measure_each), `None` if no pass completed.
    pub fn best(&self, threads: usize, passes: usize) -> Option<LoopBandwidth> {
        self.measure_each(threads, passes)
            .into_iter()
            .max_by(|a, b| a.gb_per_s.total_cmp(&b.gb_per_s))
    }

    /// Every read loop the fastest SIMD path has ([`ReadLoop`]), with one and with two streams per
    /// thread: `passes` passes each, `threads` OS threads reading disjoint equal parts, each pass
    /// timed from a common start (a barrier) to the last thread's finish; the median pass of each.
    pub fn measure_each(&self, threads: usize, passes: usize) -> Vec<LoopBandwidth> {
        let passes = passes.max(1);
        let n = self.buf.len();
        let path = auto_path();
        let per = n.div_ceil(threads.max(1));
        let mut out = Vec::new();
        for read_loop in [ReadLoop::Plain, ReadLoop::Prefetched, ReadLoop::Wide] {
            if read(path, read_loop, &[]).is_none() {
                continue;
            }
            for streams in [1, 2] {
                let parts: Vec<Vec<&[f32]>> = self
                    .buf
                    .chunks(per)
                    .map(|part| part.chunks(part.len().div_ceil(streams)).collect())
                    .collect();
                let secs = median_pass(
                    &parts,
                    passes,
                    |_| {},
                    |streams| {
                        std::hint::black_box(read_streams(
                            path,
                            read_loop,
                            std::hint::black_box(streams),
                        ));
                    },
                );
                if let Some(s) = secs {
                    out.push(LoopBandwidth {
                        read_loop,
                        streams,
                        gb_per_s: (n * 4) as f64 / s.max(1e-9) / 1e9,
                    });
                }
            }
        }
        out
    }

    /// Sum of the buffer read as `read_loop` with `streams` streams by one thread (what each
    /// pass computes, for tests): `None` where the path has no such loop.
    pub fn checksum(&self, read_loop: ReadLoop, streams: usize) -> Option<f32> {
        let parts: Vec<&[f32]> = self
            .buf
            .chunks(self.buf.len().div_ceil(streams.max(1)))
            .collect();
        read_streams(auto_path(), read_loop, &parts)
    }
}

/// Asks for transparent huge pages over the 2 MiB-aligned part of `v`'s allocation (before its
/// pages are first touched). A hint: failure (THP disabled, not Linux) changes nothing.
fn advise_huge_pages(v: &Vec<f32>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<f32>();
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the vector's own allocation; MADV_HUGEPAGE only
            // changes how the kernel backs those pages, never their contents or validity.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// Measures how fast `threads` threads can read memory, in GB/s (10⁹ bytes per second): a
/// [`BandwidthProbe`] of `bytes`, the best read loop's median of 5 passes.
pub fn measure_read_bandwidth(bytes: usize, threads: usize) -> f64 {
    BandwidthProbe::new(bytes).measure(threads, 5)
}

/// [`measure_read_bandwidth`] with the loop that reached it.
pub fn measure_read_bandwidth_best(bytes: usize, threads: usize) -> Option<LoopBandwidth> {
    BandwidthProbe::new(bytes).best(threads, 5)
}

/// Measures the f32 multiply-add peak of `threads` threads in GFLOP/s (an FMA counts 2 flops), with
/// the widest FMA the path has: each thread runs independent FMA chains (12 of 8 lanes, or on
/// AVX-512 24 of 16 lanes: enough to cover the FMA latency on two pipes), the median of 5 passes
/// of ~20 ms is returned. This is cores x FMA pipes x lanes x 2 flops x clock.
pub fn measure_fma_peak(threads: usize) -> f64 {
    const PASSES: usize = 5;
    const STEPS: usize = 2_000_000;
    let threads = threads.max(1);
    let path = auto_path();
    let (steps, fmas_per_step) = match fma_chains_zmm(path, 0) {
        Some(_) => (STEPS, 24 * 16),
        None => (STEPS, 12 * 8),
    };
    let run = |n: usize| fma_chains_zmm(path, n).unwrap_or_else(|| fma_chains(path, n));
    let secs = median_pass(
        &vec![(); threads],
        PASSES,
        |_| {
            std::hint::black_box(run(steps / 10));
        },
        |_| {
            std::hint::black_box(run(std::hint::black_box(steps)));
        },
    );
    let flops = (threads * steps * fmas_per_step * 2) as f64;
    secs.map_or(0.0, |s| flops / s.max(1e-9) / 1e9)
}
