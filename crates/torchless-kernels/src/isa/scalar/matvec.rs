//! Decode rows in plain Rust: f32, int8, and the int4 kernel that defines the operation order of
//! every int4 path (see `int4.rs`).

use super::elementwise::dot;
use super::Scalar;
use crate::int4::{code_index, reduce_lanes, Int4Input, BLOCK_GROUPS, LANE_GROUP};
use crate::isa::traits::{Int4Matvec, Matvec};
use crate::mat::{f16_to_f32, F32Mat, Int4Mat, Int8Mat};

/// One int4 row (`packed`: its `groups * 16` code bytes, `scales`: its `groups` scales) with
/// `input`: the definition every int4 kernel reproduces bit for bit.
fn row_dot(packed: &[u8], scales: &[u16], input: &Int4Input) -> f32 {
    let groups = scales.len();
    let mut acc = [0.0f32; 8];
    for b in 0..groups.div_ceil(BLOCK_GROUPS) {
        for (lane, &j) in LANE_GROUP.iter().enumerate() {
            let g = b * BLOCK_GROUPS + j;
            // Padding groups: zero codes and scale, as the SIMD kernels compute them.
            let (codes, d) = match (packed.get(g * 16..(g + 1) * 16), scales.get(g)) {
                (Some(c), Some(&d)) => (c, f16_to_f32(d)),
                _ => (&[0u8; 16][..], 0.0),
            };
            let xq = |i: usize| i32::from(input.xq[code_index(g, i)]);
            let mut sum = 0i32;
            for (i, &c) in codes.iter().enumerate() {
                sum += i32::from(c & 0x0f) * xq(i);
                sum += i32::from(c >> 4) * xq(16 + i);
            }
            let at = b * 8 + lane;
            let v = (sum - input.offsets[at]) as f32;
            acc[lane] = v.mul_add(d * input.steps[at], acc[lane]);
        }
    }
    reduce_lanes(acc)
}

/// `y = W x` for int4 weights.
fn matvec_i4(w: &Int4Mat<'_>, input: &Int4Input, y: &mut [f32]) {
    let groups = w.groups_per_row();
    debug_assert_eq!(input.blocks(), groups.div_ceil(BLOCK_GROUPS));
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = row_dot(
            &w.packed()[r * groups * 16..(r + 1) * groups * 16],
            &w.scales()[r * groups..(r + 1) * groups],
            input,
        );
    }
}

impl Matvec for Scalar {
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) {
        let cols = w.cols();
        for (yr, row) in y.iter_mut().zip(w.data().chunks_exact(cols.max(1))) {
            *yr = dot(row, x);
        }
        if cols == 0 {
            y.fill(0.0);
        }
    }

    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]) {
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = w.row_dot_by_groups(r, x, dot::<i8>);
        }
    }
}

impl Int4Matvec for Scalar {
    fn rows(self, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
        let n = yt.len() / inputs.len().max(1);
        if let Ok(sub) = w.rows_range(r0..r0 + n) {
            for (b, input) in inputs.iter().enumerate() {
                let mut y = vec![0.0; n];
                matvec_i4(&sub, input, &mut y);
                for (i, v) in y.into_iter().enumerate() {
                    yt[i * inputs.len() + b] = v;
                }
            }
        }
    }
}
