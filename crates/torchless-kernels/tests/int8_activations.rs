//! The opt-in integer GEMM (`Kernels::with_int8_activations`): against its f64 definition
//! (`reference::matmul_int8_activations`), within the quantization bound of the exact product,
//! identical on every path and thread count, and never used where it does not apply.
mod common;

use common::{assert_close, quantize, weights, Rng};
use torchless_kernels::{reference, Int8Mat, Kernels, MatRef, SimdPath};

fn paths() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| {
            Kernels::with_path(p)
                .expect("supported")
                .with_int8_activations(true)
        })
        .collect()
}

fn run(k: &Kernels, w: &Int8Mat<'_>, xs: &[f32], batch: usize) -> Vec<f32> {
    let mut ys = vec![f32::NAN; batch * w.rows()];
    k.matmul(&MatRef::Int8(*w), xs, &mut ys, batch)
        .expect("shapes");
    ys
}

/// Activations with a different range in every group (as rmsnorm outputs have), some outliers.
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let range = [0.1f32, 1.0, 4.0, 0.5, 20.0][(i / 64) % 5];
            let v = rng.f32() * range;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// (n, k): partial weight panels and 1, 2 or 3 depth blocks (the last one partial).
const SHAPES: &[(usize, usize)] = &[(16, 64), (17, 128), (40, 576), (33, 1088), (8, 1600)];

fn scale(w: &Int8Mat<'_>, xs: &[f32], batch: usize) -> Vec<f64> {
    xs.chunks_exact(w.cols())
        .take(batch)
        .flat_map(|x| reference::matvec_abs(&MatRef::Int8(*w), x))
        .collect()
}

#[test]
fn matches_its_definition_for_many_shapes_and_batches() {
    let mut rng = Rng::new(41);
    for &(n, kd) in SHAPES {
        let (q, inv) = quantize(&weights(&mut rng, n * kd));
        let w = Int8Mat::new(&q, &inv, n, kd).unwrap();
        for batch in [5, 6, 7, 12, 13, 20, 37] {
            let xs = activations(&mut rng, batch * kd);
            let want = reference::matmul_int8_activations(&w, &xs, batch);
            let scale = scale(&w, &xs, batch);
            for k in paths() {
                let what = format!(
                    "int8 activations {n}x{kd} batch {batch} on {}",
                    k.simd_path().name()
                );
                assert_close(&what, &run(&k, &w, &xs, batch), &want, &scale);
            }
        }
    }
}

#[test]
fn error_against_the_exact_product_is_within_half_a_step_per_activation() {
    // |y_q - y| <= Σ_groups (max|x_g| / 126) Σ_{k in g} |w_k|: each activation moves by at most
    // half of its group's step. Checked against the exact f64 product, independently of how the
    // quantized product is computed.
    let mut rng = Rng::new(42);
    let (n, kd, batch) = (40, 576, 9);
    let (q, inv) = quantize(&weights(&mut rng, n * kd));
    let w = Int8Mat::new(&q, &inv, n, kd).unwrap();
    let xs = activations(&mut rng, batch * kd);
    let exact = reference::matmul(&MatRef::Int8(w), &xs, batch);
    let mut rows = vec![vec![0.0f32; kd]; n];
    for (r, row) in rows.iter_mut().enumerate() {
        w.dequantize_row(r, row).unwrap();
    }
    for k in paths() {
        let got = run(&k, &w, &xs, batch);
        let mut worst = 0.0f64;
        for (t, x) in xs.chunks_exact(kd).enumerate() {
            for (r, row) in rows.iter().enumerate() {
                let bound: f64 = x
                    .chunks_exact(64)
                    .zip(row.chunks_exact(64))
                    .map(|(xg, wg)| {
                        let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let wsum: f64 = wg.iter().map(|&v| f64::from(v).abs()).sum();
                        f64::from(amax) / 126.0 * wsum
                    })
                    .sum();
                let err = (f64::from(got[t * n + r]) - f64::from(exact[t * n + r])).abs();
                assert!(
                    err <= bound * 1.0001 + 1e-5,
                    "token {t} row {r}: error {err} above the bound {bound}"
                );
                worst = worst.max(err / bound.max(1e-30));
            }
        }
        // The bound is not vacuous: the quantized product really differs from the exact one.
        assert!(worst > 0.01, "no quantization error seen (worst {worst})");
    }
}

