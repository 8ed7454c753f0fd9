//! matvec on every supported path against the naive f64 reference.
mod common;

use common::{assert_close, quantize, weights, Rng};
use torchless_kernels::{reference, KernelError, Kernels, MatRef, SimdPath};

fn paths() -> Vec<Kernels> {
    let ps = SimdPath::supported();
    assert!(ps.contains(&SimdPath::Scalar));
    ps.into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

fn check(k: &Kernels, w: &MatRef<'_>, x: &[f32], what: &str) {
    let mut y = vec![f32::NAN; w.rows()];
    k.matvec(w, x, &mut y).expect("shapes");
    let want = reference::matvec(w, x);
    let scale = reference::matvec_abs(w, x);
    let what = format!(
        "{what} {}x{} on {}",
        w.rows(),
        w.cols(),
        k.simd_path().name()
    );
    assert_close(&what, &y, &want, &scale);
}

const F32_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 7),
    (3, 8),
    (4, 15),
    (5, 16),
    (7, 17),
    (9, 31),
    (13, 64),
    (6, 100),
    (33, 257),
    (64, 4096),
    (3, 1000),
];

#[test]
fn f32_matches_reference_on_every_path() {
    let mut rng = Rng::new(1);
    for &(r, c) in F32_SHAPES {
        let w = rng.vec(r * c);
        let x = rng.vec(c);
        let m = MatRef::f32(&w, r, c).unwrap();
        for k in paths() {
            check(&k, &m, &x, "f32");
        }
    }
}

#[test]
fn int8_row_aligned_matches_reference_on_every_path() {
    let mut rng = Rng::new(2);
    for &(r, c) in &[
        (1, 64),
        (2, 128),
        (3, 192),
        (4, 64),
        (5, 320),
        (9, 4096),
        (17, 1024),
    ] {
        let (q, inv) = quantize(&weights(&mut rng, r * c));
        let x = rng.vec(c);
        let m = MatRef::int8(&q, &inv, r, c).unwrap();
        for k in paths() {
            check(&k, &m, &x, "int8 aligned");
        }
    }
}

#[test]
fn int8_groups_spanning_rows_match_reference() {
    // cols % 64 != 0: groups cross row boundaries (tiny models' down_proj has 176 or 160 columns).
    let mut rng = Rng::new(3);
    for &(r, c) in &[
        (64, 176),
        (7, 160),
        (5, 100),
        (3, 1),
        (11, 63),
        (9, 65),
        (4, 200),
        (2, 17),
    ] {
        let (q, inv) = quantize(&weights(&mut rng, r * c));
        let x = rng.vec(c);
        let m = MatRef::int8(&q, &inv, r, c).unwrap();
        for k in paths() {
            check(&k, &m, &x, "int8 spanning");
        }
    }
}

#[test]
fn int8_row_subviews_keep_the_group_grid() {
    let mut rng = Rng::new(4);
    let (r, c) = (40, 176);
    let (q, inv) = quantize(&weights(&mut rng, r * c));
    let x = rng.vec(c);
    let m = MatRef::int8(&q, &inv, r, c).unwrap();
    for &(a, b) in &[(0, 40), (1, 2), (3, 17), (5, 40), (39, 40), (8, 8)] {
        let sub = m.rows_range(a..b).unwrap();
        // The sub-view's rows equal the whole matrix's rows a..b.
        let whole = reference::matvec(&m, &x);
        let scale = reference::matvec_abs(&m, &x);
        for k in paths() {
            let mut y = vec![0.0; b - a];
            k.matvec(&sub, &x, &mut y).unwrap();
            assert_close(&format!("rows {a}..{b}"), &y, &whole[a..b], &scale[a..b]);
        }
    }
    // Row-aligned views stay on the fast path and give the same numbers.
    let (q, inv) = quantize(&weights(&mut rng, 12 * 128));
    let m = MatRef::int8(&q, &inv, 12, 128).unwrap();
    let x = rng.vec(128);
    for k in paths() {
        let mut all = vec![0.0; 12];
        k.matvec(&m, &x, &mut all).unwrap();
        let mut part = vec![0.0; 7];
        k.matvec(&m.rows_range(4..11).unwrap(), &x, &mut part)
            .unwrap();
        assert_eq!(&all[4..11], &part[..]);
    }
}

