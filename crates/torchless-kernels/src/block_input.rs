//! The activations of the ggml block products, and the order of f32 operations every path
//! shares.
//!
//! **Default arithmetic (quantized activations, as llama.cpp's CPU backend):** per product, each
//! input vector is quantized once: per 32 values to Q8_0 for Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1
//! weights (`amax = max|x|`, `d = f16(amax / 127)`, `q = round_ties_even(x · (127 / amax))`: the
//! scale is stored as a half, as in a `block_q8_0`; the block sum `Σ q` that Q8_1 adds is kept as
//! an exact integer), per 256 values to Q8_K for Q4_K / Q5_K / Q6_K (`max` the value of largest
//! magnitude, the first one among equals; `iscale = −127 / max`, `q = round_ties_even(iscale ·
//! x)`, `d = 1 / iscale` in f32, so `d` has the opposite sign of `max`; `bsums`: `Σ q` per 16). An
//! all-zero block has `d = 0` and zero codes (so does a block whose largest magnitude is below
//! `127 / f32::MAX`, where `127 / max` overflows: its half `d` is zero, and llama.cpp's Q8_K `d`
//! is `−0`); a block holding an infinity or NaN gets `d = NaN` (the products are NaN, as they
//! would be in f32). A Q8_0 block beyond `127 · 65504` overflows its half scale, as in llama.cpp.
//!
//! A weight block `b` of a row then contributes an exact integer sum `S` (and for the types with
//! mins a second one), scaled in f32. Blocks are taken in groups of 8; block `b` adds into lane
//! `b % 8` of 8 f32 accumulators (starting at +0), with separate products and additions (no fused
//! multiply-add, so the scalar path is the definition on every target):
//!
//! - Q8_0, Q4_0, Q5_0: `S = Σ c·q` (`c` the signed code, e.g. `u − 8`);
//!   `acc += f32(S) · (d_w · d_x)`;
//! - Q4_1, Q5_1: `S = Σ u·q`; `acc += f32(S) · (d_w · d_x)`, then `acc += f32(Σ q) · (m_w · d_x)`;
//! - Q4_K, Q5_K: `S = Σ_j sc_j Σ u·q`, `M = Σ_j m_j Σ q` (sub-blocks of 32);
//!   `acc += f32(S) · (d · d_x)`, then `acc += f32(−M) · (dmin · d_x)`;
//! - Q6_K: `S = Σ_j sc_j Σ (u − 32)·q` (sub-blocks of 16); `acc += f32(S) · (d · d_x)`.
//!
//! The row's result is `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))` ([`reduce8`]). The
//! integer sums are exact (at most `2^28` in magnitude) and their conversion to f32 rounds the
//! same way everywhere, so every path that computes them and then these f32 operations in this
//! order is bit-identical to the scalar one, for any split of rows or inputs.
//!
//! **Exact arithmetic (f32 activations):** the weights are dequantized exactly (see `blocks`)
//! and the row is taken 32 values at a time (a short last piece as if padded with zeros): value
//! `c` adds `w · x` into lane `c % 32` (a product, then an addition); the result is [`reduce32`].

use crate::blocks::{BlockMat, BlockType};
use crate::codes::Codes;
use crate::half::{f16_to_f32, f32_to_f16};

/// Accumulator lanes of the default arithmetic (blocks per group).
pub(crate) const BLOCK_LANES: usize = 8;
/// Accumulator lanes of the exact arithmetic (values per piece).
pub(crate) const EXACT_LANES: usize = 32;
/// Rows per tile of the batched kernels: a tile's weights are read from memory once and stay in
/// cache while every input is multiplied with them, each input read once per tile.
pub(crate) const ROW_TILE: usize = 16;

/// The fixed final reduction of 8 lanes.
#[inline]
pub(crate) fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// [`reduce8`] of each row's 8 lanes (`lanes`: lane `l` of row `j` at `l * nr + j`) into
/// `out[j]`, `out.len() <= nr`, `nr` a multiple of 16.
pub(crate) fn reduce_lane_rows(lanes: &[f32], nr: usize, out: &mut [f32]) {
    assert!(
        nr.is_multiple_of(16) && out.len() <= nr && lanes.len() >= BLOCK_LANES * nr,
        "lane rows out of bounds"
    );
    // Whole rows of lanes at a time, which the compiler turns into vector adds (one scalar tree
    // per output was ~15% of a small model's prefill).
    let (v, _) = lanes[..BLOCK_LANES * nr].as_chunks::<16>();
    let halves = nr / 16;
    for (h, out) in out.chunks_mut(16).enumerate() {
        let sum = |j: usize| reduce8(std::array::from_fn(|l| v[l * halves + h][j]));
        // Whole rows store straight from the vectors (a copy through a temporary became a
        // `memcpy` call per token and panel).
        match out.as_chunks_mut::<16>() {
            ([whole], []) => *whole = std::array::from_fn(sum),
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = sum(j);
                }
            }
        }
    }
}

