//! Errors: every one names the file (or buffer) and says what was wrong where.

use std::fmt;

/// An error reading or writing a torchless model file.
///
/// `source_name` is the file path (or `<memory>` for in-memory buffers); `kind` says what was wrong.
#[derive(Debug)]
pub struct FormatError {
    source_name: String,
    kind: FormatErrorKind,
}

impl FormatError {
    pub(crate) fn new(source_name: impl Into<String>, kind: FormatErrorKind) -> Self {
        Self {
            source_name: source_name.into(),
            kind,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> &FormatErrorKind {
        &self.kind
    }

    /// The file (or `<memory>`) the error is about.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source_name, self.kind)
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FormatErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The classes of problems a model file can have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// The operating system refused to open, map or write the file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Fewer bytes than the 8-byte header length prefix.
    #[error("file is {len} bytes, too short to be a torchless model (needs at least 8 bytes of header length)")]
    TooShort {
        /// File length in bytes.
        len: u64,
    },
    /// The header length prefix is larger than any sane header.
    #[error(
        "header length {len} bytes exceeds the limit of {max} bytes; not a torchless model file?"
    )]
    HeaderTooLarge {
        /// Declared header length.
        len: u64,
        /// The accepted maximum.
        max: u64,
    },
    /// The header length prefix points past the end of the file.
    #[error("header length {header_len} bytes runs past the end of the {file_len}-byte file (truncated?)")]
    HeaderBeyondFile {
        /// Declared header length.
        header_len: u64,
        /// File length in bytes.
        file_len: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("header is not valid UTF-8 (at byte {offset} of the header)")]
    HeaderNotUtf8 {
        /// Byte offset of the first invalid byte inside the header.
        offset: usize,
    },
    /// The header is not the expected JSON document.
    #[error("header is not valid torchless JSON: {message}")]
    HeaderJson {
        /// The parser's message (with line and column).
        message: String,
    },
    /// A metadata key the format requires is absent.
    #[error("metadata key `{key}` is missing")]
    MissingMetadata {
        /// The missing key.
        key: String,
    },
    /// A metadata value does not parse or is out of range.
    #[error("metadata `{key}` = {value:?} is invalid: expected {expected}")]
    BadMetadata {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// The metadata holds keys this version does not know (written by a newer exporter?).
    #[error("metadata has keys this version does not know: {}", keys.join(", "))]
    UnknownMetadata {
        /// The unknown keys, sorted.
        keys: Vec<String>,
    },
    /// The configuration is inconsistent (e.g. heads not dividing the hidden size).
    #[error("invalid model configuration: {reason}")]
    InvalidConfig {
        /// What is inconsistent.
        reason: String,
    },
    /// A tensor has a dtype other than `f32` or `int8`.
    #[error("tensor `{tensor}` has unknown dtype {dtype:?} (expected \"f32\" or \"int8\")")]
    UnknownDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// The element or byte count of a tensor does not fit in 64 bits.
    #[error("tensor `{tensor}` has shape {shape:?} whose size overflows")]
    ShapeOverflow {
        /// Tensor name.
        tensor: String,
        /// The shape found.
        shape: Vec<u64>,
    },
    /// A tensor's data (or its scales) does not lie inside the payload.
    #[error("tensor `{tensor}` {what} at payload bytes {start}..{end} lies outside the {payload_len}-byte payload (truncated file?)")]
    OutOfBounds {
        /// Tensor name.
        tensor: String,
        /// `data` or `scales`.
        what: &'static str,
        /// First byte (relative to the payload).
        start: u64,
        /// One past the last byte (relative to the payload; saturated on overflow).
        end: u64,
        /// Payload length in bytes.
        payload_len: u64,
    },
    /// A tensor's data is not aligned for its element type.
    #[error("tensor `{tensor}` {what} at file offset {offset} is not {align}-byte aligned")]
    Misaligned {
        /// Tensor name.
        tensor: String,
        /// `data` or `scales`.
        what: &'static str,
        /// Absolute file offset.
        offset: u64,
        /// Required alignment.
        align: usize,
    },
    /// An int8 tensor lacks scales or has the wrong number of them.
    #[error("int8 tensor `{tensor}`: {problem}")]
    BadScales {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor the model needs is absent, or a lookup named an unknown tensor.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// Tensor name.
        tensor: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the model cannot use in that place.
    #[error("tensor `{tensor}` has dtype {found}, expected {expected}")]
    WrongDtype {
        /// Tensor name.
        tensor: String,
        /// What is accepted.
        expected: String,
        /// The dtype found.
        found: String,
    },
    /// A row range asked of a tensor is not inside its first dimension, or the tensor is not a
    /// matrix.
    #[error("rows {start}..{end} of tensor `{tensor}` (shape {shape:?}) are not rows of a matrix")]
    RowsOutOfRange {
        /// Tensor name.
        tensor: String,
        /// First row asked for.
        start: usize,
        /// One past the last row asked for.
        end: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// The embedded tokenizer (vocab and merges) is malformed.
    #[error("embedded tokenizer is malformed: {reason}")]
    BadTokenizer {
        /// What is wrong.
        reason: String,
    },
    /// A GGUF file's structure is malformed (see [`GgufErrorKind`](crate::gguf::GgufErrorKind)).
    #[error("{0}")]
    Gguf(#[from] crate::gguf::GgufErrorKind),
    /// A GGUF file of a model family this engine does not run.
    #[error("architecture {architecture:?} (general.architecture) is not supported: torchless runs \"llama\" files (Llama 1/2/3, Mistral, TinyLlama, SmolLM)")]
    UnsupportedArchitecture {
        /// The architecture the file names.
        architecture: String,
    },
    /// A GGUF tensor of a ggml type the engine does not compute with.
    #[error("tensor `{tensor}` has ggml type {ggml_type}, which torchless does not compute with (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)")]
    UnsupportedTensorType {
        /// The tensor's name in the file.
        tensor: String,
        /// Its ggml type.
        ggml_type: String,
    },
    /// A GGUF tensor the model has no place for (its output would change without it).
    #[error("tensor `{tensor}` has no place in a llama model: {reason}")]
    UnexpectedTensor {
        /// The tensor's name in the file.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// A model feature the engine does not implement (RoPE scaling, mixture of experts, ...).
    #[error("{feature} is not supported")]
    Unsupported {
        /// The feature, with the metadata key or tensor that asks for it.
        feature: String,
    },
    /// The writer was used inconsistently (wrong order, wrong length, non-finite values to quantize).
    #[error("writer: {reason}")]
    Writer {
        /// What went wrong.
        reason: String,
    },
}
