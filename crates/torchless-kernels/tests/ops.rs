//! Element-wise kernels and RoPE against the reference.
mod common;

use common::{assert_rel, Rng};
use torchless_kernels::{
    reference, rope_apply, rope_cos_sin, rope_inv_freq, Kernels, RopeTable, SimdPath,
};

fn paths() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

const LENS: &[usize] = &[1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 100, 4096, 4099];

#[test]
fn rmsnorm_matches_reference() {
    let mut rng = Rng::new(20);
    for &n in LENS {
        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 3.0).collect();
        let w = rng.vec(n);
        let want = reference::rmsnorm(&x, &w, 1e-5);
        for k in paths() {
            let mut out = vec![0.0; n];
            k.rmsnorm(&x, &w, 1e-5, &mut out).unwrap();
            assert_rel(
                &format!("rmsnorm {n} {}", k.simd_path().name()),
                &out,
                &want,
                1e-5,
                1e-7,
            );
            let mut inplace = x.clone();
            k.rmsnorm_inplace(&mut inplace, &w, 1e-5).unwrap();
            assert_eq!(inplace, out);
        }
    }
}

#[test]
fn softmax_matches_reference_and_is_stable() {
    let mut rng = Rng::new(21);
    for &n in LENS {
        for spread in [1.0f32, 30.0, 1000.0] {
            let x: Vec<f32> = rng.vec(n).iter().map(|v| v * spread + 500.0).collect();
            let want = reference::softmax(&x);
            for k in paths() {
                let mut y = x.clone();
                k.softmax(&mut y);
                let what = format!("softmax {n} spread {spread} {}", k.simd_path().name());
                assert_rel(&what, &y, &want, 1e-5, 1e-9);
                let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
                assert!((s - 1.0).abs() < 1e-5, "{what}: sums to {s}");
            }
        }
    }
}

#[test]
fn softmax_masked_entries_are_exactly_zero() {
    for k in paths() {
        let mut x = vec![
            0.5,
            f32::NEG_INFINITY,
            -1.0,
            f32::NEG_INFINITY,
            2.0,
            -90.0,
            -200.0,
            1.0,
            0.0,
        ];
        k.softmax(&mut x);
        assert_eq!(x[1], 0.0);
        assert_eq!(x[3], 0.0);
        assert_eq!(x[6], 0.0);
        let want = reference::softmax(&[
            0.5,
            f32::NEG_INFINITY,
            -1.0,
            f32::NEG_INFINITY,
            2.0,
            -90.0,
            -200.0,
            1.0,
            0.0,
        ]);
        assert_rel("masked", &x, &want, 1e-5, 1e-30);
    }
}

#[test]
fn silu_mul_matches_reference() {
    let mut rng = Rng::new(22);
    for &n in LENS {
        let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 12.0).collect();
        let u = rng.vec(n);
        let want = reference::silu_mul(&g, &u);
        for k in paths() {
            let mut out = vec![0.0; n];
            k.silu_mul(&g, &u, &mut out).unwrap();
            let what = format!("silu_mul {n} {}", k.simd_path().name());
            assert_rel(&what, &out, &want, 1e-5, 1e-30);
            let mut gi = g.clone();
            k.silu_mul_inplace(&mut gi, &u).unwrap();
            assert_eq!(gi, out);
        }
    }
    // Extremes: large negative gates go to 0, large positive pass through.
    for k in paths() {
        let g = [-100.0f32, -88.5, -20.0, 0.0, 20.0, 100.0, f32::NAN];
        let mut out = [0.0; 7];
        k.silu_mul(&g, &[1.0; 7], &mut out).unwrap();
        assert_rel(
            "silu extremes",
            &out[..6],
            &reference::silu_mul(&g[..6], &[1.0; 6]),
            1e-5,
            1e-30,
        );
        assert!(out[6].is_nan());
    }
}