/// The fixed final reduction of 32 lanes: `r[i] = (a[i] + a[i + 16]) + (a[i + 8] + a[i + 24])`,
/// then [`reduce8`] (on AVX2: four registers of 8 added as `(a0 + a2) + (a1 + a3)`).
#[inline]
pub(crate) fn reduce32(a: &[f32; 32]) -> f32 {
    reduce8(std::array::from_fn(|i| {
        (a[i] + a[i + 16]) + (a[i + 8] + a[i + 24])
    }))
}

/// How the activations of a block type are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActKind {
    /// Q8_0 per 32 values (with the exact block sums Q8_1 adds).
    Q8_0,
    /// Q8_K per 256 values (with sums per 16).
    Q8K,
}

impl ActKind {
    /// The quantization of the activations that `ty` weights multiply in the default
    /// arithmetic (`None`: f32 activations).
    pub(crate) fn of(ty: BlockType) -> Option<ActKind> {
        match ty {
            BlockType::F16 | BlockType::BF16 => None,
            BlockType::Q8_0
            | BlockType::Q4_0
            | BlockType::Q4_1
            | BlockType::Q5_0
            | BlockType::Q5_1 => Some(ActKind::Q8_0),
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => Some(ActKind::Q8K),
        }
    }

    /// Values per activation block.
    pub(crate) const fn block_values(self) -> usize {
        match self {
            ActKind::Q8_0 => 32,
            ActKind::Q8K => 256,
        }
    }

    /// Values per entry of [`BlockInput::sums`].
    pub(crate) const fn sum_values(self) -> usize {
        match self {
            ActKind::Q8_0 => 32,
            ActKind::Q8K => 16,
        }
    }
}

/// One input vector quantized for the block products.
#[derive(Clone, Debug)]
pub(crate) struct BlockInput {
    /// How it was quantized.
    pub(crate) kind: ActKind,
    /// The codes, one per value, in the input's order.
    pub(crate) qs: Codes,
    /// Per activation block: the scale `d_x` (Q8_0: a half's value).
    pub(crate) d: Vec<f32>,
    /// `Σ q` per 32 values (Q8_0) or per 16 (Q8_K).
    pub(crate) sums: Vec<i32>,
    /// The same sums as i16 (each at most `32 · 127` in magnitude), for the SIMD kernels'
    /// `vpmaddwd` with the weights' sub-block scales.
    pub(crate) sums16: Vec<i16>,
    /// Q8_K only (else empty): the codes with each 128 reordered as values `0..32, 64..96,
    /// 32..64, 96..128`, so that one 64-byte load meets the low nibbles of a Q4_K block's 64
    /// code bytes (sub-blocks `4k` and `4k + 2`) and the next one the high nibbles.
    pub(crate) qs_k4: Codes,
}

impl BlockInput {
    /// Quantizes `x` (its length a multiple of the kind's block) with the portable
    /// [`quantize_into`] (the tests' reference; the kernels take the path's quantizer).
    #[cfg(test)]
    pub(crate) fn quantize(kind: ActKind, x: &[f32]) -> Self {
        Self::quantize_with(kind, x, |x, qs, d| quantize_into(kind, x, qs, d))
    }

    /// Quantizes `x` with `codes(x, qs, d)`, a quantizer bit-identical to [`quantize_into`] (a
    /// path's vector one), then takes the sums and the reordered codes.
    pub(crate) fn quantize_with(
        kind: ActKind,
        x: &[f32],
        codes: impl FnOnce(&[f32], &mut [i8], &mut [f32]),
    ) -> Self {
        let bv = kind.block_values();
        let blocks = x.len() / bv;
        let mut input = Self {
            kind,
            qs: Codes::zeroed(x.len()),
            d: vec![0.0; blocks],
            sums: vec![0; x.len() / kind.sum_values()],
            sums16: Vec::new(),
            qs_k4: Codes::default(),
        };
        codes(x, &mut input.qs, &mut input.d);
        let sv = kind.sum_values();
        for (s, q) in input.sums.iter_mut().zip(input.qs.chunks_exact(sv)) {
            *s = q.iter().map(|&v| i32::from(v)).sum();
        }
        // In range: at most 32 codes of magnitude at most 127 per sum.
        input.sums16 = input.sums.iter().map(|&s| s as i16).collect();
        if kind == ActKind::Q8K {
            // Whole 32-byte copies (a byte-wise iterator chain here cost as much as the
            // quantization itself).
            input.qs_k4 = Codes::zeroed(input.qs.len());
            for (r, c) in input
                .qs_k4
                .chunks_exact_mut(128)
                .zip(input.qs.chunks_exact(128))
            {
                for (k, from) in [0, 64, 32, 96].into_iter().enumerate() {
                    r[32 * k..32 * k + 32].copy_from_slice(&c[from..from + 32]);
                }
            }
        }
        input
    }

