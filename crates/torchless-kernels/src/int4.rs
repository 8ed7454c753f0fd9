//! The int4 kernels' input: activations quantized per group of 32 and laid out for the decode
//! kernels, and the order of f32 operations every path shares.
//!
//! Per token, the input is quantized once per group of 32 (`xq = round(x · 127 / max|x|)`, step
//! `dx = max|x| / 127`), so a weight group's contribution is `d · dx · Σ (u − 8) · xq`, the sum in
//! exact integer arithmetic. The order of the f32 operations is fixed and shared by every path
//! (the scalar kernel in `isa/scalar/matvec.rs` is its definition), so all paths give
//! bit-identical results:
//!
//! - groups are taken in blocks of 8 (a short last block is padded with zero groups); lane `m` of
//!   8 holds group `8b + LANE_GROUP[m]` of block `b` (the order in which three `vphaddd` leave the
//!   group sums of four 32-byte loads, each two groups' codes);
//! - `acc[m] = fma(f32(Σ u · xq − 8 Σ xq), d · dx, acc[m])`, one fused multiply-add per group;
//! - the row's result is `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
//!
//! Per 8 groups that is one conversion, one product of scales and one FMA for 8 lanes (taking
//! groups in pairs cost as many per 2 groups). The AVX-512 kernel sums the groups in another
//! register layout but keeps every lane's sequence of f32 operations and the final reduction, so
//! it is bit-identical too.

use crate::codes::Codes;
use crate::mat::{Int4Mat, INT4_GROUP_SIZE};

/// Smallest batch whose inputs carry the transposed codes ([`Int4Input::xt`]): the AVX-512
/// kernel takes passes of this many inputs with transposed weights.
pub(crate) const TRANSPOSED_MIN_BATCH: usize = 4;
/// Groups per block.
pub(crate) const BLOCK_GROUPS: usize = 8;
/// Quantized activation bytes per block ([`Int4Input::xq`]).
pub(crate) const BLOCK_X_BYTES: usize = BLOCK_GROUPS * 32;
/// The group (within its block) whose sum lane `m` holds.
pub(crate) const LANE_GROUP: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// One input vector quantized for the int4 kernels, padded with zero groups to whole blocks of 8.
///
/// The codes are laid out per quad of groups as the weights' nibbles line up with them: a quad's
/// 64 code bytes hold the low nibbles (values 0..16) of its four groups, so one AVX-512 load of
/// codes meets one load of activations, and the AVX2 kernel takes the same bytes in halves.
#[derive(Debug, Default, Clone)]
pub(crate) struct Int4Input {
    /// Per quad `q` of groups, 128 bytes: values 0..16 of groups `4q .. 4q + 4` (16 bytes each),
    /// then values 16..32 of the same groups.
    pub(crate) xq: Codes,
    /// Per block, 8 lanes (in [`LANE_GROUP`] order): `8 · Σ xq` over the group (the `− 8` of
    /// the codes).
    pub(crate) offsets: Vec<i32>,
    /// Per block, 8 lanes: the group's step `dx`.
    pub(crate) steps: Vec<f32>,
    /// Per block, 16 lanes in the AVX-512 kernel's order (lane `4k + j` is group `k + 4 · (j % 2)`
    /// of the block, see [`pair_lane`]): the group's `8 · Σ xq`.
    pub(crate) offsets16: Vec<i32>,
    /// Per block, 16 lanes in the same order: the group's step `dx`.
    pub(crate) steps16: Vec<f32>,
    /// Empty, or (inputs of a batch, [`Int4Input::quantize_for_batch`]) the codes once more,
    /// transposed for the AVX-512 several-input kernel: per block, 8 vectors of 32 bytes, vector
    /// `v` lane `m` (4 bytes) holding values `16 · (v / 4) + 4 · (v % 4) ..` `+ 4` of group
    /// `LANE_GROUP[m]`, the bytes that kernel's transposed weight nibbles meet (see
    /// [`transposed_index`]).
    pub(crate) xt: Codes,
    /// Empty, or with [`Self::xt`]: [`Self::offsets`] negated (where that kernel's sums start).
    pub(crate) neg_offsets: Vec<i32>,
}

/// The lane of the AVX-512 kernel's 16 that holds group `group` (within its block of 8) of row
/// `row` (0 or 1) of the pair it takes together: lane `4k + j` holds row `j / 2`'s group
/// `k + 4 · (j % 2)`, the order in which its unpack-and-add reduction leaves the sums.
pub(crate) fn pair_lane(group: usize, row: usize) -> usize {
    4 * (group % 4) + group / 4 + 2 * row
}

impl Int4Input {
    /// Number of blocks of 8 groups.
    pub(crate) fn blocks(&self) -> usize {
        self.steps.len() / 8
    }

    /// Quantizes `x` (its length a multiple of 32) for one-input products.
    pub(crate) fn quantize(x: &[f32]) -> Self {
        Self::quantize_with(x, false)
    }

    /// Quantizes `x` for several-input products: as [`Self::quantize`], plus the transposed
    /// copy [`Self::xt`] (same values).
    pub(crate) fn quantize_for_batch(x: &[f32]) -> Self {
        Self::quantize_with(x, true)
    }

