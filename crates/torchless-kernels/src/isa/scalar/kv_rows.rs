//! Products with f16 and Q8_0 KV cache rows in plain Rust: the definition the SIMD paths follow
//! (see `KvRows`).

use super::Scalar;
use crate::isa::traits::{f16_row_values, q8_0_row_values, KvRows};
pub(crate) use crate::kv_type::{f16_value, q8_0_value};

/// `Σ q[i] · value(i)` over `dim` values with 8 lane partial sums (value `i` into lane `i % 8`),
/// reduced as the scalar `dot` is.
#[inline]
fn dot_values(q: &[f32], dim: usize, value: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let whole = dim / 8 * 8;
    for i in 0..whole {
        acc[i % 8] += q[i] * value(i);
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (i, &qi) in q.iter().enumerate().take(dim).skip(whole) {
        s += qi * value(i);
    }
    s
}

fn dots(q: &[f32], dim: usize, out: &mut [f32], value: impl Fn(usize) -> f32 + Copy) {
    for (o, qh) in out.iter_mut().zip(q.chunks_exact(dim.max(1))) {
        *o = dot_values(qh, dim, value);
    }
}

fn weighted(rows: &[&[u8]], weights: &[f32], out: &mut [f32], value: fn(&[u8], usize) -> f32) {
    for (row, &w) in rows.iter().zip(weights) {
        for (i, o) in out.iter_mut().enumerate() {
            *o += w * value(row, i);
        }
    }
}

impl KvRows for Scalar {
    fn dots_f16(self, q: &[f32], k: &[u8], out: &mut [f32]) {
        dots(q, f16_row_values(k.len()), out, |i| f16_value(k, i));
    }

    fn dots_q8_0(self, q: &[f32], k: &[u8], out: &mut [f32]) {
        dots(q, q8_0_row_values(k.len()), out, |i| q8_0_value(k, i));
    }

    fn weighted_rows_f16(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
        weighted(rows, weights, out, f16_value);
    }

    fn weighted_rows_q8_0(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
        weighted(rows, weights, out, q8_0_value);
    }
}
