//! What the drivers ask of an instruction set, and the shapes both sides agree on: one trait per
//! family of kernels ([`Elementwise`], [`Matvec`], [`Int4Matvec`], [`MatvecMany`],
//! [`BlockMatvec`], and the GEMM micro-kernels [`Micro`], [`QMicro`], [`Q4Micro`] with their
//! operands and tile sizes), and [`Isa`], which names one implementation of each family for a
//! SIMD path.
//!
//! The leaf of the crate's kernel modules: it imports only the matrix views and the int4 and
//! block input layouts. Drivers and instruction sets both depend on it, never it on them.

use crate::block_input::{ActKind, BlockInput};
use crate::blocks::{BlockMat, BlockType};
use crate::int4::Int4Input;
use crate::mat::{F32Mat, Int4Mat, Int8Mat, MatRef, GROUP_SIZE, INT4_GROUP_SIZE};

/// One SIMD path: the implementation it runs for each family of kernels (`dispatch` holds the
/// table). A family may be another instruction set's, made from this path's token by `From`: the
/// AVX-512 path runs the AVX2 element-wise kernels, the `wide` path the scalar integer ones.
pub(crate) trait Isa: Copy + Send + Sync {
    /// Element-wise ops and reductions.
    type Elementwise: Elementwise + From<Self>;
    /// f32 and int8 decode rows.
    type Matvec: Matvec + From<Self>;
    /// int4 decode rows.
    type Int4Matvec: Int4Matvec + From<Self>;
    /// Decode rows of several inputs at once ([`NoKernel`] where the path has none).
    type MatvecMany: MatvecMany;
    /// The f32 GEMM tile.
    type Micro: Micro + From<Self>;
    /// The int8 integer-GEMM tile.
    type QMicro: QMicro + From<Self>;
    /// The int4 integer-GEMM tile.
    type Q4Micro: Q4Micro + From<Self>;
    /// ggml block rows (both arithmetics).
    type Blocks: BlockMatvec + From<Self>;
    /// The ggml block integer-GEMM tile ([`NoKernel`] where the path has none).
    type BlockMicro: BlockMicro;
    /// Products with f16 and Q8_0 KV cache rows.
    type KvRows: KvRows + From<Self>;

    /// The multi-input decode kernels; `None` where the path has none (callers then run one
    /// matvec per input).
    fn matvec_many(self) -> Option<Self::MatvecMany>;

    /// The ggml block GEMM tile; `None` where the path has none (prompts then stream the
    /// weights once per batch through the decode rows).
    fn block_micro(self) -> Option<Self::BlockMicro>;

