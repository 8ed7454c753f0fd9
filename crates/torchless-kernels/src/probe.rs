//! Machine probes the kernels are judged against: a STREAM-like read bandwidth (decode is
//! bandwidth-bound) and the FMA peak (prefill is compute-bound).

use crate::dispatch::{auto_path, Path};
use std::sync::Barrier;
use std::time::Instant;

/// Sum of `x` on the given path (the probe's per-thread work).
pub(crate) fn sum(path: Path, x: &[f32]) -> f32 {
    match path {
        Path::Scalar => crate::scalar::sum(x),
        #[cfg(feature = "simd")]
        Path::Wide => crate::wide_path::sum(x),
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        Path::Avx2(t, _) => crate::avx2::sum(t, x),
    }
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
    /// loader does for its file mapping, so both are read through the same page size: with
    /// 4 KiB pages the probe measured 15-25% less on a 2-vCPU Xeon (TLB misses, prefetchers
    /// stopping at page ends) than the weights' 2 MiB mapping streams.
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
        let barrier = Barrier::new(n.div_ceil(per));
        let spans: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .buf
                .chunks(per)
                .map(|part| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(passes);
                        let mut acc = 0.0f32;
                        for _ in 0..passes {
                            barrier.wait();
                            let t0 = Instant::now();
                            acc += sum(path, std::hint::black_box(part));
                            out.push((t0, Instant::now()));
                        }
                        std::hint::black_box(acc);
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
        if secs.is_empty() {
            return 0.0;
        }
        secs.sort_by(f64::total_cmp);
        (n * 4) as f64 / secs[secs.len() / 2].max(1e-9) / 1e9
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

/// Floating-point work of one probe call per thread: `n` steps of 12 independent 8-lane FMAs.
fn fma_chains(path: Path, n: usize) -> f32 {
    match path {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        Path::Avx2(t, _) => crate::avx2::fma_chains(t, n),
        #[cfg(feature = "simd")]
        Path::Wide => crate::wide_path::fma_chains(n),
        _ => {
            let mut acc = [[0.0f32; 8]; 12];
            let (a, b) = (
                std::hint::black_box(0.999_999f32),
                std::hint::black_box(1e-7f32),
            );
            for _ in 0..n {
                for row in acc.iter_mut() {
                    for v in row.iter_mut() {
                        *v = *v * a + b;
                    }
                }
            }
            acc.iter().flatten().sum()
        }
    }
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
    let barrier = Barrier::new(threads);
    let spans: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(PASSES);
                    std::hint::black_box(fma_chains(path, STEPS / 10));
                    for _ in 0..PASSES {
                        barrier.wait();
                        let t0 = Instant::now();
                        std::hint::black_box(fma_chains(path, std::hint::black_box(STEPS)));
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
    let mut secs: Vec<f64> = (0..PASSES)
        .filter_map(|p| {
            let start = spans.iter().filter_map(|s| s.get(p)).map(|s| s.0).min()?;
            let end = spans.iter().filter_map(|s| s.get(p)).map(|s| s.1).max()?;
            Some(end.duration_since(start).as_secs_f64())
        })
        .collect();
    if secs.is_empty() {
        return 0.0;
    }
    secs.sort_by(f64::total_cmp);
    let flops = (threads * STEPS * 12 * 8 * 2) as f64;
    flops / secs[secs.len() / 2].max(1e-9) / 1e9
}
