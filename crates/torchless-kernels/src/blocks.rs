//! ggml block formats, multiplied in place: [`BlockType`], the matrix view [`BlockMat`], the byte
//! layout of each type and its exact dequantization to f32.
//!
//! Layouts (little-endian, as ggml's `ggml-common.h`; `d`, `m`, `dmin` are IEEE halves):
//!
//! | type | values | bytes | layout | value |
//! |---|---|---|---|---|
//! | F16 | 1 | 2 | half | exact |
//! | BF16 | 1 | 2 | bfloat16 | exact |
//! | Q8_0 | 32 | 34 | `d`, `qs: [i8; 32]` | `d · qs[i]` |
//! | Q4_0 | 32 | 18 | `d`, `qs: [u8; 16]` | `d · (u − 8)`, `u` of value `j`: low nibble of `qs[j]`, of `j + 16`: high nibble |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs: [u8; 16]` | `u · d + m` (nibbles as Q4_0) |
//! | Q5_0 | 32 | 22 | `d`, `qh: u32`, `qs: [u8; 16]` | `d · (u − 16)`, `u` = nibble as Q4_0 plus `16 ·` bit `i` of `qh` |
//! | Q5_1 | 32 | 24 | `d`, `m`, `qh: u32`, `qs: [u8; 16]` | `u · d + m` (`u` as Q5_0) |
//! | Q4_K | 256 | 144 | `d`, `dmin`, `scales: [u8; 12]`, `qs: [u8; 128]` | `(d · sc_j) · u − dmin · m_j`, `j = i / 32` |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]` | as Q4_K with a fifth bit |
//! | Q6_K | 256 | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d` | `(d · sc_j) · (u − 32)`, `j = i / 16` |
//!
//! K-quant codes: value `64p + l` (`l < 32`) is the low nibble of `qs[32p + l]`, value
//! `64p + 32 + l` its high nibble; Q5_K adds `16 ·` bit `2p` (resp. `2p + 1`) of `qh[l]`. The 6-bit
//! scales and mins of the 8 sub-blocks are packed in 12 bytes ([`k_scales`]). Q6_K: value
//! `128n + 32k + l` (`k < 4`, `l < 32`) takes the low (`k` even) or high nibble of
//! `ql[64n + 32 (k % 2) + l]` and bits `2k, 2k + 1` of `qh[32n + l]` as its two high bits.
//!
//! Every dequantized value is exact in f32 but for one rounding of the final addition of a min
//! (Q4_1, Q5_1, Q4_K, Q5_K): the products of a half scale (11 significant bits), an integer scale
//! (at most 7) and a code (at most 6) fit f32's 24 bits. So the f32 values here are the correctly
//! rounded real values, whichever way they are computed (with or without a fused multiply-add).

use crate::error::{check_len, checked_mul, KernelError};
use crate::half::{bf16_to_f32, f16_to_f32};
use std::ops::Range;

/// ggml block formats multiplied in place (values per block, bytes per block as in ggml).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockType {
    /// IEEE half precision, one value per "block".
    F16,
    /// bfloat16, one value per "block".
    BF16,
    /// 32 signed 8-bit codes and a half scale.
    Q8_0,
    /// 32 4-bit codes (offset 8) and a half scale.
    Q4_0,
    /// 32 4-bit codes, a half scale and a half min.
    Q4_1,
    /// 32 5-bit codes (offset 16) and a half scale.
    Q5_0,
    /// 32 5-bit codes, a half scale and a half min.
    Q5_1,
    /// 256 4-bit codes in 8 sub-blocks with 6-bit scales and mins.
    Q4K,
    /// 256 5-bit codes in 8 sub-blocks with 6-bit scales and mins.
    Q5K,
    /// 256 6-bit codes (offset 32) in 16 sub-blocks with 8-bit scales.
    Q6K,
}

