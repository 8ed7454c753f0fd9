//! Errors of the GGUF reader: every one names the file (or `<memory>`) and what was wrong where.

use std::fmt;

/// An error reading a GGUF file.
#[derive(Debug)]
pub struct GgufError {
    source_name: String,
    kind: GgufErrorKind,
}

impl GgufError {
    pub(crate) fn new(source_name: impl Into<String>, kind: GgufErrorKind) -> Self {
        Self {
            source_name: source_name.into(),
            kind,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> &GgufErrorKind {
        &self.kind
    }

    /// The file (or `<memory>`) the error is about.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// What was wrong, taken out of the error.
    pub fn into_kind(self) -> GgufErrorKind {
        self.kind
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source_name, self.kind)
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            GgufErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The classes of problems a GGUF file (or a request made of it) can have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// The operating system refused to open or map the file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file ends inside a structure.
    #[error(
        "truncated: {what} at byte {offset} needs {needed} bytes, but the file is {file_len} bytes"
    )]
    Truncated {
        /// What was being read (e.g. "value of metadata `general.name`").
        what: String,
        /// File offset where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// File length.
        file_len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:02x?} (expected \"GGUF\"): not a GGUF file")]
    BadMagic {
        /// The first (up to) four bytes.
        found: Vec<u8>,
    },
    /// A version other than 2 or 3 (v1 used 32-bit counts and is not read).
    #[error("GGUF version {version} is not supported (expected 2 or 3){hint}")]
    UnsupportedVersion {
        /// The version field.
        version: u32,
        /// Extra explanation (v1, big-endian).
        hint: &'static str,
    },
    /// A count (tensors, metadata entries, array elements) larger than the rest of the file could
    /// hold.
    #[error(
        "{what} declares {count} entries, but the remaining {remaining} bytes hold at most {max}"
    )]
    CountTooLarge {
        /// What is counted.
        what: String,
        /// The declared count.
        count: u64,
        /// The most the remaining bytes could hold.
        max: u64,
        /// Bytes left after the count.
        remaining: u64,
    },
    /// A string longer than the rest of the file.
    #[error("{what} at byte {offset} declares a length of {len} bytes, but only {remaining} bytes remain")]
    StringTooLong {
        /// Which string.
        what: String,
        /// File offset of the length prefix.
        offset: u64,
        /// Declared length.
        len: u64,
        /// Bytes left after the prefix.
        remaining: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Which string.
        what: String,
        /// File offset of the string's bytes.
        offset: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("metadata `{key}` has unknown value type {type_id} (expected 0..=12)")]
    BadValueType {
        /// The key (with `[]` per array level).
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH).
    #[error("metadata `{key}` nests arrays deeper than {max} levels")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The accepted depth.
        max: usize,
    },
    /// A metadata key appears twice.
    #[error("metadata key `{key}` appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type or an invalid value.
    #[error("metadata `{key}` is {found}, expected {expected}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A tensor with more than [`MAX_DIMS`](super::MAX_DIMS) dimensions (or none).
    #[error("tensor `{tensor}` has {n_dims} dimensions, expected 1..={max}")]
    BadDims {
        /// Tensor name.
        tensor: String,
        /// Declared number of dimensions.
        n_dims: u32,
        /// The accepted maximum.
        max: u32,
    },
    /// A tensor whose element or byte count overflows 64 bits.
    #[error("tensor `{tensor}` has dims {dims:?} whose size overflows")]
    ShapeOverflow {
        /// Tensor name.
        tensor: String,
        /// Dims as stored (fastest first).
        dims: Vec<u64>,
    },
    /// A ggml type id this reader does not know (so it cannot size the tensor).
    #[error("tensor `{tensor}` has unknown ggml type id {type_id}")]
    UnknownGgmlType {
        /// Tensor name.
        tensor: String,
        /// The type id found.
        type_id: u32,
    },
    /// A block-quantized tensor whose rows are not whole blocks.
    #[error("tensor `{tensor}` of type {ggml_type} has rows of {row_len} values, not a multiple of the block size {block_size}")]
    PartialBlock {
        /// Tensor name.
        tensor: String,
        /// Its ggml type.
        ggml_type: String,
        /// Values per row (`dims[0]`).
        row_len: u64,
        /// Values per block.
        block_size: u64,
    },
    /// A tensor offset not a multiple of the file's alignment.
    #[error("tensor `{tensor}` offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// Tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data is not inside the data section.
    #[error("tensor `{tensor}` data at bytes {start}..{end} of the data section lies outside its {data_len} bytes (truncated file?)")]
    OutOfBounds {
        /// Tensor name.
        tensor: String,
        /// First byte (relative to the data section).
        start: u64,
        /// One past the last byte (saturated).
        end: u64,
        /// Data section length.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensor `{tensor}` data overlaps tensor `{other}`")]
    Overlap {
        /// Tensor name.
        tensor: String,
        /// The tensor it overlaps.
        other: String,
    },
    /// Two tensors have one name.
    #[error("tensor name `{name}` appears twice")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A lookup named a tensor the file does not hold.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// The name.
        name: String,
    },
    /// A tensor of a type this reader cannot dequantize.
    #[error("tensor `{tensor}` has ggml type {ggml_type}, which cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)")]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// Its ggml type.
        ggml_type: String,
    },
    /// A row range outside the tensor.
    #[error("rows {start}..{end} are not rows of tensor `{tensor}` ({n_rows} rows)")]
    RowsOutOfRange {
        /// Tensor name.
        tensor: String,
        /// First row asked.
        start: usize,
        /// One past the last row asked.
        end: usize,
        /// Rows the tensor has.
        n_rows: u64,
    },
    /// An output buffer of the wrong length.
    #[error("output buffer for tensor `{tensor}` holds {found} values, expected {expected}")]
    OutputLength {
        /// Tensor name.
        tensor: String,
        /// Values the rows hold.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
    },
    /// A tensor too large to address on this machine.
    #[error("tensor `{tensor}` has {values} values, more than this machine can address")]
    TooLarge {
        /// Tensor name.
        tensor: String,
        /// Its element count.
        values: u64,
    },
}
