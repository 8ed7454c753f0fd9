//! The f32 GEMM tile (6x16) and its packers: f32 rows transposed, int8 rows dequantized.

use super::{cvt_i8, transpose8, Avx2};
use crate::isa::traits::{Micro, Operands};
use crate::mat::{MatRef, GROUP_SIZE};
use core::arch::x86_64::*;

/// Micro-kernel rows (batch rows per tile).
const MR: usize = 6;
/// Micro-kernel columns (weight rows per tile): 12 accumulators + 2 B + 1 broadcast = 15 ymm.
const NR: usize = 16;

/// See [`kernel_6x16`]; `pf` holds `npf` addresses to prefetch.
///
/// # Safety
/// AVX2 and FMA must be available; `a` must be valid for `kc * 6` reads, `b` for `kc * 16`, `c`
/// for reads and writes of `c[i*ldc..i*ldc + 16]` for `i < 6`, and `pf` for `npf` reads (the
/// addresses it holds are only prefetched, which never faults).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16_raw(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    pf: *const *const u8,
    npf: usize,
) {
    // SAFETY: caller contract: `a` holds kc*6 values, `b` kc*16, `c` rows i*ldc..i*ldc+16 for i < 6,
    // `pf` npf addresses (only prefetched, which never faults).
    unsafe {
        if accumulate {
            // The C tile is read back after the k loop: fetch it now so that load does not stall
            // (C is batch x n, far larger than L2; every depth block revisits it).
            for i in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1).cast());
            }
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        // The k loop runs in `npf` stretches, each starting with one prefetch of the next weight
        // panel: spread evenly, the prefetches never queue for miss buffers, and the FMA loop
        // itself carries no prefetch bookkeeping.
        let mut k = 0;
        for next in 0..=npf {
            let end = if next < npf {
                _mm_prefetch::<_MM_HINT_T0>((*pf.add(next)).cast());
                kc * (next + 1) / npf
            } else {
                kc
            };
            while k < end {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (i, ac) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(i));
                    ac[0] = _mm256_fmadd_ps(av, b0, ac[0]);
                    ac[1] = _mm256_fmadd_ps(av, b1, ac[1]);
                }
                a = a.add(MR);
                b = b.add(NR);
                k += 1;
            }
        }
        for (i, ac) in acc.iter().enumerate() {
            let p = c.add(i * ldc);
            let (mut v0, mut v1) = (ac[0], ac[1]);
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
            }
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        }
    }
}

/// The 6x16 FMA micro-kernel: `c[i*ldc + j] (+)= Σ_k a[k*6 + i] b[k*16 + j]`, prefetching the
/// addresses in `pf` along the way.
fn kernel_6x16(_t: Avx2, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    let Operands { kc, a, b, pf } = *op;
    assert!(
        a.len() >= kc * MR && b.len() >= kc * NR,
        "packed panels too short"
    );
    assert!(
        ldc >= NR && c.len() >= (MR - 1) * ldc + NR,
        "C tile out of bounds"
    );
    // SAFETY: the token proves AVX2+FMA; panel and tile extents were asserted above; `pf` is
    // valid for `pf.len()` reads.
    unsafe {
        kernel_6x16_raw(
            kc,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            ldc,
            accumulate,
            pf.as_ptr(),
            pf.len(),
        )
    }
}

/// See [`pack_b_f32`].
///
/// # Safety
/// AVX2 and FMA must be available; `P % 8 == 0`; `w` must be valid for reads of
/// `w[j*ldw..j*ldw + kc]` for `j < P`, and `out` for `kc * P` writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b_f32_raw<const P: usize>(w: *const f32, ldw: usize, kc: usize, out: *mut f32) {
    // SAFETY: caller contract: `w` rows j*ldw..j*ldw+kc (j < P) readable, `out` has kc*P slots.
    unsafe {
        let k8 = kc / 8 * 8;
        let mut k = 0;
        while k < k8 {
            for h in 0..P / 8 {
                let mut r = [_mm256_setzero_ps(); 8];
                for (j, rj) in r.iter_mut().enumerate() {
                    *rj = _mm256_loadu_ps(w.add((h * 8 + j) * ldw + k));
                }
                for (i, ti) in transpose8(r).iter().enumerate() {
                    _mm256_storeu_ps(out.add((k + i) * P + h * 8), *ti);
                }
            }
            k += 8;
        }
        for kk in k8..kc {
            for j in 0..P {
                *out.add(kk * P + j) = *w.add(j * ldw + kk);
            }
        }
    }
}