    /// Activation blocks.
    pub(crate) fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// Quantizes `x` (its length a multiple of the kind's block) into codes `qs` (as long as `x`) and
/// one scale per block `d`.
pub(crate) fn quantize_into(kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let bv = kind.block_values();
    for ((xb, q), d) in x.chunks_exact(bv).zip(qs.chunks_exact_mut(bv)).zip(d) {
        *d = match kind {
            ActKind::Q8_0 => quantize_q8_0(xb, q),
            ActKind::Q8K => quantize_q8_k(xb, q),
        };
    }
}

/// Asserts what every block rows kernel relies on for rows `r0..` of `w` with `inputs`, the
/// results in `yt` (`rows x inputs.len()`, transposed): every row inside `w`, every input of the
/// kind `w`'s type takes, holding a row's values. Returns `(batch, output rows)`.
pub(crate) fn assert_block_shapes(
    w: &BlockMat<'_>,
    inputs: &[BlockInput],
    r0: usize,
    yt: &[f32],
) -> (usize, usize) {
    let batch = inputs.len();
    let out_rows = yt.len() / batch.max(1);
    let kind = ActKind::of(w.ty());
    assert!(
        yt.len() == out_rows * batch
            && r0 + out_rows <= w.rows()
            && w.data().len() == w.rows() * w.row_bytes()
            && inputs.iter().all(|x| {
                Some(x.kind) == kind
                    && x.qs.len() == w.cols()
                    && x.blocks() * x.kind.block_values() == w.cols()
                    && x.sums.len() * x.kind.sum_values() == w.cols()
                    && x.sums16.len() == x.sums.len()
                    && (x.kind != ActKind::Q8K || x.qs_k4.len() == x.qs.len())
            }),
        "block matvec shapes"
    );
    (batch, out_rows)
}

/// Asserts the shapes of an exact-arithmetic block rows call (`xs`: `batch` rows of `w.cols()`);
/// returns the output rows.
pub(crate) fn assert_exact_shapes(
    w: &BlockMat<'_>,
    xs: &[f32],
    batch: usize,
    r0: usize,
    yt: &[f32],
) -> usize {
    let out_rows = yt.len() / batch.max(1);
    assert!(
        yt.len() == out_rows * batch
            && r0 + out_rows <= w.rows()
            && xs.len() == batch * w.cols()
            && w.data().len() == w.rows() * w.row_bytes(),
        "block matvec shapes"
    );
    out_rows
}

/// Rounds to the nearest integer, ties to even, for |v| < 2^22 (`nearest_int` in ggml).
#[inline]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Whether any value is an infinity or NaN.
#[inline]
fn non_finite(x: &[f32]) -> bool {
    // A fold over the exponent bits rather than `any`, so it vectorizes (no early exit).
    x.iter().fold(false, |acc, v| {
        acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    })
}

/// The largest `|v|` of finite values, as bits: for non-negative floats the bit patterns order
/// as the values do, so an integer maximum (which vectorizes) finds it exactly.
#[inline]
fn max_abs_bits(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// `round_even(v · scale)` clamped to ±127, for every value.
#[inline]
fn round_codes(x: &[f32], scale: f32, q: &mut [i8]) {
    for (o, &v) in q.iter_mut().zip(x) {
        // In range after the clamp, and integral: the conversion is exact.
        *o = round_even(v * scale).clamp(-127.0, 127.0) as i32 as i8;
    }
}

/// One block of 32 to Q8_0 (`quantize_row_q8_0` on x86): returns `d` as the half's value.
pub(crate) fn quantize_q8_0(x: &[f32], q: &mut [i8]) -> f32 {
    let (d, id) = q8_0_scale(non_finite(x), max_abs_bits(x));
    match id {
        Some(id) => round_codes(x, id, q),
        None => q.fill(0),
    }
    d
}

/// A Q8_0 block's scale `d` and the factor its codes are `round_even(v · id)` with, from whether
/// the block holds an infinity or NaN and its largest magnitude (as bits); no factor: all codes
/// zero (`d` NaN for a non-finite block; a zero half when `amax` is below 127 / f32::MAX).
pub(crate) fn q8_0_scale(non_finite: bool, amax_bits: u32) -> (f32, Option<f32>) {
    if non_finite {
        return (f32::NAN, None);
    }
    let amax = f32::from_bits(amax_bits);
    let d = f16_to_f32(f32_to_f16(amax / 127.0));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id.is_finite().then_some(id))
}

/// One block of 256 to Q8_K (`quantize_row_q8_K_ref`): returns `d = 1 / iscale`.
pub(crate) fn quantize_q8_k(x: &[f32], q: &mut [i8]) -> f32 {
    if non_finite(x) {
        q.fill(0);
        return f32::NAN;
    }
    // The value of largest magnitude, the first one among equals.
    let amax_bits = max_abs_bits(x);
    if amax_bits == 0 {
        q.fill(0);
        return 0.0;
    }
    let max = x
        .iter()
        .copied()
        .find(|v| v.to_bits() & 0x7fff_ffff == amax_bits)
        .unwrap_or(0.0);
    let iscale = -127.0 / max;
    if !iscale.is_finite() {
        // `|max|` below 127 / f32::MAX: a zero block (llama.cpp's `d` is −0 there).
        q.fill(0);
        return 0.0;
    }
    round_codes(x, iscale, q);
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_ties_to_even_and_keeps_a_half_scale() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5; // tie: 0
        x[2] = 1.5; // tie: 2
        x[3] = -2.5; // tie: -2
        x[4] = -127.0;
        let input = BlockInput::quantize(ActKind::Q8_0, &x);
        assert_eq!(&input.qs[..5], &[127, 0, 2, -2, -127]);
        assert_eq!(input.d, [1.0]);
        assert_eq!(input.sums, [0]);
        // 1/127 is not a half: d is rounded to one.
        let mut x = [0.0f32; 32];
        x[0] = 1.0;
        let input = BlockInput::quantize(ActKind::Q8_0, &x);
        assert_eq!(input.d[0], f16_to_f32(f32_to_f16(1.0 / 127.0)));
        assert_ne!(input.d[0], 1.0 / 127.0);
        let zero = BlockInput::quantize(ActKind::Q8_0, &[0.0; 32]);
        assert_eq!((zero.d[0], zero.sums[0]), (0.0, 0));
        x[7] = f32::INFINITY;
        assert!(BlockInput::quantize(ActKind::Q8_0, &x).d[0].is_nan());
    }

