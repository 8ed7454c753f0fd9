//! ggml block matrices (`MatRef::Blocks`): every type on every supported path, in both
//! arithmetics, against the f64 reference of `torchless_kernels::reference` (written separately
//! from the kernels, from ggml's loops), on edge shapes and edge data; bit-identity across paths,
//! thread counts and batching; embedding rows and adjacent RoPE.
mod common;

use common::{same_bits, Rng};
use torchless_kernels::{reference, BlockMat, BlockType, Kernels, MatRef, RopeTable, SimdPath};

const ALL: [BlockType; 10] = BlockType::ALL;
const U: f64 = f32::EPSILON as f64 / 2.0;

/// How the scales of crafted blocks are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scales {
    /// Normal halves between about 2^-10 and 2^5, random signs.
    Normal,
    /// Half subnormals (and zeros).
    Subnormal,
    /// Halves near the largest (2^13 .. 65504).
    Large,
}

fn half_bits(rng: &mut Rng, s: Scales) -> u16 {
    let sign = (rng.next_u64() as u16) & 0x8000;
    let man = (rng.next_u64() as u16) & 0x3ff;
    let exp: u16 = match s {
        Scales::Normal => 5 + (rng.next_u64() % 16) as u16,
        Scales::Subnormal => 0,
        Scales::Large => 28 + (rng.next_u64() % 3) as u16,
    };
    sign | (exp << 10) | man
}

fn put_half(b: &mut [u8], at: usize, h: u16) {
    b[at..at + 2].copy_from_slice(&h.to_le_bytes());
}

/// Random bytes for every code, valid scales of the given kind; every 7th block all zero.
fn craft(rng: &mut Rng, ty: BlockType, blocks: usize, s: Scales) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..blocks * bb).map(|_| rng.next_u64() as u8).collect();
    for (i, b) in data.chunks_exact_mut(bb).enumerate() {
        if i % 7 == 3 {
            b.fill(0);
            continue;
        }
        match ty {
            BlockType::F16 => put_half(b, 0, half_bits(rng, s)),
            BlockType::BF16 => {
                // ±2^e · (1 + k/128): exact in bfloat16 (subnormal: an f32 subnormal's top bits).
                let e = match s {
                    Scales::Normal => -10 + (rng.next_u64() % 16) as i32,
                    Scales::Subnormal => -140 + (rng.next_u64() % 10) as i32,
                    Scales::Large => 60 + (rng.next_u64() % 20) as i32,
                };
                let k = (rng.next_u64() % 128) as f32;
                let sign = if rng.next_u64().is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                let f = sign * 2f32.powi(e) * (1.0 + k / 128.0);
                b.copy_from_slice(&((f.to_bits() >> 16) as u16).to_le_bytes());
            }
            BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q5_0 => {
                put_half(b, 0, half_bits(rng, s))
            }
            BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K => {
                put_half(b, 0, half_bits(rng, s));
                put_half(b, 2, half_bits(rng, s));
            }
            BlockType::Q6K => put_half(b, 208, half_bits(rng, s)),
        }
    }
    data
}

