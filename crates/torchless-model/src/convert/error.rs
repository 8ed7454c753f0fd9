//! The converter's error type.

use std::path::PathBuf;

use torchless_format::gguf::GgufError;
use torchless_format::FormatError;

/// Why a conversion (or a synthetic model) failed. Every variant names the file, and the tensor
/// where there is one; its message is one line, and `source()` holds the underlying error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A file or directory could not be read, listed, created, flushed or renamed.
    #[error("{message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What could not be done, naming the file (`cannot read config.json`).
        message: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An input is missing, malformed, inconsistent, or describes a model this engine does not
    /// run (another architecture, RoPE scaling, a tokenizer type it cannot read).
    #[error("{message}")]
    Input {
        /// The file (`config.json`, a shard, the index, the GGUF file, the checkpoint directory).
        path: PathBuf,
        /// The problem, naming the file and the field.
        message: String,
    },
    /// A tensor is missing from the input, unexpected, of a type the converter does not read,
    /// or unreadable.
    #[error("{message}")]
    Tensor {
        /// The file holding it (or that should).
        path: PathBuf,
        /// The tensor, by its name in the input.
        tensor: String,
        /// The problem, naming the file and the tensor.
        message: String,
    },
    /// A tensor's shape is not the one the configuration implies.
    #[error("{}: tensor `{tensor}` has shape {found:?}, config.json implies {expected:?}", path.display())]
    Shape {
        /// The file holding it.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The tokenizer (`tokenizer.json`, `tokenizer_config.json`, GGUF metadata) cannot be read
    /// or is not usable by the torchless tokenizer.
    #[error("{message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The problem, naming the file.
        message: String,
        /// The tokenizer crate's (or the model crate's) error, if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Writing the model file failed, or a value cannot be stored (a NaN in a tensor to
    /// quantize): the format crate's error, naming the output file and the tensor.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The GGUF file is malformed or truncated.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file was written but does not read back as a complete model.
    #[error("{message}")]
    ReadBack {
        /// The written file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
        /// The reader's error.
        #[source]
        source: Box<FormatError>,
    },
    /// An option is out of range (a synthetic vocabulary too small, an invalid configuration).
    #[error("{0}")]
    InvalidOption(String),
    /// A bug: a worker thread stopped early, or a layout went backwards.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Returns `ConvertError::Input` for file `$what` with a formatted message.
macro_rules! refuse {
    ($what:expr, $($message:tt)+) => {
        return Err($crate::convert::error::ConvertError::input($what, format!($($message)+)))
    };
}
pub(crate) use refuse;

impl ConvertError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        ConvertError::Io {
            path: path.into(),
            message: message.into(),
            source,
        }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ConvertError::Input {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConvertError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tokenizer(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ConvertError::Tokenizer {
            path: path.into(),
            message: message.into(),
            source,
        }
    }

    /// The file the error is about, where it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ConvertError::Io { path, .. }
            | ConvertError::Input { path, .. }
            | ConvertError::Tensor { path, .. }
            | ConvertError::Shape { path, .. }
            | ConvertError::Tokenizer { path, .. }
            | ConvertError::ReadBack { path, .. } => Some(path),
            _ => None,
        }
    }
}
