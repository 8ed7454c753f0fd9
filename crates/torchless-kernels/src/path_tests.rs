//! Unit tests that run each instruction set's kernels through the drivers (tests that need both
//! sides, which no module of either side imports).

use crate::gemm::float::gemm;
use crate::isa::traits::Micro;
use crate::mat::MatRef;

fn rng(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Runs one micro-kernel configuration through the driver and compares with the reference.
fn check<M: Micro>(m: M) {
    let mut s = 7u64;
    for &(n, k, batch) in &[
        (1usize, 1usize, 2usize),
        (17, 9, 5),
        (33, 300, 7),
        (16, 64, 13),
        (40, 520, 150),
        // Several depth blocks: 4 x 384 and a 128 tail, 2 x 384 and a ragged 232 tail.
        (19, 1664, 9),
        (21, 1000, 8),
    ] {
        let w: Vec<f32> = (0..n * k).map(|_| rng(&mut s)).collect();
        let q: Vec<i8> = (0..n * k).map(|_| (rng(&mut s) * 127.0) as i8).collect();
        let inv: Vec<f32> = (0..(n * k).div_ceil(64))
            .map(|_| 10.0 + rng(&mut s) * 5.0)
            .collect();
        let x: Vec<f32> = (0..batch * k).map(|_| rng(&mut s)).collect();
        for mat in [
            MatRef::f32(&w, n, k).unwrap(),
            MatRef::int8(&q, &inv, n, k).unwrap(),
        ] {
            let mut y = vec![f32::NAN; batch * n];
            gemm(m, &mat, &x, &mut y, batch);
            let want = crate::reference::matmul(&mat, &x, batch);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let scale: f64 = (0..k)
                    .map(|c| {
                        (f64::from(mat.get(i % n, c).unwrap()) * f64::from(x[(i / n) * k + c]))
                            .abs()
                    })
                    .sum();
                let err = f64::from(a - b).abs();
                assert!(
                    err <= 1e-5 * scale + 1e-6,
                    "{n}x{k} b{batch} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn scalar_micro_kernel() {
    check(crate::isa::scalar::Scalar);
}

#[cfg(feature = "simd")]
#[test]
fn wide_micro_kernels_of_both_tile_shapes() {
    use crate::isa::wide::WideMicro;
    // 4x8 is the SSE2 choice, 6x16 the NEON one: both run here.
    check(WideMicro::<4, 1>);
    check(WideMicro::<6, 2>);
    check(WideMicro::<3, 3>);
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx2_micro_kernel_and_packers() {
    let Some(t) = crate::isa::x86::Avx2::detect() else {
        return; // no AVX2 on this CPU: nothing to test
    };
    check(t);
    // The vectorized packers produce exactly what the generic packer does.
    use crate::gemm::float::pack_b_generic;
    let (n, k) = (32, 512);
    let mut s = 3u64;
    let w: Vec<f32> = (0..n * k).map(|_| rng(&mut s)).collect();
    let q: Vec<i8> = (0..n * k).map(|_| (rng(&mut s) * 127.0) as i8).collect();
    let mut inv: Vec<f32> = (0..n * k / 64)
        .map(|_| 1.0 + 1000.0 * rng(&mut s).abs())
        .collect();
    inv[9] = f32::INFINITY; // all-zero group as the exporter writes it
    for mat in [
        MatRef::f32(&w, n, k).unwrap(),
        MatRef::int8(&q, &inv, n, k).unwrap(),
    ] {
        for (n0, pc, kc) in [(0, 0, 256), (16, 256, 256), (0, 64, 128)] {
            let mut fast = vec![0.0; kc * 16];
            let mut slow = vec![0.0; kc * 16];
            assert!(t.pack_b(&mat, n0, 16, pc, kc, &mut fast));
            pack_b_generic(&mat, n0, 16, 16, pc, kc, &mut slow);
            assert!(fast
                .iter()
                .zip(&slow)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
