//! Naive, obviously-correct implementations that the fast kernels are tested against (and that
//! other crates may use in their own tests). Weights are dequantized exactly like the reference
//! model (`q / inv_scale` in f32); sums are accumulated in f64. Slow by design.
//!
//! ggml blocks ([`dequantize_blocks`], [`matvec_blocks`], [`matvec_blocks_exact`]) are written
//! here a second time, in f64, straight from ggml's `dequantize_row_*` loops and llama.cpp's
//! activation quantization, independently of the kernels' code.

use crate::blocks::{BlockMat, BlockType};
use crate::mat::MatRef;

/// `y = W x` with f64 accumulation. Panics on shape mismatch (test helper).
pub fn matvec(w: &MatRef<'_>, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.cols(), x.len(), "reference::matvec shapes");
    (0..w.rows())
        .map(|r| {
            (0..w.cols())
                .map(|c| f64::from(weight(w, r, c)) * f64::from(x[c]))
                .sum::<f64>() as f32
        })
        .collect()
}

/// `Σ_c |W[r][c] x[c]|` per row: the scale a rounding error of the dot product is relative to.
pub fn matvec_abs(w: &MatRef<'_>, x: &[f32]) -> Vec<f64> {
    assert_eq!(w.cols(), x.len(), "reference::matvec_abs shapes");
    (0..w.rows())
        .map(|r| {
            (0..w.cols())
                .map(|c| (f64::from(weight(w, r, c)) * f64::from(x[c])).abs())
                .sum::<f64>()
        })
        .collect()
}

/// `Y = X Wᵀ` (`xs`: `batch x cols`), one reference matvec per token.
pub fn matmul(w: &MatRef<'_>, xs: &[f32], batch: usize) -> Vec<f32> {
    assert_eq!(xs.len(), batch * w.cols(), "reference::matmul shapes");
    xs.chunks_exact(w.cols().max(1))
        .take(batch)
        .flat_map(|x| matvec(w, x))
        .collect()
}

/// `Y = X Wᵀ` as [`crate::Kernels::with_int8_activations`] defines it, in f64: each token's
/// 64-group `x` becomes `round_ties_even(x · 63 / max|x|) · max|x| / 63`, then the product with
/// the dequantized weights is summed exactly. `w` must have whole groups per row.
pub fn matmul_int8_activations(w: &crate::Int8Mat<'_>, xs: &[f32], batch: usize) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(
        w.is_row_aligned(),
        "reference::matmul_int8_activations layout"
    );
    assert_eq!(
        xs.len(),
        batch * cols,
        "reference::matmul_int8_activations shapes"
    );
    let mut out = Vec::with_capacity(batch * rows);
    for x in xs.chunks_exact(cols.max(1)).take(batch) {
        let mut xq = vec![0.0f64; cols];
        for (g, xg) in x.chunks_exact(64).enumerate() {
            let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                continue;
            }
            for (c, &v) in xg.iter().enumerate() {
                let level = (v * (63.0 / amax)).round_ties_even().clamp(-63.0, 63.0);
                xq[g * 64 + c] = f64::from(level) * f64::from(amax / 63.0);
            }
        }
        let m = MatRef::Int8(*w);
        for r in 0..rows {
            let dot: f64 = (0..cols).map(|c| f64::from(weight(&m, r, c)) * xq[c]).sum();
            out.push(dot as f32);
        }
    }
    out
}

/// `y = W x` for int4 weights as [`crate::Kernels::matvec`] defines it, in f64: each 32-group of
/// `x` becomes `round_ties_even(x · (127 / max|x|)) · (max|x| / 127)` (the factors in f32), then
/// the product with the exactly dequantized weights is summed in f64.
pub fn matvec_int4(w: &crate::Int4Mat<'_>, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.cols(), x.len(), "reference::matvec_int4 shapes");
    let xq = int4_activations(x);
    let m = MatRef::Int4(*w);
    (0..w.rows())
        .map(|r| {
            (0..w.cols())
                .map(|c| f64::from(weight(&m, r, c)) * xq[c])
                .sum::<f64>() as f32
        })
        .collect()
}

