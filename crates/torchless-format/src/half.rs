//! IEEE 754 binary16 ("half") conversions, used by the int4 scales and by GGUF's f16 fields.

/// Half to f32 (exact; NaN payloads kept, as numpy does).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        // Subnormal: man * 2^-24, exact in f32.
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to the nearest half, ties to even (as numpy's `astype(float16)`); values beyond the half
/// range become infinities, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | 0x7e00;
    }
    if abs >= 0x477f_f000 {
        // >= 65520 rounds to infinity (65504 is the largest finite half).
        return sign | 0x7c00;
    }
    if abs < 0x3880_0000 {
        // Below 2^-14: a subnormal half, man = round(|x| * 2^24), exact in f32 arithmetic
        // because the product is a small integer plus a fraction rounded once (ties to even).
        let scaled = f32::from_bits(abs) * 16_777_216.0;
        return sign | round_ties_even_small(scaled) as u16;
    }
    // Normal: drop 13 mantissa bits with round-to-nearest-even; a carry into the exponent is the
    // correct next binade (or infinity, excluded above).
    let rebased = abs - (112 << 23);
    let half = rebased >> 13;
    let rest = rebased & 0x1fff;
    let round_up = rest > 0x1000 || (rest == 0x1000 && half & 1 == 1);
    sign | (half + u32::from(round_up)) as u16
}

/// Round half to even for 0 <= v < 2^22.
fn round_ties_even_small(v: f32) -> u32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_to_f32_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
    }

    /// Every half round-trips, and every f32 between two neighbouring halves goes to the nearer
    /// one (ties to the even one): checked against an f64 computation of the distances.
    #[test]
    fn f32_to_f16_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
                continue;
            }
            assert_eq!(f32_to_f16(x), h, "{h:#06x}");
        }
        for h in 0..0x7bffu16 {
            let (lo, hi) = (f16_to_f32(h), f16_to_f32(h + 1));
            for t in [0.25f64, 0.5, 0.75] {
                let x = (f64::from(lo) + t * (f64::from(hi) - f64::from(lo))) as f32;
                let (dl, dh) = (
                    (f64::from(x) - f64::from(lo)).abs(),
                    (f64::from(hi) - f64::from(x)).abs(),
                );
                let expected = if dl < dh || (dl == dh && h % 2 == 0) {
                    h
                } else {
                    h + 1
                };
                assert_eq!(f32_to_f16(x), expected, "{x:e} between {h:#06x} and next");
                assert_eq!(f32_to_f16(-x), expected | 0x8000);
            }
        }
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(1e10), 0x7c00);
        assert_eq!(f32_to_f16(1e-10), 0);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
    }
}
