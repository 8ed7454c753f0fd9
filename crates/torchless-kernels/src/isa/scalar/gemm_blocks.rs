//! The portable ggml-block GEMM tile: the definition the SIMD tiles reproduce bit for bit (the
//! same exact integer sums, then `block_input`'s f32 operations in its order). No path dispatches
//! to it (a prompt there streams the weights through the decode rows instead); the tests hold
//! every other tile and the decode rows to it.

use super::Scalar;
use crate::block_input::BLOCK_LANES;
use crate::isa::traits::{BlockMicro, BlockTile, QMR};

/// The dot product of 4 unsigned weight codes and 4 signed activation codes.
fn dot4(w: u32, a: u32) -> i32 {
    let (w, a) = (w.to_le_bytes(), a.to_le_bytes());
    (0..4)
        .map(|t| i32::from(w[t]) * i32::from(a[t] as i8))
        .sum()
}

/// The dot product of two pairs of i16.
fn dot2(w: u32, a: u32) -> i32 {
    let lo = |v: u32| i32::from(v as u16 as i16);
    let hi = |v: u32| i32::from((v >> 16) as u16 as i16);
    lo(w) * lo(a) + hi(w) * hi(a)
}

impl BlockMicro for Scalar {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        assert_eq!(op.mr, QMR, "a tile of QMR tokens");
        op.assert_tile(lanes, true);
        let (t, nr) = (*op, op.nr);
        for b in 0..t.blocks {
            let lane = (t.lane0 + b) % BLOCK_LANES;
            for i in 0..QMR {
                let dx = t.a_d[b * QMR + i];
                for j in 0..nr {
                    let mut s = 0i32;
                    for sub in b * t.subs..(b + 1) * t.subs {
                        let mut acc = -t.a_off[sub * QMR + i];
                        for kq in sub * t.quads..(sub + 1) * t.quads {
                            acc += dot4(t.b[kq * nr + j], t.a[kq * QMR + i]);
                        }
                        s += if t.subs > 1 {
                            acc * t.b_sc[sub * nr + j]
                        } else {
                            acc
                        };
                    }
                    let l = &mut lanes[(i * BLOCK_LANES + lane) * nr + j];
                    *l += s as f32 * (t.b_d[b * nr + j] * dx);
                    if t.pairs > 0 {
                        let m: i32 = (b * t.pairs..(b + 1) * t.pairs)
                            .map(|p| dot2(t.b_pairs[p * nr + j], t.a_pairs[p * QMR + i]))
                            .sum();
                        *l += m as f32 * (t.b_m[b * nr + j] * dx);
                    }
                }
            }
        }
    }
}
