//! Making model files: a Hugging Face checkpoint directory or a llama.cpp GGUF file converted
//! into the torchless format, or a synthetic model with random weights (feature `convert`, on by
//! default). Everything is written through the format crate's
//! [`ModelWriter`](torchless_format::ModelWriter) to `OUT.partial`, then flushed, renamed to
//! `OUT` and read back; a failed run leaves nothing behind.
//!
//! ```no_run
//! use std::path::Path;
//! use torchless_model::convert::{convert, ConvertOptions, Storage};
//! use torchless_model::format::QuantKind;
//!
//! let options = ConvertOptions {
//!     storage: Storage::new(QuantKind::Int8, QuantKind::F32),
//!     ..ConvertOptions::default()
//! };
//! let report = convert(Path::new("Mistral-7B-v0.1"), Path::new("mistral-7b-int8.bin"), options)?;
//! println!("{} bytes written", report.output_bytes);
//! # Ok::<(), torchless_model::convert::ConvertError>(())
//! ```

mod checkpoint;
mod error;
mod gguf;
mod hf;
mod hf_config;
mod hf_tokenizer;
mod options;
mod output;
mod synth;

use std::path::Path;

pub use checkpoint::{Checkpoint, Shard, SourceDType, SourceTensor, INDEX_FILE, SINGLE_FILE};
pub use error::ConvertError;
pub use gguf::{convert_gguf, is_gguf};
pub use hf::convert_checkpoint;
pub use hf_config::HfConfig;
pub use hf_tokenizer::{parse_tokenizer_json, read_tokenizer_json, TokenizerConfig};
pub use options::{ConvertOptions, ConvertProgress, ConvertReport, ConvertedFrom, Storage};
pub use synth::{synth, synthetic_vocab, Shape, SynthOptions, SynthReport};

/// Converts `input` into the model file `output`: a GGUF file (recognized by its magic) with
/// [`convert_gguf`], anything else as a Hugging Face checkpoint directory with
/// [`convert_checkpoint`].
pub fn convert(
    input: &Path,
    output: &Path,
    options: ConvertOptions<'_>,
) -> Result<ConvertReport, ConvertError> {
    if input.is_file() && is_gguf(input) {
        convert_gguf(input, output, options)
    } else {
        convert_checkpoint(input, output, options)
    }
}