/// Packs `P` full weight rows `w[j*ldw + k]` (`j < P`, `k < kc`) as `out[k*P + j]`.
fn pack_b_f32<const P: usize>(_t: Avx2, w: &[f32], ldw: usize, kc: usize, out: &mut [f32]) {
    assert!(P.is_multiple_of(8), "panel width must be whole vectors");
    assert!(
        kc <= ldw && w.len() >= (P - 1) * ldw + kc,
        "weight rows out of bounds"
    );
    assert!(out.len() >= kc * P, "packed panel too short");
    // SAFETY: the token proves AVX2+FMA; the extents were asserted above.
    unsafe { pack_b_f32_raw::<P>(w.as_ptr(), ldw, kc, out.as_mut_ptr()) }
}

/// Inverse scales in this range take the refined-reciprocal dequantization (which needs a
/// normal reciprocal); others (0, ±inf, NaN, extremes) are divided directly.
fn refine_ok(v: f32) -> bool {
    (1e-30..=1e30).contains(&v.abs())
}

/// `v / iv` correctly rounded, given `rc = 1 / iv` (normal): `y = v * rc`, then one Markstein
/// correction `y + (v - y * iv) * rc`. Bit-identical to the division (tested), but three FMA-port
/// ops instead of a slow `vdivps`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn div_refined(v: __m256, iv: __m256, rc: __m256) -> __m256 {
    let y = _mm256_mul_ps(v, rc);
    let e = _mm256_fnmadd_ps(y, iv, v);
    _mm256_fmadd_ps(e, rc, y)
}

/// See [`pack_b_i8`].
///
/// # Safety
/// AVX2 and FMA must be available; `P % 8 == 0`; `kc % 64 == 0`; `q` must be valid for reads of
/// `q[j*ldq..j*ldq + kc]` and `inv` of `inv[j*groups..j*groups + kc/64]` for `j < P`, and `out`
/// for `kc * P` writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b_i8_raw<const P: usize>(
    q: *const i8,
    ldq: usize,
    inv: *const f32,
    groups: usize,
    kc: usize,
    out: *mut f32,
) {
    // SAFETY: caller contract: q rows j*ldq..j*ldq+kc and scales j*groups..j*groups+kc/64 (j < P)
    // readable, `out` has kc*P slots, kc % 64 == 0.
    unsafe {
        for gg in 0..kc / GROUP_SIZE {
            for h in 0..P / 8 {
                // Lanes are weight rows after the transpose, so the 8 rows' scales form one vector.
                let mut s = [0.0f32; 8];
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = *inv.add((h * 8 + j) * groups + gg);
                }
                let refine = s.iter().all(|&v| refine_ok(v));
                let iv = _mm256_loadu_ps(s.as_ptr());
                let rc = _mm256_div_ps(_mm256_set1_ps(1.0), iv);
                for sub in 0..GROUP_SIZE / 8 {
                    let k = gg * GROUP_SIZE + sub * 8;
                    let mut r = [_mm256_setzero_ps(); 8];
                    for (j, rj) in r.iter_mut().enumerate() {
                        *rj = cvt_i8(q.add((h * 8 + j) * ldq + k));
                    }
                    for (i, v) in transpose8(r).iter().enumerate() {
                        let d = if refine {
                            div_refined(*v, iv, rc)
                        } else {
                            _mm256_div_ps(*v, iv)
                        };
                        _mm256_storeu_ps(out.add((k + i) * P + h * 8), d);
                    }
                }
            }
        }
    }
}

