//! The torchless model file: read it (memory-mapped, zero-copy, validated once at open) and write it
//! (streaming, tensor by tensor, with the original exporter's exact int8 quantization). A
//! llama.cpp GGUF file opens the same way ([`ModelFile::open`] detects it by its magic): its
//! configuration comes from the `llama.*` metadata, its tensors take the model's names and keep
//! their own types ([`DType::Blocks`]), used in place.
//!
//! Layout: `[u64 LE: N][N bytes: JSON header, NUL-padded][payload]`. The payload starts at `8 + N`
//! (a multiple of 64) and every tensor offset in the header is relative to it. The header holds
//! `metadata` (all values strings), `tensors` (name → dtype, shape, offset; int8 tensors also
//! `scale_offset` and `scale_size`) and `tokenizer` (`vocab` and `merges`).
//!
//! ```no_run
//! use torchless_format::{ModelFile, TensorData};
//!
//! let model = ModelFile::open("model.bin")?;
//! println!("{} layers", model.config().n_layers);
//! match model.tensor("model.layers.0.self_attn.q_proj.weight")?.data {
//!     TensorData::F32(values) => println!("f32, {} values", values.len()),
//!     TensorData::Int8(view) => println!("int8, first = {:?}", view.get(0)),
//!     TensorData::Int4(view) => println!("int4, first = {:?}", view.get(0)),
//!     TensorData::Blocks(view) => println!("{} blocks, first = {:?}", view.format, view.get(0)),
//! }
//! # Ok::<(), torchless_format::FormatError>(())
//! ```
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("torchless model files are little-endian and are mapped without conversion");

mod config;
mod error;
mod file;
pub mod gguf;
pub mod half;
pub mod int4;
mod page_cache;
pub mod quant;
mod tensor;
mod tokenizer_data;
mod writer;

pub use config::{
    layer_tensor_name, python_float_str, Activation, Architecture, Config, ExpectedTensor,
    QuantKind, RopeLayout, KNOWN_METADATA_KEYS,
};
pub use error::{FormatError, FormatErrorKind};
pub use file::{
    read_tokenizer_data, FileFormat, JsonEntries, ModelFile, Residency, ALIGNMENT, MAX_HEADER_LEN,
};
pub use page_cache::{evict_from_page_cache, recache, HugePageShare};
pub use tensor::{
    BlockView, DType, Int4View, Int8View, ScaleInfo, TensorData, TensorInfo, TensorRef,
};
pub use tokenizer_data::{AddedTokenData, TokenizerData, TokenizerKind};
pub use writer::{ModelWriter, TensorSpec};