#[test]
fn int8_all_zero_group_with_infinite_inverse_scale_gives_zero_contribution() {
    let mut rng = Rng::new(5);
    let (r, c) = (6, 128);
    let mut w = weights(&mut rng, r * c);
    for v in &mut w[128..192] {
        *v = 0.0; // group 2: the exporter stores inv_scale = 127 / 0 = +inf
    }
    for v in &mut w[300..364] {
        *v = 0.0; // zeros that straddle groups 4 and 5: ordinary finite scales
    }
    let (q, inv) = quantize(&w);
    assert!(inv[2].is_infinite() && inv[4].is_finite() && inv[5].is_finite());
    let x = rng.vec(c);
    let m = MatRef::int8(&q, &inv, r, c).unwrap();
    for k in paths() {
        check(&k, &m, &x, "int8 zero group");
        let mut y = vec![0.0; r];
        k.matvec(&m, &x, &mut y).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn zero_sized_matrices() {
    let k = Kernels::auto();
    let m = MatRef::f32(&[], 3, 0).unwrap();
    let mut y = vec![1.0; 3];
    k.matvec(&m, &[], &mut y).unwrap();
    assert_eq!(y, vec![0.0; 3]);
    let m = MatRef::int8(&[], &[], 0, 64).unwrap();
    k.matvec(&m, &[0.0; 64], &mut []).unwrap();
}

#[cfg(feature = "parallel")]
#[test]
fn thread_count_does_not_change_results() {
    // Rows are computed identically whichever thread runs them: results are bit-identical.
    let mut rng = Rng::new(6);
    let (r, c) = (1000, 512);
    let (q, inv) = quantize(&weights(&mut rng, r * c));
    let wf = rng.vec(r * c);
    let x = rng.vec(c);
    let mi = MatRef::int8(&q, &inv, r, c).unwrap();
    let mf = MatRef::f32(&wf, r, c).unwrap();
    for k in paths() {
        for m in [&mi, &mf] {
            let run = |threads: usize| {
                let pool = torchless_kernels::thread_pool(threads).unwrap();
                let mut y = vec![0.0; r];
                pool.install(|| k.matvec(m, &x, &mut y)).unwrap();
                y
            };
            let one = run(1);
            assert_eq!(one, run(2));
            assert_eq!(one, run(3));
            assert_close(
                "threaded",
                &one,
                &reference::matvec(m, &x),
                &reference::matvec_abs(m, &x),
            );
        }
    }
}

#[test]
fn matvec_many_equals_separate_calls() {
    let mut rng = Rng::new(7);
    let (q, inv) = quantize(&weights(&mut rng, 96 * 256));
    let wf = rng.vec(32 * 256);
    let x = rng.vec(256);
    let a = MatRef::int8(&q, &inv, 96, 256).unwrap();
    let b = MatRef::f32(&wf, 32, 256).unwrap();
    for k in paths() {
        let (mut ya, mut yb) = (vec![0.0; 96], vec![0.0; 32]);
        k.matvec_many(&[a, b], &x, &mut [&mut ya, &mut yb]).unwrap();
        let (mut ea, mut eb) = (vec![0.0; 96], vec![0.0; 32]);
        k.matvec(&a, &x, &mut ea).unwrap();
        k.matvec(&b, &x, &mut eb).unwrap();
        assert_eq!((ya, yb), (ea, eb));
    }
}

#[test]
fn shape_errors_are_reported_not_panicked() {
    let w = vec![0.0f32; 12];
    assert!(matches!(
        MatRef::f32(&w, 5, 3),
        Err(KernelError::Length { .. })
    ));
    assert!(MatRef::f32(&w, usize::MAX, 2).is_err());
    let q = vec![0i8; 130];
    assert!(MatRef::int8(&q, &[1.0; 2], 10, 13).is_err()); // needs 3 scales
    assert!(MatRef::int8(&q, &[1.0; 3], 10, 13).is_ok());
    let m = MatRef::f32(&w, 4, 3).unwrap();
    let mut y = vec![0.0; 4];
    assert!(torchless_kernels::matvec(&m, &[0.0; 2], &mut y).is_err());
    assert!(torchless_kernels::matvec(&m, &[0.0; 3], &mut y[..3]).is_err());
    assert!(m.rows_range(2..5).is_err());
    let mut ys = vec![0.0; 8];
    assert!(torchless_kernels::matmul(&m, &[0.0; 6], &mut ys, 3).is_err());
}

#[test]
fn dispatch_reports_paths() {
    let name = torchless_kernels::cpu_path();
    assert!(SimdPath::supported().iter().any(|p| p.name() == name));
    assert_eq!(SimdPath::parse("avx2"), Some(SimdPath::Avx2Fma));
    assert_eq!(SimdPath::parse(SimdPath::Wide.name()), Some(SimdPath::Wide));
    for p in SimdPath::ALL {
        assert_eq!(Kernels::with_path(p).is_ok(), p.is_supported());
    }
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    assert_eq!(
        SimdPath::Avx2Fma.is_supported(),
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    );
    #[cfg(not(feature = "simd"))]
    assert_eq!(SimdPath::supported(), vec![SimdPath::Scalar]);
    assert_eq!(
        Kernels::auto().with_blas(true).is_ok(),
        torchless_kernels::blas_backend().is_some()
    );
}

#[test]
fn read_bandwidth_probe_runs() {
    for threads in [1, 2, 5] {
        let gbs = torchless_kernels::measure_read_bandwidth(4 << 20, threads);
        assert!(gbs.is_finite() && gbs > 0.0, "{threads} threads: {gbs}");
    }
}

/// Every read loop the probe times reads every value once: on a buffer of small integers (sums
/// exact in f32 in any order) each loop, with one to three streams, gives the exact total; the
/// probe reports the best of the loops it timed, and the widest loop exists where AVX-512 does.
#[test]
fn read_bandwidth_probe_loops_read_every_value_once() {
    use torchless_kernels::{BandwidthProbe, ReadLoop};
    // 70001 values `i % 251` (an odd length: every loop's tail runs), total < 2^24.
    let n = 70_001usize;
    let probe = BandwidthProbe::new(n * 4);
    let want: f64 = (0..n).map(|i| (i % 251) as f64).sum();
    for read_loop in [ReadLoop::Plain, ReadLoop::Prefetched, ReadLoop::Wide] {
        for streams in 1..=3 {
            match probe.checksum(read_loop, streams) {
                Some(total) => assert_eq!(f64::from(total), want, "{read_loop:?} x{streams}"),
                None => assert_eq!(
                    read_loop,
                    ReadLoop::Wide,
                    "only the zmm loop may be missing"
                ),
            }
        }
    }
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    assert_eq!(
        probe.checksum(ReadLoop::Wide, 1).is_some(),
        torchless_kernels::cpu_path() == SimdPath::Avx512Vnni.name(),
        "the zmm loop runs exactly on the AVX-512 path (the automatic one: TORCHLESS_SIMD counts)"
    );
    let each = probe.measure_each(2, 1);
    assert!(each.len() >= 4, "{each:?}");
    let best = probe.best(2, 1).expect("passes complete");
    assert!(
        each.iter()
            .all(|l| l.gb_per_s > 0.0 && l.gb_per_s.is_finite()),
        "{each:?}"
    );
    assert!(
        best.gb_per_s > 0.0 && [1, 2].contains(&best.streams),
        "{best:?}"
    );
}

/// `matvec_batch` against the f64 reference, and bit for bit against one `matvec` per input (the
/// server batches sequences and must not change what any of them generates).
fn check_batch(k: &Kernels, m: &MatRef<'_>, xs: &[f32], batch: usize, what: &str) {
    let (rows, cols) = (m.rows(), m.cols());
    let mut ys = vec![f32::NAN; batch * rows];
    k.matvec_batch(m, xs, &mut ys, batch).expect("shapes");
    for (b, (x, y)) in xs.chunks_exact(cols).zip(ys.chunks_exact(rows)).enumerate() {
        let what = format!(
            "{what} {rows}x{cols} batch {batch} input {b} on {}",
            k.simd_path().name()
        );
        assert_close(
            &what,
            y,
            &reference::matvec(m, x),
            &reference::matvec_abs(m, x),
        );
        let mut alone = vec![0.0; rows];
        k.matvec(m, x, &mut alone).unwrap();
        let same = y
            .iter()
            .zip(&alone)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: not bit-identical to matvec");
    }
}

#[test]
fn matvec_batch_rows_are_bit_identical_to_matvec() {
    let mut rng = Rng::new(8);
    let shapes: &[(usize, usize)] = &[(1, 7), (5, 16), (7, 17), (33, 257), (3, 1000), (300, 512)];
    for &(r, c) in shapes {
        let w = rng.vec(r * c);
        let m = MatRef::f32(&w, r, c).unwrap();
        for batch in [1, 2, 3, 4, 5, 7, 9] {
            let xs = rng.vec(batch * c);
            for k in paths() {
                check_batch(&k, &m, &xs, batch, "f32");
            }
        }
    }
    // Row-aligned int8 (the fast path), odd row counts, and groups spanning rows.
    for &(r, c) in &[
        (1, 64),
        (3, 192),
        (9, 4096),
        (301, 512),
        (64, 176),
        (7, 160),
        (11, 63),
    ] {
        let (q, inv) = quantize(&weights(&mut rng, r * c));
        let m = MatRef::int8(&q, &inv, r, c).unwrap();
        for batch in [1, 2, 3, 4, 5, 8] {
            let xs = rng.vec(batch * c);
            for k in paths() {
                check_batch(&k, &m, &xs, batch, "int8");
            }
        }
    }
}

#[test]
fn matvec_batch_refuses_wrong_lengths() {
    let k = Kernels::auto();
    let w = vec![0.5; 4 * 8];
    let m = MatRef::f32(&w, 4, 8).unwrap();
    let mut ys = vec![0.0; 8];
    assert!(k.matvec_batch(&m, &[0.0; 15], &mut ys, 2).is_err());
    assert!(k.matvec_batch(&m, &[0.0; 16], &mut ys[..7], 2).is_err());
    assert!(k.matvec_batch(&m, &[0.0; 16], &mut ys, 2).is_ok());
}
