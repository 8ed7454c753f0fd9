//! IEEE half and bfloat16 conversions (exact to f32; f32 to half rounds to nearest, ties to even,
//! as the F16C instruction `vcvtps2ph` with rounding mode 0 does).

/// IEEE half to f32 (exact).
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 to f32 (exact: the high half of the f32's bits).
#[inline]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 to the nearest IEEE half (ties to even; beyond the largest half: infinity; NaN stays NaN,
/// quieted).
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 {
            0x200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    // The exponent as a half's biased exponent.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A half subnormal (or zero): the significand with its implicit bit, shifted to units
        // of 2^-24. Below half the smallest subnormal everything rounds to zero (f32
        // subnormals included, whose `exp` is 0).
        if e < -10 || exp == 0 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    // A carry out of the significand steps the exponent up (to infinity past the largest half).
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_round_trips_and_midpoints_round_to_even() {
        for h in 0..=u16::MAX {
            let v = f16_to_f32(h);
            if v.is_nan() {
                assert!(f16_to_f32(f32_to_f16(v)).is_nan());
                continue;
            }
            assert_eq!(f32_to_f16(v), h, "{h:#06x} ({v:e})");
            // The midpoint to the next half up in magnitude (finite, same sign).
            let next = h.wrapping_add(1);
            if h & 0x7fff < 0x7bff {
                let w = f16_to_f32(next);
                let mid = (f64::from(v) + f64::from(w)) / 2.0;
                let mid32 = mid as f32;
                assert_eq!(f64::from(mid32), mid, "midpoint exact in f32");
                let even = if h & 1 == 0 { h } else { next };
                assert_eq!(f32_to_f16(mid32), even, "tie at {mid:e}");
                // Just off the midpoint: the nearer one.
                let below = f32::from_bits(mid32.to_bits() - 1);
                let above = f32::from_bits(mid32.to_bits() + 1);
                assert_eq!(f32_to_f16(below), h, "below {mid:e}");
                assert_eq!(f32_to_f16(above), next, "above {mid:e}");
            }
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds past the largest half");
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(1e-30), 0);
        assert_eq!(f32_to_f16(-1e-30), 0x8000);
        assert_eq!(f32_to_f16(f32::from_bits(1)), 0);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn matches_f16c_on_random_floats() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        #[target_feature(enable = "f16c")]
        fn hw(x: f32) -> u16 {
            use std::arch::x86_64::*;
            _mm_extract_epi16::<0>(_mm_cvtps_ph::<0>(_mm_set_ss(x))) as u16
        }
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Exponents around the half range, random significands.
            let bits = (s as u32 & 0x807f_ffff) | (((s >> 32) as u32 % 60 + 90) << 23);
            let x = f32::from_bits(bits);
            // SAFETY: F16C was detected above.
            let want = unsafe { hw(x) };
            assert_eq!(f32_to_f16(x), want, "{x:e}");
        }
    }
}
