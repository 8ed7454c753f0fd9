//! Element-wise ops and reductions: dot products, softmax, SwiGLU, axpy, weighted row sums.

use super::{exp256, hsum, prefetch, Avx2};
use crate::isa::traits::Elementwise;
use core::arch::x86_64::*;

/// `Σ a[i] b[i]` for `i < n`: four 8-lane FMA chains, then a scalar tail.
///
/// # Safety
/// AVX2 and FMA must be available; `a` and `b` must be valid for `n` reads.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `a` and `b` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a_u) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *a_u = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *a_u);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += *a.add(i) * *b.add(i);
            i += 1;
        }
        s
    }
}

/// `Σ a[i] b[i]` over the common length.
fn dot(_t: Avx2, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { dot_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// `out[h] = q[h] · k` for `m` rows of `hd` values in `q`, four heads per pass (see [`dots`]).
///
/// # Safety
/// AVX2 and FMA must be available; `q` must be valid for `m * hd` reads, `k` for `hd` and `out`
/// for `m` writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_raw(q: *const f32, hd: usize, m: usize, k: *const f32, out: *mut f32) {
    // SAFETY: caller contract: `q` valid for m*hd reads, `k` for hd, `out` for m writes; offsets
    // are `(h + g) * hd + i + 7 < m * hd` and `i + 7 < hd`.
    unsafe {
        let mut h = 0;
        while h + 4 <= m {
            // Four heads against one key: the key is loaded once, 8 independent FMA chains.
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            let mut i = 0;
            while i + 16 <= hd {
                for (u, a) in acc.iter_mut().enumerate() {
                    let kv = _mm256_loadu_ps(k.add(i + 8 * u));
                    for (g, ag) in a.iter_mut().enumerate() {
                        *ag = _mm256_fmadd_ps(
                            _mm256_loadu_ps(q.add((h + g) * hd + i + 8 * u)),
                            kv,
                            *ag,
                        );
                    }
                }
                i += 16;
            }
            if i + 8 <= hd {
                let kv = _mm256_loadu_ps(k.add(i));
                for (g, ag) in acc[0].iter_mut().enumerate() {
                    *ag = _mm256_fmadd_ps(_mm256_loadu_ps(q.add((h + g) * hd + i)), kv, *ag);
                }
                i += 8;
            }
            let a: [__m256; 4] = [
                _mm256_add_ps(acc[0][0], acc[1][0]),
                _mm256_add_ps(acc[0][1], acc[1][1]),
                _mm256_add_ps(acc[0][2], acc[1][2]),
                _mm256_add_ps(acc[0][3], acc[1][3]),
            ];
            // Transposing reduction: lane g of `r` is head g's sum.
            let s = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), r);
            for (g, sum) in sums.iter().enumerate() {
                let mut t = *sum;
                for ii in i..hd {
                    t += *q.add((h + g) * hd + ii) * *k.add(ii);
                }
                *out.add(h + g) = t;
            }
            h += 4;
        }
        while h < m {
            *out.add(h) = dot_raw(q.add(h * hd), k, hd);
            h += 1;
        }
    }
}

/// `out[h] = q[h] · k` for the `out.len()` rows of `head_dim` values in `q`.
fn dots(_t: Avx2, q: &[f32], k: &[f32], out: &mut [f32]) {
    let (hd, m) = (k.len(), out.len());
    assert!(q.len() >= m * hd, "dots: queries too short");
    // SAFETY: the token proves AVX2+FMA; `q` holds m*hd values (asserted), `k` hd, `out` m.
    unsafe { dots_raw(q.as_ptr(), hd, m, k.as_ptr(), out.as_mut_ptr()) }
}

/// Sum of `n` values from `p`.
///
/// # Safety
/// AVX2 must be available; `p` must be valid for `n` reads.
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_raw(p: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `p` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (u, a_u) in acc.iter_mut().enumerate() {
                *a_u = _mm256_add_ps(*a_u, _mm256_loadu_ps(p.add(i + 8 * u)));
            }
            i += 64;
        }
        for u in 1..8 {
            acc[0] = _mm256_add_ps(acc[0], acc[u]);
        }
        let mut s = hsum(acc[0]);
        while i < n {
            s += *p.add(i);
            i += 1;
        }
        s
    }
}