#[test]
fn every_path_and_thread_count_gives_identical_results() {
    let mut rng = Rng::new(43);
    let (n, kd, batch) = (400, 1088, 23);
    let (q, inv) = quantize(&weights(&mut rng, n * kd));
    let w = Int8Mat::new(&q, &inv, n, kd).unwrap();
    let xs = activations(&mut rng, batch * kd);
    let mut results = Vec::new();
    for k in paths() {
        results.push(run(&k, &w, &xs, batch));
        #[cfg(feature = "parallel")]
        for threads in [1, 2, 3] {
            let pool = torchless_kernels::thread_pool(threads).unwrap();
            results.push(pool.install(|| run(&k, &w, &xs, batch)));
        }
    }
    assert!(results.windows(2).all(|p| p[0] == p[1]));
}

#[test]
fn matvecs_f32_weights_and_unaligned_groups_stay_exact() {
    let mut rng = Rng::new(44);
    for k in paths() {
        // Batch 1 is a matvec: bit-identical to the exact kernels.
        let (q, inv) = quantize(&weights(&mut rng, 24 * 192));
        let m = MatRef::int8(&q, &inv, 24, 192).unwrap();
        let x = activations(&mut rng, 192);
        let (mut y1, mut y2) = (vec![0.0; 24], vec![0.0; 24]);
        k.matmul(&m, &x, &mut y1, 1).unwrap();
        k.with_int8_activations(false)
            .matvec(&m, &x, &mut y2)
            .unwrap();
        assert_eq!(y1, y2);
        // Rows that do not hold whole groups (k = 100) and f32 weights: the exact path.
        let batch = 7;
        let (q, inv) = quantize(&weights(&mut rng, 20 * 100));
        let wf = rng.vec(20 * 100);
        let xs = activations(&mut rng, batch * 100);
        for m in [
            MatRef::int8(&q, &inv, 20, 100).unwrap(),
            MatRef::f32(&wf, 20, 100).unwrap(),
        ] {
            let mut got = vec![0.0; batch * 20];
            let mut want = vec![0.0; batch * 20];
            k.matmul(&m, &xs, &mut got, batch).unwrap();
            k.with_int8_activations(false)
                .matmul(&m, &xs, &mut want, batch)
                .unwrap();
            assert_eq!(got, want);
        }
    }
}

#[test]
fn zero_and_non_finite_groups() {
    let mut rng = Rng::new(45);
    let (n, kd, batch) = (16, 128, 5);
    let (q, inv) = quantize(&weights(&mut rng, n * kd));
    let w = Int8Mat::new(&q, &inv, n, kd).unwrap();
    let mut xs = activations(&mut rng, batch * kd);
    // Token 0: all zero; token 1: only its second group is non-zero; token 2: a NaN.
    xs[..kd + 64].fill(0.0);
    xs[2 * kd + 5] = f32::NAN;
    let want = reference::matmul_int8_activations(&w, &xs[..2 * kd], 2);
    for k in paths() {
        let got = run(&k, &w, &xs, batch);
        assert!(got[..n].iter().all(|&v| v == 0.0), "all-zero token");
        assert_close(
            "one group",
            &got[n..2 * n],
            &want[n..],
            &scale(&w, &xs[..2 * kd], 2)[n..],
        );
        assert!(
            got[2 * n..3 * n].iter().all(|v| v.is_nan()),
            "NaN propagates"
        );
        assert!(
            got[3 * n..].iter().all(|v| v.is_finite()),
            "only to its token"
        );
    }
}