    /// The element-wise kernels.
    fn elementwise(self) -> Self::Elementwise {
        self.into()
    }
    /// The f32 and int8 decode kernels.
    fn matvec(self) -> Self::Matvec {
        self.into()
    }
    /// The int4 decode kernels.
    fn int4_matvec(self) -> Self::Int4Matvec {
        self.into()
    }
    /// The f32 GEMM micro-kernel.
    fn micro(self) -> Self::Micro {
        self.into()
    }
    /// The int8 integer-GEMM micro-kernel.
    fn qmicro(self) -> Self::QMicro {
        self.into()
    }
    /// The int4 integer-GEMM micro-kernel.
    fn q4micro(self) -> Self::Q4Micro {
        self.into()
    }
    /// The ggml block kernels.
    fn blocks(self) -> Self::Blocks {
        self.into()
    }
    /// The f16 / Q8_0 KV cache row kernels.
    fn kv_rows(self) -> Self::KvRows {
        self.into()
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops.

/// Below this `e^x` would be subnormal: the vector exps (`wide`, AVX2) return 0 there.
#[cfg(feature = "simd")]
pub(crate) const EXP_LO: f32 = -87.336_54;

/// Holds a vector `e^x` (`exp8`: 8 lanes) to its contract: within 3e-7 of the f64 value from
/// [`EXP_LO`] to 88 (checked every 0.01 and at the edges), exactly 0 below, NaN for NaN.
#[cfg(all(test, feature = "simd"))]
pub(crate) fn check_vector_exp(exp8: impl Fn([f32; 8]) -> [f32; 8]) {
    let mut xs: Vec<f32> = (-8800..=8800).map(|i| i as f32 / 100.0).collect();
    xs.extend([
        -87.3,
        -87.33,
        -87.4,
        -100.0,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-8,
    ]);
    for c in xs.chunks(8) {
        let mut a = [0.0f32; 8];
        a[..c.len()].copy_from_slice(c);
        for (&x, &y) in c.iter().zip(&exp8(a)) {
            let want = f64::from(x).exp();
            if x < EXP_LO {
                assert_eq!(y, 0.0, "exp({x})");
            } else {
                let rel = (f64::from(y) - want).abs() / want;
                assert!(rel < 3e-7, "exp({x}) = {y}, want {want}, rel {rel:e}");
            }
        }
    }
    assert!(exp8([f32::NAN; 8])[0].is_nan());
}

/// Element-wise kernels and reductions on f32 slices.
pub(crate) trait Elementwise: Copy + Send + Sync {
    /// `Σ a[i] b[i]` over the common length.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;

    /// `out[h] = q[h] · k` for the `out.len()` rows of `k.len()` values stored one after
    /// another in `q` (query heads against one key). Default: one [`Elementwise::dot`] per row.
    fn dots(self, q: &[f32], k: &[f32], out: &mut [f32]) {
        for (o, qh) in out.iter_mut().zip(q.chunks_exact(k.len().max(1))) {
            *o = self.dot(qh, k);
        }
    }

    /// `out += a * v` over the common length.
    fn axpy(self, a: f32, v: &[f32], out: &mut [f32]);

    /// `out += Σ_j weights[j] · rows[j]`, each output element as one [`Elementwise::axpy`] per
    /// row in order would compute it. Default: exactly those `axpy` calls.
    fn weighted_rows(self, rows: &[&[f32]], weights: &[f32], out: &mut [f32]) {
        for (row, &w) in rows.iter().zip(weights) {
            self.axpy(w, row, out);
        }
    }

    /// In-place numerically stable softmax (`exp(x - max) / Σ`).
    fn softmax(self, x: &mut [f32]);

    /// `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)` (equal lengths).
    fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]);

    /// Prefetches the cache line holding `p` (a hint: any address). Default: nothing.
    #[inline]
    fn prefetch(self, _p: *const u8) {}

    /// Sum of all values (the read-bandwidth probe's work).
    fn sum(self, x: &[f32]) -> f32;

    /// `n` steps of 12 independent 8-lane multiply-add chains (the FMA-peak probe's work).
    fn fma_chains(self, n: usize) -> f32;
}

/// Products with KV cache rows read in place from their stored bytes: IEEE halves (2 bytes per
/// value, little-endian) or ggml Q8_0 blocks (34 bytes per 32 values: a half scale `d`, then 32
/// signed codes; value `d · q`). A row of `dim` values is `2 · dim` or `34 · dim / 32` bytes.
///
/// The scalar path defines the results: every value decoded exactly to f32, then the f32
/// operations of [`Elementwise::dots`] and [`Elementwise::weighted_rows`] on the decoded row
/// (dots: 8 lane partial sums, value `i` into lane `i % 8`, reduced as `Elementwise::dot` does;
/// weighted rows: one product and one sum per row, in row order). The SIMD paths agree to f32
/// rounding (fused multiply-adds, other lanes).
pub(crate) trait KvRows: Copy + Send + Sync {
    /// `out[h] = q[h] · k` for the `out.len()` query rows stored one after another in `q`, `k`
    /// one row of halves.
    fn dots_f16(self, q: &[f32], k: &[u8], out: &mut [f32]);

    /// As [`KvRows::dots_f16`] for a row of Q8_0 blocks.
    fn dots_q8_0(self, q: &[f32], k: &[u8], out: &mut [f32]);