    fn quantize_with(x: &[f32], transposed: bool) -> Self {
        let groups = x.len() / INT4_GROUP_SIZE;
        let blocks = groups.div_ceil(BLOCK_GROUPS);
        let mut input = Self {
            xq: Codes::zeroed(blocks * BLOCK_X_BYTES),
            offsets: vec![0; blocks * 8],
            steps: vec![0.0; blocks * 8],
            offsets16: vec![0; blocks * 16],
            steps16: vec![0.0; blocks * 16],
            xt: if transposed {
                Codes::zeroed(blocks * BLOCK_X_BYTES)
            } else {
                Codes::default()
            },
            neg_offsets: if transposed {
                vec![0; blocks * 8]
            } else {
                Vec::new()
            },
        };
        let mut codes = [0i8; INT4_GROUP_SIZE];
        for (g, values) in x.chunks_exact(INT4_GROUP_SIZE).enumerate() {
            let step = quantize_group(values, &mut codes);
            // Values 0..16 and 16..32 are 16 consecutive bytes each in `xq`, and runs of 4 in `xt`.
            for half in 0..2 {
                let at = code_index(g, 16 * half);
                input.xq[at..at + 16].copy_from_slice(&codes[16 * half..16 * half + 16]);
            }
            if transposed {
                for run in (0..INT4_GROUP_SIZE).step_by(4) {
                    let at = transposed_index(g, run);
                    input.xt[at..at + 4].copy_from_slice(&codes[run..run + 4]);
                }
            }
            let offset = 8 * codes.iter().map(|&q| i32::from(q)).sum::<i32>();
            let (b, j) = (g / BLOCK_GROUPS, g % BLOCK_GROUPS);
            let at = b * 8 + lane_of(j);
            input.offsets[at] = offset;
            if transposed {
                input.neg_offsets[at] = -offset;
            }
            input.steps[at] = step;
            // Group j sits in two of the 16 lanes, one per row of the pair.
            for l in [pair_lane(j, 0), pair_lane(j, 1)] {
                input.offsets16[b * 16 + l] = offset;
                input.steps16[b * 16 + l] = step;
            }
        }
        input
    }
}

/// Where value `i` (0..32) of group `g` sits in [`Int4Input::xq`].
#[inline]
pub(crate) fn code_index(g: usize, i: usize) -> usize {
    (g / 4) * 128 + (i / 16) * 64 + (g % 4) * 16 + i % 16
}

/// Where value `i` (0..32) of group `g` sits in [`Int4Input::xt`]: block `g / 8`, vector
/// `4 · (i / 16) + (i % 16) / 4`, the lane holding group `g % 8`, byte `i % 4`.
#[inline]
pub(crate) fn transposed_index(g: usize, i: usize) -> usize {
    let (b, j) = (g / BLOCK_GROUPS, g % BLOCK_GROUPS);
    let v = 4 * (i / 16) + (i % 16) / 4;
    b * BLOCK_X_BYTES + v * 32 + lane_of(j) * 4 + i % 4
}

/// Asserts what the SIMD int4 row kernels rely on for rows `r0..` of `w` with `inputs`, the
/// results in `yt` (`rows x inputs.len()`, transposed): every row inside `w`, `w`'s arrays whole,
/// every input holding the blocks of a row. Returns `(batch, groups per row, output rows)`.
// Used by the x86 SIMD kernels only.
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
pub(crate) fn assert_row_shapes(
    w: &Int4Mat<'_>,
    inputs: &[Int4Input],
    r0: usize,
    yt: &[f32],
) -> (usize, usize, usize) {
    let batch = inputs.len();
    let groups = w.groups_per_row();
    let out_rows = yt.len() / batch.max(1);
    let blocks = groups.div_ceil(BLOCK_GROUPS);
    assert!(
        batch > 0
            && yt.len() == out_rows * batch
            && r0 + out_rows <= w.rows()
            && w.packed().len() == w.rows() * groups * 16
            && w.scales().len() == w.rows() * groups
            && inputs.iter().all(|x| {
                x.blocks() == blocks
                    && x.xq.len() == blocks * BLOCK_X_BYTES
                    && x.offsets.len() == blocks * 8
                    && x.offsets16.len() == blocks * 16
                    && x.steps16.len() == blocks * 16
                    && (x.xt.is_empty() || x.xt.len() == blocks * BLOCK_X_BYTES)
                    && x.neg_offsets.len() == if x.xt.is_empty() { 0 } else { blocks * 8 }
            }),
        "int4 matvec shapes"
    );
    (batch, groups, out_rows)
}

/// The lane that holds group `j` of a block (the inverse of [`LANE_GROUP`]).
fn lane_of(j: usize) -> usize {
    j / 2 + (j % 2) * 4
}

/// Quantizes one group of 32 activations to `round(x · 127 / max|x|)` (an all-zero group to
/// zeros) and returns the step `max|x| / 127`: what the int4 decode and prefill kernels multiply.
pub(crate) fn quantize_group(values: &[f32], codes: &mut [i8; INT4_GROUP_SIZE]) -> f32 {
    // Eight running maxima (vectorizable; the maximum of a set is the same in any order).
    let mut maxima = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, v) in maxima.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = rest
        .iter()
        .fold(maxima.iter().fold(0.0f32, |m, &v| m.max(v)), |m, v| {
            m.max(v.abs())
        });
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