/// Packs and dequantizes `P` full row-aligned int8 rows: `out[k*P + j] = q[j*ldq + k] /
/// inv[j*groups + k/64]` for `k < kc` (`kc % 64 == 0`, `q` and `inv` start at a group boundary).
fn pack_b_i8<const P: usize>(
    _t: Avx2,
    q: &[i8],
    ldq: usize,
    inv: &[f32],
    groups: usize,
    kc: usize,
    out: &mut [f32],
) {
    assert!(P.is_multiple_of(8), "panel width must be whole vectors");
    assert!(
        kc.is_multiple_of(GROUP_SIZE) && kc <= ldq,
        "kc must be whole groups"
    );
    assert!(q.len() >= (P - 1) * ldq + kc, "weight rows out of bounds");
    assert!(
        inv.len() >= (P - 1) * groups + kc / GROUP_SIZE,
        "scales out of bounds"
    );
    assert!(out.len() >= kc * P, "packed panel too short");
    // SAFETY: the token proves AVX2+FMA; the extents were asserted above.
    unsafe { pack_b_i8_raw::<P>(q.as_ptr(), ldq, inv.as_ptr(), groups, kc, out.as_mut_ptr()) }
}

/// The same refined-reciprocal dequantization as [`pack_b_i8`], for one value (tests compare it
/// bit for bit with `q / inv` over every int8 value and many scales).
#[cfg(test)]
fn dequant_refined(_t: Avx2, q: i8, inv: f32) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    fn one(q: i8, inv: f32) -> f32 {
        let v = _mm256_set1_ps(f32::from(q));
        let iv = _mm256_set1_ps(inv);
        let rc = _mm256_div_ps(_mm256_set1_ps(1.0), iv);
        let d = if refine_ok(inv) {
            div_refined(v, iv, rc)
        } else {
            _mm256_div_ps(v, iv)
        };
        _mm256_cvtss_f32(d)
    }
    // SAFETY: the token proves AVX2+FMA.
    unsafe { one(q, inv) }
}

/// The 6x16 tile, with transposing (and dequantizing) packers for full panels.
impl Micro for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    const PREFETCH: bool = true;

    fn kernel(self, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        kernel_6x16(self, op, c, ldc, accumulate);
    }

    fn pack_b(
        self,
        w: &MatRef<'_>,
        n0: usize,
        nr: usize,
        pc: usize,
        kc: usize,
        out: &mut [f32],
    ) -> bool {
        nr == NR && pack_b_panel::<NR>(self, w, n0, pc, kc, out)
    }
}

/// Packs `P` full weight rows `n0..n0+P`, columns `pc..pc+kc`, as `out[k*P + j]` (int8
/// dequantized exactly) for the f32 tiles of any width `P` (a multiple of 8); `false` for the
/// layouts these packers do not take, which the driver's portable packer does.
pub(crate) fn pack_b_panel<const P: usize>(
    t: Avx2,
    w: &MatRef<'_>,
    n0: usize,
    pc: usize,
    kc: usize,
    out: &mut [f32],
) -> bool {
    match w {
        MatRef::F32(m) => {
            let cols = m.cols();
            let src = &m.data()[n0 * cols + pc..];
            pack_b_f32::<P>(t, src, cols, kc, out);
            true
        }
        MatRef::Int8(m) if m.is_row_aligned() && kc.is_multiple_of(GROUP_SIZE) => {
            let cols = m.cols();
            let groups = cols / GROUP_SIZE;
            let q = &m.q()[n0 * cols + pc..];
            let inv = &m.inv_scales()[n0 * groups + pc / GROUP_SIZE..];
            pack_b_i8::<P>(t, q, cols, inv, groups, kc, out);
            true
        }
        MatRef::Int8(_) | MatRef::Int4(_) | MatRef::Blocks(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refined_reciprocal_dequantization_is_bit_exact() {
        let Some(t) = Avx2::detect() else { return };
        // Every int8 value against many scales, log-uniform over a wide range, plus specials.
        let mut s = 0x1234_5678_u64;
        let mut scales = vec![
            1.0f32,
            127.0,
            0.5,
            3.0,
            1e-30,
            1e30,
            f32::INFINITY,
            0.0,
            -2.5,
        ];
        for _ in 0..20_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let e = ((s >> 11) as f64 / (1u64 << 53) as f64) * 120.0 - 40.0;
            let m = 1.0 + ((s >> 20) & 0xFFFF) as f64 / 65536.0;
            scales.push((m * 2f64.powf(e)) as f32);
        }
        for &inv in &scales {
            for q in -128i8..=127 {
                let want = f32::from(q) / inv;
                let got = dequant_refined(t, q, inv);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "q {q} inv {inv:e}: {got:e} vs {want:e}"
                );
            }
        }
    }
}