    /// `out += Σ_j weights[j] · rows[j]`, rows of `out.len()` halves.
    fn weighted_rows_f16(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]);

    /// As [`KvRows::weighted_rows_f16`] for rows of Q8_0 blocks.
    fn weighted_rows_q8_0(self, rows: &[&[u8]], weights: &[f32], out: &mut [f32]);
}

/// Values in a KV row of `bytes` bytes of halves.
#[inline]
pub(crate) fn f16_row_values(bytes: usize) -> usize {
    bytes / 2
}

/// Values in a KV row of `bytes` bytes of Q8_0 blocks.
#[inline]
pub(crate) fn q8_0_row_values(bytes: usize) -> usize {
    bytes / 34 * 32
}

// ---------------------------------------------------------------------------------------------
// Decode products.

/// `y = W x` for f32 and int8 weights (`x.len() == w.cols()`, `y.len() == w.rows()`). Every row
/// gets the same operations whichever rows it is computed with, so results do not depend on how
/// the rows are split (threads, sub-views).
pub(crate) trait Matvec: Copy + Send + Sync {
    /// f32 weights.
    fn matvec_f32(self, w: &F32Mat<'_>, x: &[f32], y: &mut [f32]);
    /// int8 weights: per 64-group, `Σ q·x` in f32, then one division by the inverse scale.
    fn matvec_i8(self, w: &Int8Mat<'_>, x: &[f32], y: &mut [f32]);
}

/// int4 decode rows with quantized inputs (`int4.rs` defines the arithmetic; every path is
/// bit-identical to it).
pub(crate) trait Int4Matvec: Copy + Send + Sync {
    /// `yt[i * inputs.len() + b]` = row `r0 + i` of `w` times input `b`, for every row of
    /// `yt.len() / inputs.len()`.
    fn rows(self, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]);
}

/// Rows of a ggml block matrix times several inputs (`block_input.rs` defines both arithmetics;
/// every path is bit-identical to the scalar one). Results are written transposed:
/// `yt[i * batch + b]` = row `r0 + i` times input `b`, for every row of `yt.len() / batch`. Each
/// (row, input) result is the same whatever rows and inputs it is computed with.
pub(crate) trait BlockMatvec: Copy + Send + Sync {
    /// Default arithmetic: quantized `inputs` (of the kind `w`'s type takes), integer sums per
    /// block.
    fn rows(self, w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]);
    /// Exact arithmetic: f32 inputs `xs` (`batch` rows of `w.cols()`), the weights dequantized
    /// exactly.
    fn rows_exact(self, w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]);
}

/// Decode rows of `batch` inputs at once (`xs` row-major `batch x w.cols()`), each weight row read
/// from memory once for all of them, written transposed: `yt[i * batch + b]` = row `r0 + i` times
/// input `b`, for every row of `yt.len() / batch`.
pub(crate) trait MatvecMany: Copy + Send + Sync {
    /// f32 weights, each row bit-identical to [`Matvec::matvec_f32`]'s.
    fn matvec_f32(self, w: &F32Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]);
    /// int8 weights, each row bit-identical to [`Matvec::matvec_i8`]'s.
    fn matvec_i8(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]);
    /// A small batch of a row-aligned int8 product (prefill of a few tokens): weights scaled by
    /// `1 / inv_scale` (within an ulp of the exact division), several rows per pass.
    fn matmul_i8_small(self, w: &Int8Mat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]);
}

/// The family a path does not have: no value of it exists, so [`Isa::matvec_many`] can only
/// return `None`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NoKernel {}

impl MatvecMany for NoKernel {
    fn matvec_f32(self, _: &F32Mat<'_>, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
        match self {}
    }

    fn matvec_i8(self, _: &Int8Mat<'_>, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
        match self {}
    }

    fn matmul_i8_small(self, _: &Int8Mat<'_>, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
        match self {}
    }
}

// ---------------------------------------------------------------------------------------------
// The f32 GEMM tile (the driver is `gemm::float`).

