//! The model crate's error type.

use torchless_format::FormatError;
use torchless_kernels::KernelError;
use torchless_tokenizer::TokenizerError;

/// Everything that can go wrong loading a model or running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model file is missing, unreadable or malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The tokenizer embedded in the model (or given separately) is malformed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// A kernel rejected its inputs (a shape bug or an impossible thread-pool request).
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The sequence would run past the context the session was created for.
    #[error(
        "context is full: {needed} positions needed, the context holds {context_len} (max_position_embeddings {max_positions}); \
         shorten the prompt or the generation"
    )]
    ContextOverflow {
        /// Positions the request needs in all.
        needed: usize,
        /// The session's context length.
        context_len: usize,
        /// The model's `max_position_embeddings`.
        max_positions: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    InvalidToken {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// Nothing to run: an empty token sequence where at least one token is needed.
    #[error("{0}")]
    EmptyInput(&'static str),
    /// A tensor's shape is not the one the configuration implies.
    #[error("tensor {tensor}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the model cannot use for it (norms must be f32).
    #[error("tensor {tensor}: expected dtype {expected}, found {found}")]
    TensorDtype {
        /// The tensor's name.
        tensor: String,
        /// The dtype the model needs there.
        expected: &'static str,
        /// The dtype in the file.
        found: String,
    },
    /// The tokenizer has pieces the model has no embedding row for.
    #[error("invalid tokenizer: it has {pieces} pieces but the model only {embedding_rows} embedding rows")]
    VocabularyMismatch {
        /// Pieces of the tokenizer.
        pieces: usize,
        /// The model's `vocab_size`.
        embedding_rows: usize,
    },
    /// A structured-output constraint failed (a schema that does not compile, or no token
    /// left that continues the document).
    #[error("structured output: {0}")]
    Constraint(#[from] crate::constrained::ConstraintError),
    /// An option is out of range.
    #[error("invalid {option}: {message}")]
    InvalidOption {
        /// Which option.
        option: String,
        /// What is wrong with it.
        message: String,
    },
    /// A rewind asked for positions whose keys and values the rolling cache no longer holds.
    #[error("cannot rewind to position {to}: the rolling KV cache only keeps positions {oldest}..{position}")]
    RewindTooFar {
        /// Requested position.
        to: usize,
        /// Oldest position still cached.
        oldest: usize,
        /// Current position.
        position: usize,
    },
    /// The KV cache for the requested context would be unreasonably large.
    #[error("a KV cache for {positions} positions needs {bytes} bytes, more than the limit of {limit} bytes; use a shorter context")]
    CacheTooLarge {
        /// Positions the cache would hold.
        positions: usize,
        /// Bytes it would need.
        bytes: u128,
        /// The limit.
        limit: u128,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
