//! Naive, obviously-correct implementations that the fast kernels are tested against (and that
//! other crates may use in their own tests). Weights are dequantized exactly like the reference
//! model (`q / inv_scale` in f32); sums are accumulated in f64. Slow by design.

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