/// What one f32 micro-kernel call multiplies: `kc` depths of an `MR`-row sliver of packed
/// activations (`a[k*MR + i]`) and of a packed `NR`-row weight panel (`b[k*NR + j]`), with
/// addresses to prefetch along the way (`pf`: the next panel's lines; kernels without
/// prefetching ignore them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operands<'a> {
    pub(crate) kc: usize,
    pub(crate) a: &'a [f32],
    pub(crate) b: &'a [f32],
    // Read by the x86 SIMD kernel only.
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) pf: &'a [*const u8],
}

/// One instruction set's f32 micro-kernel (`MR x NR` tile) and weight packer.
pub(crate) trait Micro: Copy + Send + Sync {
    /// Batch rows per micro-tile.
    const MR: usize;
    /// Weight rows (output columns) per micro-tile.
    const NR: usize;
    /// Whether the kernel uses its `pf` addresses (otherwise the driver does not collect them).
    const PREFETCH: bool = false;

    /// `c[i*ldc + j] (+)= Σ_k a[k*MR + i] b[k*NR + j]` for the full `MR x NR` tile (overwriting it
    /// when `!accumulate`).
    fn kernel(self, op: &Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool);

    /// Packs weight rows `n0..n0+nr` (`nr <= NR`), columns `pc..pc+kc` as `out[k*NR + j]`,
    /// dequantized, when this instruction set has a faster packer for the case; `false` leaves it
    /// to the driver's portable packer. Default: `false`.
    fn pack_b(
        self,
        _w: &MatRef<'_>,
        _n0: usize,
        _nr: usize,
        _pc: usize,
        _kc: usize,
        _out: &mut [f32],
    ) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The integer GEMM tiles (the drivers are `gemm::int8` and `gemm::int4`).

/// Tokens per integer micro-tile.
pub(crate) const QMR: usize = 6;
/// Weight rows (output columns) per integer micro-tile.
pub(crate) const QNR: usize = 16;
/// What int8 activation codes are stored plus (`a + 64`, unsigned for `vpmaddubsw`); each group's
/// integer sum starts at `-ACT_OFFSET · Σ q` to cancel it.
pub(crate) const ACT_OFFSET: i32 = 64;

/// What one int8 micro-kernel call multiplies: `groups` whole 64-groups of a sliver (`a`: per
/// depth quad, `QMR` words of 4 activation codes; `a_scales`: per group, `QMR` scales) and of a
/// packed panel (`b`: per depth quad, `QNR` words of 4 weight bytes; `b_scales`, `b_corr`: per
/// group, `QNR` scales and `-ACT_OFFSET · Σ q`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QOperands<'a> {
    pub(crate) groups: usize,
    pub(crate) a: &'a [u32],
    pub(crate) a_scales: &'a [f32],
    pub(crate) b: &'a [u32],
    pub(crate) b_scales: &'a [f32],
    pub(crate) b_corr: &'a [i32],
}

impl QOperands<'_> {
    /// `u32` words (4 depths each) per 64-group.
    pub(crate) const WORDS_PER_GROUP: usize = GROUP_SIZE / 4;

    /// Asserts every extent a `QMR x QNR` micro-kernel reads (`groups` whole groups of the
    /// sliver and the panel) and writes (the tile's rows in `c`, `ldc` apart).
    // Used by the x86 SIMD kernels only.
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn assert_tile(&self, c: &[f32], ldc: usize) {
        let words = self.groups * Self::WORDS_PER_GROUP;
        assert!(
            self.a.len() >= words * QMR
                && self.a_scales.len() >= self.groups * QMR
                && self.b.len() >= words * QNR
                && self.b_scales.len() >= self.groups * QNR
                && self.b_corr.len() >= self.groups * QNR,
            "packed panels too short"
        );
        assert_c_tile(c, ldc);
    }
}