/// A straightforward quantizer (only to produce valid blocks from real-looking rows; the tests'
/// reference is the dequantization, not this).
fn quantize(ty: BlockType, x: &[f32]) -> Vec<u8> {
    let h = |v: f32| half_of(v);
    let mut out = Vec::new();
    for xb in x.chunks_exact(ty.block_values()) {
        let mut b = vec![0u8; ty.block_bytes()];
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (lo, hi) = xb
            .iter()
            .fold((0.0f32, 0.0f32), |(l, u), &v| (l.min(v), u.max(v)));
        match ty {
            BlockType::F16 => b.copy_from_slice(&h(xb[0]).to_le_bytes()),
            BlockType::BF16 => b.copy_from_slice(&((xb[0].to_bits() >> 16) as u16).to_le_bytes()),
            BlockType::Q8_0 => {
                let d = amax / 127.0;
                put_half(&mut b, 0, h(d));
                for (i, &v) in xb.iter().enumerate() {
                    let q = if d == 0.0 { 0.0 } else { (v / d).round() };
                    b[2 + i] = q.clamp(-127.0, 127.0) as i8 as u8;
                }
            }
            BlockType::Q4_0 | BlockType::Q5_0 | BlockType::Q4_1 | BlockType::Q5_1 => {
                let five = matches!(ty, BlockType::Q5_0 | BlockType::Q5_1);
                let with_min = matches!(ty, BlockType::Q4_1 | BlockType::Q5_1);
                let levels = if five { 31.0 } else { 15.0 };
                let (d, m, off) = if with_min {
                    ((hi - lo) / levels, lo, 0.0)
                } else {
                    (amax / (levels / 2.0), 0.0, if five { 16.0 } else { 8.0 })
                };
                put_half(&mut b, 0, h(d));
                if with_min {
                    put_half(&mut b, 2, h(m));
                }
                let at = if with_min { 4 } else { 2 };
                let mut qh = 0u32;
                for (i, &v) in xb.iter().enumerate() {
                    let u = if d == 0.0 {
                        off
                    } else {
                        ((v - m) / d).round() + off
                    };
                    let u = u.clamp(0.0, levels) as u32;
                    let j = i % 16;
                    let qs = at + if five { 4 } else { 0 } + j;
                    b[qs] |= ((u & 15) as u8) << if i < 16 { 0 } else { 4 };
                    qh |= (u >> 4) << i;
                }
                if five {
                    b[at..at + 4].copy_from_slice(&qh.to_le_bytes());
                }
            }
            BlockType::Q4K | BlockType::Q5K => {
                let five = ty == BlockType::Q5K;
                let levels = if five { 31.0 } else { 15.0 };
                // Per sub-block scale and (non-negative) min, then 6-bit codes of both.
                let subs: Vec<(f32, f32)> = xb
                    .chunks_exact(32)
                    .map(|s| {
                        let lo = s.iter().fold(0.0f32, |a, &v| a.min(v));
                        let hi = s.iter().fold(0.0f32, |a, &v| a.max(v));
                        ((hi - lo) / levels, -lo)
                    })
                    .collect();
                let smax = subs.iter().fold(0.0f32, |a, s| a.max(s.0));
                let mmax = subs.iter().fold(0.0f32, |a, s| a.max(s.1));
                let (d, dmin) = (smax / 63.0, mmax / 63.0);
                put_half(&mut b, 0, h(d));
                put_half(&mut b, 2, h(dmin));
                let six = |v: f32, s: f32| {
                    if s == 0.0 {
                        0
                    } else {
                        (v / s).round().clamp(0.0, 63.0) as u8
                    }
                };
                let (sc, mn): (Vec<u8>, Vec<u8>) =
                    subs.iter().map(|&(s, m)| (six(s, d), six(m, dmin))).unzip();
                for j in 0..8 {
                    if j < 4 {
                        b[4 + j] = sc[j];
                        b[4 + j + 4] = mn[j];
                    } else {
                        b[4 + j + 4] = (sc[j] & 0xf) | ((mn[j] & 0xf) << 4);
                        b[4 + j - 4] |= (sc[j] >> 4) << 6;
                        b[4 + j] |= (mn[j] >> 4) << 6;
                    }
                }
                let (qh_at, qs_at) = if five { (16, 48) } else { (0, 16) };
                for (i, &v) in xb.iter().enumerate() {
                    let j = i / 32;
                    let (s, m) = (f32::from(sc[j]) * d, f32::from(mn[j]) * dmin);
                    let u = if s == 0.0 { 0.0 } else { ((v + m) / s).round() };
                    let u = u.clamp(0.0, levels) as u8;
                    let (p, l, high) = (i / 64, i % 32, (i % 64) / 32);
                    b[qs_at + 32 * p + l] |= (u & 15) << (4 * high);
                    if five {
                        b[qh_at + l] |= (u >> 4) << (2 * p + high);
                    }
                }
            }
            BlockType::Q6K => {
                let scales: Vec<f32> = xb
                    .chunks_exact(16)
                    .map(|s| s.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 31.0)
                    .collect();
                let smax = scales.iter().fold(0.0f32, |a, &v| a.max(v));
                let d = smax / 127.0;
                put_half(&mut b, 208, h(d));
                for (j, &s) in scales.iter().enumerate() {
                    b[192 + j] = if d == 0.0 {
                        0
                    } else {
                        (s / d).round().clamp(-128.0, 127.0) as i8 as u8
                    };
                }
                for (i, &v) in xb.iter().enumerate() {
                    let s = f32::from(b[192 + i / 16] as i8) * d;
                    let q = if s == 0.0 { 0.0 } else { (v / s).round() };
                    let u = (q.clamp(-32.0, 31.0) + 32.0) as u8;
                    let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
                    b[64 * n + 32 * (k % 2) + l] |= (u & 15) << (4 * (k / 2));
                    b[128 + 32 * n + l] |= (u >> 4) << (2 * k);
                }
            }
        }
        out.extend(b);
    }
    out
}

