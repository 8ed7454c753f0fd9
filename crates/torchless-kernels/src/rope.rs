//! Rotary position embeddings, Hugging Face "rotate half" convention: dimension `i` pairs with
//! `i + head_dim/2`, `inv_freq[k] = theta^(-2k/head_dim)`; and the adjacent-pairs form that
//! GGUF files need (llama.cpp's "normal" RoPE: dimensions `2j` and `2j + 1` rotate together at
//! frequency `j`, because `convert_hf_to_gguf.py` permutes the rows of `attn_q` / `attn_k` so that
//! pair `(j, j + head_dim/2)` lands there). Both use the same tables and the same arithmetic per
//! pair, so the adjacent form on permuted weights gives the rotate-half values, permuted.
//!
//! The tables reproduce HF's float32 computation step by step (inverse frequencies in f32, angle
//! `pos * inv_freq` rounded to f32, then cos/sin of that f32 angle), and the rotation uses the same
//! two products and one sum per output as `q * cos + rotate_half(q) * sin` (no fused multiply-add),
//! so results match the reference bit for bit up to the last-ulp accuracy of torch's cos/sin.

use crate::error::{check_len, KernelError};

/// HF's `inv_freq` for `head_dim` (even) and base `theta`, in f32.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = f64::from(theta as f32);
    (0..head_dim / 2)
        .map(|k| {
            let e = (2 * k) as f32 / head_dim as f32;
            1.0f32 / (base.powf(f64::from(e)) as f32)
        })
        .collect()
}

/// Fills `cos`/`sin` (each `inv_freq.len()` long) for position `pos`.
pub fn rope_cos_sin(
    inv_freq: &[f32],
    pos: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) -> Result<(), KernelError> {
    check_len("rope cos", inv_freq.len(), cos.len())?;
    check_len("rope sin", inv_freq.len(), sin.len())?;
    fill_cos_sin(inv_freq, pos, cos, sin);
    Ok(())
}

/// [`rope_cos_sin`] on slices whose lengths the caller has made equal.
fn fill_cos_sin(inv_freq: &[f32], pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    debug_assert!(cos.len() == inv_freq.len() && sin.len() == inv_freq.len());
    let p = pos as f32;
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let angle = f64::from(p * f);
        *c = angle.cos() as f32;
        *s = angle.sin() as f32;
    }
}

/// Rotates every head of `x` (`x.len()` a multiple of `2 * cos.len()`) in place with one
/// position's `cos`/`sin` (`head_dim / 2` values each).
pub fn rope_apply(x: &mut [f32], cos: &[f32], sin: &[f32]) -> Result<(), KernelError> {
    let half = cos.len();
    check_len("rope sin", half, sin.len())?;
    if half == 0 || !x.len().is_multiple_of(2 * half) {
        return Err(KernelError::Shape(format!(
            "{} values are not whole heads of {}",
            x.len(),
            2 * half
        )));
    }
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for (((x1, x2), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (v1, v2) = (*x1, *x2);
            *x1 = v1 * c - v2 * s;
            *x2 = v2 * c + v1 * s;
        }
    }
    Ok(())
}

/// Rotates every head of `x` in place, adjacent pairs: `(x[2j], x[2j + 1])` by the angle of
/// frequency `j` (`cos`/`sin`: `head_dim / 2` values each, one position's). Per pair the same two
/// products and one sum per output as [`rope_apply`].
pub fn rope_apply_adjacent(x: &mut [f32], cos: &[f32], sin: &[f32]) -> Result<(), KernelError> {
    let half = cos.len();
    check_len("rope sin", half, sin.len())?;
    if half == 0 || !x.len().is_multiple_of(2 * half) {
        return Err(KernelError::Shape(format!(
            "{} values are not whole heads of {}",
            x.len(),
            2 * half
        )));
    }
    for head in x.chunks_exact_mut(2 * half) {
        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (v1, v2) = (pair[0], pair[1]);
            pair[0] = v1 * c - v2 * s;
            pair[1] = v2 * c + v1 * s;
        }
    }
    Ok(())
}

