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
use crate::block_input::q8_0_scale;
use core::arch::x86_64::*;

/// Values per Q8_0 block.
const QK: usize = 32;

/// `x` (a multiple of 32 values) into Q8_0 codes `qs` (as long as `x`) and one scale per block
/// `d`, as `block_input::quantize_q8_0` does block by block.
pub(crate) fn quantize_q8_0(_t: Avx512, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let blocks = d.len();
    assert!(
        x.len() == blocks * QK && qs.len() == x.len(),
        "quantize_q8_0 shapes"
    );
    // SAFETY: the token proves the features; `x` and `qs` hold `blocks` blocks (asserted).
    unsafe { quantize_raw(x.as_ptr(), qs.as_mut_ptr(), d) }
}

/// # Safety
/// AVX-512 F/BW/VL available; `x` and `qs` valid for `32 · d.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_raw(x: *const f32, qs: *mut i8, d: &mut [f32]) {
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for (b, db) in d.iter_mut().enumerate() {
        // SAFETY: caller contract: block b's 32 values and 32 codes are in bounds.
        unsafe {
            let v = [
                _mm512_loadu_ps(x.add(QK * b)),
                _mm512_loadu_ps(x.add(QK * b + 16)),
            ];
            let bits = [_mm512_castps_si512(v[0]), _mm512_castps_si512(v[1])];
            let non_finite = bits
                .map(|w| _mm512_cmpeq_epi32_mask(_mm512_and_si512(w, exponent), exponent))
                .iter()
                .fold(0, |m, &k| m | k);
            let amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(
                _mm512_and_si512(bits[0], magnitude),
                _mm512_and_si512(bits[1], magnitude),
            ));
            let out = qs.add(QK * b);
            let (scale, id) = q8_0_scale(non_finite != 0, amax_bits);
            *db = scale;
            let Some(id) = id else {
                _mm256_storeu_si256(out.cast(), _mm256_setzero_si256());
                continue;
            };
            let id = _mm512_set1_ps(id);
            for (half, &vh) in v.iter().enumerate() {
                let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(vh, id),
                );
                let q = _mm512_max_epi32(_mm512_min_epi32(q, hi), lo);
                _mm_storeu_si128(out.add(16 * half).cast(), _mm512_cvtsepi32_epi8(q));
            }
        }
    }
}

/// Values per Q8_K block.
const QK_K: usize = 256;

/// `x` (a multiple of 256 values) into Q8_K codes `qs` (as long as `x`) and one scale per block
/// `d`, as `block_input::quantize_q8_k` does block by block.
pub(crate) fn quantize_q8_k(_t: Avx512, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let blocks = d.len();
    assert!(
        x.len() == blocks * QK_K && qs.len() == x.len(),
        "quantize_q8_k shapes"
    );
    // SAFETY: the token proves the features; `x` and `qs` hold `blocks` blocks (asserted).
    unsafe { quantize_k_raw(x.as_ptr(), qs.as_mut_ptr(), d) }
}

/// # Safety
/// AVX-512 F/BW/VL available; `x` and `qs` valid for `256 · d.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_k_raw(x: *const f32, qs: *mut i8, d: &mut [f32]) {
    const VECTORS: usize = QK_K / 16;
    let exponent = _mm512_set1_epi32(0x7f80_0000);
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for (b, db) in d.iter_mut().enumerate() {
        // SAFETY: caller contract: block b's 256 values and 256 codes are in bounds.
        unsafe {
            let xb = x.add(QK_K * b);
            let out = qs.add(QK_K * b);
            let bits = |v: usize| _mm512_castps_si512(_mm512_loadu_ps(xb.add(16 * v)));
            let mut non_finite = 0u16;
            let mut largest = _mm512_setzero_si512();
            for v in 0..VECTORS {
                let w = bits(v);
                non_finite |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(w, exponent), exponent);
                largest = _mm512_max_epu32(largest, _mm512_and_si512(w, magnitude));
            }
            let zero_block = |d: f32| {
                for v in 0..VECTORS {
                    _mm_storeu_si128(out.add(16 * v).cast(), _mm_setzero_si128());
                }
                d
            };
            if non_finite != 0 {
                *db = zero_block(f32::NAN);
                continue;
            }
            let amax_bits = _mm512_reduce_max_epu32(largest);
            if amax_bits == 0 {
                *db = zero_block(0.0);
                continue;
            }
            // The value of largest magnitude, the first one among equals (its sign counts).
            let target = _mm512_set1_epi32(amax_bits as i32);
            let mut max = 0.0f32;
            for v in 0..VECTORS {
                let hit = _mm512_cmpeq_epi32_mask(_mm512_and_si512(bits(v), magnitude), target);
                if hit != 0 {
                    max = *xb.add(16 * v + hit.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            if !iscale.is_finite() {
                // `|max|` below 127 / f32::MAX: a zero block, as the definition.
                *db = zero_block(0.0);
                continue;
            }
            let scale = _mm512_set1_ps(iscale);
            for v in 0..VECTORS {
                let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(_mm512_loadu_ps(xb.add(16 * v)), scale),
                );
                let q = _mm512_max_epi32(_mm512_min_epi32(q, hi), lo);
                _mm_storeu_si128(out.add(16 * v).cast(), _mm512_cvtsepi32_epi8(q));
            }
            *db = 1.0 / iscale;
        }
    }
}
