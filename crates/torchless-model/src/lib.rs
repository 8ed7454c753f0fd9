//! Mistral 7B inference on the CPU.
//!
//! Load a torchless model file into an immutable, shareable [`Mistral`] (weights resident) or
//! [`LazyMistral`] (one layer resident at a time), open a [`Session`] (KV cache and position), and
//! generate text with [`Session::generate`] / [`Session::stream`], score text with
//! [`Session::perplexity`], or chat with [`Chat`]. A [`Scheduler`] serves many requests at once
//! over a few sessions, decoding them together (continuous batching).
//!
//! ```no_run
//! use torchless_model::{GenerateOptions, Mistral};
//!
//! let model = Mistral::load("mistral-7b-int8.bin")?;
//! let mut session = model.session()?;
//! let answer = session.complete("The capital of France is", GenerateOptions::default())?;
//! println!("{}", answer.text);
//! # Ok::<(), torchless_model::ModelError>(())
//! ```
//!
//! Numerics follow Hugging Face `transformers` (float32 activations, exact int8 dequantization
//! `q / inv_scale`); the tests compare logits and greedy continuations with its outputs.
#![warn(missing_docs)]

pub mod bench;
mod chat;
pub mod constrained;
#[cfg(feature = "convert")]
pub mod convert;
mod error;
mod forward;
mod generate;
mod kv_cache;
mod model;
mod perplexity;
mod residency;
pub mod sampling;
pub mod scheduler;
mod session;
mod template;
mod token_step;
mod vocab;
mod weights;

pub use chat::{Chat, ChatTemplate};
pub use constrained::{Constraint, ConstraintError, ConstraintVocab, Grammar};
pub use error::{ModelError, Result};
pub use generate::{
    GenerateOptions, GeneratedToken, Generation, GenerationStats, StopReason, TokenStream,
};
pub use kv_cache::{KvCache, KvTypes};
/// Values handed to chat templates (`tools`, a message's `tool_calls`): minijinja's.
pub use minijinja::Value as TemplateValue;
pub use model::{
    Lazy, LazyMistral, LoadOptions, LoadProgress, Mistral, Model, Residency, Resident,
};
pub use perplexity::{Divergence, Perplexity, Scoring};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{Scheduler, SchedulerHandle, SchedulerOptions};
pub use session::{Session, SessionOptions};
pub use template::{strftime, ChatMessage, ChatOptions, ChatRenderer};
pub use torchless_kernels::KvType;
pub use vocab::{load_tokenizer, tokenizer_for, tokenizer_from_data};

/// `serde_json`, re-exported for the JSON schemas of [`Grammar`].
pub use serde_json;
/// The file format crate, re-exported for [`Config`] and direct file access.
pub use torchless_format as format;
pub use torchless_format::Config;
/// The kernels crate, re-exported (e.g. for [`kernels::cpu_path`] and thread pools).
pub use torchless_kernels as kernels;
/// The tokenizer crate, re-exported.
pub use torchless_tokenizer as tokenizer;
pub use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};

/// The snippets of LIBRARY.md, compiled as doc tests so the guide cannot drift from the API
/// (with the default features: the guide shows conversion too).
#[cfg(all(doctest, feature = "convert"))]
#[doc = include_str!("../../../LIBRARY.md")]
mod library_md {}
