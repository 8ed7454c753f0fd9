//! The read-bandwidth probe's 512-bit loop: on CPUs whose load ports take a whole zmm register
//! per cycle, 64-byte loads can stream faster than 32-byte ones, so the probe tries both.

use super::Avx512;
use core::arch::x86_64::*;

/// Sum of `n` values from `p`: eight independent 16-lane accumulators (128 values, 8 cache lines
/// per step), then a scalar tail.
///
/// # Safety
/// AVX-512 F must be available; `p` must be valid for `n` reads.
#[target_feature(enable = "avx512f")]
unsafe fn sum_raw(p: *const f32, n: usize) -> f32 {
    // SAFETY: caller contract: `p` valid for `n` reads; offsets stay below `n`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut i = 0;
        while i + 128 <= n {
            for (u, a_u) in acc.iter_mut().enumerate() {
                *a_u = _mm512_add_ps(*a_u, _mm512_loadu_ps(p.add(i + 16 * u)));
            }
            i += 128;
        }
        for u in 1..8 {
            acc[0] = _mm512_add_ps(acc[0], acc[u]);
        }
        let mut s = _mm512_reduce_add_ps(acc[0]);
        while i < n {
            s += *p.add(i);
            i += 1;
        }
        s
    }
}

/// `n` steps of 24 independent 16-lane FMA chains (enough to cover the FMA latency on two
/// 512-bit pipes).
#[target_feature(enable = "avx512f")]
fn fma_chains_raw(n: usize) -> f32 {
    let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let b = _mm512_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm512_setzero_ps(); 24];
    for _ in 0..n {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    for u in 1..24 {
        acc[0] = _mm512_add_ps(acc[0], acc[u]);
    }
    _mm512_reduce_add_ps(acc[0])
}

impl Avx512 {
    /// `n` steps of 24 independent 16-lane FMA chains: `n * 24 * 16` multiply-adds (the FMA
    /// peak probe's 512-bit loop).
    pub(crate) fn fma_chains_zmm(self, n: usize) -> f32 {
        // SAFETY: the token proves AVX-512 F.
        unsafe { fma_chains_raw(n) }
    }

    /// Sum of all values with 512-bit loads (the read-bandwidth probe's widest loop).
    pub(crate) fn sum_zmm(self, x: &[f32]) -> f32 {
        // SAFETY: the token proves AVX-512 F; `x` holds `x.len()` values.
        unsafe { sum_raw(x.as_ptr(), x.len()) }
    }
}
