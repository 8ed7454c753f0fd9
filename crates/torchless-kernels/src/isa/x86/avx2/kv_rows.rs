//! Products with f16 and Q8_0 KV cache rows on AVX2 + FMA + F16C (`vcvtph2ps`), read in place.

use super::{cvt_i8, hsum, Avx2};
use crate::isa::scalar::kv_rows::{f16_value, q8_0_value};
use crate::isa::traits::{f16_row_values, q8_0_row_values, KvRows};
use core::arch::x86_64::*;

/// The half at `p` as f32.
///
/// # Safety
/// F16C available; `p` valid for 2 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn half_at(p: *const u8) -> f32 {
    // SAFETY: caller contract: 2 readable bytes at `p` (unaligned read).
    unsafe {
        let bits = p.cast::<u16>().read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

/// Values `i..i + 8` of a KV row (within one block for Q8_0), exactly.
///
/// # Safety
/// AVX2, FMA and F16C available; `row` valid for the bytes of values `i..i + 8` (for Q8_0, of
/// their whole block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const Q8: bool>(row: *const u8, i: usize) -> __m256 {
    // SAFETY: caller contract: the bytes read lie in the row.
    unsafe {
        if Q8 {
            let b = row.add(34 * (i / 32));
            _mm256_mul_ps(_mm256_set1_ps(half_at(b)), cvt_i8(b.add(2 + i % 32).cast()))
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i).cast()))
        }
    }
}

/// Value `i` of a KV row, as the scalar path decodes it.
#[inline]
pub(crate) fn value<const Q8: bool>(row: &[u8], i: usize) -> f32 {
    if Q8 {
        q8_0_value(row, i)
    } else {
        f16_value(row, i)
    }
}

/// `out[h] = q[h] · k` for `G` query rows starting at row `h`: the key is converted once for
/// all of them.
///
/// # Safety
/// AVX2, FMA and F16C available; `q` holds rows `h..h + G` of `dim` values, `k` the bytes of
/// `dim` values, `out` index `h + G - 1`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_group<const Q8: bool, const G: usize>(
    q: &[f32],
    k: &[u8],
    dim: usize,
    h: usize,
    out: &mut [f32],
) {
    // SAFETY: caller contract; offsets `(h + g) * dim + i + 7 < (h + G) * dim` and `i + 8 <=
    // dim` for the loads.
    unsafe {
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let whole = dim / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); G];
        let mut i = 0;
        while i < whole {
            let kv = load8::<Q8>(kp, i);
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add((h + g) * dim + i)), kv, *a);
            }
            i += 8;
        }
        for (g, a) in acc.iter().enumerate() {
            let mut t = hsum(*a);
            for ii in whole..dim {
                t += q[(h + g) * dim + ii] * value::<Q8>(k, ii);
            }
            out[h + g] = t;
        }
    }
}

/// Calls `group(g, h, dim)` for query rows `h..h + g` (`g` at most 4) covering every row of
/// `q` against the key `k` of `dim` values, after checking that `q` holds them. Shared with the
/// AVX-512 kernels.
pub(crate) fn head_groups<const Q8: bool>(
    q: &[f32],
    k: &[u8],
    m: usize,
    mut group: impl FnMut(usize, usize, usize),
) {
    let dim = if Q8 {
        q8_0_row_values(k.len())
    } else {
        f16_row_values(k.len())
    };
    assert!(q.len() >= m * dim, "KV dots: queries too short");
    let mut h = 0;
    while h < m {
        let g = (m - h).min(4);
        group(g, h, dim);
        h += g;
    }
}

