//! Decode matvec `y = W x` at the Mistral 7B shapes, f32, int8 and int4, 1 and 2 threads; at
//! the headline shape also every ggml block type (`Q4_K` etc., default arithmetic; `Q4_K-exact`
//! etc. for the exact one: `Kernels::with_exact_blocks`).
//!
//! Criterion reports throughput as weight bytes streamed per second (`Throughput::BytesDecimal`:
//! int8 = rows*cols + rows*cols/64*4 bytes, int4 = rows*cols/2 + rows*cols/32*2, f32 =
//! rows*cols*4, blocks: their bytes).
//!
//! After each benchmark a summary line compares the kernel with the STREAM-like read bandwidth
//! (`BandwidthProbe`, 512 MB buffer, same thread count), measured *side by side*: 11 pairs of
//! (the kernel repeated over >= 256 MB of weights, one probe pass), reporting the medians of the
//! kernel's GB/s, of the probe's GB/s and of the per-pair ratio. On a shared machine bandwidth
//! drifts by 2x within seconds, so only paired measurements give a meaningful ratio.
//! Matrices that fit the 32 MiB L3 (4096x4096 and 1024x4096 int8, 1024x4096 f32) are partly
//! served from cache when repeated and can exceed the DRAM figure.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use torchless_kernels::{BandwidthProbe, BlockType, Kernels, MatRef, SimdPath};

mod util;
use util::*;

const SHAPES: &[(usize, usize)] = &[(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)];

/// Median kernel GB/s, median probe GB/s, median of the per-pair ratios.
fn paired(
    probe: &BandwidthProbe,
    k: &Kernels,
    m: &MatRef<'_>,
    x: &[f32],
    t: usize,
) -> (f64, f64, f64) {
    let bytes = m.weight_bytes();
    let reps = (256_000_000usize).div_ceil(bytes).max(1);
    let mut y = vec![0.0f32; m.rows()];
    let (mut ks, mut ps, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    with_threads(t, || {
        k.matvec(m, x, &mut y).unwrap();
        for _ in 0..11 {
            let t0 = Instant::now();
            for _ in 0..reps {
                k.matvec(m, black_box(x), &mut y).unwrap();
            }
            let kg = (bytes * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            let pg = probe.measure(t, 1);
            ks.push(kg);
            ps.push(pg);
            rs.push(kg / pg);
        }
    })
    .unwrap();
    (median(ks), median(ps), median(rs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let shapes: Vec<(usize, usize)> = if quick() {
        vec![(14336, 4096)]
    } else {
        SHAPES.to_vec()
    };
    let probe = BandwidthProbe::new(512_000_000);
    for t in thread_counts() {
        eprintln!(
            "read bandwidth (512 MB, {t} thread(s)): {:.2} GB/s",
            probe.measure(t, 5)
        );
    }
    eprintln!(
        "cpu path: {}, blas: {:?}",
        torchless_kernels::cpu_path(),
        torchless_kernels::blas_backend()
    );
    let k = Kernels::auto()
        .with_blas(false)
        .expect("no BLAS is always allowed");
    let samples = Samples::default();
    let mut summary = Vec::new();
    for &(rows, cols) in &shapes {
        let wf = random_f32(rows * cols, 1);
        let (q, inv) = random_int8(rows, cols, 2);
        let (q4, s4) = random_int4(rows, cols, 4);
        let x = random_f32(cols, 3);
        let mut y = vec![0.0f32; rows];
        let headline = (rows, cols) == (14336, 4096);
        let blocks: Vec<(BlockType, Vec<u8>)> = if headline {
            BlockType::ALL
                .into_iter()
                .map(|t| (t, random_blocks(t, rows, cols, 5)))
                .collect()
        } else {
            Vec::new()
        };
        let mut mats: Vec<(String, MatRef<'_>, bool)> = vec![
            ("f32".into(), MatRef::f32(&wf, rows, cols).unwrap(), false),
            (
                "int8".into(),
                MatRef::int8(&q, &inv, rows, cols).unwrap(),
                false,
            ),
            (
                "int4".into(),
                MatRef::int4(&q4, &s4, rows, cols).unwrap(),
                false,
            ),
        ];
        for (t, data) in &blocks {
            let m = MatRef::blocks(*t, data, rows, cols).unwrap();
            mats.push((t.name().into(), m, false));
            if t.is_quantized() {
                mats.push((format!("{}-exact", t.name()), m, true));
            }
        }
        let mut variants: Vec<(String, Kernels, usize)> = thread_counts()
            .into_iter()
            .map(|t| (String::new(), k, t))
            .collect();
        // The headline shape on every SIMD path (and BLAS sgemv for f32 when compiled in).
        if headline {
            let t = *thread_counts().last().unwrap();
            for p in SimdPath::supported() {
                variants.push((format!("/{}", p.name()), Kernels::with_path(p).unwrap(), t));
            }
            if let Ok(kb) = Kernels::auto().with_blas(true) {
                variants.push((
                    format!("/blas({})", torchless_kernels::blas_backend().unwrap()),
                    kb,
                    t,
                ));
            }
        }
        for (label, kv, t) in &variants {
            for (dtype, m, exact) in &mats {
                if label.starts_with("/blas") && dtype != "f32" {
                    continue;
                }
                let kv = &kv.with_exact_blocks(*exact);
                let name = format!("matvec/{dtype}/{rows}x{cols}/t{t}{label}");
                let mut g = c.benchmark_group("matvec");
                g.throughput(Throughput::BytesDecimal(m.weight_bytes() as u64));
                g.bench_function(&name, |b| {
                    b.iter_custom(|iters| {
                        with_threads(*t, || {
                            samples.time(iters, || kv.matvec(m, black_box(&x), &mut y).unwrap())
                        })
                        .unwrap()
                    })
                });
                g.finish();
                let s = samples.take_median();
                let (kg, pg, ratio) = paired(&probe, kv, m, &x, *t);
                let line = format!(
                    "{name}: criterion median {:.3} ms = {:.2} GB/s | paired: {kg:.2} GB/s vs read bandwidth {pg:.2} GB/s = {:.0}%",
                    s * 1e3,
                    m.weight_bytes() as f64 / s / 1e9,
                    100.0 * ratio
                );
                eprintln!("{line}");
                summary.push(line);
            }
        }
    }
    eprintln!("\n== matvec summary (medians)");
    for l in summary {
        eprintln!("{l}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
