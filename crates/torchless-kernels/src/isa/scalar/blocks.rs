//! ggml block rows in plain Rust: the definition of both arithmetics (`block_input.rs`), which
//! every other path reproduces bit for bit. The `wide` path runs these too.

use super::Scalar;
use crate::block_input::{
    assert_block_shapes, assert_exact_shapes, reduce32, reduce8, BlockInput, BLOCK_LANES,
    EXACT_LANES, ROW_TILE,
};
use crate::blocks::{block_codes, dequantize_range, k_scales, BlockMat, BlockType};
use crate::half::f16_to_f32;
use crate::isa::traits::BlockMatvec;

#[inline]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `Σ a[i] · b[i]` in exact integer arithmetic.
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// One row of a quantized type (`row`: its bytes) times a quantized input, default arithmetic.
pub(crate) fn row_dot(ty: BlockType, row: &[u8], x: &BlockInput) -> f32 {
    let (bv, bb) = (ty.block_values(), ty.block_bytes());
    let mut acc = [0.0f32; BLOCK_LANES];
    let mut codes = [0i8; 256];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let lane = b % BLOCK_LANES;
        let c = &mut codes[..bv];
        block_codes(ty, blk, c);
        let q = &x.qs[b * bv..(b + 1) * bv];
        let dx = x.d[b];
        match ty {
            BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q5_0 => {
                let s = dot_i8(c, q);
                acc[lane] += s as f32 * (half_at(blk, 0) * dx);
            }
            BlockType::Q4_1 | BlockType::Q5_1 => {
                let s = dot_i8(c, q);
                acc[lane] += s as f32 * (half_at(blk, 0) * dx);
                acc[lane] += x.sums[b] as f32 * (half_at(blk, 2) * dx);
            }
            BlockType::Q4K | BlockType::Q5K => {
                let (sc, mn) = k_scales(&blk[4..16]);
                let sums = &x.sums[b * 16..(b + 1) * 16];
                let (mut s, mut m) = (0i32, 0i32);
                for j in 0..8 {
                    s += i32::from(sc[j]) * dot_i8(&c[32 * j..32 * j + 32], &q[32 * j..]);
                    m += i32::from(mn[j]) * (sums[2 * j] + sums[2 * j + 1]);
                }
                acc[lane] += s as f32 * (half_at(blk, 0) * dx);
                acc[lane] += (-m) as f32 * (half_at(blk, 2) * dx);
            }
            BlockType::Q6K => {
                let mut s = 0i32;
                for j in 0..16 {
                    let sc = i32::from(blk[192 + j] as i8);
                    s += sc * dot_i8(&c[16 * j..16 * j + 16], &q[16 * j..]);
                }
                acc[lane] += s as f32 * (half_at(blk, 208) * dx);
            }
            BlockType::F16 | BlockType::BF16 => unreachable!("F16/BF16 take f32 activations"),
        }
    }
    reduce8(acc)
}

/// One row (`row`: its bytes) times f32 activations `x`, exact arithmetic.
pub(crate) fn row_exact(ty: BlockType, row: &[u8], x: &[f32]) -> f32 {
    const PIECE: usize = 256;
    let mut acc = [0.0f32; EXACT_LANES];
    let mut w = [0.0f32; PIECE];
    for (p, xp) in x.chunks(PIECE).enumerate() {
        let n = xp.len();
        dequantize_range(ty, row, p * PIECE, &mut w[..n]);
        let mut wc = w[..n].chunks_exact(EXACT_LANES);
        let mut xc = xp.chunks_exact(EXACT_LANES);
        for (wv, xv) in (&mut wc).zip(&mut xc) {
            for i in 0..EXACT_LANES {
                acc[i] += wv[i] * xv[i];
            }
        }
        // A short last piece: the lanes it reaches (padding adds +0 to a lane that is never −0).
        for (i, (&a, &b)) in wc.remainder().iter().zip(xc.remainder()).enumerate() {
            acc[i] += a * b;
        }
    }
    reduce32(&acc)
}

impl BlockMatvec for Scalar {
    fn rows(self, w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
        let (batch, n) = assert_block_shapes(w, inputs, r0, yt);
        for t0 in (0..n).step_by(ROW_TILE) {
            let t1 = (t0 + ROW_TILE).min(n);
            for (b, x) in inputs.iter().enumerate() {
                for i in t0..t1 {
                    yt[i * batch + b] = row_dot(w.ty(), w.row(r0 + i), x);
                }
            }
        }
    }

    fn rows_exact(self, w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        let cols = w.cols();
        let n = assert_exact_shapes(w, xs, batch, r0, yt);
        for t0 in (0..n).step_by(ROW_TILE) {
            let t1 = (t0 + ROW_TILE).min(n);
            for b in 0..batch {
                let x = &xs[b * cols..(b + 1) * cols];
                for i in t0..t1 {
                    yt[i * batch + b] = row_exact(w.ty(), w.row(r0 + i), x);
                }
            }
        }
    }
}
