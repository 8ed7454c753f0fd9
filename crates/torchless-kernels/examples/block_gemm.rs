//! Prefill GEMM throughput of the ggml block types (default arithmetic) for tuning the integer
//! tile: `cargo run --release -p torchless-kernels --example block_gemm [-- THREADS
//! [TYPES,...] [ROWS COLS TOKENS]]` (default 1 thread, 1536 576 512, a SmolLM2 FFN matrix, whose
//! 576 columns the K-quants skip: they need multiples of 256). Prints the
//! median over 9 timed runs in GMAC/s (rows · cols · tokens multiply-adds per second; an int8
//! `vpdpbusd` on 512-bit vectors does 64).

use std::hint::black_box;
use std::time::Instant;
use torchless_kernels::{BlockType, Kernels, MatRef};

#[path = "../benches/util/mod.rs"]
mod util;
use util::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let want: Vec<String> = args
        .get(2)
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| ["Q8_0", "Q4_0", "Q4_K", "Q6_K"].map(String::from).to_vec());
    let k = Kernels::auto().with_blas(false).expect("no BLAS");
    let dim =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (rows, cols, tokens) = (dim(3, 1536), dim(4, 576), dim(5, 512));
    let xs = random_f32(cols * tokens, 3);
    let mut ys = vec![0.0f32; rows * tokens];
    for name in &want {
        let t = BlockType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .expect("type");
        if !cols.is_multiple_of(t.block_values()) {
            println!(
                "{name:>5}: {cols} columns are not whole blocks of {}",
                t.block_values()
            );
            continue;
        }
        let data = random_blocks(t, rows, cols, 5);
        let m = MatRef::blocks(t, &data, rows, cols).unwrap();
        let macs = (rows * cols * tokens) as f64;
        let reps = (2e9 / macs).ceil().max(1.0) as usize;
        let mut rates = with_threads(threads, || {
            k.matmul(&m, &xs, &mut ys, tokens).unwrap();
            (0..9)
                .map(|_| {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        k.matmul(&m, black_box(&xs), &mut ys, tokens).unwrap();
                    }
                    macs * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
                })
                .collect::<Vec<f64>>()
        })
        .unwrap();
        rates.sort_by(f64::total_cmp);
        println!(
            "{name:>5} {rows}x{cols} x {tokens} tokens t={threads}: {:.1} GMAC/s (min {:.1}, max {:.1})",
            rates[4], rates[0], rates[8]
        );
    }
}