/// One instruction set's int8 integer micro-kernel (`QMR x QNR` tile).
pub(crate) trait QMicro: Copy + Send + Sync {
    /// Adds the products of `op` into the tile `c[i*ldc + j]` (or overwrites it when
    /// `!accumulate`).
    fn kernel(self, op: &QOperands<'_>, c: &mut [f32], ldc: usize, accumulate: bool);

    /// Prefetches one address now. Default: nothing.
    #[inline]
    fn prefetch(self, _p: *const u8) {}

    /// Packs a full `QNR`-row panel's words and corrections (`q` from row 0's first byte, rows
    /// `row_stride` apart, `kc` whole groups); `false` leaves it to the driver's portable packer.
    /// Default: `false`.
    fn pack(
        self,
        _q: &[i8],
        _row_stride: usize,
        _kc: usize,
        _w: &mut [u32],
        _c: &mut [i32],
    ) -> bool {
        false
    }
}

/// What one int4 micro-kernel call multiplies: `groups` whole 32-groups of a sliver (`a`: per
/// depth quad, `QMR` words of 4 activation codes; `a_steps`, `a_offsets`: per group, `QMR` steps
/// and `8 · Σ xq`) and of an unpacked panel (`b`: per depth quad, `QNR` words of 4 codes;
/// `b_scales`: per group, `QNR` scales).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4Operands<'a> {
    pub(crate) groups: usize,
    pub(crate) a: &'a [u32],
    pub(crate) a_steps: &'a [f32],
    pub(crate) a_offsets: &'a [i32],
    pub(crate) b: &'a [u32],
    pub(crate) b_scales: &'a [f32],
}

/// Raw pointers to a [`Q4Operands`]' arrays: `(groups, a, a_steps, a_offsets, b, b_scales)`.
// Used by the x86 SIMD kernels only.
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
pub(crate) type Q4Pointers = (
    usize,
    *const u32,
    *const f32,
    *const i32,
    *const u32,
    *const f32,
);

impl Q4Operands<'_> {
    /// `u32` words (4 depths each) per 32-group.
    pub(crate) const WORDS_PER_GROUP: usize = INT4_GROUP_SIZE / 4;

    /// The group count and the arrays' first elements, for the SIMD kernels' raw loops.
    // Used by the x86 SIMD kernels only.
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn pointers(&self) -> Q4Pointers {
        (
            self.groups,
            self.a.as_ptr(),
            self.a_steps.as_ptr(),
            self.a_offsets.as_ptr(),
            self.b.as_ptr(),
            self.b_scales.as_ptr(),
        )
    }

    /// Asserts every extent a `QMR x QNR` micro-kernel reads (`groups` whole groups of the
    /// sliver and the panel) and writes (the tile's rows in `c`, `ldc` apart).
    // Used by the x86 SIMD kernels only.
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn assert_tile(&self, c: &[f32], ldc: usize) {
        let words = self.groups * Self::WORDS_PER_GROUP;
        assert!(
            self.a.len() >= words * QMR
                && self.a_steps.len() >= self.groups * QMR
                && self.a_offsets.len() >= self.groups * QMR
                && self.b.len() >= words * QNR
                && self.b_scales.len() >= self.groups * QNR,
            "packed int4 panels too short"
        );
        assert_c_tile(c, ldc);
    }
}

/// Asserts that `c` holds a `QMR x QNR` tile with rows `ldc` apart.
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
fn assert_c_tile(c: &[f32], ldc: usize) {
    assert!(
        ldc >= QNR && c.len() >= (QMR - 1) * ldc + QNR,
        "C tile out of bounds"
    );
}

