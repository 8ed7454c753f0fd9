//! What a conversion is asked for (storage, int4 method, progress) and what it reports.

use torchless_format::int4::{self, Int4Method};
use torchless_format::{DType, QuantKind, TensorSpec};

use super::checkpoint::SourceDType;

/// What a written file stores each tensor as: `weights` for the `*_proj` matrices (the
/// exporter's rule), `output` for `lm_head` and the token embedding, f32 for everything else
/// (norms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// Storage of the `*_proj` matrices; also the file's `quant` label.
    pub weights: QuantKind,
    /// Storage of `lm_head` and the token embedding.
    pub output: QuantKind,
}

impl Default for Storage {
    /// Everything f32: what the original exporter writes with `--quant f32`.
    fn default() -> Self {
        Self::new(QuantKind::F32, QuantKind::F32)
    }
}

impl Storage {
    /// `weights` for the projections, `output` for `lm_head` and the embedding.
    pub fn new(weights: QuantKind, output: QuantKind) -> Self {
        Self { weights, output }
    }

    /// The `quant` metadata label: the storage of the projection matrices.
    pub fn kind(self) -> QuantKind {
        self.weights
    }

    /// The storage of tensor `name` of `shape`. int4 needs rows of whole groups; a matrix
    /// without them is stored int8 instead (never the case for Mistral or Llama shapes).
    pub fn dtype_of(self, name: &str, shape: &[usize]) -> DType {
        let quant = if name.contains("_proj") {
            self.weights
        } else if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            self.output
        } else {
            QuantKind::F32
        };
        let whole_groups = shape
            .last()
            .is_some_and(|&cols| cols % int4::GROUP_SIZE == 0);
        match quant {
            QuantKind::F32 => DType::F32,
            QuantKind::Int8 => DType::Int8,
            QuantKind::Int4 if whole_groups => DType::Int4,
            QuantKind::Int4 => DType::Int8,
        }
    }

    /// What the writer is told about tensor `name` of `shape`: stored as [`dtype_of`](Self::dtype_of) says.
    pub fn spec(self, name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec::new(name, self.dtype_of(name, shape), shape.to_vec())
    }

    /// `int4`, or `int4 + int8 output` when the output matrix differs.
    pub fn describe(self) -> String {
        if self.output == QuantKind::F32 {
            self.kind().as_str().to_string()
        } else {
            format!("{} + {} output", self.kind().as_str(), self.output.as_str())
        }
    }
}

/// Progress of a conversion or of a synthetic model, reported to the caller's callback (more
/// kinds may be added: match with a catch-all arm). The library prints nothing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConvertProgress {
    /// The header is written; `tensors` tensors follow, `bytes` bytes of input to read (or, for
    /// a synthetic model, of weights to generate).
    Started {
        /// Tensors to write.
        tensors: usize,
        /// Bytes the [`Bytes`](Self::Bytes) events count up to.
        bytes: u64,
    },
    /// Tensor `index` (from 0, in file order) is being written.
    Tensor {
        /// Its position in the file.
        index: usize,
    },
    /// `done` of the bytes announced by [`Started`](Self::Started) are processed.
    Bytes {
        /// Bytes so far.
        done: u64,
    },
    /// Every tensor is written: the file is flushed to disk, moved to its name and read back.
    Finishing,
}

/// The caller's progress callback.
pub(crate) type ProgressFn<'a> = Option<&'a mut dyn FnMut(ConvertProgress)>;

pub(crate) fn report(progress: &mut ProgressFn<'_>, event: ConvertProgress) {
    if let Some(callback) = progress.as_mut() {
        callback(event);
    }
}

/// Options of [`convert`](super::convert) (and of [`convert_checkpoint`](super::convert_checkpoint),
/// [`convert_gguf`](super::convert_gguf)).
#[derive(Default)]
pub struct ConvertOptions<'a> {
    /// Storage of the projections and of the output matrix (default: all f32, the exporter's
    /// `--quant f32`).
    pub storage: Storage,
    /// How int4 scales are chosen (default: the error-minimizing search).
    pub int4_method: Int4Method,
    /// Called as the conversion proceeds (e.g. to draw a progress bar).
    pub progress: Option<&'a mut dyn FnMut(ConvertProgress)>,
}

impl std::fmt::Debug for ConvertOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertOptions")
            .field("storage", &self.storage)
            .field("int4_method", &self.int4_method)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What was converted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConvertedFrom {
    /// A Hugging Face checkpoint directory.
    Checkpoint {
        /// Tensors converted.
        tensors: usize,
        /// The element types present, in order of first appearance.
        dtypes: Vec<SourceDType>,
        /// Bytes of tensor data read.
        bytes: u64,
        /// Tensors present but not needed (rotary `inv_freq` buffers), left out.
        skipped: Vec<String>,
    },
    /// A GGUF file.
    Gguf {
        /// GGUF version.
        version: u32,
        /// Tensors in the file (all converted).
        tensors: usize,
        /// The ggml types present (`F32`, `Q4_0`, ...), sorted.
        types: Vec<&'static str>,
        /// The file's size.
        file_bytes: u64,
        /// Tensors whose values were kept bit for bit: F32 stored as f32, Q4_0 stored as int4
        /// (a Q4_0 block is an int4 group: its bytes are copied).
        copied: usize,
        /// The ggml types of the other tensors, which were dequantized (exactly, as gguf-py
        /// does) and stored as f32, or quantized again to int8/int4; sorted.
        dequantized: Vec<&'static str>,
    },
}

/// The result of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The input.
    pub from: ConvertedFrom,
    /// How the tensors were stored.
    pub storage: Storage,
    /// Size of the written file.
    pub output_bytes: u64,
}
