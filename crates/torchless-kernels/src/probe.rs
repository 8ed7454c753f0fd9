//! Machine probes the kernels are judged against: a STREAM-like read bandwidth (decode is
//! bandwidth-bound) and the FMA peak (prefill is compute-bound).

use crate::dispatch::{auto_path, on_isa, Path};
use crate::isa::traits::{Elementwise, Isa};
use std::sync::Barrier;
use std::time::Instant;

/// Sum of `x` on the given path (the bandwidth probe's per-thread work).
fn sum(path: Path, x: &[f32]) -> f32 {
    on_isa!(path, |isa| isa.elementwise().sum(x))
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

    /// Runs `passes` passes with `threads` OS threads summing disjoint equal parts (fastest SIMD
    /// path), each pass timed from a common start (a barrier) to the last thread's finish; returns
    /// the GB/s (10⁹ bytes per second) of the median pass.
    pub fn measure(&self, threads: usize, passes: usize) -> f64 {
        let passes = passes.max(1);
        let n = self.buf.len();
        let path = auto_path();
        let per = n.div_ceil(threads.max(1));
        let parts: Vec<&[f32]> = self.buf.chunks(per).collect();
        let secs = median_pass(
            &parts,
            passes,
            |_| {},
            |part| {
                std::hint::black_box(sum(path, std::hint::black_box(part)));
            },
        );
        secs.map_or(0.0, |s| (n * 4) as f64 / s.max(1e-9) / 1e9)
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
/// [`BandwidthProbe`] of `bytes`, median of 5 passes.
pub fn measure_read_bandwidth(bytes: usize, threads: usize) -> f64 {
    BandwidthProbe::new(bytes).measure(threads, 5)
}

/// Measures the f32 multiply-add peak of `threads` threads in GFLOP/s (an FMA counts 2 flops), with
/// the fastest available SIMD path: each thread runs 12 independent 8-lane FMA chains (enough to
/// cover FMA latency on 2 FMA pipes), the median of 5 passes of ~20 ms is returned. On AVX2 this
/// is cores x 2 pipes x 8 lanes x 2 flops x clock.
pub fn measure_fma_peak(threads: usize) -> f64 {
    const PASSES: usize = 5;
    const STEPS: usize = 2_000_000;
    let threads = threads.max(1);
    let path = auto_path();
    let secs = median_pass(
        &vec![(); threads],
        PASSES,
        |_| {
            std::hint::black_box(fma_chains(path, STEPS / 10));
        },
        |_| {
            std::hint::black_box(fma_chains(path, std::hint::black_box(STEPS)));
        },
    );
    let flops = (threads * STEPS * 12 * 8 * 2) as f64;
    secs.map_or(0.0, |s| flops / s.max(1e-9) / 1e9)
}
