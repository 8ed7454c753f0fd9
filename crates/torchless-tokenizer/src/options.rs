//! The plain data a tokenizer is built from and is asked with: pre-tokenizer choice, added
//! tokens, a byte-level vocabulary, and the encode/decode options. A leaf: every other module
//! may use it, it uses none of them.

/// The regex (and digit rule) that splits text into pre-tokens before byte-level BPE.
///
/// The first three come from Hugging Face `tokenizer.json` files too; the others only from
/// GGUF files ([`Pretokenizer::from_gguf_name`]), split as llama.cpp splits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pretokenizer {
    /// GPT-2's regex (`'s|'t|...| ?\p{L}+| ?\p{N}+|...`); GGUF name `gpt-2`.
    Gpt2,
    /// SmolLM's: every numeric character on its own, then GPT-2's regex; `smollm`.
    SmolLm,
    /// Llama 3's regex (numbers in groups of three, newlines kept with symbols), whose words
    /// that are vocabulary pieces skip the merges; `llama-bpe`.
    Llama3,
    /// llama.cpp's fallback (`default`): runs of punctuation and `$+<=>^~|` first, then GPT-2's
    /// regex, then runs of numbers, then ASCII digits in threes.
    Default,
    /// Qwen 2's: Llama 3's regex with every number character on its own, merges always
    /// applied; `qwen2`.
    Qwen2,
    /// Mistral NeMo/Small's Tekken regex (words split at lower→upper case changes, each number
    /// character on its own, `/` kept with symbols), whose words that are vocabulary pieces skip
    /// the merges; `tekken`.
    Tekken,
}

/// The token types of a GGUF vocabulary (`tokenizer.ggml.token_type`), as llama.cpp numbers
/// them.
pub mod token_type {
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown piece (`<unk>`).
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<s>`, `</s>`, `[INST]`): matched in text only with
    /// [`EncodeOptions::parse_special`](crate::EncodeOptions::parse_special).
    pub const CONTROL: i32 = 3;
    /// A user-defined token: matched whole in any text, decoded as its text.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot: never matched in text, decoded as nothing.
    pub const UNUSED: i32 = 5;
    /// A byte piece `<0xNN>` (byte fallback).
    pub const BYTE: i32 = 6;
}

/// A llama.cpp SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: Mistral, Llama 2,
/// TinyLlama): pieces, scores and token types by id, as a GGUF file stores them
/// (`tokenizer.ggml.tokens`, `.scores`, `.token_type`).
///
/// Encoding ([`Tokenizer::from_sentencepiece_vocab`](crate::Tokenizer::from_sentencepiece_vocab))
/// follows llama.cpp's `llm_tokenizer_spm`, which is SentencePiece's BPE: spaces become `▁`
/// (after a dummy-prefix space when `add_space_prefix`), then the adjacent pair whose
/// concatenation is a piece with the highest score is merged, the leftmost among equal
/// scores, until no pair is a piece; characters left outside the vocabulary become their
/// UTF-8 bytes as `<0xNN>` pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceVocab {
    /// Piece text by id (`"▁the"`, `"<0x0A>"`, `"<s>"`).
    pub pieces: Vec<String>,
    /// Score by id (higher merges first). Empty: every score is 0, as llama.cpp reads a file
    /// without `tokenizer.ggml.scores`.
    pub scores: Vec<f32>,
    /// ggml token type by id (see [`token_type`]: 1 normal, 2 unknown, 3 control, 4
    /// user-defined, 5 unused, 6 byte; others are treated as unused, as llama.cpp does).
    /// Empty: every token is normal.
    pub token_types: Vec<i32>,
    /// Beginning-of-sequence id (`tokenizer.ggml.bos_token_id`; llama.cpp assumes 1 when the
    /// key is absent).
    pub bos_id: Option<u32>,
    /// End-of-sequence id (`tokenizer.ggml.eos_token_id`; llama.cpp assumes 2).
    pub eos_id: Option<u32>,
    /// Unknown-piece id (`tokenizer.ggml.unknown_token_id`; llama.cpp assumes 0).
    pub unk_id: Option<u32>,
    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`; llama.cpp assumes true).
    pub add_bos: bool,
    /// Whether each stretch of text gets a dummy-prefix space
    /// (`tokenizer.ggml.add_space_prefix`; llama.cpp assumes true), and decoding drops it.
    pub add_space_prefix: bool,
}

/// A token added to a vocabulary beyond what BPE produces (`<|im_start|>`, `<|endoftext|>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    /// Its id.
    pub id: u32,
    /// Its text, matched in the input as a whole.
    pub content: String,
    /// A control token: matched in text only with [`EncodeOptions::parse_special`], left out
    /// when decoding with [`DecodeOptions::skip_special`]. Non-special added tokens are matched
    /// in any text, as Hugging Face does.
    pub special: bool,
}

/// Everything a byte-level BPE tokenizer is built from, as a model file or GGUF stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteLevelBpe {
    /// `(piece, id)` with pieces in GPT-2's byte↔unicode spelling (`"Ġthe"`).
    pub vocab: Vec<(String, u32)>,
    /// Merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// How text is split before the merges.
    pub pretokenizer: Pretokenizer,
    /// Added tokens; ones missing from `vocab` are added to it.
    pub added_tokens: Vec<AddedToken>,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence id, if the model has one.
    pub eos_id: Option<u32>,
    /// Whether prompts start with BOS ([`Tokenizer::adds_bos`](crate::Tokenizer::adds_bos)).
    pub add_bos: bool,
}

/// How to encode text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Put the BOS id (`<s>` = 1 for Mistral) first. Default `true`: the model
    /// expects every prompt to start with it.
    pub add_bos: bool,
    /// Match special-token strings in the text (`<s>`, `</s>`, `<unk>`,
    /// `[INST]`, ...) as their ids, as Hugging Face does for added tokens; the
    /// text between them is encoded piece by piece, each stretch with its own
    /// dummy prefix (unless the `tokenizer.json` says otherwise). Default
    /// `false`: SentencePiece treats such strings as plain text, and so must
    /// anything that encodes untrusted text.
    pub parse_special: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_bos: true,
            parse_special: false,
        }
    }
}

/// How to decode ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Default `true`, which matches SentencePiece's decode exactly: control
    /// tokens (`<s>`, `</s>`, ...) decode to nothing and `<unk>` to ` ⁇ `.
    /// With `false`, control and unknown tokens are shown as their piece
    /// text (`<s>`) and count as visible text, so a following `▁` is kept
    /// as a space (`[1, ▁Hello]` → `"<s> Hello"`, as Hugging Face shows it).
    pub skip_special: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { skip_special: true }
    }
}
