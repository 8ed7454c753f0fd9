//! The portable integer GEMM tiles: the same integer sums and the same f32 operations in the same
//! order as the SIMD kernels, so every path gives bit-identical results.

use super::Scalar;
use crate::isa::traits::{Q4Micro, Q4Operands, QMicro, QOperands, QMR, QNR};

impl QMicro for Scalar {
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        const WORDS_PER_GROUP: usize = QOperands::WORDS_PER_GROUP;
        let QOperands {
            groups,
            a,
            a_scales,
            b,
            b_scales,
            b_corr,
        } = *op;
        let mut out = [[0.0f32; QNR]; QMR];
        if accumulate {
            for (i, row) in out.iter_mut().enumerate() {
                row.copy_from_slice(&c[i * ldc..i * ldc + QNR]);
            }
        }
        for g in 0..groups {
            let corr = &b_corr[g * QNR..(g + 1) * QNR];
            let mut acc = [[0i32; QNR]; QMR];
            for row in acc.iter_mut() {
                row.copy_from_slice(corr);
            }
            for kq in g * WORDS_PER_GROUP..(g + 1) * WORDS_PER_GROUP {
                let bw = &b[kq * QNR..(kq + 1) * QNR];
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let aw = a[kq * QMR + i].to_le_bytes();
                    for (acc_ij, &w) in acc_row.iter_mut().zip(bw) {
                        let wb = w.to_le_bytes();
                        *acc_ij += (0..4)
                            .map(|t| i32::from(aw[t]) * i32::from(wb[t] as i8))
                            .sum::<i32>();
                    }
                }
            }
            let ws = &b_scales[g * QNR..(g + 1) * QNR];
            for (i, (out_row, acc_row)) in out.iter_mut().zip(&acc).enumerate() {
                let sa = a_scales[g * QMR + i];
                for ((o, &s), &v) in out_row.iter_mut().zip(ws).zip(acc_row) {
                    *o = (v as f32).mul_add(s * sa, *o);
                }
            }
        }
        for (i, row) in out.iter().enumerate() {
            c[i * ldc..i * ldc + QNR].copy_from_slice(row);
        }
    }
}

impl Q4Micro for Scalar {
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        const WORDS_PER_GROUP: usize = Q4Operands::WORDS_PER_GROUP;
        let Q4Operands {
            groups,
            a,
            a_steps,
            a_offsets,
            b,
            b_scales,
        } = *op;
        let mut out = [[0.0f32; QNR]; QMR];
        if accumulate {
            for (i, row) in out.iter_mut().enumerate() {
                row.copy_from_slice(&c[i * ldc..i * ldc + QNR]);
            }
        }
        for g in 0..groups {
            let mut acc = [[0i32; QNR]; QMR];
            for kq in g * WORDS_PER_GROUP..(g + 1) * WORDS_PER_GROUP {
                let bw = &b[kq * QNR..(kq + 1) * QNR];
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let aw = a[kq * QMR + i].to_le_bytes();
                    for (acc_ij, &w) in acc_row.iter_mut().zip(bw) {
                        let wb = w.to_le_bytes();
                        *acc_ij += (0..4)
                            .map(|t| i32::from(wb[t]) * i32::from(aw[t] as i8))
                            .sum::<i32>();
                    }
                }
            }
            let ws = &b_scales[g * QNR..(g + 1) * QNR];
            for (i, (out_row, acc_row)) in out.iter_mut().zip(&acc).enumerate() {
                let (step, offset) = (a_steps[g * QMR + i], a_offsets[g * QMR + i]);
                for ((o, &d), &v) in out_row.iter_mut().zip(ws).zip(acc_row) {
                    *o = ((v - offset) as f32).mul_add(d * step, *o);
                }
            }
        }
        for (i, row) in out.iter().enumerate() {
            c[i * ldc..i * ldc + QNR].copy_from_slice(row);
        }
    }
}
