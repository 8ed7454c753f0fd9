//! The raw material of a model file's tokenizer, whatever the file kind.

/// Which tokenization algorithm the embedded vocabulary is for (metadata `tokenizer_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece-style BPE over `▁`-joined text with `<0xNN>` byte fallback (Mistral,
    /// Llama 2). The default when the metadata names none.
    SentencePiece,
    /// GPT-2-style byte-level BPE after a pre-tokenizer regex (Llama 3, SmolLM, ...).
    ByteLevelBpe,
    /// A llama.cpp SentencePiece vocabulary (GGUF `tokenizer.ggml.model = "llama"`: Mistral,
    /// Llama 2, TinyLlama): pieces with scores and token types, no merges; encoding merges the
    /// pair whose merged piece scores highest. Only GGUF files carry it.
    ScoredSentencePiece,
    /// A GGUF file's byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`), to be encoded
    /// by llama.cpp's rules (which differ from Hugging Face `tokenizers`' in a few corner cases).
    /// Written to a torchless file, it becomes [`TokenizerKind::ByteLevelBpe`].
    GgufByteLevelBpe,
}

impl TokenizerKind {
    /// The metadata string (`"sentencepiece"` or `"byte_level_bpe"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenizerKind::SentencePiece => "sentencepiece",
            TokenizerKind::ByteLevelBpe | TokenizerKind::GgufByteLevelBpe => "byte_level_bpe",
            TokenizerKind::ScoredSentencePiece => "sentencepiece_scores",
        }
    }
}

/// A token added on top of the BPE vocabulary (`<|im_start|>`, `<|endoftext|>`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokenData {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub content: String,
    /// A control token (matched in text only when asked, skipped when decoding).
    pub special: bool,
}

/// The tokenizer's raw material: the vocabulary and merges embedded in the header (or a GGUF
/// file's `tokenizer.ggml.*` metadata), the added tokens, and the tokenizer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerData {
    /// Algorithm (metadata `tokenizer_kind`).
    pub kind: TokenizerKind,
    /// `(piece, id)` in header order.
    pub vocab: Vec<(String, u32)>,
    /// Merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// Added tokens (header `tokenizer.added_tokens`; none in the original exporter's files).
    pub added_tokens: Vec<AddedTokenData>,
    /// Pre-tokenizer of a byte-level tokenizer, by llama.cpp's name (`"smollm"`, `"llama-bpe"`,
    /// `"gpt2"`; metadata `tokenizer_pre`).
    pub pretokenizer: Option<String>,
    /// Beginning-of-sequence id (metadata `bos_token_id`), if the file names one.
    pub bos_id: Option<u32>,
    /// End-of-sequence id (metadata `eos_token_id`), if the file names one.
    pub eos_id: Option<u32>,
    /// Whether prompts start with BOS (metadata `add_bos_token`, GGUF
    /// `tokenizer.ggml.add_bos_token`), if the file says (the tokenizer's defaults apply
    /// otherwise).
    pub add_bos: Option<bool>,
    /// [`TokenizerKind::ScoredSentencePiece`]: each piece's score, by id (empty otherwise).
    pub scores: Vec<f32>,
    /// [`TokenizerKind::ScoredSentencePiece`]: each piece's llama.cpp token type, by id (1
    /// normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; empty otherwise).
    pub token_types: Vec<i32>,
    /// The unknown-piece id, if the file names one (GGUF `tokenizer.ggml.unknown_token_id`).
    pub unk_id: Option<u32>,
    /// Whether a space is put before the text (SentencePiece's `add_dummy_prefix`, GGUF
    /// `tokenizer.ggml.add_space_prefix`), if the file says.
    pub add_space_prefix: Option<bool>,
}

impl TokenizerData {
    /// A SentencePiece vocabulary with nothing else set: what the original exporter embeds.
    pub fn sentencepiece(vocab: Vec<(String, u32)>, merges: Vec<String>) -> Self {
        Self {
            kind: TokenizerKind::SentencePiece,
            vocab,
            merges,
            added_tokens: Vec::new(),
            pretokenizer: None,
            bos_id: None,
            eos_id: None,
            add_bos: None,
            scores: Vec::new(),
            token_types: Vec::new(),
            unk_id: None,
            add_space_prefix: None,
        }
    }

    /// The metadata entries that carry this tokenizer's settings (none for a plain
    /// SentencePiece vocabulary, so such files stay byte-identical to the exporter's).
    pub fn metadata_entries(&self) -> Vec<(String, String)> {
        let mut entries = Vec::new();
        if self.kind != TokenizerKind::SentencePiece {
            entries.push(("tokenizer_kind", self.kind.as_str().to_string()));
        }
        if let Some(pre) = &self.pretokenizer {
            entries.push(("tokenizer_pre", pre.clone()));
        }
        if let Some(id) = self.bos_id {
            entries.push(("bos_token_id", id.to_string()));
        }
        if let Some(id) = self.eos_id {
            entries.push(("eos_token_id", id.to_string()));
        }
        if let Some(add) = self.add_bos {
            entries.push(("add_bos_token", add.to_string()));
        }
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}
