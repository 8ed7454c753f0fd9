//! Products with f16 and Q8_0 KV cache rows on AVX-512 (16 lanes, `vcvtph2ps` to zmm), read in
//! place. Same operations as the AVX2 kernels, twice as wide.

use super::Avx512;
use crate::isa::traits::KvRows;
use crate::isa::x86::avx2::kv_rows::{assert_weighted_rows, half_at, head_groups, value};
use core::arch::x86_64::*;

/// Values `i..i + 16` of a KV row (within one block for Q8_0), exactly.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C available; `row` valid for the bytes of values
/// `i..i + 16` (for Q8_0, of their block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load16<const Q8: bool>(row: *const u8, i: usize) -> __m512 {
    // SAFETY: caller contract: the bytes read lie in the row.
    unsafe {
        if Q8 {
            let b = row.add(34 * (i / 32));
            let codes = _mm_loadu_si128(b.add(2 + i % 32).cast());
            _mm512_mul_ps(
                _mm512_set1_ps(half_at(b)),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)),
            )
        } else {
            _mm512_cvtph_ps(_mm256_loadu_si256(row.add(2 * i).cast()))
        }
    }
}

/// `out[h] = q[h] · k` for `G` query rows starting at row `h` (the key converted once).
///
/// # Safety
/// The features of [`load16`]; `q` holds rows `h..h + G` of `dim` values, `k` the bytes of
/// `dim` values, `out` index `h + G - 1`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dots_group<const Q8: bool, const G: usize>(
    q: &[f32],
    k: &[u8],
    dim: usize,
    h: usize,
    out: &mut [f32],
) {
    // SAFETY: caller contract; loads read `i + 16 <= dim` values of the key and of each row.
    unsafe {
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let whole = dim / 16 * 16;
        let mut acc = [_mm512_setzero_ps(); G];
        let mut i = 0;
        while i < whole {
            let kv = load16::<Q8>(kp, i);
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add((h + g) * dim + i)), kv, *a);
            }
            i += 16;
        }
        for (g, a) in acc.iter().enumerate() {
            let mut t = _mm512_reduce_add_ps(*a);
            for ii in whole..dim {
                t += q[(h + g) * dim + ii] * value::<Q8>(k, ii);
            }
            out[h + g] = t;
        }
    }
}

fn dots<const Q8: bool>(_t: Avx512, q: &[f32], k: &[u8], out: &mut [f32]) {
    let m = out.len();
    head_groups::<Q8>(q, k, m, |g, h, dim| {
        // SAFETY: the token proves the features; rows `h..h + g` of `q` exist (checked by
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

/// `out[c..c + 16 R] += Σ_j weights[j] · rows[j][c..c + 16 R]`, the output in `R` registers.
///
/// # Safety
/// The features of [`load16`]; every row holds the bytes of values `c..c + 16 R`, `out` holds
/// them; for Q8_0 `c` is a multiple of 16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn weighted_chunk<const Q8: bool, const R: usize>(
    rows: &[&[u8]],
    weights: &[f32],
    o: *mut f32,
    c: usize,
) {
    // SAFETY: caller contract.
    unsafe {
        let mut acc: [__m512; R] = std::array::from_fn(|k| _mm512_loadu_ps(o.add(c + 16 * k)));
        for (row, &w) in rows.iter().zip(weights) {
            let r = row.as_ptr();
            if Q8 {
                // Per 16 values (half a block): the weight times the block's scale.
                for (k, a) in acc.iter_mut().enumerate() {
                    let i = c + 16 * k;
                    let b = r.add(34 * (i / 32));
                    let codes = _mm_loadu_si128(b.add(2 + i % 32).cast());
                    let wd = _mm512_set1_ps(w * half_at(b));
                    *a = _mm512_fmadd_ps(wd, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)), *a);
                }
            } else {
                let wv = _mm512_set1_ps(w);
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(wv, load16::<false>(r, c + 16 * k), *a);
                }
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(c + 16 * k), *a);
        }
    }
}

fn weighted<const Q8: bool>(_t: Avx512, rows: &[&[u8]], weights: &[f32], out: &mut [f32]) {
    let m = rows.len().min(weights.len());
    let (rows, weights) = (&rows[..m], &weights[..m]);
    let n = out.len();
    assert_weighted_rows::<Q8>(rows, n);
    let o = out.as_mut_ptr();
    let mut c = 0;
    while c + 128 <= n {
        // SAFETY: the token proves the features; the rows hold `n` values (asserted) and the
        // chunk `c..c + 128` ends at or below `n`; `c` is a multiple of 16.
        unsafe { weighted_chunk::<Q8, 8>(rows, weights, o, c) };
        c += 128;
    }
    if c + 64 <= n {
        // SAFETY: as above, for `c..c + 64`.
        unsafe { weighted_chunk::<Q8, 4>(rows, weights, o, c) };
        c += 64;
    }
    if c + 32 <= n {
        // SAFETY: as above, for `c..c + 32`.
        unsafe { weighted_chunk::<Q8, 2>(rows, weights, o, c) };
        c += 32;
    }
    if c + 16 <= n {
        // SAFETY: as above, for `c..c + 16`.
        unsafe { weighted_chunk::<Q8, 1>(rows, weights, o, c) };
        c += 16;
    }
    for (i, o) in out.iter_mut().enumerate().skip(c) {
        for (row, &w) in rows.iter().zip(weights) {
            *o += w * value::<Q8>(row, i);
        }
    }
}

impl KvRows for Avx512 {
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
