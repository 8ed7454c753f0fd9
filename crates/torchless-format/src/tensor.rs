//! Tensor descriptions and typed, zero-copy views of their data (shared by torchless files and
//! GGUF files opened as models).

use crate::gguf::BlockFormat;
use crate::int4;
use crate::quant::GROUP_SIZE;

/// Storage type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// Little-endian IEEE float32.
    F32,
    /// int8 in groups of 64 with one f32 inverse scale per group.
    Int8,
    /// 4-bit codes in groups of 32 with one f16 scale per group (see [`crate::int4`]).
    Int4,
    /// ggml blocks of a GGUF file, used in place (no scales array: blocks carry their own).
    Blocks(BlockFormat),
}

impl DType {
    /// The header string (`"f32"`, `"int8"`, `"int4"`), or ggml's name of a block format
    /// (`"Q4_K"`, `"F16"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Int8 => "int8",
            DType::Int4 => "int4",
            DType::Blocks(format) => format.name(),
        }
    }

    /// Bytes of the main data of `n_elements` values (int4: two per byte; blocks: whole blocks).
    pub fn data_len(self, n_elements: usize) -> usize {
        match self {
            DType::F32 => n_elements * 4,
            DType::Int8 => n_elements,
            DType::Int4 => n_elements.div_ceil(2),
            DType::Blocks(format) => format.data_len(n_elements),
        }
    }

    /// Values per scale, for the quantized types with a separate scales array.
    pub fn group_size(self) -> Option<usize> {
        match self {
            DType::F32 | DType::Blocks(_) => None,
            DType::Int8 => Some(GROUP_SIZE),
            DType::Int4 => Some(int4::GROUP_SIZE),
        }
    }

    /// Bytes of one stored scale (f32 inverse scales for int8, f16 scales for int4; 0 for f32
    /// and for ggml blocks, whose scales are inside the blocks).
    pub fn scale_bytes(self) -> usize {
        match self {
            DType::F32 | DType::Blocks(_) => 0,
            DType::Int8 => 4,
            DType::Int4 => 2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one tensor lives, checked against the file at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Hugging Face tensor name.
    pub name: String,
    /// Storage type.
    pub dtype: DType,
    /// PyTorch shape, row-major.
    pub shape: Vec<usize>,
    /// Number of elements (product of the shape).
    pub n_elements: usize,
    /// Start of the data, in bytes from the payload start.
    pub offset: usize,
    /// For int8 and int4: start of the scales (bytes from the payload start) and their count.
    pub scales: Option<ScaleInfo>,
}

/// Location of a quantized tensor's scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleInfo {
    /// Start, in bytes from the payload start.
    pub offset: usize,
    /// Number of scales (int8: `ceil(n_elements / 64)` f32; int4: `n_elements / 32` f16).
    pub count: usize,
}

impl TensorInfo {
    /// Bytes of the main data (without scales).
    pub fn data_len(&self) -> usize {
        self.dtype.data_len(self.n_elements)
    }

    /// Bytes a reader touches to use this tensor once (data plus scales).
    pub fn bytes_read(&self) -> usize {
        self.data_len()
            + self
                .scales
                .map_or(0, |s| s.count * self.dtype.scale_bytes())
    }
}

/// An int8 tensor: quantized values and, per group of 64, the stored *inverse* scale.
///
/// Dequantize with `q / inv_scale` (see [`crate::quant::dequantize_into`]); multiplying by the stored
/// value is the classic mistake this name is here to prevent.
#[derive(Debug, Clone, Copy)]
pub struct Int8View<'a> {
    /// Quantized values, flattened row-major.
    pub values: &'a [i8],
    /// `127 / max|x|` of each group of 64 consecutive values.
    pub inv_scales: &'a [f32],
}

impl Int8View<'_> {
    /// The dequantized value at flat index `i` (`None` out of range).
    pub fn get(&self, i: usize) -> Option<f32> {
        let q = *self.values.get(i)?;
        let inv_scale = *self.inv_scales.get(i / GROUP_SIZE)?;
        Some(f32::from(q) / inv_scale)
    }
}