impl BlockType {
    /// Every type, in ggml's type-id order.
    pub const ALL: [BlockType; 10] = [
        BlockType::F16,
        BlockType::Q4_0,
        BlockType::Q4_1,
        BlockType::Q5_0,
        BlockType::Q5_1,
        BlockType::Q8_0,
        BlockType::Q4K,
        BlockType::Q5K,
        BlockType::Q6K,
        BlockType::BF16,
    ];

    /// Values per block: 1, 1, 32, 32, 32, 32, 32, 256, 256, 256.
    pub const fn block_values(self) -> usize {
        match self {
            BlockType::F16 | BlockType::BF16 => 1,
            BlockType::Q8_0
            | BlockType::Q4_0
            | BlockType::Q4_1
            | BlockType::Q5_0
            | BlockType::Q5_1 => 32,
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => 256,
        }
    }

    /// Bytes per block: 2, 2, 34, 18, 20, 22, 24, 144, 176, 210.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockType::F16 | BlockType::BF16 => 2,
            BlockType::Q8_0 => 34,
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q5_0 => 22,
            BlockType::Q5_1 => 24,
            BlockType::Q4K => 144,
            BlockType::Q5K => 176,
            BlockType::Q6K => 210,
        }
    }

    /// ggml's name: `"F16"`, `"BF16"`, `"Q8_0"`, `"Q4_0"`, `"Q4_1"`, `"Q5_0"`, `"Q5_1"`,
    /// `"Q4_K"`, `"Q5_K"`, `"Q6_K"`.
    pub fn name(self) -> &'static str {
        match self {
            BlockType::F16 => "F16",
            BlockType::BF16 => "BF16",
            BlockType::Q8_0 => "Q8_0",
            BlockType::Q4_0 => "Q4_0",
            BlockType::Q4_1 => "Q4_1",
            BlockType::Q5_0 => "Q5_0",
            BlockType::Q5_1 => "Q5_1",
            BlockType::Q4K => "Q4_K",
            BlockType::Q5K => "Q5_K",
            BlockType::Q6K => "Q6_K",
        }
    }

    /// ggml's type id (`enum ggml_type`, as GGUF stores it).
    pub const fn ggml_type(self) -> u32 {
        match self {
            BlockType::F16 => 1,
            BlockType::Q4_0 => 2,
            BlockType::Q4_1 => 3,
            BlockType::Q5_0 => 6,
            BlockType::Q5_1 => 7,
            BlockType::Q8_0 => 8,
            BlockType::Q4K => 12,
            BlockType::Q5K => 13,
            BlockType::Q6K => 14,
            BlockType::BF16 => 30,
        }
    }

    /// The type of a ggml type id, if it is one of these.
    pub fn from_ggml_type(id: u32) -> Option<BlockType> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Whether values are integer codes with scales (not F16/BF16): the default arithmetic
    /// quantizes the activations for these.
    pub const fn is_quantized(self) -> bool {
        !matches!(self, BlockType::F16 | BlockType::BF16)
    }
}