/// f32 to half bits (through f64 rounding: good enough for test data).
fn half_of(v: f32) -> u16 {
    // Search-free: via the exponent of the value, ties away (test data only).
    if v == 0.0 {
        return 0;
    }
    let sign = if v < 0.0 { 0x8000u16 } else { 0 };
    let a = f64::from(v.abs()).min(65504.0);
    let e = a.log2().floor().max(-14.0) as i32;
    let ulp = 2f64.powi(e - 10);
    let m = (a / ulp).round();
    let (e, m) = if m >= 2048.0 {
        (e + 1, m / 2.0)
    } else {
        (e, m)
    };
    if e < -14 || m < 1024.0 {
        return sign | m as u16; // subnormal
    }
    sign | (((e + 15) as u16) << 10) | (m as u16 - 1024)
}

/// Runs `f` on a pool of `threads` threads (one thread without the `parallel` feature).
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    #[cfg(feature = "parallel")]
    {
        torchless_kernels::thread_pool(threads).unwrap().install(f)
    }
    #[cfg(not(feature = "parallel"))]
    {
        let _ = threads;
        f()
    }
}

fn kernels() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

fn values(ty: BlockType, cols_blocks: usize) -> usize {
    ty.block_values() * cols_blocks
}

/// `Σ (|a_i| + |b_i|) · |x_i|`, with `w_i = a_i + b_i` split into its scaled code and its min
/// (the min zeroed in a copy of the blocks): the magnitude the f32 rounding is relative to.
fn magnitude(w: &BlockMat<'_>, x: &[f64]) -> Vec<f64> {
    let ty = w.ty();
    let mut no_min = w.data().to_vec();
    if matches!(
        ty,
        BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K
    ) {
        for b in no_min.chunks_exact_mut(ty.block_bytes()) {
            b[2] = 0;
            b[3] = 0;
        }
    }
    let a_mat = BlockMat::new(ty, &no_min, w.rows(), w.cols()).unwrap();
    (0..w.rows())
        .map(|r| {
            let full = reference::dequantize_block_row(w, r);
            let a = reference::dequantize_block_row(&a_mat, r);
            full.iter()
                .zip(&a)
                .zip(x)
                .map(|((&f, &a), &x)| (a.abs() + (f - a).abs()) * x.abs())
                .sum()
        })
        .collect()
}

/// Checks `y` (one output per row) against the reference of the arithmetic `exact` selects:
/// `|y − y_ref| ≤ (lanes' sequential operations + reductions) · u · magnitude`.
fn check_rows(what: &str, w: &BlockMat<'_>, x: &[f32], y: &[f32], exact: bool) {
    let ty = w.ty();
    let exact_arith = exact || !ty.is_quantized();
    let (want, xs) = if exact_arith {
        (
            reference::matvec_blocks_exact(w, x),
            x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        )
    } else {
        (
            reference::matvec_blocks(w, x),
            reference::block_activations(ty, x),
        )
    };
    let mag = magnitude(w, &xs);
    // Operations in a lane's chain: exact: one product and one sum per 32 values (and the
    // weight's own rounding); default: per block two roundings of scales, a product and up to
    // two sums, per 8 blocks in a lane. Plus the final reduction (8 levels at most).
    let steps = if exact_arith {
        w.cols().div_ceil(32) + 10
    } else {
        4 * w.blocks_per_row().div_ceil(8) + 12
    };
    for (r, (&got, &want)) in y.iter().zip(&want).enumerate() {
        let tol = steps as f64 * U * mag[r] + 1e-37;
        let err = (f64::from(got) - want).abs();
        assert!(
            err <= tol || (got.is_nan() && want.is_nan()),
            "{what}: {} {}x{} row {r}: got {got:e}, want {want:e}, err {err:e} > {tol:e}",
            ty.name(),
            w.rows(),
            w.cols()
        );
    }
}

