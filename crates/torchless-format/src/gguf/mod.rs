//! Read GGUF files (the llama.cpp format), v2 and v3, little-endian: header, typed metadata,
//! tensor infos, and tensors dequantized to f32.
//!
//! The file is memory-mapped and validated once at open: counts are capped by what the remaining
//! bytes could hold, strings and arrays by the bytes left, tensors must have at most 4 dimensions,
//! a size that fits in 64 bits, a known ggml type, an aligned offset and data inside the file, and
//! unique names. A bad file gives a [`GgufError`] naming the file and the problem, never a panic or
//! an allocation larger than a small multiple of the file.
//!
//! ```no_run
//! use torchless_format::gguf::GgufFile;
//!
//! let file = GgufFile::open("model.gguf")?;
//! let arch = file.get("general.architecture").and_then(|v| v.as_str());
//! for info in file.tensors() {
//!     println!("{} {:?} {}", info.name(), info.shape_rows_major(), info.ggml_type());
//! }
//! let embedding = file.tensor_f32("token_embd.weight")?;
//! # let _ = (arch, embedding);
//! # Ok::<(), torchless_format::gguf::GgufError>(())
//! ```

mod dequant;
mod error;
pub(crate) mod model;
mod reader;
mod types;

pub(crate) use dequant::dequantize_blocks;
pub use error::{GgufError, GgufErrorKind};
pub(crate) use reader::GgufHeader;
pub use reader::{GgufFile, GgufTensorInfo, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use types::{BlockFormat, GgmlType, GgufArray, GgufValue};
