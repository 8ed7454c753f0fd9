//! Activations to Q8_0 blocks (the input of every ggml block product with 32-value blocks) and
//! to Q8_K blocks (256 values: the K-quants' input) on 512-bit vectors: the portable definitions
//! (`block_input::quantize_q8_0` / `quantize_q8_k`) compile to SSE2 code that packs and clamps
//! one lane group at a time, ~8% of a small model's prefill for Q8_0.
//!
//! Bit-identical to the definitions: the same non-finite test and largest magnitude (as integer
//! bits), the same scalar scale steps, and `v · id` rounded to nearest-even by the conversion
//! itself (the definition's `(v + 1.5 · 2^23) − 1.5 · 2^23` is that rounding for |v| < 2^22,
//! and here |v · id| ≤ 127.00002).

use super::Avx512;
use crate::block_input::{q8_0_scale, ActKind};
use core::arch::x86_64::*;

/// `x` (whole blocks of `kind`) into codes `qs` (as long as `x`) and one scale per block `d`, as
/// `block_input::quantize_into` does block by block.
pub(crate) fn quantize(_t: Avx512, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let values = kind.block_values();
    assert!(
        x.len() == d.len() * values && qs.len() == x.len(),
        "quantize shapes"
    );
    // SAFETY: the token proves the features; `x` and `qs` hold `d.len()` blocks (asserted), of
    // 2 (Q8_0) or 16 (Q8_K) vectors of 16 values.
    unsafe {
        match kind {
            ActKind::Q8_0 => quantize_raw::<2>(kind, x.as_ptr(), qs.as_mut_ptr(), d),
            ActKind::Q8K => quantize_raw::<16>(kind, x.as_ptr(), qs.as_mut_ptr(), d),
        }
    }
}

/// Blocks of `V` vectors of 16 values: the scan, the kind's scale steps, the codes.
///
/// # Safety
/// AVX-512 F/BW/VL available; `x` and `qs` valid for `16 · V · d.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_raw<const V: usize>(kind: ActKind, x: *const f32, qs: *mut i8, d: &mut [f32]) {
    for (b, db) in d.iter_mut().enumerate() {
        // SAFETY: caller contract: block b's values and codes are in bounds.
        unsafe {
            let (xb, out) = (x.add(16 * V * b), qs.add(16 * V * b));
            let (non_finite, amax_bits) = scan::<V>(xb);
            let (scale, factor) = match kind {
                ActKind::Q8_0 => q8_0_scale_f16c(non_finite, amax_bits),
                ActKind::Q8K => q8_k_scale::<V>(xb, non_finite, amax_bits),
            };
            *db = scale;
            store_codes::<V>(xb, out, factor);
        }
    }
}

/// [`q8_0_scale`] with the half rounding of `d` by F16C (IEEE round to nearest even, as the
/// portable conversion; ~5% of a small model's prefill in software).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q8_0_scale_f16c(non_finite: bool, amax_bits: u32) -> (f32, Option<f32>) {
    if non_finite {
        return q8_0_scale(non_finite, amax_bits);
    }
    let amax = f32::from_bits(amax_bits);
    let half = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(amax / 127.0));
    let d = _mm_cvtss_f32(_mm_cvtph_ps(half));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id.is_finite().then_some(id))
}

/// Whether any of the `16 · V` values at `xb` is an infinity or NaN, and their largest
/// magnitude as bits (for non-negative floats the bit patterns order as the values do).
///
/// # Safety
/// AVX-512 F available; `xb` valid for `16 · V` values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scan<const V: usize>(xb: *const f32) -> (bool, u32) {
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let mut non_finite = 0u16;
    let mut largest = _mm512_setzero_si512();
    for v in 0..V {
        // SAFETY: caller contract: vector v is in bounds.
        let w = _mm512_castps_si512(unsafe { _mm512_loadu_ps(xb.add(16 * v)) });
        non_finite |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(w, exponent), exponent);
        largest = _mm512_max_epu32(largest, _mm512_and_si512(w, magnitude));
    }
    (non_finite != 0, _mm512_reduce_max_epu32(largest))
}

/// Q8_K's `d` and code factor (`block_input::quantize_q8_k`): NaN for a non-finite block, zero for
/// an all-zero one or one whose largest magnitude is below 127 / f32::MAX (no factor: all codes
/// zero), else `iscale = −127 / max` with `max` the first value of largest magnitude (its sign
/// counts) and `d = 1 / iscale`.
///
/// # Safety
/// AVX-512 F available; `xb` valid for `16 · V` values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q8_k_scale<const V: usize>(
    xb: *const f32,
    non_finite: bool,
    amax_bits: u32,
) -> (f32, Option<f32>) {
    if non_finite {
        return (f32::NAN, None);
    }
    if amax_bits == 0 {
        return (0.0, None);
    }
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let target = _mm512_set1_epi32(amax_bits as i32);
    let mut max = 0.0f32;
    for v in 0..V {
        // SAFETY: caller contract: vector v is in bounds.
        let w = _mm512_castps_si512(unsafe { _mm512_loadu_ps(xb.add(16 * v)) });
        let hit = _mm512_cmpeq_epi32_mask(_mm512_and_si512(w, magnitude), target);
        if hit != 0 {
            // SAFETY: lane `hit.trailing_zeros()` of vector v is in bounds.
            max = unsafe { *xb.add(16 * v + hit.trailing_zeros() as usize) };
            break;
        }
    }
    let iscale = -127.0 / max;
    if iscale.is_finite() {
        (1.0 / iscale, Some(iscale))
    } else {
        (0.0, None)
    }
}

/// Codes `round_even(v · factor)` clamped to ±127 for the `16 · V` values at `xb` (the
/// conversion rounds to nearest-even itself), or zeros without a factor.
///
/// # Safety
/// AVX-512 F/BW available; `xb` and `out` valid for `16 · V` values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn store_codes<const V: usize>(xb: *const f32, out: *mut i8, factor: Option<f32>) {
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for v in 0..V {
        let codes = match factor {
            Some(f) => {
                // SAFETY: caller contract: vector v is in bounds.
                let x = unsafe { _mm512_loadu_ps(xb.add(16 * v)) };
                let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(x, _mm512_set1_ps(f)),
                );
                _mm512_cvtsepi32_epi8(_mm512_max_epi32(_mm512_min_epi32(q, hi), lo))
            }
            None => _mm_setzero_si128(),
        };
        // SAFETY: caller contract: codes 16v..16v + 16 are in bounds.
        unsafe { _mm_storeu_si128(out.add(16 * v).cast(), codes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C scale steps against the portable ones on every 4099th positive f32 bit pattern
    /// (subnormal to infinity: halves' subnormals, ties, overflow) and the edges around them.
    #[test]
    fn f16c_q8_0_scale_is_the_portable_one() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return; // no F16C: the AVX-512 path that calls it is never taken
        }
        let edges = [
            0u32,
            1,
            0x3380_0000,
            0x3800_0000,
            0x477f_e000,
            0x477f_f000,
            0x7f7f_ffff,
        ];
        for bits in (0..0x7f80_0000u32).step_by(4099).chain(edges) {
            for non_finite in [false, true] {
                // SAFETY: the features were detected above.
                let got = unsafe { q8_0_scale_f16c(non_finite, bits) };
                let want = q8_0_scale(non_finite, bits);
                assert_eq!(
                    (got.0.to_bits(), got.1.map(f32::to_bits)),
                    (want.0.to_bits(), want.1.map(f32::to_bits)),
                    "amax bits {bits:#x}"
                );
            }
        }
    }
}
