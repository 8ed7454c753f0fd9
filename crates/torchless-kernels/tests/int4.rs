//! int4 matvec (integer dot products with int8-quantized activations) against the f64
//! reference of its definition, on every path, and batched against single.
mod common;

use torchless_kernels::{reference, Int4Mat, Kernels, MatRef, SimdPath};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Random codes and scales (finite halves between about 2^-10 and 2^2, some zero scales).
fn matrix(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<u8>, Vec<u16>) {
    let packed = (0..rows * cols / 2).map(|_| rng.next() as u8).collect();
    let scales = (0..rows * cols / 32)
        .map(|i| {
            if i % 37 == 5 {
                0
            } else {
                // Exponent field 5..17, random mantissa and sign.
                let exp = 5 + (rng.next() % 13) as u16;
                (rng.next() as u16 & 0x83ff) | (exp << 10)
            }
        })
        .collect();
    (packed, scales)
}

fn paths() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

const SHAPES: &[(usize, usize)] = &[
    (1, 32),
    (3, 64),
    (7, 96),
    (5, 160),
    (17, 576),
    (64, 1536),
    (9, 4096),
];

#[test]
fn int4_matvec_matches_its_f64_definition_and_is_identical_on_every_path() {
    let mut rng = Rng(0x1234_5678);
    for &(rows, cols) in SHAPES {
        let (packed, scales) = matrix(&mut rng, rows, cols);
        let w = Int4Mat::new(&packed, &scales, rows, cols).unwrap();
        let m = MatRef::Int4(w);
        let mut x: Vec<f32> = (0..cols).map(|_| rng.f32() * 3.0).collect();
        // An all-zero group, and a group with one large value.
        x[..32].fill(0.0);
        if cols >= 64 {
            x[40] = 1e4;
        }
        let want = reference::matvec_int4(&w, &x);
        let xq = reference::int4_activations(&x);
        let mut first: Option<Vec<f32>> = None;
        for k in paths() {
            let mut y = vec![f32::NAN; rows];
            k.matvec(&m, &x, &mut y).unwrap();
            for r in 0..rows {
                // f32 rounding of per-lane products and sums only: the integer parts are exact.
                let bound: f64 = (0..cols)
                    .map(|c| (f64::from(m.get(r, c).unwrap()) * xq[c]).abs())
                    .sum::<f64>()
                    * 1e-6
                    + 1e-30;
                let err = (f64::from(y[r]) - f64::from(want[r])).abs();
                assert!(
                    err <= bound,
                    "{rows}x{cols} row {r} on {}: {} vs {} (bound {bound:e})",
                    k.simd_path().name(),
                    y[r],
                    want[r]
                );
            }
            match &first {
                None => first = Some(y),
                Some(f) => assert!(
                    f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{rows}x{cols}: {} differs from the scalar path",
                    k.simd_path().name()
                ),
            }
        }
    }
}

#[test]
fn int4_matvec_is_close_to_the_dequantized_f32_product() {
    // The activation rounding (half a step of max|x| / 127 per value) is the only difference
    // from the exact product with the dequantized weights.
    let mut rng = Rng(99);
    let (rows, cols) = (32, 1024);
    let (packed, scales) = matrix(&mut rng, rows, cols);
    let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
    let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
    let mut y = vec![0.0; rows];
    Kernels::auto().matvec(&m, &x, &mut y).unwrap();
    let exact = reference::matvec(&m, &x);
    for r in 0..rows {
        let bound: f64 = (0..cols)
            .map(|c| {
                let amax = x[c / 32 * 32..c / 32 * 32 + 32]
                    .iter()
                    .fold(0.0f32, |a, v| a.max(v.abs()));
                f64::from(m.get(r, c).unwrap()).abs() * f64::from(amax) / 254.0
            })
            .sum::<f64>()
            * 1.001;
        assert!(
            (f64::from(y[r]) - f64::from(exact[r])).abs() <= bound,
            "row {r}"
        );
    }
}

/// `|y − y_ref|` allowed for one output of the int4 GEMM: the integer sums are exact, each group
/// term is rounded once (`d · dx`) and the terms are added one by one in f32, so the error is at
/// most `(groups + 1)` units of f32 rounding (2^-24) of `Σ |w · xq|`.
fn int4_gemm_bound(m: &MatRef<'_>, xq: &[f64], r: usize) -> f64 {
    let sum: f64 = (0..m.cols())
        .map(|c| (f64::from(m.get(r, c).unwrap()) * xq[c]).abs())
        .sum();
    sum * (m.cols() / 32 + 1) as f64 * f64::from(f32::EPSILON) / 2.0 * 1.01 + 1e-30
}