    #[test]
    fn q8_k_takes_the_sign_of_the_largest_value() {
        let mut x = [0.0f32; 256];
        x[3] = 2.0;
        x[9] = -2.0; // equal magnitude, later: not the max
        x[20] = 1.0;
        let input = BlockInput::quantize(ActKind::Q8K, &x);
        assert_eq!(input.qs[3], -127);
        assert_eq!(input.qs[9], 127);
        assert_eq!(input.qs[20], -64); // -63.5 ties to even
        assert_eq!(input.d[0], 1.0 / (-127.0 / 2.0));
        assert!(input.d[0] < 0.0);
        assert_eq!(input.sums.len(), 16);
        assert_eq!(input.sums[0], 0);
        assert_eq!(input.sums[1], -64);
    }

    #[test]
    fn q8_k_keeps_i16_sums_and_the_q4_k_order() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let input = BlockInput::quantize(ActKind::Q8K, &x);
        let wide: Vec<i32> = input.sums16.iter().map(|&s| i32::from(s)).collect();
        assert_eq!(wide, input.sums);
        for c in 0..4 {
            let (q, r) = (&input.qs[128 * c..], &input.qs_k4[128 * c..]);
            assert_eq!(&r[0..32], &q[0..32]);
            assert_eq!(&r[32..64], &q[64..96]);
            assert_eq!(&r[64..96], &q[32..64]);
            assert_eq!(&r[96..128], &q[96..128]);
        }
        assert!(BlockInput::quantize(ActKind::Q8_0, &x).qs_k4.is_empty());
    }

    #[test]
    fn reductions_are_the_documented_trees() {
        let a: [f32; 8] = [1e8, 1.0, -1e8, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(
            reduce8(a),
            ((1e8 + 1.0) + (-1e8 + 1.0)) + ((1.0 + 1.0) + (1.0 + 1.0))
        );
        let b: [f32; 32] = std::array::from_fn(|i| i as f32);
        assert_eq!(reduce32(&b), (0..32).sum::<usize>() as f32);
    }
}