/// Rows x blocks per row (F16/BF16: blocks are values; those get odd column counts too).
const SHAPES: &[(usize, usize)] = &[(1, 1), (3, 2), (7, 1), (5, 7), (17, 8), (9, 9), (33, 17)];
const VALUE_SHAPES: &[(usize, usize)] = &[(1, 1), (3, 5), (7, 33), (17, 100), (9, 515)];

fn shapes(ty: BlockType) -> &'static [(usize, usize)] {
    if ty.block_values() == 1 {
        VALUE_SHAPES
    } else {
        SHAPES
    }
}

#[test]
fn dequantization_matches_the_f64_reference_exactly_rounded() {
    let mut rng = Rng::new(1);
    for ty in ALL {
        for s in [Scales::Normal, Scales::Subnormal, Scales::Large] {
            let blocks = 9;
            let data = craft(&mut rng, ty, blocks, s);
            let cols = values(ty, blocks);
            let m = MatRef::blocks(ty, &data, 1, cols).unwrap();
            let mut out = vec![f32::NAN; cols];
            m.row_f32(0, &mut out).unwrap();
            let want = reference::dequantize_blocks(ty, &data);
            for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
                assert_eq!(g, w as f32, "{} {s:?} value {i}: {g:e} vs {w:e}", ty.name());
                assert_eq!(m.get(0, i), Some(g));
            }
        }
    }
}

