//! int4 decode: integer dot products of 4-bit weights with int8-quantized activations.
//!
//! Per token, the input is quantized once per group of 32 (`xq = round(x · 127 / max|x|)`, step
//! `dx = max|x| / 127`), so a weight group's contribution is `d · dx · Σ (u − 8) · xq`, the sum in
//! exact integer arithmetic. The order of the f32 operations is fixed and shared by every path
//! (scalar here, AVX2 in `avx2.rs`), so all paths give bit-identical results:
//!
//! - groups are taken in pairs; lane `m` of 8 holds, for group `2p + m / 4` and `k = m % 4`, the
//!   integer sum over its values `4k..4k+4` and `16 + 4k..16 + 4k + 4` (what one 32-byte load of
//!   two groups' codes gives, unpacked into low and high nibbles);
//! - `acc[m] = acc[m] + f32(lane) · (d · dx)` (a product then a sum, no fused multiply-add);
//! - the row's result is `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.

use crate::mat::{f16_to_f32, Int4Mat, INT4_GROUP_SIZE};

/// One input vector quantized for the int4 kernels, laid out per pair of groups as the AVX2
/// kernel loads it (an odd last group is padded with a zero group).
#[derive(Debug, Default, Clone)]
pub(crate) struct Int4Input {
    /// Per pair `p`, 64 bytes: the low-nibble halves (values 0..16) of groups `2p` and `2p + 1`,
    /// then their high-nibble halves (values 16..32).
    pub(crate) xq: Vec<i8>,
    /// Per pair, 8 lanes: `8 · Σ xq` over the lane's 8 values (the `− 8` of the codes).
    pub(crate) offsets: Vec<i32>,
    /// Per pair, 8 lanes: the step `dx` of the lane's group.
    pub(crate) steps: Vec<f32>,
}

impl Int4Input {
    /// Number of group pairs.
    pub(crate) fn pairs(&self) -> usize {
        self.steps.len() / 8
    }

    /// Quantizes `x` (its length a multiple of 32).
    pub(crate) fn quantize(x: &[f32]) -> Self {
        let groups = x.len() / INT4_GROUP_SIZE;
        let pairs = groups.div_ceil(2);
        let mut input = Self {
            xq: vec![0; pairs * 64],
            offsets: vec![0; pairs * 8],
            steps: vec![0.0; pairs * 8],
        };
        let mut codes = [0i8; INT4_GROUP_SIZE];
        for (g, values) in x.chunks_exact(INT4_GROUP_SIZE).enumerate() {
            let step = quantize_group(values, &mut codes);
            let (p, half) = (g / 2, g % 2);
            for (i, &q) in codes.iter().enumerate() {
                // Low halves at 0..32 of the pair (group 0 first), high halves at 32..64.
                let at = p * 64 + (i / 16) * 32 + half * 16 + i % 16;
                input.xq[at] = q;
                let lane = half * 4 + (i % 16) / 4;
                input.offsets[p * 8 + lane] += 8 * i32::from(q);
            }
            for lane in 0..4 {
                input.steps[p * 8 + half * 4 + lane] = step;
            }
        }
        input
    }
}

/// Quantizes one group of 32 activations to `round(x · 127 / max|x|)` (an all-zero group to
/// zeros) and returns the step `max|x| / 127`: what the int4 decode and prefill kernels multiply.
pub(crate) fn quantize_group(values: &[f32], codes: &mut [i8; INT4_GROUP_SIZE]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (inv, step) = if amax == 0.0 {
        (0.0, 0.0)
    } else {
        (127.0 / amax, amax / 127.0)
    };
    for (q, &v) in codes.iter_mut().zip(values) {
        *q = round_half_even(v * inv).clamp(-127.0, 127.0) as i8;
    }
    step
}

/// Round half to even for |v| < 2^22 (NaN stays NaN and becomes 0 in the `as i8` cast).
#[inline]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The fixed final reduction of the 8 lanes.
#[inline]
pub(crate) fn reduce_lanes(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// One row (`packed`: its `groups * 16` code bytes, `scales`: its `groups` scales) with `input`.
pub(crate) fn row_dot(packed: &[u8], scales: &[u16], input: &Int4Input) -> f32 {
    let groups = scales.len();
    let mut acc = [0.0f32; 8];
    for p in 0..groups.div_ceil(2) {
        let xq = &input.xq[p * 64..(p + 1) * 64];
        for half in 0..2 {
            let g = 2 * p + half;
            if g >= groups {
                // The padding group: lanes of 0 times a zero scale, as the AVX2 kernel computes.
                for a in &mut acc[4..] {
                    *a += 0.0 * 0.0;
                }
                continue;
            }
            let codes = &packed[g * 16..(g + 1) * 16];
            let d = f16_to_f32(scales[g]);
            for k in 0..4 {
                let lane = half * 4 + k;
                let mut sum = 0i32;
                for j in 4 * k..4 * k + 4 {
                    let (lo, hi) = (codes[j] & 0x0f, codes[j] >> 4);
                    sum += i32::from(lo) * i32::from(xq[half * 16 + j]);
                    sum += i32::from(hi) * i32::from(xq[32 + half * 16 + j]);
                }
                sum -= input.offsets[p * 8 + lane];
                let scale = d * input.steps[p * 8 + lane];
                acc[lane] += sum as f32 * scale;
            }
        }
    }
    reduce_lanes(acc)
}

/// `y = W x` for int4 weights, portable.
pub(crate) fn matvec(w: &Int4Mat<'_>, input: &Int4Input, y: &mut [f32]) {
    let groups = w.groups_per_row();
    debug_assert_eq!(input.pairs(), groups.div_ceil(2));
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = row_dot(
            &w.packed()[r * groups * 16..(r + 1) * groups * 16],
            &w.scales()[r * groups..(r + 1) * groups],
            input,
        );
    }
}
