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

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_micro_kernel_and_packers() {
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 on this CPU: nothing to test
    };
    check(t);
    use crate::gemm::float::pack_b_generic;
    let (n, k) = (70usize, 1000usize);
    let mut s = 5u64;
    let w: Vec<f32> = (0..n * k).map(|_| rng(&mut s)).collect();
    let q: Vec<i8> = (0..n * k).map(|_| (rng(&mut s) * 127.0) as i8).collect();
    let mut inv: Vec<f32> = (0..(n * k).div_ceil(64))
        .map(|_| 1.0 + 1000.0 * rng(&mut s).abs())
        .collect();
    inv[9] = f32::INFINITY;
    // Row-aligned int8 (whole groups per row) for the int8 packer: 64 rows of 960.
    for mat in [
        MatRef::f32(&w, n, k).unwrap(),
        MatRef::int8(&q[..64 * 960], &inv[..64 * 15], 64, 960).unwrap(),
    ] {
        // The width-32 packers produce exactly what the generic packer does.
        for (n0, pc, kc) in [(0, 0, 256), (32, 256, 256), (0, 64, 128)] {
            let mut fast = vec![0.0; kc * 32];
            let mut slow = vec![0.0; kc * 32];
            assert!(t.pack_b(&mat, n0, 32, pc, kc, &mut fast));
            pack_b_generic(&mat, n0, 32, 32, pc, kc, &mut slow);
            assert!(fast
                .iter()
                .zip(&slow)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
    // Each output is one FMA chain per depth block in both tiles: the same bits as AVX2's
    // (partial row and column panels, several depth blocks, a ragged batch).
    for mat in [
        MatRef::f32(&w, n, k).unwrap(),
        MatRef::int8(&q, &inv, n, k).unwrap(),
    ] {
        for batch in [2, 13, 29] {
            let x: Vec<f32> = (0..batch * k).map(|_| rng(&mut s)).collect();
            let mut wide = vec![f32::NAN; batch * n];
            let mut narrow = vec![f32::NAN; batch * n];
            gemm(t, &mat, &x, &mut wide, batch);
            gemm(t.avx2(), &mat, &x, &mut narrow, batch);
            assert!(wide
                .iter()
                .zip(&narrow)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// ggml block rows of random codes with finite random scales (and every 5th block all zero).
fn block_data(ty: crate::blocks::BlockType, blocks: usize, s: &mut u64) -> Vec<u8> {
    use crate::blocks::BlockType;
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..blocks * bb)
        .map(|_| (rng(s).to_bits() >> 7) as u8)
        .collect();
    for (i, b) in data.chunks_exact_mut(bb).enumerate() {
        if i % 5 == 2 {
            b.fill(0);
            continue;
        }
        let mut half = |at: usize| {
            let h = crate::half::f32_to_f16(rng(s) * 0.05);
            b[at..at + 2].copy_from_slice(&h.to_le_bytes());
        };
        match ty {
            BlockType::Q6K => half(208),
            BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K => {
                half(0);
                half(2);
            }
            _ => half(0),
        }
    }
    data
}

/// Runs the block GEMM with one tile through the driver and compares with decode's definition
/// (`row_dot` on each token's quantized activations), bit for bit: several row panels (a partial
/// one), one depth panel and several whose blocks wrap the 8 lanes, slivers with padding tokens,
/// column tasks.
fn check_block_gemm<M: crate::isa::traits::BlockMicro>(m: M, what: &str) {
    use crate::block_input::{ActKind, BlockInput};
    use crate::blocks::{BlockMat, BlockType};
    use crate::gemm::blocks::{qgemm_blocks, supports};
    use crate::isa::scalar::blocks::row_dot;
    let mut s = 11u64;
    for ty in BlockType::ALL.into_iter().filter(|&t| supports(t)) {
        let bv = ty.block_values();
        for &(rows, blocks, batch) in &[
            (37usize, 5usize, 8usize),
            (16, 33 * 32 / bv, 13),
            (301, 2048 / bv, 20),
            // Deeper than one depth panel: lanes carried across panels.
            (40, 16896 / bv, 9),
        ] {
            let cols = blocks * bv;
            let data = block_data(ty, rows * blocks, &mut s);
            let w = BlockMat::new(ty, &data, rows, cols).unwrap();
            let mut x: Vec<f32> = (0..batch * cols).map(|_| rng(&mut s) * 3.0).collect();
            x[cols..cols + 40].fill(0.0);
            x[2 * cols + 7] = 2e4;
            let mut y = vec![f32::NAN; batch * rows];
            qgemm_blocks(m, &w, &x, &mut y, batch);
            let kind = ActKind::of(ty).unwrap();
            for t in 0..batch {
                let input = BlockInput::quantize(kind, &x[t * cols..(t + 1) * cols]);
                for r in 0..rows {
                    let want = row_dot(ty, w.row(r), &input);
                    let got = y[t * rows + r];
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{what} {} {rows}x{cols} b{batch} token {t} row {r}: {got} vs {want}",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn scalar_block_gemm_is_decode_bit_for_bit() {
    check_block_gemm(crate::isa::scalar::Scalar, "scalar");
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_block_gemm_is_decode_bit_for_bit() {
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 VNNI on this CPU: the path is never taken
    };
    check_block_gemm(t, "avx512");
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn amx_block_gemm_is_decode_bit_for_bit() {
    let Some(t) = crate::isa::x86::Avx512::detect().and_then(crate::isa::x86::Amx::detect) else {
        return; // no AMX-INT8 on this CPU (or not granted by the OS): the path is never taken
    };
    check_block_gemm(t, "amx");
}

/// Random KV rows of `dim` values encoded as `ty` (every 4th Q8_0 block all zero, some large
/// values), with their exact decoded values.
fn kv_rows(ty: crate::KvType, dim: usize, n: usize, s: &mut u64) -> (Vec<Vec<u8>>, Vec<Vec<f32>>) {
    let mut encoded = Vec::new();
    let mut decoded = Vec::new();
    for r in 0..n {
        let mut x: Vec<f32> = (0..dim).map(|_| rng(s) * 4.0).collect();
        if r % 3 == 1 {
            x[dim / 2] = 300.0;
        }
        if ty == crate::KvType::Q8_0 && r % 4 == 2 {
            x[..32].fill(0.0);
        }
        let mut bytes = vec![0u8; ty.bytes_of(dim) as usize];
        crate::encode_kv_row(ty, &x, &mut bytes).unwrap();
        let mut back = vec![0.0f32; dim];
        crate::decode_kv_row(ty, &bytes, &mut back).unwrap();
        encoded.push(bytes);
        decoded.push(back);
    }
    (encoded, decoded)
}

/// The f16 / Q8_0 KV row kernels of `k` against the scalar definition (to f32 rounding: other
/// lanes, fused multiply-adds) and, for the scalar path, against f64 sums of the decoded values.
fn check_kv_rows<K: crate::isa::traits::KvRows>(k: K, what: &str) {
    use crate::isa::scalar::Scalar;
    use crate::isa::traits::KvRows;
    use crate::KvType;
    let mut s = 5u64;
    for ty in [KvType::F16, KvType::Q8_0] {
        let dims: &[usize] = match ty {
            KvType::Q8_0 => &[32, 64, 96, 128, 160, 224],
            _ => &[1, 7, 8, 15, 16, 17, 33, 64, 100, 128, 136, 255],
        };
        for &dim in dims {
            // Dots: m query heads against one key.
            for m in [1usize, 2, 3, 4, 5, 8, 9] {
                let (keys, dec) = kv_rows(ty, dim, 1, &mut s);
                let q: Vec<f32> = (0..m * dim).map(|_| rng(&mut s)).collect();
                let (mut got, mut want) = (vec![f32::NAN; m], vec![f32::NAN; m]);
                match ty {
                    KvType::F16 => {
                        k.dots_f16(&q, &keys[0], &mut got);
                        Scalar.dots_f16(&q, &keys[0], &mut want);
                    }
                    _ => {
                        k.dots_q8_0(&q, &keys[0], &mut got);
                        Scalar.dots_q8_0(&q, &keys[0], &mut want);
                    }
                }
                for h in 0..m {
                    let qh = &q[h * dim..(h + 1) * dim];
                    let exact: f64 = qh
                        .iter()
                        .zip(&dec[0])
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    let mag: f64 = qh
                        .iter()
                        .zip(&dec[0])
                        .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                        .sum();
                    let tol = 1e-6 * mag + 1e-6;
                    assert!(
                        (f64::from(want[h]) - exact).abs() <= tol,
                        "scalar {} dot dim {dim} m {m} head {h}: {} vs {exact}",
                        ty.name(),
                        want[h]
                    );
                    assert!(
                        (f64::from(got[h]) - f64::from(want[h])).abs() <= 2.0 * tol,
                        "{what} {} dot dim {dim} m {m} head {h}: {} vs {}",
                        ty.name(),
                        got[h],
                        want[h]
                    );
                }
            }
            // Weighted sums of n rows into an output that already holds values.
            for n in [0usize, 1, 3, 37] {
                let (rows, dec) = kv_rows(ty, dim, n, &mut s);
                let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
                let w: Vec<f32> = (0..n).map(|_| rng(&mut s).abs()).collect();
                let start: Vec<f32> = (0..dim).map(|_| rng(&mut s)).collect();
                let (mut got, mut want) = (start.clone(), start.clone());
                match ty {
                    KvType::F16 => {
                        k.weighted_rows_f16(&refs, &w, &mut got);
                        Scalar.weighted_rows_f16(&refs, &w, &mut want);
                    }
                    _ => {
                        k.weighted_rows_q8_0(&refs, &w, &mut got);
                        Scalar.weighted_rows_q8_0(&refs, &w, &mut want);
                    }
                }
                for c in 0..dim {
                    let exact = f64::from(start[c])
                        + (0..n)
                            .map(|j| f64::from(w[j]) * f64::from(dec[j][c]))
                            .sum::<f64>();
                    let mag = f64::from(start[c]).abs()
                        + (0..n)
                            .map(|j| (f64::from(w[j]) * f64::from(dec[j][c])).abs())
                            .sum::<f64>();
                    let tol = 1e-6 * mag + 1e-7;
                    assert!(
                        (f64::from(want[c]) - exact).abs() <= tol,
                        "scalar {} weighted dim {dim} n {n} [{c}]: {} vs {exact}",
                        ty.name(),
                        want[c]
                    );
                    assert!(
                        (f64::from(got[c]) - f64::from(want[c])).abs() <= 2.0 * tol,
                        "{what} {} weighted dim {dim} n {n} [{c}]: {} vs {}",
                        ty.name(),
                        got[c],
                        want[c]
                    );
                }
            }
        }
    }
}

#[test]
fn scalar_kv_rows_match_f64_on_decoded_values() {
    check_kv_rows(crate::isa::scalar::Scalar, "scalar");
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx2_kv_rows_match_scalar() {
    let Some(t) = crate::isa::x86::Avx2::detect() else {
        return; // no AVX2 + F16C on this CPU: the path is never taken
    };
    check_kv_rows(t, "avx2");
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_kv_rows_match_scalar() {
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 VNNI on this CPU: the path is never taken
    };
    check_kv_rows(t, "avx512");
}

/// The x86 int4 rows kernels with a batch of inputs quantized for batches (the AVX-512 kernel's
/// transposed codes) against the scalar definition, bit for bit: every batch size 1..=9 (the
/// specialized 1-4 and their mixes), a short last block, an odd row count, a row offset.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn x86_int4_rows_of_a_batch_are_the_scalar_definition_bit_for_bit() {
    use crate::int4::Int4Input;
    use crate::isa::traits::Int4Matvec;
    use crate::mat::Int4Mat;
    let mut s = 19u64;
    let (rows, cols, r0) = (23usize, 1376usize, 4usize);
    let packed: Vec<u8> = (0..rows * cols / 2)
        .map(|_| (rng(&mut s).to_bits() >> 5) as u8)
        .collect();
    let scales: Vec<u16> = (0..rows * cols / 32)
        .map(|_| crate::half::f32_to_f16(rng(&mut s) * 0.1))
        .collect();
    let w = Int4Mat::new(&packed, &scales, rows, cols).unwrap();
    let out_rows = rows - r0 - 2;
    for batch in 1..=9 {
        let xs: Vec<f32> = (0..batch * cols).map(|_| rng(&mut s) * 4.0).collect();
        let inputs: Vec<Int4Input> = xs
            .chunks_exact(cols)
            .map(Int4Input::quantize_for_batch)
            .collect();
        let mut want = vec![0.0; out_rows * batch];
        crate::isa::scalar::Scalar.rows(&w, &inputs, r0, &mut want);
        let check = |what: &str, got: &[f32]| {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{what} batch {batch} row {} input {}: {g} vs {w}",
                    i / batch,
                    i % batch
                );
            }
        };
        if let Some(t) = crate::isa::x86::Avx2::detect() {
            let mut got = vec![f32::NAN; out_rows * batch];
            t.rows(&w, &inputs, r0, &mut got);
            check("avx2", &got);
        }
        if let Some(t) = crate::isa::x86::Avx512::detect() {
            let mut got = vec![f32::NAN; out_rows * batch];
            t.rows(&w, &inputs, r0, &mut got);
            check("avx512", &got);
        }
    }
}

/// Blocks of `N` values for the quantizer tests: random ones at six scales, then the edges every
/// quantizer must get right: ties (x.5 after scaling, with `tie_max` the largest), zeros, a lone
/// value among signed zeros, subnormals, an infinity, a NaN, the largest floats of both signs,
/// and magnitudes below 127 / f32::MAX.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn quantizer_blocks<const N: usize>(seed: u64, per_scale: usize, tie_max: f32) -> Vec<[f32; N]> {
    let mut s = seed;
    let mut blocks: Vec<[f32; N]> = Vec::new();
    for scale in [1e-30f32, 1e-3, 1.0, 7.5, 3e4, 1e30] {
        for _ in 0..per_scale {
            blocks.push(std::array::from_fn(|_| rng(&mut s) * scale));
        }
    }
    let mut tie: [f32; N] = std::array::from_fn(|i| (i % 32) as f32 - 15.5);
    tie[N - 1] = tie_max;
    blocks.push(tie);
    blocks.push([0.0; N]);
    blocks.push(std::array::from_fn(|i| if i == 7 { -3.0 } else { -0.0 }));
    blocks.push(std::array::from_fn(|i| f32::from_bits(i as u32 + 1)));
    blocks.push(std::array::from_fn(|i| {
        if i == 3 {
            f32::INFINITY
        } else {
            1.0
        }
    }));
    blocks.push(std::array::from_fn(
        |i| {
            if i == N - 2 {
                f32::NAN
            } else {
                2.0
            }
        },
    ));
    blocks.push(std::array::from_fn(|i| {
        if i % 2 == 0 {
            f32::MAX
        } else {
            -f32::MAX
        }
    }));
    blocks.push(std::array::from_fn(|i| 1e-37 * (i as f32 + 1.0)));
    blocks
}

/// Quantizes `blocks` with `t` as `kind` and checks every block's scale and codes bit for bit
/// against `definition` (which fills the codes and returns the scale).
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn check_quantizer<const N: usize>(
    t: crate::isa::x86::Avx512,
    kind: crate::block_input::ActKind,
    blocks: &[[f32; N]],
    definition: impl Fn(&[f32], &mut [i8]) -> f32,
) {
    use crate::isa::traits::BlockMicro;
    let x: Vec<f32> = blocks.concat();
    let (mut qs, mut d) = (vec![0i8; x.len()], vec![0.0f32; blocks.len()]);
    t.quantize(kind, &x, &mut qs, &mut d);
    for (b, block) in blocks.iter().enumerate() {
        let mut want = [0i8; N];
        let want_d = definition(block, &mut want);
        assert_eq!(d[b].to_bits(), want_d.to_bits(), "block {b} scale");
        assert_eq!(&qs[N * b..N * (b + 1)], &want, "block {b} codes");
    }
}

/// The AVX-512 Q8_K quantizer (the K-quants' prefill input) against the definition, bit for bit,
/// on [`quantizer_blocks`] and a block whose largest magnitude appears twice with both signs
/// (the first one's sign decides the codes' sign), in both orders.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_q8_k_quantizer_gives_the_definitions_bits() {
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 on this CPU: nothing to test
    };
    let mut blocks = quantizer_blocks::<256>(23, 12, -127.0);
    for (first, second) in [(5.0f32, -5.0f32), (-5.0, 5.0)] {
        let mut b: [f32; 256] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        b[40] = first;
        b[41 + 16 * 5] = second;
        blocks.push(b);
    }
    check_quantizer(
        t,
        crate::block_input::ActKind::Q8K,
        &blocks,
        crate::block_input::quantize_q8_k,
    );
}

/// The AVX-512 Q8_0 quantizer against the definition, bit for bit, on [`quantizer_blocks`] (the
/// test fails if the conversion truncates instead of rounding).
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_q8_0_quantizer_gives_the_definitions_bits() {
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 on this CPU: nothing to test
    };
    let blocks = quantizer_blocks::<32>(11, 40, 127.0);
    check_quantizer(
        t,
        crate::block_input::ActKind::Q8_0,
        &blocks,
        crate::block_input::quantize_q8_0,
    );
}

/// The AVX-512 f32 and int8 decode rows against the AVX2 ones, bit for bit (one 16-lane
/// accumulator holds the AVX2 kernel's two 8-lane ones), on row counts around the 4-row passes
/// and the two int8 streams and on column counts with 16-, 8- and 1-value tails; int8 both row
/// aligned and with groups straddling rows.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[test]
fn avx512_f32_and_int8_rows_are_the_avx2_rows_bit_for_bit() {
    use crate::isa::traits::Matvec;
    let Some(t) = crate::isa::x86::Avx512::detect() else {
        return; // no AVX-512 VNNI on this CPU: the path is never taken
    };
    let mut s = 11u64;
    for &(rows, cols) in &[
        (1usize, 1usize),
        (3, 7),
        (4, 16),
        (5, 24),
        (7, 64),
        (9, 200),
        (13, 256),
        (6, 1000),
        (11, 4160),
        (3, 96),
    ] {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng(&mut s)).collect();
        let q: Vec<i8> = (0..rows * cols)
            .map(|_| (rng(&mut s) * 127.0) as i8)
            .collect();
        let inv: Vec<f32> = (0..(rows * cols).div_ceil(64))
            .map(|_| 10.0 + rng(&mut s) * 5.0)
            .collect();
        let x: Vec<f32> = (0..cols).map(|_| rng(&mut s) * 3.0).collect();
        let f = crate::mat::F32Mat::new(&w, rows, cols).unwrap();
        let (mut a, mut b) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
        t.matvec_f32(&f, &x, &mut a);
        t.avx2().matvec_f32(&f, &x, &mut b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "f32 {rows}x{cols}");
        let m = crate::mat::Int8Mat::new(&q, &inv, rows, cols).unwrap();
        let (mut a, mut b) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
        t.matvec_i8(&m, &x, &mut a);
        t.avx2().matvec_i8(&m, &x, &mut b);
        assert_eq!(bits(&a), bits(&b), "int8 {rows}x{cols}");
    }
}
