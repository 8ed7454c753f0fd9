//! Weight bytes streamed per second by `matvec_batch` (one decode step of several sequences) at
//! a few batch sizes, next to the read bandwidth probed in the same run.
//!
//! `cargo run --release -p torchless-kernels --example decode_batch -- [ROWS COLS [THREADS [TYPES]]]`
//! (TYPES: a comma list of `f32`, `int8`, `int4`; all by default).

use std::time::Instant;
use torchless_kernels::{BandwidthProbe, Kernels, MatRef};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let types = if args.len() > 3 {
        args.remove(3)
    } else {
        "f32,int8,int4".to_string()
    };
    let args: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("numbers: ROWS COLS [THREADS]"))
        .collect();
    let (rows, cols) = (
        *args.first().unwrap_or(&5632),
        *args.get(1).unwrap_or(&2048),
    );
    let threads = *args.get(2).unwrap_or(&2);
    let pool = torchless_kernels::thread_pool(threads).expect("thread pool");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let wants = |name: &str| types.split(',').any(|t| t == name);
    let count = |name: &str, n: usize| if wants(name) { n } else { 0 };
    let wf: Vec<f32> = (0..count("f32", rows * cols)).map(|_| next()).collect();
    let n8 = count("int8", rows * cols);
    let q: Vec<i8> = (0..n8).map(|_| (next() * 254.0) as i8).collect();
    let inv: Vec<f32> = (0..n8 / 64).map(|_| 100.0 + next()).collect();
    let n4 = count("int4", rows * cols);
    let packed: Vec<u8> = (0..n4 / 2)
        .map(|_| (next() * 255.0 + 127.5) as u8)
        .collect();
    // Halves between 2^-8 and 2^-7 (exponent 7, random mantissa).
    let halves: Vec<u16> = (0..n4 / 32)
        .map(|_| 0x1c00 | ((next() + 0.5) * 1023.0) as u16)
        .collect();
    let probe = BandwidthProbe::new(512_000_000);
    let k = Kernels::auto();
    let mut mats = Vec::new();
    if wants("f32") {
        mats.push(("f32", MatRef::f32(&wf, rows, cols).unwrap()));
    }
    if wants("int8") {
        mats.push(("int8", MatRef::int8(&q, &inv, rows, cols).unwrap()));
    }
    if wants("int4") {
        mats.push(("int4", MatRef::int4(&packed, &halves, rows, cols).unwrap()));
    }
    for (name, m) in mats {
        let bytes = m.weight_bytes();
        let reps = 400_000_000usize.div_ceil(bytes).max(3);
        for batch in [1, 2, 3, 4, 6, 8] {
            let xs: Vec<f32> = (0..batch * cols).map(|_| next()).collect();
            let mut ys = vec![0.0; batch * rows];
            let mut rates = Vec::new();
            pool.install(|| {
                for _ in 0..5 {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        k.matvec_batch(&m, &xs, &mut ys, batch).unwrap();
                    }
                    rates.push((bytes * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9);
                }
            });
            rates.sort_by(f64::total_cmp);
            let probe_gbs = probe.measure(threads, 1);
            if std::env::var_os("DECODE_BATCH_GEMM").is_some() {
                let t0 = Instant::now();
                pool.install(|| {
                    for _ in 0..reps {
                        k.matmul(&m, &xs, &mut ys, batch).unwrap();
                    }
                });
                let gemm = (bytes * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
                println!("  matmul at batch {batch}: {gemm:.1} GB/s");
            }
            println!(
                "{name} {rows}x{cols} batch {batch}: {:.1} GB/s of weights ({:.0}% of {:.1} GB/s probe), {:.2} ms per step",
                rates[2],
                100.0 * rates[2] / probe_gbs,
                probe_gbs,
                bytes as f64 / rates[2] / 1e6
            );
        }
    }
}
