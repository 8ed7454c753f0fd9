//! AVX2 + FMA kernels, selected at run time (a default build targets baseline x86-64).
//!
//! Every kernel takes an [`Avx2`] token, which can only be made after `is_x86_feature_detected!`
//! confirmed AVX2, FMA and F16C: that is what makes calling the `#[target_feature]` functions
//! sound. The safe wrappers also check every length the raw-pointer loops rely on, so no safe
//! caller can make them read or write out of bounds.

/// Inputs per pass of the multi-input matvecs (their accumulators fill the 16 registers); more
/// inputs take further passes over the same rows, which are then in cache.
const MULTI_B: usize = 4;

/// Runs `$body` with a `const $B` for input blocks `$b0..$b0 + $B` covering `0..batch`,
/// `$B <= MULTI_B`.
macro_rules! for_input_blocks {
    ($batch:expr, |$b0:ident, $B:ident| $body:expr) => {{
        let batch: usize = $batch;
        let mut $b0 = 0;
        while $b0 + MULTI_B <= batch {
            {
                const $B: usize = MULTI_B;
                $body;
            }
            $b0 += MULTI_B;
        }
        match batch - $b0 {
            3 => {
                const $B: usize = 3;
                $body
            }
            2 => {
                const $B: usize = 2;
                $body
            }
            1 => {
                const $B: usize = 1;
                $body
            }
            _ => {}
        }
    }};
}

pub(crate) mod blocks;
mod elementwise;
pub(crate) mod gemm_f32;
mod gemm_int;
pub(crate) mod kv_rows;
pub(in crate::isa::x86) mod matvec;
pub(in crate::isa::x86) mod matvec_many;

pub(crate) use gemm_int::q4pack_b;

use crate::isa::traits::EXP_LO;
use core::arch::x86_64::*;

/// Proof that the running CPU has AVX2, FMA and F16C: the AVX2 kernels (every family).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// `Some` only when AVX2, FMA and F16C are available.
    pub(crate) fn detect() -> Option<Self> {
        // F16C (half-precision conversion, for int4 scales) comes with every AVX2 CPU made, but is
        // a separate flag: it is checked too so the int4 kernel may use it.
        (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        .then_some(Avx2(()))
    }
}

/// Prefetch distance of the int8 matvec, in 64-byte groups (8 KiB ahead). Each of the kernel's
/// two streams runs through consecutive rows (contiguous memory), so the prefetch simply runs on
/// into the next row.
pub(in crate::isa::x86) const PF_GROUPS: usize = 128;

/// Horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(in crate::isa::x86) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Loads 8 int8 values from `p` and converts them to f32.
///
/// # Safety
/// AVX2 available; `p` valid for 8 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn cvt_i8(p: *const i8) -> __m256 {
    // SAFETY: caller contract: 8 readable bytes at `p` (movq has no alignment requirement).
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
}

/// 8x8 transpose: `out[i][j] = r[j][i]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `e^x` lane-wise, same algorithm and limits as the `wide` path's `exp`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(EXP_LO);
    let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let r2 = _mm256_mul_ps(r, r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let y = _mm256_andnot_ps(under, y);
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    _mm256_blendv_ps(y, x, nan)
}

/// Prefetches the cache line holding `p` into L1 (any address: prefetching never faults).
#[inline]
pub(crate) fn prefetch(_t: Avx2, p: *const u8) {
    // SAFETY: `prefetcht0` is an SSE instruction (implied by AVX2, proven by the token) that only
    // hints the cache; it does not dereference `p` and cannot fault on any address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Transposes 8 rows of 8 `u32` words: `out[w]` holds word `w` of rows 0..8, in row order.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_words(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    // Per 128-bit lane, `u[w]` holds word w (low lane) and w + 4 (high lane) of rows 0..4.
    let u = [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ];
    let v = [
        _mm256_unpacklo_epi64(t4, t6),
        _mm256_unpackhi_epi64(t4, t6),
        _mm256_unpacklo_epi64(t5, t7),
        _mm256_unpackhi_epi64(t5, t7),
    ];
    [
        _mm256_permute2x128_si256::<0x20>(u[0], v[0]),
        _mm256_permute2x128_si256::<0x20>(u[1], v[1]),
        _mm256_permute2x128_si256::<0x20>(u[2], v[2]),
        _mm256_permute2x128_si256::<0x20>(u[3], v[3]),
        _mm256_permute2x128_si256::<0x31>(u[0], v[0]),
        _mm256_permute2x128_si256::<0x31>(u[1], v[1]),
        _mm256_permute2x128_si256::<0x31>(u[2], v[2]),
        _mm256_permute2x128_si256::<0x31>(u[3], v[3]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_accurate() {
        let Some(t) = Avx2::detect() else { return };
        let _ = t;
        crate::isa::traits::check_vector_exp(|a| {
            let mut o = [0.0f32; 8];
            // SAFETY: the token proves AVX2+FMA; `a` and `o` hold 8 floats each.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), exp256(_mm256_loadu_ps(a.as_ptr()))) };
            o
        });
    }
}
