//! The `wide` f32 GEMM tile.

use super::{ld, st};
use crate::isa::traits::{Micro, Operands};
use wide::f32x8;

/// The micro-kernel: `c[i][j] (+)= Σ_k a[k][i] b[k][j]` for an `MR x NR` tile, `NR = 8 * NV`.
fn gemm_kernel<const MR: usize, const NV: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let nr = 8 * NV;
    let mut acc = [[f32x8::ZERO; NV]; MR];
    for (ak, bk) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * nr].chunks_exact(nr))
    {
        let bv: [f32x8; NV] = std::array::from_fn(|v| ld(&bk[8 * v..]));
        for i in 0..MR {
            let av = f32x8::splat(ak[i]);
            for v in 0..NV {
                acc[i][v] = av.mul_add(bv[v], acc[i][v]);
            }
        }
    }
    for i in 0..MR {
        let row = &mut c[i * ldc..i * ldc + nr];
        for v in 0..NV {
            let o = &mut row[8 * v..8 * v + 8];
            let val = if accumulate {
                acc[i][v] + ld(o)
            } else {
                acc[i][v]
            };
            st(val, o);
        }
    }
}

/// `MR x 8*NV` tiles of `f32x8` accumulators.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WideMicro<const MR: usize, const NV: usize>;

impl<const MR_: usize, const NV: usize> Micro for WideMicro<MR_, NV> {
    const MR: usize = MR_;
    const NR: usize = 8 * NV;

    fn kernel(self, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        gemm_kernel::<MR_, NV>(op.kc, op.a, op.b, c, ldc, accumulate);
    }
}

/// The tile the `wide` path uses: 16 accumulator registers on SSE2 fit 4x8; NEON's 32 fit 6x16.
#[cfg(target_arch = "aarch64")]
pub(crate) type WideTile = WideMicro<6, 2>;
/// The tile the `wide` path uses: 16 accumulator registers on SSE2 fit 4x8; NEON's 32 fit 6x16.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) type WideTile = WideMicro<4, 1>;
