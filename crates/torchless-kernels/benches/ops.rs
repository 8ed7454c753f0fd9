//! The small per-token kernels at Mistral 7B sizes: RMSNorm (4096), softmax (4096 scores),
//! SwiGLU (14336), RoPE (32 heads x 128), and decode attention (32 heads, 8 KV heads, 128 dims)
//! over 512 and 4096 cached positions, on every supported SIMD path.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use torchless_kernels::{Kernels, KvCacheView, RopeTable, SimdPath, SlotRanges};

mod util;
use util::*;

fn bench(c: &mut Criterion) {
    let x = random_f32(4096, 1);
    let w = random_f32(4096, 2);
    let gate = random_f32(14336, 3);
    let up = random_f32(14336, 4);
    let rope = RopeTable::new(128, 10000.0, 4096).unwrap();
    let (n_heads, n_kv, hd) = (32, 8, 128);
    let cache_k = random_f32(4096 * n_kv * hd, 5);
    let cache_v = random_f32(4096 * n_kv * hd, 6);
    let kv = KvCacheView::contiguous(&cache_k, &cache_v, 4096, n_kv, hd).unwrap();
    let q = random_f32(n_heads * hd, 7);
    for p in SimdPath::supported() {
        let k = Kernels::with_path(p).unwrap();
        let name = p.name();
        let mut g = c.benchmark_group(format!("ops/{name}"));
        let mut out = vec![0.0f32; 14336];
        g.throughput(Throughput::Elements(4096));
        g.bench_function("rmsnorm/4096", |b| {
            b.iter(|| {
                k.rmsnorm(black_box(&x), &w, 1e-5, &mut out[..4096])
                    .unwrap()
            })
        });
        let mut s = x.clone();
        g.bench_function("softmax/4096", |b| {
            b.iter(|| {
                s.copy_from_slice(&x);
                k.softmax(black_box(&mut s))
            })
        });
        g.throughput(Throughput::Elements(14336));
        g.bench_function("silu_mul/14336", |b| {
            b.iter(|| k.silu_mul(black_box(&gate), &up, &mut out).unwrap())
        });
        g.throughput(Throughput::Elements(4096));
        let mut qr = q.clone();
        g.bench_function("rope/32x128", |b| {
            b.iter(|| rope.apply(black_box(&mut qr), 1000).unwrap())
        });
        for ctx in [512usize, 4096] {
            // Bytes of K and V read per token: the attention loop is bandwidth-bound at long context.
            g.throughput(Throughput::BytesDecimal((2 * ctx * n_kv * hd * 4) as u64));
            let mut o = vec![0.0f32; n_heads * hd];
            let slots = SlotRanges::single(0..ctx);
            for t in thread_counts() {
                let samples = Samples::default();
                g.bench_function(format!("attention/ctx{ctx}/t{t}"), |b| {
                    // One pool per batch of iterations, not per iteration.
                    b.iter_custom(|iters| {
                        with_threads(t, || {
                            samples.time(iters, || {
                                k.attention(black_box(&q), &kv, &slots, n_heads, 0.088, &mut o)
                                    .unwrap()
                            })
                        })
                        .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    targets = bench
}
criterion_main!(benches);