/// One instruction set's int4 integer micro-kernel (`QMR x QNR` tile).
pub(crate) trait Q4Micro: Copy + Send + Sync {
    /// Adds the products of `op` into the tile `c[i*ldc + j]` (or overwrites it when
    /// `!accumulate`).
    fn kernel(self, op: &Q4Operands<'_>, c: &mut [f32], ldc: usize, accumulate: bool);

    /// Prefetches one address now. Default: nothing.
    #[inline]
    fn prefetch(self, _p: *const u8) {}

    /// Unpacks a full `QNR`-row panel of `groups` groups (`packed` from row 0's first group,
    /// rows `row_bytes` apart) into `words`; `false` leaves it to the driver's portable packer.
    /// Default: `false`.
    fn pack(self, _packed: &[u8], _row_bytes: usize, _groups: usize, _words: &mut [u32]) -> bool {
        false
    }
}

/// What one ggml-block GEMM micro-kernel call multiplies: `blocks` whole weight blocks of a
/// sliver of `mr` tokens and of a packed panel of `nr` rows, in the arithmetic `block_input`
/// defines (exact integer block sums, then its f32 operations into lane `b % 8`).
///
/// A block has `subs` sub-blocks of `quads` depth quads. Activations (`mr` entries per item):
/// `a` one word of 4 codes per depth quad; `a_off` per sub-block, `o · Σ q` for the weight
/// type's code offset `o`; `a_d` per block, the step `d_x`; `a_pairs` per block and min pair,
/// two i16 (`Σ q` of sub-blocks `2p`, `2p + 1`, or a Q4_1/Q5_1 block's `Σ q` and 0). Weights
/// (`nr` entries per item): `b` one word of 4 unsigned codes (`c + o`) per depth quad, or the
/// same codes row-major in `b_rows` (row `j` at `j * kc`), as the tile asks; `b_sc` per
/// sub-block, the integer scale (used when `subs > 1`); `b_pairs` per block and min pair, two
/// i16 (`−m` of the K-quant sub-blocks, or 1 and 0); `b_d` per block the scale, `b_m` the min's
/// scale (`dmin`, or the Q4_1/Q5_1 `m`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockTile<'a> {
    pub(crate) blocks: usize,
    pub(crate) subs: usize,
    pub(crate) quads: usize,
    /// Min pairs per block (0: the type has no mins).
    pub(crate) pairs: usize,
    /// Whether the codes have an offset (else `a_off` is all zero and may be skipped; the
    /// scalar definition always applies it, so only the x86 tiles read this).
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) offsets: bool,
    /// The lane of the first block (its index in the row, mod 8).
    pub(crate) lane0: usize,
    /// The row panel's first depth block on a tile that [`BlockMicro::starts_lanes`]: the lanes
    /// hold stale values, and each lane's first block writes `0 + x` instead of adding `x`.
    #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fresh: bool,
    /// Tokens per sliver, rows per panel, and the depth of the panel (`b_rows`' row stride).
    pub(crate) mr: usize,
    pub(crate) nr: usize,
    pub(crate) kc: usize,
    pub(crate) a: &'a [u32],
    pub(crate) a_off: &'a [i32],
    pub(crate) a_d: &'a [f32],
    pub(crate) a_pairs: &'a [u32],
    pub(crate) b: &'a [u32],
    pub(crate) b_rows: &'a [u8],
    pub(crate) b_sc: &'a [i32],
    pub(crate) b_pairs: &'a [u32],
    pub(crate) b_d: &'a [f32],
    pub(crate) b_m: &'a [f32],
}

/// f32 lane accumulators of one tile of `mr` tokens and `nr` rows: token `i`, lane `l`, row `j`
/// at `(i * BLOCK_LANES + l) * nr + j`.
pub(crate) const fn block_tile_lanes(mr: usize, nr: usize) -> usize {
    mr * crate::block_input::BLOCK_LANES * nr
}

