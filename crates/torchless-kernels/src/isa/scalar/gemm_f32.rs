//! The scalar f32 GEMM tile.

use super::Scalar;
use crate::isa::traits::{Micro, Operands};

/// A 4x8 tile in plain arrays (LLVM vectorizes the inner loop).
impl Micro for Scalar {
    const MR: usize = 4;
    const NR: usize = 8;

    fn kernel(self, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        let Operands { kc, a, b, .. } = *op;
        let mut acc = [[0.0f32; 8]; 4];
        for (ak, bk) in a[..kc * 4].chunks_exact(4).zip(b[..kc * 8].chunks_exact(8)) {
            for i in 0..4 {
                for j in 0..8 {
                    acc[i][j] += ak[i] * bk[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let dst = &mut c[i * ldc..i * ldc + 8];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}