#[test]
fn every_type_and_path_matches_its_f64_definition_in_both_arithmetics() {
    let mut rng = Rng::new(2);
    for ty in ALL {
        for &(rows, nb) in shapes(ty) {
            let cols = values(ty, nb);
            for s in [Scales::Normal, Scales::Subnormal, Scales::Large] {
                let data = craft(&mut rng, ty, rows * nb, s);
                let w = BlockMat::new(ty, &data, rows, cols).unwrap();
                let m = MatRef::Blocks(w);
                let mut x: Vec<f32> = (0..cols).map(|_| rng.f32() * 4.0).collect();
                // A zero activation block, a block with one large value, tiny values.
                if cols >= 64 {
                    x[..32].fill(0.0);
                    x[40] = 3e4;
                }
                if cols >= 256 {
                    for v in &mut x[200..230] {
                        *v *= 1e-20;
                    }
                }
                for exact in [false, true] {
                    let mut first: Option<Vec<f32>> = None;
                    for k in kernels() {
                        let k = k.with_exact_blocks(exact);
                        let mut y = vec![f32::NAN; rows];
                        k.matvec(&m, &x, &mut y).unwrap();
                        let what = format!("{} exact={exact} {s:?}", k.simd_path().name());
                        check_rows(&what, &w, &x, &y, exact);
                        match &first {
                            None => first = Some(y),
                            Some(f) => assert!(same_bits(f, &y), "{what}: differs from scalar"),
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_rows_of_real_values_are_close_to_the_f32_product() {
    // Rows quantized from random values; the default arithmetic's error against the exact one
    // is the activation rounding: at most half a step per value, `Σ |w| · d_x / 2`.
    let mut rng = Rng::new(3);
    for ty in ALL {
        let (rows, cols) = (5, 512);
        let src: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 0.1).collect();
        let data: Vec<u8> = src
            .chunks_exact(cols)
            .flat_map(|r| quantize(ty, r))
            .collect();
        let w = BlockMat::new(ty, &data, rows, cols).unwrap();
        // The blocks hold the values they were made from, to the type's precision.
        let deq = reference::dequantize_block_row(&w, 1);
        for (a, b) in deq.iter().zip(&src[cols..2 * cols]) {
            assert!(
                (a - f64::from(*b)).abs() <= 0.1 / 6.0,
                "{}: {a} vs {b}",
                ty.name()
            );
        }
        let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        let exact = reference::matvec_blocks_exact(&w, &x);
        let xq = reference::block_activations(ty, &x);
        let mut y = vec![0.0f32; rows];
        Kernels::auto()
            .matvec(&MatRef::Blocks(w), &x, &mut y)
            .unwrap();
        for r in 0..rows {
            let row = reference::dequantize_block_row(&w, r);
            let bound: f64 = row
                .iter()
                .zip(x.iter().zip(&xq))
                .map(|(w, (&x, &q))| (w * (f64::from(x) - q)).abs())
                .sum::<f64>()
                + 1e-5
                    * row
                        .iter()
                        .zip(&x)
                        .map(|(w, &x)| (w * f64::from(x)).abs())
                        .sum::<f64>();
            assert!(
                (f64::from(y[r]) - exact[r]).abs() <= bound,
                "{} row {r}: {} vs {}",
                ty.name(),
                y[r],
                exact[r]
            );
        }
    }
}

#[test]
fn batches_are_one_matvec_per_input_bit_for_bit_and_matmul_follows_the_arithmetic() {
    let mut rng = Rng::new(4);
    for ty in ALL {
        let (rows, nb) = (19, 3);
        let cols = values(ty, nb);
        let data = craft(&mut rng, ty, rows * nb, Scales::Normal);
        let w = BlockMat::new(ty, &data, rows, cols).unwrap();
        let m = MatRef::Blocks(w);
        for batch in 1..=13 {
            let xs: Vec<f32> = (0..batch * cols).map(|_| rng.f32()).collect();
            for k in kernels() {
                for exact in [false, true] {
                    let k = k.with_exact_blocks(exact);
                    let mut single = vec![0.0f32; batch * rows];
                    for (x, y) in xs.chunks_exact(cols).zip(single.chunks_exact_mut(rows)) {
                        k.matvec(&m, x, y).unwrap();
                    }
                    let mut yb = vec![f32::NAN; batch * rows];
                    k.matvec_batch(&m, &xs, &mut yb, batch).unwrap();
                    let what = format!(
                        "{} {} exact={exact} b{batch}",
                        ty.name(),
                        k.simd_path().name()
                    );
                    assert!(same_bits(&single, &yb), "{what}: matvec_batch");
                    let mut ym = vec![f32::NAN; batch * rows];
                    k.matmul(&m, &xs, &mut ym, batch).unwrap();
                    if !exact && ty.is_quantized() || batch < 5 {
                        assert!(same_bits(&single, &ym), "{what}: matmul");
                    } else {
                        // The f32 GEMM on the dequantized matrix, bit for bit.
                        let mut deq = vec![0.0f32; rows * cols];
                        for (r, out) in deq.chunks_exact_mut(cols).enumerate() {
                            m.row_f32(r, out).unwrap();
                        }
                        let f = MatRef::f32(&deq, rows, cols).unwrap();
                        let mut yf = vec![0.0f32; batch * rows];
                        k.matmul(&f, &xs, &mut yf, batch).unwrap();
                        assert!(same_bits(&yf, &ym), "{what}: matmul vs f32 GEMM");
                        for (x, y) in xs.chunks_exact(cols).zip(ym.chunks_exact(rows)) {
                            let want = reference::matvec_blocks_exact(&w, x);
                            let xs64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                            let mag = magnitude(&w, &xs64);
                            for r in 0..rows {
                                let err = (f64::from(y[r]) - want[r]).abs();
                                assert!(err <= 1e-5 * mag[r] + 1e-30, "{what}: row {r}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_threads_and_matvec_many_is_separate_matvecs() {
    let mut rng = Rng::new(5);
    // Large enough to be cut into chunks at 2 and 3 threads; row counts off the split.
    for ty in ALL {
        let cols = if ty.block_values() == 256 { 2048 } else { 1056 };
        let nb = cols / ty.block_values();
        let shapes = [301usize, 77, 45];
        let mats: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&r| craft(&mut rng, ty, r * nb, Scales::Normal))
            .collect();
        // A mixed list too: the second matrix of another type (as in Q4_K_M files).
        let other = if ty == BlockType::Q6K {
            BlockType::Q4K
        } else {
            BlockType::Q6K
        };
        let ocols_ok = cols.is_multiple_of(other.block_values());
        let odata = craft(
            &mut rng,
            other,
            77 * (cols / other.block_values()),
            Scales::Normal,
        );
        let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        for k in kernels() {
            for exact in [false, true] {
                let k = k.with_exact_blocks(exact);
                let mut ms: Vec<MatRef<'_>> = shapes
                    .iter()
                    .zip(&mats)
                    .map(|(&r, d)| MatRef::blocks(ty, d, r, cols).unwrap())
                    .collect();
                if ocols_ok {
                    ms[1] = MatRef::blocks(other, &odata, 77, cols).unwrap();
                }
                let mut want: Vec<Vec<f32>> = Vec::new();
                for (t, threads) in [1usize, 2, 3].into_iter().enumerate() {
                    let ys: Vec<Vec<f32>> = with_threads(threads, || {
                        ms.iter()
                            .map(|m| {
                                let mut y = vec![f32::NAN; m.rows()];
                                k.matvec(m, &x, &mut y).unwrap();
                                y
                            })
                            .collect()
                    });
                    let many: Vec<Vec<f32>> = with_threads(threads, || {
                        let mut outs: Vec<Vec<f32>> =
                            ms.iter().map(|m| vec![f32::NAN; m.rows()]).collect();
                        let mut refs: Vec<&mut [f32]> =
                            outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                        k.matvec_many(&ms, &x, &mut refs).unwrap();
                        outs
                    });
                    let what = format!(
                        "{} {} exact={exact} t{threads}",
                        ty.name(),
                        k.simd_path().name()
                    );
                    for (a, b) in ys.iter().zip(&many) {
                        assert!(same_bits(a, b), "{what}: matvec_many");
                    }
                    if t == 0 {
                        for (m, y) in ms.iter().zip(&ys) {
                            let MatRef::Blocks(w) = m else { unreachable!() };
                            check_rows(&what, w, &x, y, exact);
                        }
                        want = ys;
                    } else {
                        for (a, b) in want.iter().zip(&ys) {
                            assert!(same_bits(a, b), "{what}: thread count changed results");
                        }
                    }
                    // A prompt's batch at this thread count: per-token matvecs, bit for bit.
                    let batch = 7;
                    let xs: Vec<f32> = (0..batch * cols)
                        .map(|i| x[i % cols] * (1.0 + (i / cols) as f32))
                        .collect();
                    let m = &ms[0];
                    let mut ym = vec![f32::NAN; batch * m.rows()];
                    with_threads(threads, || k.matmul(m, &xs, &mut ym, batch)).unwrap();
                    if !exact && ty.is_quantized() {
                        for (b, xb) in xs.chunks_exact(cols).enumerate() {
                            let mut y = vec![0.0f32; m.rows()];
                            k.matvec(m, xb, &mut y).unwrap();
                            assert!(
                                same_bits(&y, &ym[b * m.rows()..(b + 1) * m.rows()]),
                                "{what}: matmul token {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_activations_and_all_zero_inputs() {
    let mut rng = Rng::new(6);
    for ty in ALL {
        let (rows, nb) = (6, 2);
        let cols = values(ty, nb.max(if ty.block_values() == 1 { 64 } else { 1 }));
        let blocks = rows * cols / ty.block_values();
        let data = craft(&mut rng, ty, blocks, Scales::Normal);
        let w = BlockMat::new(ty, &data, rows, cols).unwrap();
        let m = MatRef::Blocks(w);
        for (name, x) in [
            ("zeros", vec![0.0f32; cols]),
            (
                "huge",
                (0..cols).map(|_| rng.f32() * 1e6).collect::<Vec<_>>(),
            ),
            ("tiny", (0..cols).map(|_| rng.f32() * 1e-6).collect()),
            ("subnormal", (0..cols).map(|_| rng.f32() * 1e-39).collect()),
            (
                "max codes",
                (0..cols)
                    .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                    .collect(),
            ),
        ] {
            for k in kernels() {
                for exact in [false, true] {
                    let mut y = vec![f32::NAN; rows];
                    k.with_exact_blocks(exact).matvec(&m, &x, &mut y).unwrap();
                    check_rows(
                        &format!("{name} {}", k.simd_path().name()),
                        &w,
                        &x,
                        &y,
                        exact,
                    );
                    if name == "zeros" {
                        assert!(y.iter().all(|v| v.to_bits() == 0), "{name}: +0 expected");
                    }
                }
            }
        }
        // A NaN activation makes its block's products NaN in every arithmetic.
        let mut x = vec![1.0f32; cols];
        x[0] = f32::NAN;
        for k in kernels() {
            for exact in [false, true] {
                let mut y = vec![0.0f32; rows];
                k.with_exact_blocks(exact).matvec(&m, &x, &mut y).unwrap();
                assert!(y.iter().all(|v| v.is_nan()), "{} NaN", ty.name());
            }
        }
    }
}

#[test]
fn largest_codes_and_activations_do_not_overflow_the_integer_sums() {
    // Every code at its extreme with the activations at ±127 of the same sign: the largest
    // integer sums (Q6_K's reach 2^27) and, for 16-bit pair sums, the largest pairs.
    for ty in ALL.into_iter().filter(|t| t.is_quantized()) {
        for fill in [0x00u8, 0xff, 0x80, 0x7f] {
            let (rows, nb) = (3, 4);
            let mut data = vec![fill; rows * nb * ty.block_bytes()];
            for b in data.chunks_exact_mut(ty.block_bytes()) {
                match ty {
                    BlockType::Q6K => put_half(b, 208, 0x3c00),
                    BlockType::Q4K | BlockType::Q5K => {
                        put_half(b, 0, 0x3c00);
                        put_half(b, 2, 0x3c00);
                    }
                    BlockType::Q4_1 | BlockType::Q5_1 => {
                        put_half(b, 0, 0x3c00);
                        put_half(b, 2, 0xbc00);
                    }
                    _ => put_half(b, 0, 0x3c00),
                }
            }
            let cols = values(ty, nb);
            let w = BlockMat::new(ty, &data, rows, cols).unwrap();
            let m = MatRef::Blocks(w);
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; cols];
                for k in kernels() {
                    let mut y = vec![f32::NAN; rows];
                    k.matvec(&m, &x, &mut y).unwrap();
                    check_rows(
                        &format!("fill {fill:#x} {}", k.simd_path().name()),
                        &w,
                        &x,
                        &y,
                        false,
                    );
                }
            }
        }
    }
}

#[test]
fn adjacent_rope_is_rotate_half_on_permuted_dimensions() {
    let (hd, heads, theta) = (16usize, 3usize, 10000.0);
    let table = RopeTable::new(hd, theta, 64).unwrap();
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..hd * heads).map(|_| rng.f32()).collect();
    // convert_hf_to_gguf.py's permutation: dimension j -> 2j, j + hd/2 -> 2j + 1.
    let permute = |v: &[f32]| -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        for (h, head) in v.chunks_exact(hd).enumerate() {
            for j in 0..hd / 2 {
                out[h * hd + 2 * j] = head[j];
                out[h * hd + 2 * j + 1] = head[j + hd / 2];
            }
        }
        out
    };
    for pos in [0usize, 1, 17, 63] {
        let mut half = x.clone();
        table.apply(&mut half, pos).unwrap();
        let mut adj = permute(&x);
        table.apply_adjacent(&mut adj, pos).unwrap();
        assert!(same_bits(&adj, &permute(&half)), "pos {pos}");
    }
    let mut batch = [permute(&x), permute(&x)].concat();
    table
        .apply_batch_adjacent(&mut batch, hd * heads, 5)
        .unwrap();
    let mut one = permute(&x);
    table.apply_adjacent(&mut one, 6).unwrap();
    assert!(same_bits(&batch[hd * heads..], &one));
    assert!(table.apply_adjacent(&mut one, 64).is_err());
    assert!(table.apply_adjacent(&mut one[..5], 0).is_err());
}

#[test]
fn shapes_are_checked() {
    let data = vec![0u8; 144 * 2];
    assert!(MatRef::blocks(BlockType::Q4K, &data, 2, 256).is_ok());
    assert!(MatRef::blocks(BlockType::Q4K, &data, 1, 300).is_err());
    let m = MatRef::blocks(BlockType::Q4K, &data, 2, 256).unwrap();
    let mut y = [0.0f32; 2];
    assert!(Kernels::auto().matvec(&m, &[0.0; 255], &mut y).is_err());
    assert!(m.row_f32(2, &mut [0.0; 256]).is_err());
    assert!(m.row_f32(0, &mut [0.0; 255]).is_err());
    assert_eq!(m.weight_bytes(), 288);
    assert_eq!(m.rows_range(1..2).unwrap().rows(), 1);
}

#[test]
fn rows_do_not_depend_on_the_batch_from_where_the_kernels_promise() {
    let mut rng = Rng::new(6);
    for ty in ALL {
        let (rows, nb) = (21, 2);
        let cols = values(ty, nb);
        let data = craft(&mut rng, ty, rows * nb, Scales::Normal);
        let m = MatRef::blocks(ty, &data, rows, cols).unwrap();
        let total = 19;
        let xs: Vec<f32> = (0..total * cols).map(|_| rng.f32()).collect();
        for k in kernels() {
            for exact in [false, true] {
                let k = k.with_exact_blocks(exact);
                let what = format!("{} {} exact={exact}", ty.name(), k.simd_path().name());
                common::assert_rows_batch_invariant(&what, &k, &m, &xs, total);
            }
        }
    }
}

#[test]
fn matmul_many_is_separate_matmuls_bit_for_bit() {
    // q/k/v-like groups: same type (one quantization shared), mixed types, an f32 matrix among
    // them; batches below and above the integer GEMM's threshold, both arithmetics.
    let mut rng = Rng::new(7);
    let nb = 2;
    for types in [
        [BlockType::Q8_0, BlockType::Q8_0, BlockType::Q8_0],
        [BlockType::Q4K, BlockType::Q4K, BlockType::Q6K],
        [BlockType::Q4_0, BlockType::F16, BlockType::Q4_0],
    ] {
        let cols = values(types[0], nb);
        assert!(types
            .iter()
            .all(|&ty| values(ty, nb) == cols || ty.block_values() == 1));
        let rows = [19, 7, 33];
        let data: Vec<Vec<u8>> = types
            .iter()
            .zip(rows)
            .map(|(&ty, r)| craft(&mut rng, ty, r * cols / ty.block_values(), Scales::Normal))
            .collect();
        let mut ws: Vec<MatRef<'_>> = types
            .iter()
            .zip(rows)
            .zip(&data)
            .map(|((&ty, r), d)| MatRef::blocks(ty, d, r, cols).unwrap())
            .collect();
        let f32_rows: Vec<f32> = (0..5 * cols).map(|_| rng.f32()).collect();
        ws.push(MatRef::f32(&f32_rows, 5, cols).unwrap());
        for batch in [1, 5, 8, 13] {
            let xs: Vec<f32> = (0..batch * cols).map(|_| rng.f32()).collect();
            for k in kernels() {
                for exact in [false, true] {
                    let k = k.with_exact_blocks(exact);
                    let mut outs: Vec<Vec<f32>> = ws
                        .iter()
                        .map(|w| vec![f32::NAN; batch * w.rows()])
                        .collect();
                    let mut views: Vec<&mut [f32]> =
                        outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                    k.matmul_many(&ws, &xs, &mut views, batch).unwrap();
                    for (i, (w, got)) in ws.iter().zip(&outs).enumerate() {
                        let mut want = vec![f32::NAN; batch * w.rows()];
                        k.matmul(w, &xs, &mut want, batch).unwrap();
                        assert!(
                            same_bits(got, &want),
                            "{types:?} matrix {i} batch {batch} {} exact={exact}",
                            k.simd_path().name()
                        );
                    }
                }
            }
        }
    }
}