/// Precomputed cos/sin for positions `0..max_positions`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    max_positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for `head_dim` (even, > 0), base `theta`, positions `0..max_positions`
    /// (`head_dim * max_positions` floats in all).
    pub fn new(head_dim: usize, theta: f64, max_positions: usize) -> Result<Self, KernelError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(KernelError::Shape(format!(
                "RoPE head_dim {head_dim} must be even and > 0"
            )));
        }
        let half = head_dim / 2;
        let n = crate::error::checked_mul("rope table", half, max_positions)?;
        let inv = rope_inv_freq(head_dim, theta);
        let mut cos = vec![0.0f32; n];
        let mut sin = vec![0.0f32; n];
        let fill = |first: usize, c: &mut [f32], s: &mut [f32]| {
            for (p, (c, s)) in c
                .chunks_exact_mut(half)
                .zip(s.chunks_exact_mut(half))
                .enumerate()
            {
                fill_cos_sin(&inv, first + p, c, s);
            }
        };
        #[cfg(feature = "parallel")]
        {
            // A 32k-position table is tens of milliseconds of cos/sin at every model load:
            // spread over the threads in chunks of positions.
            use rayon::prelude::*;
            const POSITIONS_PER_TASK: usize = 2048;
            cos.par_chunks_mut(half * POSITIONS_PER_TASK)
                .zip(sin.par_chunks_mut(half * POSITIONS_PER_TASK))
                .enumerate()
                .for_each(|(i, (c, s))| fill(i * POSITIONS_PER_TASK, c, s));
        }
        #[cfg(not(feature = "parallel"))]
        fill(0, &mut cos, &mut sin);
        Ok(Self {
            head_dim,
            max_positions,
            cos,
            sin,
        })
    }

    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The `(cos, sin)` rows of `pos` (`head_dim / 2` values each).
    pub fn cos_sin(&self, pos: usize) -> Option<(&[f32], &[f32])> {
        let half = self.head_dim / 2;
        (pos < self.max_positions).then(|| {
            (
                &self.cos[pos * half..(pos + 1) * half],
                &self.sin[pos * half..(pos + 1) * half],
            )
        })
    }

    /// The tables of `pos`, or an error naming it.
    fn row(&self, pos: usize) -> Result<(&[f32], &[f32]), KernelError> {
        self.cos_sin(pos).ok_or_else(|| {
            KernelError::Shape(format!(
                "position {pos} beyond RoPE table of {}",
                self.max_positions
            ))
        })
    }

    /// Rotates every head in `x` (`n_heads * head_dim` values) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) -> Result<(), KernelError> {
        let (c, s) = self.row(pos)?;
        rope_apply(x, c, s)
    }

    /// [`RopeTable::apply`] with adjacent pairs `(2j, 2j + 1)` (GGUF's permuted q/k rows; see
    /// [`rope_apply_adjacent`]).
    pub fn apply_adjacent(&self, x: &mut [f32], pos: usize) -> Result<(), KernelError> {
        let (c, s) = self.row(pos)?;
        rope_apply_adjacent(x, c, s)
    }

    /// Rotates `n_tokens` consecutive rows of `row_len` values (each a whole number of heads),
    /// token `t` at position `start_pos + t` — the prefill form.
    pub fn apply_batch(
        &self,
        xs: &mut [f32],
        row_len: usize,
        start_pos: usize,
    ) -> Result<(), KernelError> {
        if row_len == 0 || !xs.len().is_multiple_of(row_len) {
            return Err(KernelError::Shape(format!(
                "{} values are not whole rows of {row_len}",
                xs.len()
            )));
        }
        for (t, row) in xs.chunks_exact_mut(row_len).enumerate() {
            self.apply(row, start_pos + t)?;
        }
        Ok(())
    }

    /// [`RopeTable::apply_batch`] with adjacent pairs (see [`RopeTable::apply_adjacent`]).
    pub fn apply_batch_adjacent(
        &self,
        xs: &mut [f32],
        row_len: usize,
        start_pos: usize,
    ) -> Result<(), KernelError> {
        if row_len == 0 || !xs.len().is_multiple_of(row_len) {
            return Err(KernelError::Shape(format!(
                "{} values are not whole rows of {row_len}",
                xs.len()
            )));
        }
        for (t, row) in xs.chunks_exact_mut(row_len).enumerate() {
            self.apply_adjacent(row, start_pos + t)?;
        }
        Ok(())
    }
}
