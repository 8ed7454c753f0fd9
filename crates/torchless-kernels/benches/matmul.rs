//! Prefill GEMM `Y = X Wᵀ` at the Mistral 7B shapes, f32, int8, int8 with quantized
//! activations (`int8-act`, the opt-in integer path) and int4 (always integer), batch 64 and 128, 2 threads
//! (plus 1 thread for the headline shape), compared with BLAS sgemm when a BLAS feature is on.
//!
//! Criterion's throughput is `Throughput::Elements(2 * batch * rows * cols)`: one "element" is one
//! floating-point operation (a multiply-add counts 2), so its `Gelem/s` reads as GFLOP/s. After
//! each benchmark a summary line compares it with the FMA peak (`measure_fma_peak`, same thread
//! count) measured side by side: 5 pairs of (one product, one peak probe), medians of each and of
//! the per-pair ratio (the machine is shared: only paired figures give a meaningful ratio). With a
//! BLAS feature, ours and BLAS also run in alternating pairs and the median speed ratio is printed.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use torchless_kernels::{measure_fma_peak, Kernels, MatRef};

mod util;
use util::*;

const SHAPES: &[(usize, usize)] = &[(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)];

fn bench(c: &mut Criterion) {
    let shapes: Vec<(usize, usize)> = if quick() {
        vec![(4096, 4096)]
    } else {
        SHAPES.to_vec()
    };
    let mut peak = HashMap::new();
    for t in thread_counts() {
        let p = measure_fma_peak(t);
        eprintln!("f32 FMA peak ({t} thread(s)): {p:.1} GFLOP/s");
        peak.insert(t, p);
    }
    let blas = torchless_kernels::blas_backend();
    eprintln!(
        "cpu path: {}, blas: {blas:?}",
        torchless_kernels::cpu_path()
    );
    let ours = Kernels::auto()
        .with_blas(false)
        .expect("no BLAS is always allowed");
    let samples = Samples::default();
    let mut summary = Vec::new();
    let tmax = *thread_counts().last().unwrap();
    for &(rows, cols) in &shapes {
        let wf = random_f32(rows * cols, 1);
        let (q, inv) = random_int8(rows, cols, 2);
        let (q4, s4) = random_int4(rows, cols, 4);
        let mats = [
            ("f32", MatRef::f32(&wf, rows, cols).unwrap()),
            ("int8", MatRef::int8(&q, &inv, rows, cols).unwrap()),
            ("int4", MatRef::int4(&q4, &s4, rows, cols).unwrap()),
        ];
        for batch in [64usize, 128] {
            let xs = random_f32(batch * cols, 3);
            let mut ys = vec![0.0f32; batch * rows];
            let flops = 2 * batch * rows * cols;
            let mut variants: Vec<(&str, &MatRef<'_>, Kernels, usize)> = Vec::new();
            for (dtype, m) in &mats {
                variants.push((dtype, m, ours, tmax));
            }
            // The opt-in integer GEMM (quantized activations; not exact).
            variants.push((
                "int8-act",
                &mats[1].1,
                ours.with_int8_activations(true),
                tmax,
            ));
            if let Ok(kb) = Kernels::auto().with_blas(true) {
                variants.push(("f32-blas", &mats[0].1, kb, tmax));
            }
            if (rows, cols, batch) == (4096, 4096, 128) && tmax > 1 {
                for (dtype, m) in &mats[..2] {
                    variants.push((dtype, m, ours, 1));
                }
            }
            for (label, m, k, t) in variants {
                let name = format!("matmul/{label}/b{batch}/{rows}x{cols}/t{t}");
                let mut g = c.benchmark_group("matmul");
                g.throughput(Throughput::Elements(flops as u64));
                g.bench_function(&name, |b| {
                    b.iter_custom(|iters| {
                        with_threads(t, || {
                            samples.time(iters, || {
                                k.matmul(m, black_box(&xs), &mut ys, batch).unwrap()
                            })
                        })
                        .unwrap()
                    })
                });
                g.finish();
                let s = samples.take_median();
                let gf = flops as f64 / s / 1e9;
                let (mut gs, mut ps, mut rs) = (Vec::new(), Vec::new(), Vec::new());
                with_threads(t, || {
                    for _ in 0..5 {
                        // See the BLAS pairs below: spinning idle workers must not share the cores.
                        std::thread::sleep(Duration::from_millis(200));
                        let t0 = Instant::now();
                        k.matmul(m, black_box(&xs), &mut ys, batch).unwrap();
                        let g = flops as f64 / t0.elapsed().as_secs_f64() / 1e9;
                        std::thread::sleep(Duration::from_millis(200));
                        let p = measure_fma_peak(t);
                        gs.push(g);
                        ps.push(p);
                        rs.push(g / p);
                    }
                })
                .unwrap();
                let line = format!(
                    "{name}: criterion median {:.2} ms = {gf:.1} GFLOP/s | paired: {:.1} GFLOP/s vs FMA peak {:.1} = {:.0}%",
                    s * 1e3,
                    median(gs),
                    median(ps),
                    100.0 * median(rs)
                );
                eprintln!("{line}");
                summary.push(line);
            }
            // Ours against BLAS sgemm in alternating pairs, so a busy neighbour slows both sides of
            // a pair alike and the median ratio is meaningful even when absolute figures drift.
            if let Ok(kb) = Kernels::auto().with_blas(true) {
                for (dtype, m) in &mats {
                    let mut rs = Vec::new();
                    with_threads(tmax, || {
                        for _ in 0..9 {
                            // Idle workers of the other library spin for a while after a call
                            // (OpenBLAS for ~2^28 cycles): let them go to sleep before timing.
                            std::thread::sleep(Duration::from_millis(200));
                            let t0 = Instant::now();
                            ours.matmul(m, black_box(&xs), &mut ys, batch).unwrap();
                            let t_ours = t0.elapsed().as_secs_f64();
                            std::thread::sleep(Duration::from_millis(200));
                            let t0 = Instant::now();
                            kb.matmul(&mats[0].1, black_box(&xs), &mut ys, batch)
                                .unwrap();
                            rs.push(t0.elapsed().as_secs_f64() / t_ours);
                        }
                    })
                    .unwrap();
                    let line = format!(
                        "matmul/{dtype}/b{batch}/{rows}x{cols}/t{tmax}: {:.2}x the speed of BLAS f32 sgemm (median of 9 alternating pairs)",
                        median(rs)
                    );
                    eprintln!("{line}");
                    summary.push(line);
                }
            }
        }
    }
    eprintln!("\n== matmul summary (medians)");
    for t in thread_counts() {
        eprintln!("FMA peak {t} thread(s): {:.1} GFLOP/s", peak[&t]);
    }
    for l in summary {
        eprintln!("{l}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
