//! GGUF metadata values and ggml tensor types.

use std::fmt;

/// A ggml tensor type, as GGUF tensor infos name it (ids as in ggml's `ggml_type`).
///
/// Every known type can be sized (so its tensors are bounds-checked at open); only the ones
/// [`GgmlType::can_dequantize`] accepts can be read as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
#[non_exhaustive]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

const QK_K: u64 = 256;

/// (type, id, name, values per block, bytes per block), as in ggml / gguf-py's `GGML_QUANT_SIZES`.
const TABLE: [(GgmlType, u32, &str, u64, u64); 32] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (
        GgmlType::Q2_K,
        10,
        "Q2_K",
        QK_K,
        2 + 2 + QK_K / 16 + QK_K / 4,
    ),
    (
        GgmlType::Q3_K,
        11,
        "Q3_K",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + 12,
    ),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    (
        GgmlType::Q5_K,
        13,
        "Q5_K",
        QK_K,
        2 + 2 + QK_K / 2 + QK_K / 8 + 12,
    ),
    (
        GgmlType::Q6_K,
        14,
        "Q6_K",
        QK_K,
        2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
    ),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (
        GgmlType::IQ2_XS,
        17,
        "IQ2_XS",
        QK_K,
        2 + QK_K / 4 + QK_K / 32,
    ),
    (
        GgmlType::IQ3_XXS,
        18,
        "IQ3_XXS",
        QK_K,
        2 + QK_K / 4 + QK_K / 8,
    ),
    (GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (
        GgmlType::IQ3_S,
        21,
        "IQ3_S",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
    ),
    (GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (
        GgmlType::IQ4_XS,
        23,
        "IQ4_XS",
        QK_K,
        2 + 2 + QK_K / 2 + QK_K / 64,
    ),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (
        GgmlType::IQ1_M,
        29,
        "IQ1_M",
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
    ),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        // Every variant is in the table (checked by a unit test); F32 is a harmless fallback.
        TABLE.iter().find(|e| e.0 == self).unwrap_or(&TABLE[0])
    }

    /// The type with ggml id `id`, if this reader knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The name ggml uses (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Values per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().4
    }

    /// Whether [`GgufFile::tensor_f32`](super::GgufFile::tensor_f32) can read tensors of this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ggml block formats torchless computes with in place (besides F32): what a GGUF tensor of
/// these types is when opened as a model ([`DType::Blocks`](crate::DType::Blocks)). Every other
/// ggml type (Q2_K, Q3_K, the IQ types, ...) is refused by name when a model is opened.
///
/// A row of a `[rows, cols]` matrix is `cols / block_values` consecutive blocks of
/// `block_bytes` each (rows are whole blocks, checked at open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum BlockFormat {
    /// IEEE binary16 values.
    F16,
    /// bfloat16 values (the upper half of an f32).
    BF16,
    /// 32 values: f16 scale `d`, 32 int8 `q`; value `d·q`.
    Q8_0,
    /// 32 values: f16 scale `d`, 16 bytes of 4-bit codes `u`; value `d·(u − 8)`.
    Q4_0,
    /// 32 values: f16 scale `d` and minimum `m`, 16 bytes of codes `u`; value `d·u + m`.
    Q4_1,
    /// 32 values: f16 `d`, 4 bytes of fifth bits, 16 bytes of low nibbles; value `d·(u − 16)`.
    Q5_0,
    /// 32 values: f16 `d` and `m`, 4 bytes of fifth bits, 16 bytes of low nibbles; `d·u + m`.
    Q5_1,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales and minimums, 4-bit codes.
    Q4_K,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales and minimums, 5-bit codes.
    Q5_K,
    /// 256 values in 16 sub-blocks of 16 with int8 scales, 6-bit codes.
    Q6_K,
}

impl BlockFormat {
    /// Every block format, in ggml id order.
    pub const ALL: [BlockFormat; 10] = [
        BlockFormat::F16,
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4_K,
        BlockFormat::Q5_K,
        BlockFormat::Q6_K,
        BlockFormat::BF16,
    ];