/// The activations the int4 kernels multiply with (see [`matvec_int4`]).
pub fn int4_activations(x: &[f32]) -> Vec<f64> {
    let mut xq = vec![0.0f64; x.len()];
    for (g, xg) in x.chunks(32).enumerate() {
        let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 {
            continue;
        }
        for (c, &v) in xg.iter().enumerate() {
            let level = (v * (127.0 / amax)).round_ties_even().clamp(-127.0, 127.0);
            xq[g * 32 + c] = f64::from(level) * f64::from(amax / 127.0);
        }
    }
    xq
}

fn weight(w: &MatRef<'_>, r: usize, c: usize) -> f32 {
    w.get(r, c).expect("in range")
}

/// HF RMSNorm (`weight * (x * rsqrt(mean(x²) + eps))`), the mean in f64.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64;
    let r = 1.0 / (ms + f64::from(eps)).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| (f64::from(w) * f64::from(v) * r) as f32)
        .collect()
}

/// Softmax in f64.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x
        .iter()
        .map(|&v| (f64::from(v) - f64::from(m)).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&v| (v / s) as f32).collect()
}

/// `silu(g) * u` in f64.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect()
}

/// HF `apply_rotary_pos_emb` for one position, written out from the Python source: f32
/// `inv_freq = 1 / theta^(arange(0, d, 2) / d)`, f32 angle `pos * inv_freq`, `emb = cat(freqs,
/// freqs)`, `x * cos(emb) + rotate_half(x) * sin(emb)` with `rotate_half(x) = cat(-x2, x1)`.
pub fn rope(x: &[f32], head_dim: usize, theta: f64, pos: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut emb = vec![0.0f32; head_dim];
    for i in 0..half {
        let inv = 1.0f32
            / (f64::from(theta as f32).powf(f64::from((2 * i) as f32 / head_dim as f32)) as f32);
        emb[i] = pos as f32 * inv;
        emb[i + half] = emb[i];
    }
    let mut out = Vec::with_capacity(x.len());
    for head in x.chunks_exact(head_dim) {
        for d in 0..head_dim {
            let rot = if d < half {
                -head[d + half]
            } else {
                head[d - half]
            };
            let (c, s) = (
                f64::from(emb[d]).cos() as f32,
                f64::from(emb[d]).sin() as f32,
            );
            out.push(head[d] * c + rot * s);
        }
    }
    out
}

/// One attention head in f64: `softmax(scale * q·kᵢ)` weighted sum of `vᵢ`.
pub fn attention(q: &[f32], keys: &[&[f32]], values: &[&[f32]], scale: f32) -> Vec<f32> {
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| {
            let d: f64 = q
                .iter()
                .zip(*k)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            d * f64::from(scale)
        })
        .collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let total: f64 = e.iter().sum();
    let mut out = vec![0.0f64; q.len()];
    for (p, v) in e.iter().zip(values) {
        for (o, &x) in out.iter_mut().zip(*v) {
            *o += p / total * f64::from(x);
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

// ---------------------------------------------------------------------------------------------
// ggml blocks.

/// An IEEE half (bits) as f64.
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let man = f64::from(bits & 0x3ff);
    sign * match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + man) * 2f64.powi(exp - 25),
    }
}