/// Sum of all values (read-bandwidth probe): 8 independent 8-lane accumulators.
fn sum(_t: Avx2, x: &[f32]) -> f32 {
    // SAFETY: the token proves AVX2; `x` holds `x.len()` values.
    unsafe { sum_raw(x.as_ptr(), x.len()) }
}

/// `n` steps of 12 independent 8-lane FMA chains.
#[target_feature(enable = "avx2,fma")]
fn fma_chains_raw(n: usize) -> f32 {
    let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let b = _mm256_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..n {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    for u in 1..12 {
        acc[0] = _mm256_add_ps(acc[0], acc[u]);
    }
    hsum(acc[0])
}

/// `n` steps of 12 independent 8-lane FMA chains (the FMA-peak probe).
fn fma_chains(_t: Avx2, n: usize) -> f32 {
    // SAFETY: the token proves AVX2+FMA.
    unsafe { fma_chains_raw(n) }
}

/// In-place softmax of `n` values at `p`.
///
/// # Safety
/// AVX2 and FMA must be available; `p` must be valid for `n` reads and writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_raw(p: *mut f32, n: usize) {
    // SAFETY: caller contract: `p` valid for `n` reads and writes; offsets stay below `n`.
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for j in i..n {
            max = max.max(*p.add(j));
        }
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            s = _mm256_add_ps(s, e);
            _mm256_storeu_ps(p.add(i), e);
            i += 8;
        }
        let mut sum = hsum(s);
        if i < n {
            let mut t = [f32::NEG_INFINITY; 8];
            for j in i..n {
                t[j - i] = *p.add(j) - max;
            }
            _mm256_storeu_ps(t.as_mut_ptr(), exp256(_mm256_loadu_ps(t.as_ptr())));
            for j in i..n {
                *p.add(j) = t[j - i];
                sum += t[j - i];
            }
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
            i += 8;
        }
        for j in i..n {
            *p.add(j) *= inv;
        }
    }
}

/// In-place numerically stable softmax.
fn softmax(_t: Avx2, x: &mut [f32]) {
    // SAFETY: the token proves AVX2+FMA; `x` is valid for its length.
    unsafe { softmax_raw(x.as_mut_ptr(), x.len()) }
}

/// `o[i] = silu(g[i]) * u[i]` for `i < n`.
///
/// # Safety
/// AVX2 and FMA must be available; `g` and `u` must be valid for `n` reads, `o` for `n` writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_raw(g: *const f32, u: *const f32, o: *mut f32, n: usize) {
    // SAFETY: caller contract: all three pointers valid for `n` elements; offsets stay below `n`.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + 8 <= n {
            let gv = _mm256_loadu_ps(g.add(i));
            let den = _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, neg)));
            let v = _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u.add(i)));
            _mm256_storeu_ps(o.add(i), v);
            i += 8;
        }
        if i < n {
            let (mut tg, mut tu) = ([0.0f32; 8], [0.0f32; 8]);
            for j in i..n {
                tg[j - i] = *g.add(j);
                tu[j - i] = *u.add(j);
            }
            let gv = _mm256_loadu_ps(tg.as_ptr());
            let den = _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, neg)));
            let v = _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(tu.as_ptr()));
            _mm256_storeu_ps(tg.as_mut_ptr(), v);
            for j in i..n {
                *o.add(j) = tg[j - i];
            }
        }
    }
}

/// `out = silu(gate) * up` (equal lengths, checked).
fn silu_mul(_t: Avx2, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(gate.len() == n && up.len() == n, "silu_mul lengths");
    // SAFETY: the token proves AVX2+FMA; all three slices hold `n` values (asserted).
    unsafe { silu_mul_raw(gate.as_ptr(), up.as_ptr(), out.as_mut_ptr(), n) }
}