/// An int4 tensor: packed 4-bit codes and one f16 scale per group of 32 (layout in
/// [`crate::int4`]).
#[derive(Debug, Clone, Copy)]
pub struct Int4View<'a> {
    /// Codes, 16 bytes per group of 32 values (flattened row-major).
    pub packed: &'a [u8],
    /// IEEE half bits of each group's scale `d` (value = `d · (code − 8)`).
    pub scales: &'a [u16],
}

impl Int4View<'_> {
    /// The dequantized value at flat index `i` (`None` out of range).
    pub fn get(&self, i: usize) -> Option<f32> {
        let g = i / int4::GROUP_SIZE;
        let group = self
            .packed
            .get(g * int4::GROUP_BYTES..(g + 1) * int4::GROUP_BYTES)?;
        let d = crate::half::f16_to_f32(*self.scales.get(g)?);
        Some(d * f32::from(int4::code_at(group, i % int4::GROUP_SIZE)))
    }
}

/// A tensor stored as ggml blocks (a GGUF file's F16, BF16, Q8_0, Q4_0, ..., Q6_K tensor), as
/// the file holds them: row after row, each row whole blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockView<'a> {
    /// The block format.
    pub format: BlockFormat,
    /// The blocks (any alignment).
    pub data: &'a [u8],
}

impl BlockView<'_> {
    /// Number of values the blocks hold.
    pub fn len(&self) -> usize {
        self.data.len() / self.format.block_bytes() * self.format.block_values()
    }

    /// Whether the view holds no value.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Dequantizes every value into `out` (`out.len()` must be [`len`](Self::len)), exactly as
    /// gguf-py's `gguf.quants.dequantize` does (bit-identical).
    ///
    /// Returns `false`, writing nothing, when the lengths disagree.
    pub fn dequantize_into(&self, out: &mut [f32]) -> bool {
        if out.len() != self.len() || !self.data.len().is_multiple_of(self.format.block_bytes()) {
            return false;
        }
        crate::gguf::dequantize_blocks(self.format, self.data, out);
        true
    }

    /// The dequantized value at flat index `i` (`None` out of range).
    pub fn get(&self, i: usize) -> Option<f32> {
        let (values, bytes) = (self.format.block_values(), self.format.block_bytes());
        let block = self
            .data
            .get(i / values * bytes..(i / values + 1) * bytes)?;
        let mut out = vec![0.0; values];
        crate::gguf::dequantize_blocks(self.format, block, &mut out);
        out.get(i % values).copied()
    }
}

/// Typed, zero-copy data of one tensor.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// float32 values, flattened row-major.
    F32(&'a [f32]),
    /// int8 values with inverse scales.
    Int8(Int8View<'a>),
    /// int4 codes with f16 scales.
    Int4(Int4View<'a>),
    /// ggml blocks of a GGUF file.
    Blocks(BlockView<'a>),
}

/// A tensor's description and its data, borrowed from the mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Name, dtype, shape, location.
    pub info: &'a TensorInfo,
    /// The data.
    pub data: TensorData<'a>,
}

impl<'a> TensorRef<'a> {
    /// The f32 data, or `None` for a quantized tensor.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.data {
            TensorData::F32(values) => Some(values),
            TensorData::Int8(_) | TensorData::Int4(_) | TensorData::Blocks(_) => None,
        }
    }

    /// Copies the tensor out as f32 (dequantizing int8 as `q / inv_scale`, int4 as `d · code`,
    /// ggml blocks as gguf-py does).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.data {
            TensorData::F32(values) => values.to_vec(),
            TensorData::Int8(view) => {
                let mut out = vec![0.0; view.values.len()];
                // Lengths were checked at open, so this cannot fail.
                crate::quant::dequantize_into(view.values, view.inv_scales, &mut out);
                out
            }
            TensorData::Int4(view) => {
                let mut out = vec![0.0; view.packed.len() * 2];
                // Lengths were checked at open, so this cannot fail.
                int4::dequantize_into(view.packed, view.scales, &mut out);
                out
            }
            TensorData::Blocks(view) => {
                let mut out = vec![0.0; view.len()];
                // Whole blocks were checked at open, so this cannot fail.
                view.dequantize_into(&mut out);
                out
            }
        }
    }
}
