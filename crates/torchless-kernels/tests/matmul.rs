//! Batched products (prefill GEMM) on every supported path against the naive f64 reference.
mod common;

use common::{assert_close, quantize, weights, Rng};
use torchless_kernels::{reference, Kernels, MatRef, SimdPath};

fn paths() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

fn check(k: &Kernels, w: &MatRef<'_>, xs: &[f32], batch: usize, what: &str) {
    let mut ys = vec![f32::NAN; batch * w.rows()];
    k.matmul(w, xs, &mut ys, batch).expect("shapes");
    let want = reference::matmul(w, xs, batch);
    let scale: Vec<f64> = xs
        .chunks_exact(w.cols().max(1))
        .take(batch)
        .flat_map(|x| reference::matvec_abs(w, x))
        .collect();
    let what = format!(
        "{what} batch {batch} x {}x{} on {}{}",
        w.rows(),
        w.cols(),
        k.simd_path().name(),
        if k.uses_blas() { "+blas" } else { "" }
    );
    assert_close(&what, &ys, &want, &scale);
}

/// (n, k): output features not multiples of 16, depths not multiples of 8 or of the 256 block.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (5, 3),
    (16, 8),
    (17, 9),
    (33, 300),
    (40, 256),
    (7, 520),
];

#[test]
fn f32_matches_reference_for_batches_1_to_13() {
    let mut rng = Rng::new(10);
    for &(n, kd) in SHAPES {
        let w = rng.vec(n * kd);
        let m = MatRef::f32(&w, n, kd).unwrap();
        for batch in 1..=13 {
            let xs = rng.vec(batch * kd);
            for k in paths() {
                check(&k, &m, &xs, batch, "f32");
            }
        }
    }
}

#[test]
fn int8_aligned_matches_reference_for_batches_1_to_18() {
    // Batches up to 16 take the small-batch dot-product path, larger ones the GEMM.
    let mut rng = Rng::new(11);
    for &(n, kd) in &[(16, 64), (17, 128), (35, 320), (48, 576), (3, 64)] {
        let (q, inv) = quantize(&weights(&mut rng, n * kd));
        let m = MatRef::int8(&q, &inv, n, kd).unwrap();
        for batch in 1..=18 {
            let xs = rng.vec(batch * kd);
            for k in paths() {
                check(&k, &m, &xs, batch, "int8 aligned");
            }
        }
    }
}

#[test]
fn int8_groups_spanning_rows_match_reference() {
    let mut rng = Rng::new(12);
    for &(n, kd) in &[(64, 176), (176, 64), (20, 160), (9, 100), (33, 300)] {
        let (q, inv) = quantize(&weights(&mut rng, n * kd));
        let m = MatRef::int8(&q, &inv, n, kd).unwrap();
        for batch in [2, 3, 7, 12] {
            let xs = rng.vec(batch * kd);
            for k in paths() {
                check(&k, &m, &xs, batch, "int8 spanning");
            }
        }
        // A sub-view that starts inside a group.
        let sub = m.rows_range(3..n).unwrap();
        let xs = rng.vec(5 * kd);
        for k in paths() {
            check(&k, &sub, &xs, 5, "int8 sub-view");
        }
    }
}

#[test]
fn large_batches_cross_the_blocking_boundaries() {
    // batch > MC (144) and k > KC (256): several batch blocks and several depth blocks.
    let mut rng = Rng::new(13);
    let (n, kd, batch) = (40, 640, 150);
    let wf = rng.vec(n * kd);
    let (q, inv) = quantize(&weights(&mut rng, n * kd));
    let xs = rng.vec(batch * kd);
    for k in paths() {
        check(&k, &MatRef::f32(&wf, n, kd).unwrap(), &xs, batch, "f32 big");
        check(
            &k,
            &MatRef::int8(&q, &inv, n, kd).unwrap(),
            &xs,
            batch,
            "int8 big",
        );
    }
}

#[cfg(feature = "parallel")]
#[test]
fn multi_task_split_matches_single_thread_exactly() {
    // Big enough for the column-task split (batch*n*k >= 2^22); each output is computed by the same
    // sequence of operations on any thread count, so results are bit-identical.
    let mut rng = Rng::new(14);
    let (n, kd, batch) = (400, 576, 20);
    let wf = rng.vec(n * kd);
    let (q, inv) = quantize(&weights(&mut rng, n * kd));
    let xs = rng.vec(batch * kd);
    let mf = MatRef::f32(&wf, n, kd).unwrap();
    let mi = MatRef::int8(&q, &inv, n, kd).unwrap();
    for k in paths() {
        for m in [&mf, &mi] {
            let run = |t: usize| {
                let pool = torchless_kernels::thread_pool(t).unwrap();
                let mut ys = vec![0.0; batch * n];
                pool.install(|| k.matmul(m, &xs, &mut ys, batch)).unwrap();
                ys
            };
            let one = run(1);
            assert_eq!(one, run(2));
            assert_eq!(one, run(3));
            pool_check(&k, m, &xs, batch);
        }
    }
}

#[cfg(feature = "parallel")]
fn pool_check(k: &Kernels, m: &MatRef<'_>, xs: &[f32], batch: usize) {
    let pool = torchless_kernels::thread_pool(2).unwrap();
    pool.install(|| check(k, m, xs, batch, "2 threads"));
}

#[test]
fn blas_matches_reference_when_compiled_in() {
    let Ok(k) = Kernels::auto().with_blas(true) else {
        assert!(torchless_kernels::blas_backend().is_none());
        return;
    };
    let mut rng = Rng::new(15);
    for &(n, kd) in SHAPES {
        let w = rng.vec(n * kd);
        let m = MatRef::f32(&w, n, kd).unwrap();
        for batch in [1, 2, 7] {
            let xs = rng.vec(batch * kd);
            check(&k, &m, &xs, batch, "f32 blas");
        }
    }
}

#[test]
fn matmul_batch_one_equals_matvec() {
    let mut rng = Rng::new(16);
    let (q, inv) = quantize(&weights(&mut rng, 24 * 192));
    let m = MatRef::int8(&q, &inv, 24, 192).unwrap();
    let x = rng.vec(192);
    for k in paths() {
        let (mut a, mut b) = (vec![0.0; 24], vec![0.0; 24]);
        k.matmul(&m, &x, &mut a, 1).unwrap();
        k.matvec(&m, &x, &mut b).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn rows_do_not_depend_on_the_batch_from_where_the_kernels_promise() {
    let mut rng = Rng::new(31);
    for &(n, kd) in &[(33, 300), (48, 576), (20, 160)] {
        let w = rng.vec(n * kd);
        let f = MatRef::f32(&w, n, kd).unwrap();
        let (q, inv) = quantize(&weights(&mut rng, n * kd));
        let i8m = MatRef::int8(&q, &inv, n, kd).unwrap();
        let total = 40;
        let xs = rng.vec(total * kd);
        for k in paths() {
            for int8_activations in [false, true] {
                let k = k.with_int8_activations(int8_activations);
                let what = format!(
                    "{} {n}x{kd} int8 acts {int8_activations}",
                    k.simd_path().name()
                );
                common::assert_rows_batch_invariant(&format!("f32 {what}"), &k, &f, &xs, total);
                common::assert_rows_batch_invariant(&format!("int8 {what}"), &k, &i8m, &xs, total);
            }
        }
    }
}
