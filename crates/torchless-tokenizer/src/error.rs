//! Errors raised while building a [`Tokenizer`](crate::Tokenizer).

use std::path::PathBuf;

/// Why a tokenizer could not be built. Encoding and decoding never fail; only
/// loading does, and every variant says what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid JSON.
    #[error("tokenizer JSON is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The JSON is valid but a field is missing or has the wrong shape.
    #[error("tokenizer JSON: field `{field}`: {problem}")]
    Field {
        /// Dotted path of the offending field, e.g. `model.vocab`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The model is not a BPE model (e.g. `Unigram` or `WordPiece`).
    #[error("unsupported tokenizer model type `{0}`: only BPE is supported")]
    UnsupportedModel(String),

    /// The vocabulary is empty.
    #[error("the vocabulary is empty")]
    EmptyVocab,

    /// Two pieces were given the same id.
    #[error("id {id} is used by both {first:?} and {second:?}")]
    DuplicateId {
        /// The id given twice.
        id: u32,
        /// The piece that had it first.
        first: String,
        /// The piece that claimed it again.
        second: String,
    },

    /// The same piece appears twice with different ids.
    #[error("piece {piece:?} appears twice, with ids {first} and {second}")]
    DuplicatePiece {
        /// The repeated piece.
        piece: String,
        /// Its first id.
        first: u32,
        /// Its second id.
        second: u32,
    },

    /// Ids must be exactly `0..vocab_size`; this one is missing.
    #[error(
        "the vocabulary has {size} pieces but no piece has id {missing} (ids must be 0..{size})"
    )]
    MissingId {
        /// The first id in `0..size` that no piece has.
        missing: u32,
        /// The number of pieces.
        size: usize,
    },

    /// An id is too large for this implementation (ids are below 2^31).
    #[error("piece {piece:?} has id {id}, which is out of range (ids must be below 2^31)")]
    IdOutOfRange {
        /// The piece.
        piece: String,
        /// Its id.
        id: u64,
    },

    /// A merge is not of the form `"left right"` (or `[left, right]`).
    #[error("merge #{rank} {merge:?} is not two pieces separated by a single space")]
    MalformedMerge {
        /// Position of the merge in the list (0-based).
        rank: usize,
        /// The merge as written.
        merge: String,
    },

    /// A merge names a piece that is not in the vocabulary.
    #[error("merge #{rank} {merge:?} references {piece:?}, which is not in the vocabulary")]
    MergeUnknownPiece {
        /// Position of the merge in the list (0-based).
        rank: usize,
        /// The merge as written.
        merge: String,
        /// The piece that is missing (one side, or their concatenation).
        piece: String,
    },

    /// Byte fallback is on but a `<0xNN>` piece is missing.
    #[error("byte fallback needs all 256 byte pieces but <0x{byte:02X}> is not in the vocabulary")]
    MissingByteToken {
        /// The byte whose piece is missing.
        byte: u8,
    },

    /// Byte fallback is off and there is no unknown piece to map unknown characters to.
    #[error("byte fallback is off and the unknown piece {0:?} is not in the vocabulary")]
    MissingUnknownToken(String),

    /// An added token disagrees with the vocabulary.
    #[error("added token {content:?} has id {id}, but {problem}")]
    AddedToken {
        /// The added token's text.
        content: String,
        /// The id it claims.
        id: u64,
        /// What is inconsistent.
        problem: String,
    },
}