/// `o[i] += a * v[i]` for `i < n`.
///
/// # Safety
/// AVX2 and FMA must be available; `v` must be valid for `n` reads, `o` for `n` reads and
/// writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_raw(a: f32, v: *const f32, o: *mut f32, n: usize) {
    // SAFETY: caller contract: both pointers valid for `n` elements.
    unsafe {
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            let o0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(v.add(i)), _mm256_loadu_ps(o.add(i)));
            let o1 = _mm256_fmadd_ps(
                av,
                _mm256_loadu_ps(v.add(i + 8)),
                _mm256_loadu_ps(o.add(i + 8)),
            );
            _mm256_storeu_ps(o.add(i), o0);
            _mm256_storeu_ps(o.add(i + 8), o1);
            i += 16;
        }
        while i + 8 <= n {
            let o0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(v.add(i)), _mm256_loadu_ps(o.add(i)));
            _mm256_storeu_ps(o.add(i), o0);
            i += 8;
        }
        while i < n {
            *o.add(i) += a * *v.add(i);
            i += 1;
        }
    }
}

/// `out += a * v` over the common length.
fn axpy(_t: Avx2, a: f32, v: &[f32], out: &mut [f32]) {
    let n = v.len().min(out.len());
    // SAFETY: the token proves AVX2+FMA; both slices hold at least `n` values.
    unsafe { axpy_raw(a, v.as_ptr(), out.as_mut_ptr(), n) }
}

/// Rows ahead whose first lines `weighted_rows` prefetches (rows of a slot-major KV cache are
/// a page apart, where the hardware prefetcher does not follow).
const PF_ROWS: usize = 4;

/// `out += Σ_j weights[j] · rows[j]`, the rows taken in order, each output element accumulated
/// exactly as repeated `axpy` calls would (one FMA per row, in row order), but 64 elements at a
/// time held in registers across all the rows instead of loaded and stored once per row.
///
/// # Safety
/// AVX2 and FMA must be available; every row must hold at least `n` values, `out` `n`.
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_raw(rows: &[&[f32]], weights: &[f32], o: *mut f32, n: usize) {
    // SAFETY: caller contract: each row pointer is valid for `n` reads and `o` for `n` reads and
    // writes; the prefetches are hints and never fault.
    unsafe {
        let mut c = 0;
        while c + 64 <= n {
            let mut acc: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(o.add(c + 8 * k)));
            for (j, (row, &w)) in rows.iter().zip(weights).enumerate() {
                if let Some(ahead) = rows.get(j + PF_ROWS) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().wrapping_add(c).cast());
                }
                let wv = _mm256_set1_ps(w);
                let r = row.as_ptr().add(c);
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8 * k)), *a);
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
                a = _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(row.as_ptr().add(c)), a);
            }
            _mm256_storeu_ps(o.add(c), a);
            c += 8;
        }
        while c < n {
            // As `axpy_raw`'s tail: a product, then a sum.
            for (row, &w) in rows.iter().zip(weights) {
                *o.add(c) += w * *row.as_ptr().add(c);
            }
            c += 1;
        }
    }
}

/// `out += Σ_j weights[j] · rows[j]` over the first `out.len()` values of each row (see
/// `weighted_rows_raw`); extra weights or rows are ignored.
fn weighted_rows(_t: Avx2, rows: &[&[f32]], weights: &[f32], out: &mut [f32]) {
    let n = out.len();
    let m = rows.len().min(weights.len());
    assert!(
        rows[..m].iter().all(|r| r.len() >= n),
        "weighted_rows: short row"
    );
    // SAFETY: the token proves AVX2+FMA; the first `m` rows hold at least `n` values (asserted)
    // and `out` holds `n`.
    unsafe { weighted_rows_raw(&rows[..m], &weights[..m], out.as_mut_ptr(), n) }
}

impl Elementwise for Avx2 {
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot(self, a, b)
    }

    fn dots(self, q: &[f32], k: &[f32], out: &mut [f32]) {
        dots(self, q, k, out);
    }

    fn axpy(self, a: f32, v: &[f32], out: &mut [f32]) {
        axpy(self, a, v, out);
    }

    fn weighted_rows(self, rows: &[&[f32]], weights: &[f32], out: &mut [f32]) {
        weighted_rows(self, rows, weights, out);
    }

    fn softmax(self, x: &mut [f32]) {
        softmax(self, x);
    }

    fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        silu_mul(self, gate, up, out);
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        prefetch(self, p);
    }

    fn sum(self, x: &[f32]) -> f32 {
        sum(self, x)
    }

    fn fma_chains(self, n: usize) -> f32 {
        fma_chains(self, n)
    }
}
