//! int8 group quantization exactly as the original torchless exporter defines it.
//!
//! A tensor is flattened row-major and cut into groups of [`GROUP_SIZE`] consecutive values (a group
//! may span two rows). Each group stores one f32, `127 / max|x|`: an *inverse* scale. Values are
//! `q = round_half_even(x * inv_scale)` clamped to ±127, and dequantize as `x ≈ q / inv_scale`.
//!
//! Bit-exactness detail: the exporter computes `127 / absmax` with PyTorch's scalar-by-tensor
//! division, which evaluates `reciprocal(absmax) * 127` in f32. That differs from a correctly
//! rounded `127 / absmax` in the last bit for about a quarter of the groups, so this module does
//! the same two roundings to produce identical files.

/// Number of consecutive values sharing one inverse scale.
pub const GROUP_SIZE: usize = 64;

/// Largest magnitude of a quantized value.
pub const Q_MAX: f32 = 127.0;

/// The inverse scale stored for an all-zero group.
///
/// The original exporter divides by zero there (its output is undefined); any finite non-zero value
/// dequantizes the zeros exactly, and 1.0 keeps `info --check` free of non-finite scales.
pub const ZERO_GROUP_INV_SCALE: f32 = 1.0;

/// Quantizes one group (at most [`GROUP_SIZE`] values) into `out`, returning its inverse scale.
///
/// All arithmetic is f32, as in the exporter (`(1 / absmax) * 127`, then `x * inv_scale` rounded
/// half to even). Returns `None` when the group holds a NaN or an infinity, which cannot be quantized.
pub fn quantize_group(values: &[f32], out: &mut [i8]) -> Option<f32> {
    debug_assert_eq!(values.len(), out.len());
    let mut absmax = 0.0f32;
    for &x in values {
        if !x.is_finite() {
            return None;
        }
        absmax = absmax.max(x.abs());
    }
    if absmax == 0.0 {
        out.fill(0);
        return Some(ZERO_GROUP_INV_SCALE);
    }
    let inv_scale = (1.0 / absmax) * Q_MAX;
    for (q, &x) in out.iter_mut().zip(values) {
        // The clamp guards subnormal absmax where 127/absmax overflows to +inf (x*inf stays inf).
        *q = round_half_even(x * inv_scale).clamp(-Q_MAX, Q_MAX) as i8;
    }
    Some(if inv_scale.is_finite() {
        inv_scale
    } else {
        f32::MAX
    })
}

/// Rounds to the nearest integer, ties to even, for |v| < 2^22 (and passes infinities through).
///
/// Adding and subtracting 1.5·2^23 makes the FPU round in its default nearest-even mode; this is
/// what `f32::round_ties_even` computes, but inline: on baseline x86-64 (no SSE4.1) that method is
/// a libm call per value, which made quantizing a 7B model CPU-bound.
#[inline]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Dequantizes a flattened int8 tensor: `out[i] = q[i] / inv_scales[i / GROUP_SIZE]`.
///
/// The division (not a multiplication by a reciprocal) matches the reference dequantization bit for bit.
/// Returns `false` (and writes nothing) when the lengths disagree.
pub fn dequantize_into(q: &[i8], inv_scales: &[f32], out: &mut [f32]) -> bool {
    if out.len() != q.len() || inv_scales.len() != q.len().div_ceil(GROUP_SIZE) {
        return false;
    }
    for ((out_group, q_group), &inv_scale) in out
        .chunks_mut(GROUP_SIZE)
        .zip(q.chunks(GROUP_SIZE))
        .zip(inv_scales)
    {
        for (o, &v) in out_group.iter_mut().zip(q_group) {
            *o = f32::from(v) / inv_scale;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_like_the_exporter() {
        // Hand-computed: absmax 2.0 -> inv_scale 63.5; 1.0*63.5 = 63.5 rounds to even 64; 0.5*63.5 =
        // 31.75 -> 32; -2.0 -> -127.
        let values = [1.0f32, 0.5, -2.0, 0.0];
        let mut q = [0i8; 4];
        let inv = quantize_group(&values, &mut q).unwrap();
        assert_eq!(inv, 63.5);
        assert_eq!(q, [64, 32, -127, 0]);
    }

    #[test]
    fn half_to_even_rounding() {
        // absmax 127 -> inv_scale 1.0, so x*inv_scale is x: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
        let values = [2.5f32, 3.5, -2.5, 127.0];
        let mut q = [0i8; 4];
        assert_eq!(quantize_group(&values, &mut q), Some(1.0));
        assert_eq!(q, [2, 4, -2, 127]);
    }

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        let mut v = -200.0f32;
        while v <= 200.0 {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
            v += 0.03125;
        }
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -2.5,
            126.5,
            -126.5,
            127.49999,
            f32::INFINITY,
        ] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn all_zero_group_does_not_divide_by_zero() {
        let mut q = [5i8; 3];
        assert_eq!(
            quantize_group(&[0.0, -0.0, 0.0], &mut q),
            Some(ZERO_GROUP_INV_SCALE)
        );
        assert_eq!(q, [0, 0, 0]);
    }

    #[test]
    fn non_finite_is_refused() {
        let mut q = [0i8; 2];
        assert_eq!(quantize_group(&[1.0, f32::NAN], &mut q), None);
        assert_eq!(quantize_group(&[f32::INFINITY, 1.0], &mut q), None);
    }

    #[test]
    fn dequantize_divides_per_group_across_rows() {
        let q: Vec<i8> = (0..130).map(|i| (i % 100) as i8).collect();
        let scales = [2.0f32, 4.0, 8.0];
        let mut out = vec![0.0; 130];
        assert!(dequantize_into(&q, &scales, &mut out));
        assert_eq!(out[63], 63.0 / 2.0);
        assert_eq!(out[64], 64.0 / 4.0);
        assert_eq!(out[129], 29.0 / 8.0);
        assert!(!dequantize_into(&q, &scales[..2], &mut out));
    }
}