impl std::fmt::Display for BlockType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `[rows, cols]` matrix stored as ggml blocks, row-major: each row is `cols / block_values`
/// consecutive blocks (`cols` must be a multiple of `block_values`). Borrowed bytes, any alignment.
#[derive(Clone, Copy, Debug)]
pub struct BlockMat<'a> {
    ty: BlockType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> BlockMat<'a> {
    /// Wraps `data`, which must hold exactly `rows` rows of `cols / ty.block_values()` blocks.
    pub fn new(
        ty: BlockType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(ty.block_values()) {
            return Err(KernelError::Shape(format!(
                "a {} matrix needs whole blocks of {} values per row, found {cols} columns",
                ty.name(),
                ty.block_values()
            )));
        }
        let row_bytes = cols / ty.block_values() * ty.block_bytes();
        check_len(
            "block matrix data",
            checked_mul("block matrix", rows, row_bytes)?,
            data.len(),
        )?;
        Ok(Self {
            ty,
            data,
            rows,
            cols,
        })
    }

    /// The block type.
    pub fn ty(&self) -> BlockType {
        self.ty
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw blocks, row after row.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.blocks_per_row() * self.ty.block_bytes()
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.ty.block_values()
    }

    /// The bytes of row `r` (panics when out of range).
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// The sub-matrix made of rows `range` (rows are whole blocks, so any range is aligned).
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        if range.start > range.end || range.end > self.rows {
            return Err(KernelError::Shape(format!(
                "row range {}..{} outside 0..{}",
                range.start, range.end, self.rows
            )));
        }
        let rb = self.row_bytes();
        Ok(Self {
            ty: self.ty,
            data: &self.data[range.start * rb..range.end * rb],
            rows: range.len(),
            cols: self.cols,
        })
    }

    /// Dequantizes row `r` into `out` (`cols` values), exactly as ggml's `dequantize_row_*`
    /// (and gguf-py) compute it in f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::Shape(format!(
                "row {r} outside 0..{}",
                self.rows
            )));
        }
        check_len("dequantize_row output", self.cols, out.len())?;
        dequantize_row(self.ty, self.row(r), out);
        Ok(())
    }

    /// Element (`r`, `c`) as f32 (dequantizes its block; for tests, not hot loops).
    pub(crate) fn get(&self, r: usize, c: usize) -> f32 {
        let (bv, bb) = (self.ty.block_values(), self.ty.block_bytes());
        let b = c / bv;
        let block = &self.row(r)[b * bb..(b + 1) * bb];
        let mut buf = [0.0f32; 256];
        dequantize_block(self.ty, block, &mut buf[..bv]);
        buf[c % bv]
    }
}

/// Largest number of values in a block.
pub(crate) const MAX_BLOCK_VALUES: usize = 256;

#[inline]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K / Q5_K block from its 12 packed bytes:
/// sub-block `j < 4`: scale `q[j] & 63`, min `q[j + 4] & 63`; `j >= 4`: scale
/// `(q[j + 4] & 15) | (q[j − 4] >> 6) << 4`, min `(q[j + 4] >> 4) | (q[j] >> 6) << 4`.
#[inline]
pub(crate) fn k_scales(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    (sc, mn)
}

/// The integer codes of one quantized block, as they multiply their scale: Q8_0 `qs[i]`, Q4_0
/// `u − 8`, Q5_0 `u − 16`, Q4_1 / Q5_1 / Q4_K / Q5_K `u`, Q6_K `u − 32` (`out` holds
/// `block_values` entries). Not for F16 / BF16.
#[inline]
pub(crate) fn block_codes(ty: BlockType, b: &[u8], out: &mut [i8]) {
    match ty {
        BlockType::Q8_0 => {
            for (o, &v) in out[..32].iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
        }
        BlockType::Q4_0 | BlockType::Q4_1 => {
            let (qs, off) = if ty == BlockType::Q4_0 {
                (&b[2..18], 8)
            } else {
                (&b[4..20], 0)
            };
            for j in 0..16 {
                out[j] = (qs[j] & 0xf) as i8 - off;
                out[j + 16] = (qs[j] >> 4) as i8 - off;
            }
        }
        BlockType::Q5_0 | BlockType::Q5_1 => {
            let (at, off) = if ty == BlockType::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) as u8;
                let h1 = ((qh >> (j + 16)) & 1) as u8;
                out[j] = ((qs[j] & 0xf) | (h0 << 4)) as i8 - off;
                out[j + 16] = ((qs[j] >> 4) | (h1 << 4)) as i8 - off;
            }
        }
        BlockType::Q4K => {
            let qs = &b[16..144];
            for p in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * p + l];
                    out[64 * p + l] = (q & 0xf) as i8;
                    out[64 * p + 32 + l] = (q >> 4) as i8;
                }
            }
        }
        BlockType::Q5K => {
            let (qh, qs) = (&b[16..48], &b[48..176]);
            for p in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * p + l];
                    let h0 = (qh[l] >> (2 * p)) & 1;
                    let h1 = (qh[l] >> (2 * p + 1)) & 1;
                    out[64 * p + l] = ((q & 0xf) | (h0 << 4)) as i8;
                    out[64 * p + 32 + l] = ((q >> 4) | (h1 << 4)) as i8;
                }
            }
        }
        BlockType::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                let o = &mut out[128 * n..];
                for l in 0..32 {
                    let h = qh[l];
                    o[l] = ((ql[l] & 0xf) | ((h & 3) << 4)) as i8 - 32;
                    o[32 + l] = ((ql[32 + l] & 0xf) | (((h >> 2) & 3) << 4)) as i8 - 32;
                    o[64 + l] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                    o[96 + l] = ((ql[32 + l] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
                }
            }
        }
        BlockType::F16 | BlockType::BF16 => unreachable!("F16/BF16 have no codes"),
    }
}

