//! Shared benchmark helpers: data generation, thread pools, median timing for summary lines.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};
use torchless_kernels::KernelError;

/// splitmix64-based fill, fast enough for 235 MB matrices.
pub fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random int8 values and plausible inverse scales (`127 / absmax` of weights ~0.05).
pub fn random_int8(rows: usize, cols: usize, seed: u64) -> (Vec<i8>, Vec<f32>) {
    let q: Vec<i8> = random_f32(rows * cols, seed)
        .iter()
        .map(|v| (v * 127.0).round() as i8)
        .collect();
    let inv = random_f32((rows * cols).div_ceil(64), seed ^ 1)
        .iter()
        .map(|v| 127.0 / (0.05 + 0.04 * v))
        .collect();
    (q, inv)
}

/// Random int4 codes (16 bytes per group of 32) and f16 scales around 0.006 (weights ~0.05).
pub fn random_int4(rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<u16>) {
    let packed = random_f32(rows * cols / 2, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as u8)
        .collect();
    // 0x1e00..0x2000: f16 values 0.0059..0.0078.
    let scales = random_f32(rows * cols / 32, seed ^ 1)
        .iter()
        .map(|v| 0x1f00u16.wrapping_add((v * 255.0) as i16 as u16))
        .collect();
    (packed, scales)
}

/// Random ggml blocks of `ty` for a `rows x cols` matrix: random code bytes, every half scale
/// (and min) around 0.006, as [`random_int4`]'s (F16 / BF16: values around 0.006).
pub fn random_blocks(
    ty: torchless_kernels::BlockType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Vec<u8> {
    use torchless_kernels::BlockType as T;
    let (bv, bb) = (ty.block_values(), ty.block_bytes());
    let mut data: Vec<u8> = random_f32(rows * cols / bv * bb, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as u8)
        .collect();
    let half = 0x1f00u16.to_le_bytes();
    let bf16 = ((0.006f32.to_bits() >> 16) as u16).to_le_bytes();
    for b in data.chunks_exact_mut(bb) {
        match ty {
            T::F16 => b.copy_from_slice(&half),
            T::BF16 => b.copy_from_slice(&bf16),
            T::Q6K => b[208..210].copy_from_slice(&half),
            T::Q4_1 | T::Q5_1 | T::Q4K | T::Q5K => {
                b[0..2].copy_from_slice(&half);
                b[2..4].copy_from_slice(&half);
            }
            _ => b[0..2].copy_from_slice(&half),
        }
    }
    data
}

/// Runs `f` in a pool of `threads` (or inline without the `parallel` feature).
pub fn with_threads<R: Send>(
    threads: usize,
    f: impl FnOnce() -> R + Send,
) -> Result<R, KernelError> {
    #[cfg(feature = "parallel")]
    {
        Ok(torchless_kernels::thread_pool(threads)?.install(f))
    }
    #[cfg(not(feature = "parallel"))]
    {
        let _ = threads;
        Ok(f())
    }
}

/// Thread counts to measure: 1 and 2 (only 1 without `parallel`).
pub fn thread_counts() -> Vec<usize> {
    if cfg!(feature = "parallel") {
        vec![1, 2]
    } else {
        vec![1]
    }
}

/// Collects per-iteration times from `iter_custom` so a median can be printed next to the
/// criterion report.
#[derive(Default, Debug)]
pub struct Samples(Mutex<Vec<f64>>);

impl Samples {
    /// Times `iters` runs of `f`, records the mean per run, returns the total for criterion.
    pub fn time(&self, iters: u64, mut f: impl FnMut()) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let e = t.elapsed();
        self.0
            .lock()
            .unwrap()
            .push(e.as_secs_f64() / iters.max(1) as f64);
        e
    }

    /// Median seconds per run, then clears.
    pub fn take_median(&self) -> f64 {
        let mut v = std::mem::take(&mut *self.0.lock().unwrap());
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Bytes of the read-bandwidth probe buffer: far above any last-level cache.
pub const PROBE_BYTES: usize = 1 << 30;

/// Environment knob for quick runs: `TORCHLESS_BENCH_QUICK=1` keeps only the largest shape.
pub fn quick() -> bool {
    std::env::var_os("TORCHLESS_BENCH_QUICK").is_some()
}
