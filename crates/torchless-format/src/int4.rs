//! int4 group quantization: 4-bit weights in groups of [`GROUP_SIZE`] with one f16 scale each.
//!
//! A tensor is flattened row-major and cut into groups of 32 consecutive values; rows are whole
//! groups (the last dimension is a multiple of 32), so a group never spans two rows. A group is
//! stored as 16 bytes of codes plus one IEEE half scale `d` in a separate array: byte `j` holds
//! the code of value `j` in its low nibble and of value `j + 16` in its high nibble, and a code
//! `u` in `0..=15` stands for `d · (u − 8)`. That is 4.5 bits per weight, the same values and
//! nibble order as llama.cpp's Q4_0 blocks, so a Q4_0 tensor converts by copying its bytes.
//!
//! Two quantizers: [`Int4Method::RoundToNearest`] (Q4_0's rule: the value of largest magnitude maps
//! to code 0, `d = extreme / −8`) and [`Int4Method::Search`] (the default), which tries scales
//! around that one and keeps the codes and least-squares scale of smallest squared error.

use crate::half::{f16_to_f32, f32_to_f16};

/// Values sharing one scale.
pub const GROUP_SIZE: usize = 32;

/// Bytes of codes per group.
pub const GROUP_BYTES: usize = GROUP_SIZE / 2;

/// How int4 codes and scales are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int4Method {
    /// llama.cpp Q4_0's rule: `d = m / −8` where `m` is the value of largest magnitude.
    RoundToNearest,
    /// Error-minimizing: for candidate scales `m / (−8 + δ)` and `m / (7 + δ)`, round, refit the
    /// scale by least squares to the codes, and keep the pair with the smallest squared error
    /// (after rounding the scale to f16).
    #[default]
    Search,
}

/// Candidate offsets `δ` tried by [`Int4Method::Search`], in tenths.
const SEARCH_STEPS: std::ops::RangeInclusive<i32> = -6..=6;

/// Quantizes one group of exactly [`GROUP_SIZE`] values into 16 code bytes, returning the f16
/// scale bits. Returns `None` when the group holds a NaN or an infinity, or a magnitude beyond
/// `8 · 65504` (the f16 scale would overflow).
pub fn quantize_group(values: &[f32], method: Int4Method, out: &mut [u8]) -> Option<u16> {
    debug_assert_eq!(values.len(), GROUP_SIZE);
    debug_assert_eq!(out.len(), GROUP_BYTES);
    let mut extreme = 0.0f32;
    for &x in values {
        if !x.is_finite() {
            return None;
        }
        if x.abs() > extreme.abs() {
            extreme = x;
        }
    }
    let mut codes = [0i8; GROUP_SIZE];
    if extreme == 0.0 {
        pack(&codes, out);
        return Some(0);
    }
    let rtn = f32_to_f16(extreme / -8.0);
    if !f16_to_f32(rtn).is_finite() {
        // |x| > 524,000: beyond what an f16 scale can express.
        return None;
    }
    let scale = match method {
        Int4Method::RoundToNearest => {
            round_codes(values, f16_to_f32(rtn), &mut codes);
            rtn
        }
        Int4Method::Search => search(values, extreme, rtn, &mut codes),
    };
    pack(&codes, out);
    Some(scale)
}

/// The search of [`Int4Method::Search`]; starts from the round-to-nearest scale `rtn` so it is
/// never worse than that.
fn search(values: &[f32], extreme: f32, rtn: u16, codes: &mut [i8; GROUP_SIZE]) -> u16 {
    let mut best_scale = rtn;
    round_codes(values, f16_to_f32(rtn), codes);
    let mut best_err = squared_error(values, f16_to_f32(rtn), codes);
    let mut trial = [0i8; GROUP_SIZE];
    for target in [-8.0f32, 7.0] {
        for step in SEARCH_STEPS {
            let candidate = extreme / (target + step as f32 * 0.1);
            round_codes(values, candidate, &mut trial);
            let (mut xq, mut qq) = (0.0f64, 0.0f64);
            for (&x, &q) in values.iter().zip(&trial) {
                xq += f64::from(x) * f64::from(q);
                qq += f64::from(q) * f64::from(q);
            }
            if qq == 0.0 {
                continue;
            }
            let fitted = f32_to_f16((xq / qq) as f32);
            let d = f16_to_f32(fitted);
            if !d.is_finite() {
                continue;
            }
            let err = squared_error(values, d, &trial);
            if err < best_err {
                best_err = err;
                best_scale = fitted;
                *codes = trial;
            }
        }
    }
    best_scale
}

/// `codes[i] = clamp(round(values[i] / d), −8, 7)` (ties to even); all zero when `d` is 0.
fn round_codes(values: &[f32], d: f32, codes: &mut [i8; GROUP_SIZE]) {
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (q, &x) in codes.iter_mut().zip(values) {
        *q = round_half_even(x * inv).clamp(-8.0, 7.0) as i8;
    }
}

fn squared_error(values: &[f32], d: f32, codes: &[i8; GROUP_SIZE]) -> f64 {
    values
        .iter()
        .zip(codes)
        .map(|(&x, &q)| {
            let e = f64::from(x) - f64::from(d * f32::from(q));
            e * e
        })
        .sum()
}

