//! The plain data a tokenizer is built from and is asked with: pre-tokenizer choice, added
//! tokens, a byte-level vocabulary, and the encode/decode options. A leaf: every other module
//! may use it, it uses none of them.

/// The regex (and digit rule) that splits text into pre-tokens before byte-level BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pretokenizer {
    /// GPT-2's regex (`'s|'t|...| ?\p{L}+| ?\p{N}+|...`); llama.cpp name `gpt2`.
    Gpt2,
    /// SmolLM's: every numeric character on its own, then GPT-2's regex; `smollm`.
    SmolLm,
    /// Llama 3's regex (numbers in groups of three, newlines kept with symbols), whose words
    /// that are vocabulary pieces skip the merges; `llama-bpe`.
    Llama3,
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