/// The scales of one quantized block, per sub-block of `sub_values(ty)` values: `(scale, min)`
/// such that value `i` is `scale · code + min` (`code` from [`block_codes`]), both exact in f32:
/// Q8_0 / Q4_0 / Q5_0 `(d, 0)`, Q4_1 / Q5_1 `(d, m)`, Q4_K / Q5_K `(d · sc_j, −dmin · m_j)`,
/// Q6_K `(d · sc_j, 0)`.
#[inline]
pub(crate) fn block_scales(ty: BlockType, b: &[u8], scale: &mut [f32; 16], min: &mut [f32; 16]) {
    match ty {
        BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q5_0 => {
            scale[0] = half_at(b, 0);
            min[0] = 0.0;
        }
        BlockType::Q4_1 | BlockType::Q5_1 => {
            scale[0] = half_at(b, 0);
            min[0] = half_at(b, 2);
        }
        BlockType::Q4K | BlockType::Q5K => {
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            let (sc, mn) = k_scales(&b[4..16]);
            for j in 0..8 {
                scale[j] = d * f32::from(sc[j]);
                min[j] = -(dmin * f32::from(mn[j]));
            }
        }
        BlockType::Q6K => {
            let d = half_at(b, 208);
            for j in 0..16 {
                scale[j] = d * f32::from(b[192 + j] as i8);
                min[j] = 0.0;
            }
        }
        BlockType::F16 | BlockType::BF16 => unreachable!("F16/BF16 have no scales"),
    }
}

/// Whether values carry an added min (Q4_1, Q5_1, Q4_K, Q5_K).
pub(crate) const fn has_min(ty: BlockType) -> bool {
    matches!(
        ty,
        BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K
    )
}

/// Values per sub-block (one scale each): 32 for the 32-value types and Q4_K / Q5_K, 16 for
/// Q6_K, 1 for F16 / BF16.
pub(crate) const fn sub_values(ty: BlockType) -> usize {
    match ty {
        BlockType::F16 | BlockType::BF16 => 1,
        BlockType::Q6K => 16,
        _ => 32,
    }
}

/// Dequantizes one block (`b`: its `block_bytes`) into `out` (`block_values` values), exactly.
#[inline]
pub(crate) fn dequantize_block(ty: BlockType, b: &[u8], out: &mut [f32]) {
    match ty {
        BlockType::F16 => out[0] = half_at(b, 0),
        BlockType::BF16 => out[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        _ => {
            let n = ty.block_values();
            let mut codes = [0i8; MAX_BLOCK_VALUES];
            block_codes(ty, b, &mut codes[..n]);
            let (mut scale, mut min) = ([0.0f32; 16], [0.0f32; 16]);
            block_scales(ty, b, &mut scale, &mut min);
            let sub = sub_values(ty);
            // One product (exact) and, for the types with mins, one addition (rounded once), as
            // ggml and gguf-py compute them (`x − m1` is `x + (−m1)` exactly, zeros' signs
            // included).
            let with_min = has_min(ty);
            for (i, (o, &q)) in out[..n].iter_mut().zip(&codes[..n]).enumerate() {
                let v = scale[i / sub] * f32::from(q);
                *o = if with_min { v + min[i / sub] } else { v };
            }
        }
    }
}

/// Dequantizes a whole row (`row`: its bytes) into `out` (its `cols` values).
pub(crate) fn dequantize_row(ty: BlockType, row: &[u8], out: &mut [f32]) {
    match ty {
        BlockType::F16 => {
            for (o, h) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([h[0], h[1]]));
            }
        }
        BlockType::BF16 => {
            for (o, h) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([h[0], h[1]]));
            }
        }
        _ => {
            let (bv, bb) = (ty.block_values(), ty.block_bytes());
            for (o, b) in out.chunks_exact_mut(bv).zip(row.chunks_exact(bb)) {
                dequantize_block(ty, b, o);
            }
        }
    }
}