    /// The block format of ggml type `ty`, if torchless computes with it in place.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::F16 => BlockFormat::F16,
            GgmlType::BF16 => BlockFormat::BF16,
            GgmlType::Q8_0 => BlockFormat::Q8_0,
            GgmlType::Q4_0 => BlockFormat::Q4_0,
            GgmlType::Q4_1 => BlockFormat::Q4_1,
            GgmlType::Q5_0 => BlockFormat::Q5_0,
            GgmlType::Q5_1 => BlockFormat::Q5_1,
            GgmlType::Q4_K => BlockFormat::Q4_K,
            GgmlType::Q5_K => BlockFormat::Q5_K,
            GgmlType::Q6_K => BlockFormat::Q6_K,
            _ => return None,
        })
    }

    /// The ggml type.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            BlockFormat::F16 => GgmlType::F16,
            BlockFormat::BF16 => GgmlType::BF16,
            BlockFormat::Q8_0 => GgmlType::Q8_0,
            BlockFormat::Q4_0 => GgmlType::Q4_0,
            BlockFormat::Q4_1 => GgmlType::Q4_1,
            BlockFormat::Q5_0 => GgmlType::Q5_0,
            BlockFormat::Q5_1 => GgmlType::Q5_1,
            BlockFormat::Q4_K => GgmlType::Q4_K,
            BlockFormat::Q5_K => GgmlType::Q5_K,
            BlockFormat::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The name ggml uses (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.ggml_type().name()
    }

    /// Values per block (1 for F16 and BF16).
    pub fn block_values(self) -> usize {
        self.ggml_type().block_size() as usize
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml_type().type_size() as usize
    }

    /// Bytes of `n_values` values (a multiple of [`block_values`](Self::block_values)).
    pub fn data_len(self, n_values: usize) -> usize {
        n_values / self.block_values() * self.block_bytes()
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A GGUF metadata value (value types 0..=12 of the GGUF specification).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A GGUF metadata array: elements of one type, stored compactly by type.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

/// The GGUF name of value type `id` (`UINT8`, ..., `FLOAT64`).
pub(crate) fn value_type_name(id: u32) -> &'static str {
    match id {
        0 => "UINT8",
        1 => "INT8",
        2 => "UINT16",
        3 => "INT16",
        4 => "UINT32",
        5 => "INT32",
        6 => "FLOAT32",
        7 => "BOOL",
        8 => "STRING",
        9 => "ARRAY",
        10 => "UINT64",
        11 => "INT64",
        12 => "FLOAT64",
        _ => "unknown",
    }
}

impl GgufValue {
    /// The GGUF name of the value's type (`UINT32`, `STRING`, `ARRAY`, ...).
    pub fn type_name(&self) -> &'static str {
        value_type_name(match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        })
    }

    /// The string, for a `STRING` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value that is non-negative, as a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits, as an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A `FLOAT32` or `FLOAT64` value, as an `f64` (exact for both).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A `FLOAT32` value as stored (`FLOAT64` values are rounded to f32).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A `BOOL` value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// An `ARRAY` value.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            GgufValue::Array(GgufArray::String(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of any integer type whose elements all fit in `i64`.
    pub fn as_i64_array(&self) -> Option<Vec<i64>> {
        self.as_array()?.to_i64_vec()
    }
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type.
    pub fn element_type_name(&self) -> &'static str {
        value_type_name(match self {
            GgufArray::U8(_) => 0,
            GgufArray::I8(_) => 1,
            GgufArray::U16(_) => 2,
            GgufArray::I16(_) => 3,
            GgufArray::U32(_) => 4,
            GgufArray::I32(_) => 5,
            GgufArray::F32(_) => 6,
            GgufArray::Bool(_) => 7,
            GgufArray::String(_) => 8,
            GgufArray::Array(_) => 9,
            GgufArray::U64(_) => 10,
            GgufArray::I64(_) => 11,
            GgufArray::F64(_) => 12,
        })
    }

    /// The elements of an integer array as `i64` (`None` for other element types or a `u64`
    /// above `i64::MAX`).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            GgufArray::U8(v) => conv(v, |x| Some(x.into())),
            GgufArray::I8(v) => conv(v, |x| Some(x.into())),
            GgufArray::U16(v) => conv(v, |x| Some(x.into())),
            GgufArray::I16(v) => conv(v, |x| Some(x.into())),
            GgufArray::U32(v) => conv(v, |x| Some(x.into())),
            GgufArray::I32(v) => conv(v, |x| Some(x.into())),
            GgufArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            GgufArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The elements of a float array as `f64`.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            GgufArray::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            GgufArray::F64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_are_unique_and_round_trip() {
        for e in &TABLE {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(e.0.id(), e.1);
            assert_eq!(e.0.name(), e.2);
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
        assert_eq!(GgmlType::Q5_K.type_size(), 176);
        assert_eq!(GgmlType::Q4_K.type_size(), 144);
    }

    #[test]
    fn block_formats_round_trip_and_have_ggml_sizes() {
        for f in BlockFormat::ALL {
            assert_eq!(BlockFormat::from_ggml(f.ggml_type()), Some(f));
            assert!(f.ggml_type().can_dequantize(), "{f}");
        }
        let sizes: Vec<(usize, usize)> = BlockFormat::ALL
            .iter()
            .map(|f| (f.block_values(), f.block_bytes()))
            .collect();
        assert_eq!(
            sizes,
            [
                (1, 2),
                (32, 18),
                (32, 20),
                (32, 22),
                (32, 24),
                (32, 34),
                (256, 144),
                (256, 176),
                (256, 210),
                (1, 2)
            ]
        );
        assert_eq!(BlockFormat::from_ggml(GgmlType::Q3_K), None);
        assert_eq!(BlockFormat::from_ggml(GgmlType::F32), None);
    }
}
