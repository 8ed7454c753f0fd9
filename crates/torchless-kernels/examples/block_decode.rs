//! Decode matvec throughput of the ggml block types (default arithmetic) at 7B shapes, for
//! quick comparisons while tuning: `cargo run --release -p torchless-kernels --example
//! block_decode [-- THREADS [TYPES,...] [ROWS COLS]]` (default 14336 4096; a matrix that fits
//! in L2, e.g. 512 4096, shows the kernel's own speed). Prints median GB/s over 9 timed runs of >= 256 MB of
//! weights per type (int4 for comparison).

use std::hint::black_box;
use std::time::Instant;
use torchless_kernels::{BlockType, Kernels, MatRef};

#[path = "../benches/util/mod.rs"]
mod util;
use util::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let want: Vec<String> = args
        .get(2)
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| {
            ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_K", "int4"]
                .map(String::from)
                .to_vec()
        });
    let k = Kernels::auto().with_blas(false).expect("no BLAS");
    let dim =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (rows, cols) = (dim(3, 14336), dim(4, 4096));
    let x = random_f32(cols, 3);
    let mut y = vec![0.0f32; rows];
    for name in &want {
        let (data, scales);
        let m = if name == "int4" {
            let (q4, s4) = random_int4(rows, cols, 4);
            (data, scales) = (q4, s4);
            MatRef::int4(&data, &scales, rows, cols).unwrap()
        } else {
            let t = BlockType::ALL
                .into_iter()
                .find(|t| t.name() == name)
                .expect("type");
            (data, scales) = (random_blocks(t, rows, cols, 5), Vec::new());
            MatRef::blocks(t, &data, rows, cols).unwrap()
        };
        let _ = &scales;
        let bytes = m.weight_bytes();
        let reps = 256_000_000usize.div_ceil(bytes).max(1);
        let mut gbs = with_threads(threads, || {
            k.matvec(&m, &x, &mut y).unwrap();
            (0..9)
                .map(|_| {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        k.matvec(&m, black_box(&x), &mut y).unwrap();
                    }
                    (bytes * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9
                })
                .collect::<Vec<f64>>()
        })
        .unwrap();
        gbs.sort_by(f64::total_cmp);
        println!(
            "{name:>5} {rows}x{cols} t={threads}: {:.1} GB/s (min {:.1}, max {:.1})",
            gbs[4], gbs[0], gbs[8]
        );
    }
}
