//! The f32 GEMM tile on 512-bit registers (12x32): the AVX2 6x16 tile's loop with twice the
//! lanes and twice the rows, 24 accumulators + 2 weight vectors + 1 broadcast of the 32 zmm
//! registers. Each output is one FMA chain over the depth block, as in the AVX2 tile, so the
//! results are the same bits. The weight panels are packed by the AVX2 packers at width 32.

use super::Avx512;
use crate::isa::traits::{Micro, Operands};
use crate::isa::x86::avx2::gemm_f32::pack_b_panel;
use crate::mat::MatRef;
use core::arch::x86_64::*;

/// Micro-kernel rows (batch rows per tile).
const MR: usize = 12;
/// Micro-kernel columns (weight rows per tile): two zmm vectors.
const NR: usize = 32;

/// See [`kernel_12x32`]; `pf` holds `npf` addresses to prefetch.
///
/// # Safety
/// AVX-512 F must be available; `a` must be valid for `kc * 12` reads, `b` for `kc * 32`, `c`
/// for reads and writes of `c[i*ldc..i*ldc + 32]` for `i < 12`, and `pf` for `npf` reads (the
/// addresses it holds are only prefetched, which never faults).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_12x32_raw(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    pf: *const *const u8,
    npf: usize,
) {
    // SAFETY: caller contract: `a` holds kc*12 values, `b` kc*32, `c` rows i*ldc..i*ldc+32 for
    // i < 12, `pf` npf addresses (only prefetched, which never faults).
    unsafe {
        if accumulate {
            // The C tile is read back after the k loop: fetch it now (see the AVX2 tile).
            for i in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1).cast());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        // The k loop runs in `npf` stretches, each starting with one prefetch of the next
        // weight panel (as in the AVX2 tile).
        let mut k = 0;
        for next in 0..=npf {
            let end = if next < npf {
                _mm_prefetch::<_MM_HINT_T0>((*pf.add(next)).cast());
                kc * (next + 1) / npf
            } else {
                kc
            };
            while k < end {
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (i, ac) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(i));
                    ac[0] = _mm512_fmadd_ps(av, b0, ac[0]);
                    ac[1] = _mm512_fmadd_ps(av, b1, ac[1]);
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
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p.add(16)));
            }
            _mm512_storeu_ps(p, v0);
            _mm512_storeu_ps(p.add(16), v1);
        }
    }
}

/// The 12x32 FMA micro-kernel: `c[i*ldc + j] (+)= Σ_k a[k*12 + i] b[k*32 + j]`, prefetching the
/// addresses in `pf` along the way.
fn kernel_12x32(_t: Avx512, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    let Operands { kc, a, b, pf } = *op;
    assert!(
        a.len() >= kc * MR && b.len() >= kc * NR,
        "packed panels too short"
    );
    assert!(
        ldc >= NR && c.len() >= (MR - 1) * ldc + NR,
        "C tile out of bounds"
    );
    // SAFETY: the token proves AVX-512 F; panel and tile extents were asserted above; `pf` is
    // valid for `pf.len()` reads.
    unsafe {
        kernel_12x32_raw(
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

/// The 12x32 tile, with the AVX2 transposing (and dequantizing) packers at width 32.
impl Micro for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    const PREFETCH: bool = true;

    fn kernel(self, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        kernel_12x32(self, op, c, ldc, accumulate);
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
        nr == NR && pack_b_panel::<NR>(self.avx2(), w, n0, pc, kc, out)
    }
}