/// `out[h] = q[h] · k` for every row of `q` (see `KvRows::dots_f16`).
fn dots<const Q8: bool>(_t: Avx2, q: &[f32], k: &[u8], out: &mut [f32]) {
    let m = out.len();
    head_groups::<Q8>(q, k, m, |g, h, dim| {
        // SAFETY: the token proves AVX2, FMA and F16C; rows `h..h + g` of `q` exist (checked by
        // `head_groups`), `k` holds `dim` values (`dim` derives from its length), `out` has
        // index `h + g - 1 < m`.
        unsafe {
            match g {
                4 => dots_group::<Q8, 4>(q, k, dim, h, out),
                3 => dots_group::<Q8, 3>(q, k, dim, h, out),
                2 => dots_group::<Q8, 2>(q, k, dim, h, out),
                _ => dots_group::<Q8, 1>(q, k, dim, h, out),
            }
        }
    });
}

/// `out += Σ_j weights[j] · rows[j]` with the output in registers, 64 values at a time.
///
/// # Safety
/// AVX2, FMA and F16C available; every row holds the bytes of `out.len()` values (for Q8_0 a
/// multiple of 32).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_raw<const Q8: bool>(rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
    // SAFETY: caller contract: every load reads values `c..c + 64` (or `c..c + 8`) below `n` of a
    // row, and `out` is read and written below `n`.
    unsafe {
        let n = out.len();
        let o = out.as_mut_ptr();
        let mut c = 0;
        while c + 64 <= n {
            let mut acc: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(o.add(c + 8 * k)));
            for (row, &w) in rows.iter().zip(weights) {
                let r = row.as_ptr();
                if Q8 {
                    // Two whole blocks: the weight times each block's scale, then the codes.
                    for blk in 0..2 {
                        let b = r.add(34 * (c / 32 + blk));
                        let wd = _mm256_set1_ps(w * half_at(b));
                        for k in 0..4 {
                            let a = &mut acc[4 * blk + k];
                            *a = _mm256_fmadd_ps(wd, cvt_i8(b.add(2 + 8 * k).cast()), *a);
                        }
                    }
                } else {
                    let wv = _mm256_set1_ps(w);
                    for (k, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_cvtph_ps(_mm_loadu_si128(r.add(2 * (c + 8 * k)).cast()));
                        *a = _mm256_fmadd_ps(wv, v, *a);
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(c + 8 * k), *a);
            }
            c += 64;
        }
        while c + 8 <= n {
            let mut a = _mm256_loadu_ps(o.add(c));
            for (row, &w) in rows.iter().zip(weights) {
                a = _mm256_fmadd_ps(_mm256_set1_ps(w), load8::<Q8>(row.as_ptr(), c), a);
            }
            _mm256_storeu_ps(o.add(c), a);
            c += 8;
        }
        while c < n {
            for (row, &w) in rows.iter().zip(weights) {
                *o.add(c) += w * value::<Q8>(row, c);
            }
            c += 1;
        }
    }
}

/// Checks the rows of a weighted sum into `n` values: each holds their bytes (Q8_0: whole
/// blocks). Shared with the AVX-512 kernels.
pub(crate) fn assert_weighted_rows<const Q8: bool>(rows: &[&[u8]], n: usize) {
    let bytes = if Q8 { n / 32 * 34 } else { 2 * n };
    assert!(
        (!Q8 || n.is_multiple_of(32)) && rows.iter().all(|r| r.len() >= bytes),
        "KV weighted rows: short row"
    );
}

fn weighted<const Q8: bool>(_t: Avx2, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
    let m = rows.len().min(weights.len());
    assert_weighted_rows::<Q8>(&rows[..m], out.len());
    // SAFETY: the token proves AVX2, FMA and F16C; the rows hold `out.len()` values (asserted).
    unsafe { weighted_raw::<Q8>(&rows[..m], &weights[..m], out) }
}

impl KvRows for Avx2 {
    fn dots_f16(self, q: &[f32], k: &[u8], out: &mut [f32]) {
        dots::<false>(self, q, k, out);
    }

    fn dots_q8_0(self, q: &[f32], k: &[u8], out: &mut [f32]) {
        dots::<true>(self, q, k, out);
    }

    fn weighted_rows_f16(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
        weighted::<false>(self, rows, weights, out);
    }

    fn weighted_rows_q8_0(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
        weighted::<true>(self, rows, weights, out);
    }
}