impl BlockTile<'_> {
    /// Asserts every extent a micro-kernel reads (`blocks` whole blocks of the sliver and the
    /// panel, words or rows as `words` says) and writes (`lanes`).
    pub(crate) fn assert_tile(&self, lanes: &[f32], words: bool) {
        let (mr, nr) = (self.mr, self.nr);
        let (subs, quads) = (
            self.blocks * self.subs,
            self.blocks * self.subs * self.quads,
        );
        let pairs = self.blocks * self.pairs;
        let b_ok = if words {
            self.b.len() >= quads * nr
        } else {
            self.kc >= quads * 4 && self.b_rows.len() >= self.kc * nr
        };
        assert!(
            self.a.len() >= quads * mr
                && self.a_off.len() >= subs * mr
                && self.a_d.len() >= self.blocks * mr
                && self.a_pairs.len() >= pairs * mr
                && b_ok
                && (self.subs == 1 || self.b_sc.len() >= subs * nr)
                && self.b_pairs.len() >= pairs * nr
                && self.b_d.len() >= self.blocks * nr
                && (self.pairs == 0 || self.b_m.len() >= self.blocks * nr)
                && lanes.len() >= block_tile_lanes(mr, nr)
                && self.lane0 < crate::block_input::BLOCK_LANES,
            "packed block panels too short"
        );
    }
}

/// One instruction set's ggml-block integer micro-kernel (`mr x nr` tile).
pub(crate) trait BlockMicro: Copy + Send + Sync {
    /// Adds the tile's block terms into `lanes` (see [`block_tile_lanes`]).
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]);

    /// Tokens per sliver. Default: `QMR`.
    fn mr(self) -> usize {
        QMR
    }

    /// Whether the tile starts the lanes itself on a `fresh` tile (blocks `0..8` of the row
    /// panel's first depth block write their lanes), so the driver zeroes only lanes no block
    /// reaches. Default: no (the driver zeroes the lanes first).
    fn starts_lanes(self) -> bool {
        false
    }

    /// Rows per weight panel, a multiple of 16. Default: `QNR`.
    fn nr(self) -> usize {
        QNR
    }

    /// Whether the tile reads the panel as words (`b`) rather than rows (`b_rows`). Default:
    /// words.
    fn reads_words(self) -> bool {
        true
    }

    /// Whether the tile's lanes are ordered row first: row `j`, lane `l`, token `i` at
    /// `(j * BLOCK_LANES + l) * mr + i` instead of [`block_tile_lanes`]' order. Default: no.
    fn lanes_by_row(self) -> bool {
        false
    }

    /// Prefetches one address now. Default: nothing.
    #[inline]
    fn prefetch(self, _p: *const u8) {}

    /// Transposes `nr` rows of `kc` code bytes (`rows`, row `j` at `j * kc`, `kc` a multiple of
    /// 64, `nr` of 16) into panel words (`words[q * nr + j]`: bytes `4q..4q + 4` of row `j`);
    /// `false` leaves it to the driver's portable loop. Default: `false`.
    fn transpose(self, _rows: &[u8], _kc: usize, _nr: usize, _words: &mut [u32]) -> bool {
        false
    }

    /// Quantizes activations (`x`, whole blocks) into codes `qs` and scales `d`, bit for bit as
    /// [`quantize_into`](crate::block_input::quantize_into). Default: that function.
    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        crate::block_input::quantize_into(kind, x, qs, d)
    }

    /// Unpacks one row's consecutive blocks of a 32-value type (`blocks`, `d.len()` whole
    /// blocks) into unsigned codes (`codes`, 32 per block, as the block GEMM's panel holds them)
    /// and the blocks' scales (`d`); `false` leaves it to the driver's portable loop (the
    /// default, and for the types a tile does not do here).
    fn unpack_row(self, _ty: BlockType, _blocks: &[u8], _codes: &mut [u8], _d: &mut [f32]) -> bool {
        false
    }

    /// One token's outputs from its lanes (`lanes`: lane `l` of row `j` at `l * nr + j`, the
    /// [`block_tile_lanes`] order without `lanes_by_row`): `out[j]` is
    /// [`reduce8`](crate::block_input::reduce8) of row `j`'s 8 lanes, for `j < out.len() <= nr`.
    /// Default: that tree, 16 rows at a time.
    fn reduce_lanes(self, lanes: &[f32], nr: usize, out: &mut [f32]) {
        crate::block_input::reduce_lane_rows(lanes, nr, out)
    }
}

impl BlockMicro for NoKernel {
    fn kernel(self, _: &BlockTile<'_>, _: &mut [f32]) {
        match self {}
    }
}