#[test]
fn int4_matvec_many_is_one_job_with_the_results_of_separate_matvecs() {
    // q/k/v-like shapes large enough to be cut into chunks at 2 and 3 threads (the rows of all
    // three form one job, chunk starts fall inside matrices), an odd row count, a depth whose
    // groups end mid block: every output bit for bit the scalar path's separate `matvec`, which
    // the first test holds to the f64 definition.
    let mut rng = Rng(0xabc);
    let cols = 2080;
    let shapes = [301usize, 77, 77];
    let mats: Vec<(Vec<u8>, Vec<u16>)> =
        shapes.iter().map(|&r| matrix(&mut rng, r, cols)).collect();
    let ms: Vec<MatRef<'_>> = mats
        .iter()
        .zip(shapes)
        .map(|((p, s), r)| MatRef::int4(p, s, r, cols).unwrap())
        .collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.f32() * 2.0).collect();
    let scalar = Kernels::with_path(SimdPath::Scalar).unwrap();
    let want: Vec<Vec<f32>> = ms
        .iter()
        .map(|m| {
            let mut y = vec![0.0; m.rows()];
            scalar.matvec(m, &x, &mut y).unwrap();
            y
        })
        .collect();
    for threads in 1..=3 {
        for k in paths() {
            let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; r]).collect();
            let [a, b, c] = &mut ys[..] else {
                unreachable!()
            };
            let mut outs = [&mut a[..], &mut b[..], &mut c[..]];
            #[cfg(feature = "parallel")]
            torchless_kernels::thread_pool(threads)
                .unwrap()
                .install(|| k.matvec_many(&ms, &x, &mut outs))
                .unwrap();
            #[cfg(not(feature = "parallel"))]
            k.matvec_many(&ms, &x, &mut outs).unwrap();
            for (i, (got, want)) in ys.iter().zip(&want).enumerate() {
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "matrix {i}, {threads} thread(s), {}",
                    k.simd_path().name()
                );
            }
        }
    }
}

#[test]
fn int4_batch_rows_are_bit_identical_to_matvec() {
    let mut rng = Rng(7);
    for &(rows, cols) in &[(37usize, 96usize), (64, 576), (20, 4096)] {
        let (packed, scales) = matrix(&mut rng, rows, cols);
        let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
        for batch in 1..=9 {
            let xs: Vec<f32> = (0..batch * cols).map(|_| rng.f32()).collect();
            for k in paths() {
                let mut ys = vec![f32::NAN; batch * rows];
                k.matvec_batch(&m, &xs, &mut ys, batch).unwrap();
                for b in 0..batch {
                    let mut y = vec![0.0; rows];
                    k.matvec(&m, &xs[b * cols..(b + 1) * cols], &mut y).unwrap();
                    assert!(
                        y.iter()
                            .zip(&ys[b * rows..(b + 1) * rows])
                            .all(|(a, c)| a.to_bits() == c.to_bits()),
                        "{rows}x{cols} batch {batch} input {b} on {}",
                        k.simd_path().name()
                    );
                }
            }
        }
    }
}