fn half_at(b: &[u8], at: usize) -> f64 {
    half(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `v` (finite, an f32's value) rounded to the nearest half's value, ties to even; beyond the
/// largest half, infinity.
fn round_to_half(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let a = v.abs();
    let exp = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let ulp = 2f64.powi(exp.max(-14) - 10);
    let r = (a / ulp).round_ties_even() * ulp;
    let r = if r > 65504.0 { f64::INFINITY } else { r };
    r.copysign(v)
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f64, f64) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f64::from(d), f64::from(m))
}

/// Dequantizes `data` (whole blocks of `ty`) to f64, as ggml's `dequantize_row_*` (the products
/// and sums exact in f64).
// ggml's loops, index for index.
#[allow(clippy::needless_range_loop)]
pub fn dequantize_blocks(ty: BlockType, data: &[u8]) -> Vec<f64> {
    let mut y = Vec::with_capacity(data.len() / ty.block_bytes() * ty.block_values());
    for b in data.chunks_exact(ty.block_bytes()) {
        match ty {
            BlockType::F16 => y.push(half_at(b, 0)),
            BlockType::BF16 => y.push(f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
            ))),
            BlockType::Q8_0 => {
                let d = half_at(b, 0);
                y.extend(b[2..34].iter().map(|&q| f64::from(q as i8) * d));
            }
            BlockType::Q4_0 | BlockType::Q4_1 => {
                let d = half_at(b, 0);
                let (m, qs) = if ty == BlockType::Q4_1 {
                    (Some(half_at(b, 2)), &b[4..20])
                } else {
                    (None, &b[2..18])
                };
                let mut v = [0.0f64; 32];
                for j in 0..16 {
                    let (x0, x1) = (f64::from(qs[j] & 0x0f), f64::from(qs[j] >> 4));
                    (v[j], v[j + 16]) = match m {
                        None => ((x0 - 8.0) * d, (x1 - 8.0) * d),
                        Some(m) => (x0 * d + m, x1 * d + m),
                    };
                }
                y.extend(v);
            }
            BlockType::Q5_0 | BlockType::Q5_1 => {
                let d = half_at(b, 0);
                let (m, at) = if ty == BlockType::Q5_1 {
                    (Some(half_at(b, 2)), 4)
                } else {
                    (None, 2)
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                let mut v = [0.0f64; 32];
                for j in 0..16 {
                    let xh_0 = ((qh >> j) << 4) & 0x10;
                    let xh_1 = (qh >> (j + 12)) & 0x10;
                    let x0 = f64::from((u32::from(qs[j]) & 0x0f) | xh_0);
                    let x1 = f64::from((u32::from(qs[j]) >> 4) | xh_1);
                    (v[j], v[j + 16]) = match m {
                        None => ((x0 - 16.0) * d, (x1 - 16.0) * d),
                        Some(m) => (x0 * d + m, x1 * d + m),
                    };
                }
                y.extend(v);
            }
            BlockType::Q4K | BlockType::Q5K => {
                let (d, min) = (half_at(b, 0), half_at(b, 2));
                let scales = &b[4..16];
                let (qh, mut ql) = if ty == BlockType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                let (mut u1, mut u2) = (1u8, 2u8);
                for is in (0..8).step_by(2) {
                    let (sc, m) = scale_min_k4(is, scales);
                    let (d1, m1) = (d * sc, min * m);
                    let (sc, m) = scale_min_k4(is + 1, scales);
                    let (d2, m2) = (d * sc, min * m);
                    let high = |l: usize, u: u8| {
                        if !qh.is_empty() && qh[l] & u != 0 {
                            16.0
                        } else {
                            0.0
                        }
                    };
                    for l in 0..32 {
                        y.push(d1 * (f64::from(ql[l] & 0xf) + high(l, u1)) - m1);
                    }
                    for l in 0..32 {
                        y.push(d2 * (f64::from(ql[l] >> 4) + high(l, u2)) - m2);
                    }
                    ql = &ql[32..];
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
            BlockType::Q6K => {
                let d = half_at(b, 208);
                let mut v = [0.0f64; 256];
                for n in 0..2 {
                    let ql = &b[64 * n..];
                    let qh = &b[128 + 32 * n..];
                    let sc = |i: usize| f64::from(b[192 + 8 * n + i] as i8);
                    let out = &mut v[128 * n..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = i32::from((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
                        let q2 = i32::from((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        out[l] = d * sc(is) * f64::from(q1);
                        out[l + 32] = d * sc(is + 2) * f64::from(q2);
                        out[l + 64] = d * sc(is + 4) * f64::from(q3);
                        out[l + 96] = d * sc(is + 6) * f64::from(q4);
                    }
                }
                y.extend(v);
            }
        }
    }
    y
}

/// Row `r` of a block matrix in f64 (see [`dequantize_blocks`]).
pub fn dequantize_block_row(w: &BlockMat<'_>, r: usize) -> Vec<f64> {
    let rb = w.row_bytes();
    dequantize_blocks(w.ty(), &w.data()[r * rb..(r + 1) * rb])
}

/// The activations the default arithmetic multiplies `ty` weights with, as f64 values `d · q`:
/// per 32 values llama.cpp's Q8_0 (`d` = `max|x| / 127` rounded to a half, `q =
/// round_ties_even(x · (127 / max|x|))`) for Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1; per 256 its Q8_K
/// (`max` the first value of largest magnitude, `iscale = −127 / max`, `q =
/// round_ties_even(iscale · x)`, `d = 1 / iscale`, in f32) for Q4_K / Q5_K / Q6_K; `x` itself for
/// F16 / BF16. A block with an infinity or NaN is NaN; a block whose largest magnitude is
/// below `127 / f32::MAX` is zero.
pub fn block_activations(ty: BlockType, x: &[f32]) -> Vec<f64> {
    let n = match ty {
        BlockType::F16 | BlockType::BF16 => return x.iter().map(|&v| f64::from(v)).collect(),
        BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => 256,
        _ => 32,
    };
    let mut out = Vec::with_capacity(x.len());
    for xb in x.chunks(n) {
        if xb.iter().any(|v| !v.is_finite()) {
            out.extend(xb.iter().map(|_| f64::NAN));
            continue;
        }
        if n == 32 {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = round_to_half(f64::from(amax / 127.0));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            if !id.is_finite() {
                out.extend(xb.iter().map(|_| 0.0));
                continue;
            }
            out.extend(xb.iter().map(|&v| {
                let q = (v * id).round_ties_even().clamp(-127.0, 127.0);
                f64::from(q) * d
            }));
        } else {
            let mut max = 0.0f32;
            for &v in xb {
                if v.abs() > max.abs() {
                    max = v;
                }
            }
            if max == 0.0 {
                out.extend(xb.iter().map(|_| 0.0));
                continue;
            }
            let iscale = -127.0 / max;
            if !iscale.is_finite() {
                out.extend(xb.iter().map(|_| 0.0));
                continue;
            }
            let d = f64::from(1.0 / iscale);
            out.extend(xb.iter().map(|&v| {
                let q = (iscale * v).round_ties_even().clamp(-127.0, 127.0);
                f64::from(q) * d
            }));
        }
    }
    out
}

/// `y = W x` for a block matrix in the exact arithmetic ([`crate::Kernels::with_exact_blocks`]):
/// the f64 dequantized weights times the f32 activations, summed in f64.
pub fn matvec_blocks_exact(w: &BlockMat<'_>, x: &[f32]) -> Vec<f64> {
    let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    block_products(w, &xs)
}

/// `y = W x` for a block matrix in the default arithmetic: the f64 dequantized weights times
/// [`block_activations`], summed in f64.
pub fn matvec_blocks(w: &BlockMat<'_>, x: &[f32]) -> Vec<f64> {
    block_products(w, &block_activations(w.ty(), x))
}

fn block_products(w: &BlockMat<'_>, x: &[f64]) -> Vec<f64> {
    assert_eq!(w.cols(), x.len(), "reference::matvec_blocks shapes");
    (0..w.rows())
        .map(|r| {
            dequantize_block_row(w, r)
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}