/// Round half to even for |v| < 2^22 (and infinities pass through).
#[inline]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() >= 4_194_304.0 {
        return v;
    }
    (v + MAGIC) - MAGIC
}

/// Signed codes (−8..=7) of one group into the nibble layout.
fn pack(codes: &[i8; GROUP_SIZE], out: &mut [u8]) {
    for j in 0..GROUP_BYTES {
        let lo = (codes[j] + 8) as u8;
        let hi = (codes[j + GROUP_BYTES] + 8) as u8;
        out[j] = lo | (hi << 4);
    }
}

/// The signed code (−8..=7) of value `i` (0..32) of the group whose bytes are `group`.
#[inline]
pub fn code_at(group: &[u8], i: usize) -> i8 {
    let byte = group[i % GROUP_BYTES];
    let nibble = if i < GROUP_BYTES {
        byte & 0x0f
    } else {
        byte >> 4
    };
    nibble as i8 - 8
}

/// Dequantizes a flattened int4 tensor: `out[i] = d_g · code_i` with `g = i / 32`, one f32 product
/// per value (exact: a 4-bit integer times a half fits in f32). Returns `false` (and writes
/// nothing) when the lengths disagree.
pub fn dequantize_into(packed: &[u8], scales: &[u16], out: &mut [f32]) -> bool {
    if !out.len().is_multiple_of(GROUP_SIZE)
        || packed.len() * 2 != out.len()
        || scales.len() * GROUP_SIZE != out.len()
    {
        return false;
    }
    for ((o, group), &s) in out
        .chunks_exact_mut(GROUP_SIZE)
        .zip(packed.chunks_exact(GROUP_BYTES))
        .zip(scales)
    {
        let d = f16_to_f32(s);
        for (i, v) in o.iter_mut().enumerate() {
            *v = d * f32::from(code_at(group, i));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequant(packed: &[u8], scale: u16) -> Vec<f32> {
        let mut out = vec![0.0; GROUP_SIZE];
        assert!(dequantize_into(packed, &[scale], &mut out));
        out
    }

    fn group(seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..GROUP_SIZE)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn round_to_nearest_is_q4_0s_rule() {
        // Largest magnitude -2.0 -> d = 0.25, codes x / 0.25 rounded: 1.0 -> 4, -2.0 -> -8,
        // 0.3 -> 1.2 -> 1, 0.375 -> 1.5 -> 2 (tie to even), 1.875 -> 7.5 -> 8 clamped to 7.
        let mut values = vec![0.0f32; GROUP_SIZE];
        values[..5].copy_from_slice(&[1.0, -2.0, 0.3, 0.375, 1.875]);
        values[20] = -0.125;
        let mut packed = [0u8; GROUP_BYTES];
        let scale = quantize_group(&values, Int4Method::RoundToNearest, &mut packed).unwrap();
        assert_eq!(f16_to_f32(scale), 0.25);
        let codes: Vec<i8> = (0..GROUP_SIZE).map(|i| code_at(&packed, i)).collect();
        assert_eq!(&codes[..5], &[4, -8, 1, 2, 7]);
        assert_eq!(codes[20], 0, "-0.5 ties to even 0");
        assert_eq!(codes[5], 0);
        // Nibble layout: value 0 in byte 0's low nibble, value 16 in byte 0's high nibble.
        assert_eq!(packed[0], (4 + 8) | (8 << 4));
        assert_eq!(dequant(&packed, scale)[1], -2.0);
    }

    #[test]
    fn search_never_loses_to_round_to_nearest() {
        let mut better = 0;
        for seed in 0..500 {
            let values = group(seed);
            let error = |method| {
                let mut packed = [0u8; GROUP_BYTES];
                let scale = quantize_group(&values, method, &mut packed).unwrap();
                let back = dequant(&packed, scale);
                values
                    .iter()
                    .zip(&back)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
            };
            let (rtn, searched) = (error(Int4Method::RoundToNearest), error(Int4Method::Search));
            assert!(searched <= rtn, "seed {seed}: {searched} > {rtn}");
            better += usize::from(searched < rtn);
        }
        // On uniform random groups the search finds a better scale for most of them.
        assert!(better > 300, "{better}");
    }

    #[test]
    fn zero_and_non_finite_groups() {
        let mut packed = [0xffu8; GROUP_BYTES];
        let scale = quantize_group(&[0.0; GROUP_SIZE], Int4Method::Search, &mut packed).unwrap();
        assert_eq!(scale, 0);
        assert_eq!(dequant(&packed, scale), vec![0.0; GROUP_SIZE]);
        let mut values = [1.0f32; GROUP_SIZE];
        values[7] = f32::NAN;
        assert_eq!(
            quantize_group(&values, Int4Method::Search, &mut packed),
            None
        );
        values[7] = f32::INFINITY;
        assert_eq!(
            quantize_group(&values, Int4Method::RoundToNearest, &mut packed),
            None
        );
    }

    #[test]
    fn dequantize_checks_lengths() {
        let mut out = vec![0.0; 64];
        assert!(!dequantize_into(&[0; 32], &[0], &mut out));
        assert!(!dequantize_into(&[0; 16], &[0, 0], &mut out));
        assert!(dequantize_into(&[0x88; 32], &[0x3c00, 0x3c00], &mut out));
        assert_eq!(out, vec![0.0; 64]);
    }
}