#[test]
fn add_and_dot() {
    let mut rng = Rng::new(23);
    for &n in LENS {
        let (a, b) = (rng.vec(n), rng.vec(n));
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        let abs: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
            .sum();
        for k in paths() {
            let d = k.dot(&a, &b).unwrap();
            assert!((f64::from(d) - want).abs() <= 1e-5 * abs + 1e-6, "dot {n}");
            let mut y = a.clone();
            k.add(&mut y, &b).unwrap();
            assert!(y
                .iter()
                .zip(a.iter().zip(&b))
                .all(|(s, (x, z))| *s == x + z));
        }
        assert!(Kernels::auto().dot(&a, &b[..n - 1]).is_err());
    }
}

#[test]
fn rope_pairs_i_with_i_plus_half() {
    // head_dim 4, theta 100: inv_freq = [1, 0.1]; at pos 1 dimension 0 rotates with 2, 1 with 3.
    let t = RopeTable::new(4, 100.0, 4).unwrap();
    let mut x = vec![1.0f32, 0.0, 0.0, 0.0];
    t.apply(&mut x, 1).unwrap();
    let (c, s) = (1.0f64.cos() as f32, 1.0f64.sin() as f32);
    assert_eq!(x, vec![c, 0.0, s, 0.0]);
    let mut x = vec![0.0f32, 1.0, 0.0, 0.0];
    t.apply(&mut x, 1).unwrap();
    let (c, s) = ((0.1f32 as f64).cos() as f32, (0.1f32 as f64).sin() as f32);
    assert_eq!(x, vec![0.0, c, 0.0, s]);
    // Position 0 is the identity.
    let mut x = vec![0.3f32, -1.0, 2.0, 0.5];
    t.apply(&mut x, 0).unwrap();
    assert_eq!(x, vec![0.3, -1.0, 2.0, 0.5]);
}

#[test]
fn rope_table_and_on_the_fly_match_hf_formula_bitwise() {
    let mut rng = Rng::new(24);
    for (hd, theta) in [
        (128usize, 10000.0f64),
        (16, 10000.0),
        (64, 1_000_000.0),
        (2, 500.0),
    ] {
        let table = RopeTable::new(hd, theta, 5000).unwrap();
        let inv = rope_inv_freq(hd, theta);
        for pos in [0usize, 1, 2, 17, 255, 4095, 4999] {
            let x = rng.vec(3 * hd);
            let want = reference::rope(&x, hd, theta, pos);
            let mut a = x.clone();
            table.apply(&mut a, pos).unwrap();
            assert_eq!(a, want, "table hd {hd} pos {pos}");
            let (mut c, mut s) = (vec![0.0; hd / 2], vec![0.0; hd / 2]);
            rope_cos_sin(&inv, pos, &mut c, &mut s).unwrap();
            let mut b = x.clone();
            rope_apply(&mut b, &c, &s).unwrap();
            assert_eq!(b, want, "on the fly hd {hd} pos {pos}");
            // A rotation keeps each pair's norm.
            for h in 0..3 {
                for i in 0..hd / 2 {
                    let (p, q) = (h * hd + i, h * hd + i + hd / 2);
                    let n0 = x[p].hypot(x[q]);
                    let n1 = a[p].hypot(a[q]);
                    assert!((n0 - n1).abs() <= 1e-5 * n0.max(1e-3));
                }
            }
        }
        let mut batch = rng.vec(4 * hd);
        let rows = batch.clone();
        table.apply_batch(&mut batch, hd, 10).unwrap();
        for t in 0..4 {
            let want = reference::rope(&rows[t * hd..(t + 1) * hd], hd, theta, 10 + t);
            assert_eq!(&batch[t * hd..(t + 1) * hd], &want[..]);
        }
    }
    let t = RopeTable::new(8, 10000.0, 3).unwrap();
    assert!(t.apply(&mut [0.0; 8], 3).is_err());
    assert!(t.apply(&mut [0.0; 12], 1).is_err());
    assert!(RopeTable::new(7, 10000.0, 3).is_err());
}