/// Dequantizes columns `c0..c0 + out.len()` of a row (any range), block by block.
pub(crate) fn dequantize_range(ty: BlockType, row: &[u8], c0: usize, out: &mut [f32]) {
    let (bv, bb) = (ty.block_values(), ty.block_bytes());
    if bv == 1 {
        dequantize_row(ty, &row[c0 * bb..(c0 + out.len()) * bb], out);
        return;
    }
    let mut buf = [0.0f32; MAX_BLOCK_VALUES];
    let end = c0 + out.len();
    let mut c = c0;
    while c < end {
        let b = c / bv;
        let stop = ((b + 1) * bv).min(end);
        let o = &mut out[c - c0..stop - c0];
        if c == b * bv && stop == (b + 1) * bv {
            dequantize_block(ty, &row[b * bb..(b + 1) * bb], o);
        } else {
            dequantize_block(ty, &row[b * bb..(b + 1) * bb], &mut buf[..bv]);
            o.copy_from_slice(&buf[c - b * bv..stop - b * bv]);
        }
        c = stop;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names_are_ggml_s() {
        let want = [
            ("F16", 1, 2, 1),
            ("Q4_0", 32, 18, 2),
            ("Q4_1", 32, 20, 3),
            ("Q5_0", 32, 22, 6),
            ("Q5_1", 32, 24, 7),
            ("Q8_0", 32, 34, 8),
            ("Q4_K", 256, 144, 12),
            ("Q5_K", 256, 176, 13),
            ("Q6_K", 256, 210, 14),
            ("BF16", 1, 2, 30),
        ];
        for (t, (name, bv, bb, id)) in BlockType::ALL.into_iter().zip(want) {
            assert_eq!(
                (t.name(), t.block_values(), t.block_bytes(), t.ggml_type()),
                (name, bv, bb, id)
            );
            assert_eq!(BlockType::from_ggml_type(id), Some(t));
        }
        assert_eq!(BlockType::from_ggml_type(10), None); // Q2_K
    }

    #[test]
    fn matrices_check_their_shapes() {
        let data = vec![0u8; 2 * 144];
        assert!(BlockMat::new(BlockType::Q4K, &data, 2, 256).is_ok());
        assert!(BlockMat::new(BlockType::Q4K, &data, 1, 512).is_ok());
        assert!(BlockMat::new(BlockType::Q4K, &data, 2, 128).is_err());
        assert!(BlockMat::new(BlockType::Q4K, &data, 3, 256).is_err());
        assert!(BlockMat::new(BlockType::F16, &data, 2, 72).is_ok());
        let m = BlockMat::new(BlockType::Q4K, &data, 2, 256).unwrap();
        assert_eq!(m.rows_range(1..2).unwrap().data().len(), 144);
        assert!(m.rows_range(1..3).is_err());
    }

    #[test]
    fn k_scales_unpack_six_bit_fields() {
        // Scales 1..8 and mins 11..18, packed by hand as ggml's quantizer does.
        let (sc, mn): ([u8; 8], [u8; 8]) = (
            [1, 2, 3, 40, 5, 60, 7, 63],
            [11, 12, 13, 14, 55, 16, 17, 48],
        );
        let mut q = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                q[j] = sc[j];
                q[j + 4] = mn[j];
            } else {
                q[j + 4] = (sc[j] & 0xf) | ((mn[j] & 0xf) << 4);
                q[j - 4] |= (sc[j] >> 4) << 6;
                q[j] |= (mn[j] >> 4) << 6;
            }
        }
        assert_eq!(k_scales(&q), (sc, mn));
    }
}