#[test]
fn int4_batch_many_is_one_job_with_the_results_of_the_scalar_matvec() {
    // q/k/v-like matrices sharing a batch of unrelated inputs (a several-sequence decode step):
    // chunk starts inside matrices at 2 and 3 threads, an odd row count, groups ending mid block,
    // batch sizes of the several-input kernels (2, 3, 4) and their mixes (5 = 4 + 1, 7, 8):
    // every output bit for bit the scalar path's `matvec` of its input.
    let mut rng = Rng(0xbea7);
    let cols = 2080;
    let shapes = [301usize, 77, 78];
    let mats: Vec<(Vec<u8>, Vec<u16>)> =
        shapes.iter().map(|&r| matrix(&mut rng, r, cols)).collect();
    let ms: Vec<MatRef<'_>> = mats
        .iter()
        .zip(shapes)
        .map(|((p, s), r)| MatRef::int4(p, s, r, cols).unwrap())
        .collect();
    let scalar = Kernels::with_path(SimdPath::Scalar).unwrap();
    for batch in [2usize, 3, 4, 5, 7, 8] {
        let mut xs: Vec<f32> = (0..batch * cols).map(|_| rng.f32() * 2.0).collect();
        // An all-zero group and a large activation.
        xs[cols + 64..cols + 96].fill(0.0);
        xs[5] = 300.0;
        for threads in 1..=3 {
            for k in paths() {
                let mut ys: Vec<Vec<f32>> =
                    shapes.iter().map(|&r| vec![f32::NAN; batch * r]).collect();
                let [a, b, c] = &mut ys[..] else {
                    unreachable!()
                };
                let mut outs = [&mut a[..], &mut b[..], &mut c[..]];
                #[cfg(feature = "parallel")]
                torchless_kernels::thread_pool(threads)
                    .unwrap()
                    .install(|| k.matvec_batch_many(&ms, &xs, &mut outs, batch))
                    .unwrap();
                #[cfg(not(feature = "parallel"))]
                k.matvec_batch_many(&ms, &xs, &mut outs, batch).unwrap();
                for (i, (m, got)) in ms.iter().zip(&ys).enumerate() {
                    let rows = m.rows();
                    for t in 0..batch {
                        let mut want = vec![0.0; rows];
                        scalar
                            .matvec(m, &xs[t * cols..(t + 1) * cols], &mut want)
                            .unwrap();
                        assert!(
                            got[t * rows..(t + 1) * rows]
                                .iter()
                                .zip(&want)
                                .all(|(g, w)| g.to_bits() == w.to_bits()),
                            "matrix {i}, batch {batch} input {t}, {threads} thread(s), {}",
                            k.simd_path().name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn int4_matmul_matches_its_f64_definition_and_is_identical_on_every_path() {
    // Edge shapes: rows not a multiple of the 16-row tile, depths that end mid 512-block, batches
    // below, at and past the 6-token sliver and the integer GEMM's threshold.
    let mut rng = Rng(0x5eed);
    for &(rows, cols) in &[
        (1usize, 32usize),
        (17, 96),
        (16, 544),
        (40, 1056),
        (33, 4096),
    ] {
        let (packed, scales) = matrix(&mut rng, rows, cols);
        let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
        let Some(MatRef::Int4(w)) = Some(m) else {
            unreachable!()
        };
        for batch in [2usize, 4, 5, 6, 7, 12, 13, 31] {
            let mut xs: Vec<f32> = (0..batch * cols).map(|_| rng.f32() * 2.0).collect();
            // An all-zero group and a group with one large value in the first token.
            xs[..32].fill(0.0);
            if cols >= 64 {
                xs[33] = -3e3;
            }
            let mut first: Option<Vec<f32>> = None;
            for k in paths() {
                let mut ys = vec![f32::NAN; batch * rows];
                k.matmul(&m, &xs, &mut ys, batch).unwrap();
                for t in 0..batch {
                    let x = &xs[t * cols..(t + 1) * cols];
                    let want = reference::matvec_int4(&w, x);
                    let xq = reference::int4_activations(x);
                    for r in 0..rows {
                        let (got, bound) = (ys[t * rows + r], int4_gemm_bound(&m, &xq, r));
                        assert!(
                            (f64::from(got) - f64::from(want[r])).abs() <= bound,
                            "{rows}x{cols} batch {batch} token {t} row {r} on {}: {got} vs {}",
                            k.simd_path().name(),
                            want[r]
                        );
                    }
                }
                match &first {
                    None => first = Some(ys),
                    Some(f) => assert!(
                        f.iter().zip(&ys).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{rows}x{cols} batch {batch}: {} differs from the scalar path",
                        k.simd_path().name()
                    ),
                }
            }
        }
    }
}

#[test]
fn int4_matmul_sums_the_largest_codes_and_activations_without_wrapping() {
    // Every code 15 (value +7) or every code 0 (value -8), every activation at +-127: the largest
    // sums a group's 16-bit lanes hold (8 x 2 x 15 x 127 = 30480).
    let (rows, cols, batch) = (16usize, 1024usize, 6usize);
    for code in [0xffu8, 0x00] {
        let packed = vec![code; rows * cols / 2];
        let scales = vec![0x3c00u16; rows * cols / 32]; // 1.0
        let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
        for sign in [1.0f32, -1.0] {
            let xs = vec![sign * 0.5; batch * cols];
            for k in paths() {
                let mut ys = vec![0.0; batch * rows];
                k.matmul(&m, &xs, &mut ys, batch).unwrap();
                let value = if code == 0xff { 7.0 } else { -8.0 };
                let want = value * sign * 0.5 * cols as f32;
                assert!(
                    ys.iter().all(|&y| (y - want).abs() <= want.abs() * 1e-6),
                    "code {code:#x} sign {sign} on {}: {} vs {want}",
                    k.simd_path().name(),
                    ys[0]
                );
            }
        }
    }
}

#[test]
fn int4_shapes_are_checked() {
    assert!(
        Int4Mat::new(&[0; 8], &[0], 1, 16).is_err(),
        "not whole groups"
    );
    assert!(Int4Mat::new(&[0; 15], &[0], 1, 32).is_err(), "short codes");
    assert!(Int4Mat::new(&[0; 16], &[], 1, 32).is_err(), "missing scale");
    let m = MatRef::int4(&[0x88; 16], &[0x3c00], 1, 32).unwrap();
    let mut y = [1.0f32];
    assert!(Kernels::auto().matvec(&m, &[0.0; 31], &mut y).is_err());
    Kernels::auto().matvec(&m, &[1.0; 32], &mut y).unwrap();
    assert_eq!(y, [0.0], "code 8 is zero");
}

#[test]
fn int4_rows_do_not_depend_on_the_batch_from_where_the_kernels_promise() {
    let mut rng = Rng(0x1417);
    for &(rows, cols) in &[(17usize, 96usize), (40, 1056)] {
        let (packed, scales) = matrix(&mut rng, rows, cols);
        let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
        let total = 23;
        let xs: Vec<f32> = (0..total * cols).map(|_| rng.f32() * 2.0).collect();
        for k in paths() {
            let what = format!("int4 {rows}x{cols} {}", k.simd_path().name());
            common::assert_rows_batch_invariant(&what, &k, &m, &xs, total);
        }
    }
}
