//! The Mistral tokenizer (SentencePiece-compatible BPE with byte fallback) and the byte-level
//! BPE of the Llama family (GPT-2's byte table; GPT-2, SmolLM and Llama 3 pre-tokenizers; ids
//! identical to Hugging Face `tokenizers`, see [`Tokenizer::from_byte_level_bpe`]).
//!
//! GGUF vocabularies are encoded exactly as llama.cpp encodes them: SentencePiece ones
//! (`tokenizer.ggml.model = "llama"`) from pieces, scores and token types
//! ([`Tokenizer::from_sentencepiece_vocab`]), byte-level ones with the pre-tokenizer that
//! `tokenizer.ggml.pre` names ([`Pretokenizer::from_gguf_name`],
//! [`Tokenizer::from_gguf_byte_level_bpe`]).
//!
//! Produces exactly the ids Mistral's own SentencePiece model produces, from
//! the vocabulary and merges stored in a torchless model file header
//! ([`Tokenizer::from_vocab_and_merges`]) or from a Hugging Face
//! `tokenizer.json` ([`Tokenizer::from_tokenizer_json_str`],
//! [`Tokenizer::from_file`]).
//!
//! # Encoding
//! Like SentencePiece (and unlike Hugging Face `tokenizers` where they
//! differ), non-empty text gets a dummy-prefix `▁`, every space becomes `▁`
//! (nothing else is changed: tabs and newlines stay as they are), then
//! adjacent symbols are merged by rank, the leftmost pair first among equals,
//! and characters outside the vocabulary become their UTF-8 bytes as `<0xNN>`
//! pieces. Text that looks like a special token (`<s>`, `[INST]`, ...) is
//! ordinary text unless [`EncodeOptions::parse_special`] is set.
//!
//! Encoding takes O(n log n): a heap of candidate pairs over a linked list of
//! symbols. Text is first cut before each run of spaces (no Mistral piece
//! crosses such a cut, which is checked when the vocabulary is built), so
//! most words are merged in a small buffer, and long inputs reuse the ids of
//! repeated words.
//!
//! # Special tokens
//! From a `tokenizer.json`, the special tokens are the `added_tokens` marked
//! `special`. From vocab and merges alone they are `<unk>`, `<s>`, `</s>`,
//! `<pad>` and every multi-character piece that no merge produces and that is
//! not a byte piece (BPE can never output such a piece from text; this covers
//! `[INST]`-style control pieces of newer vocabularies). For Mistral 7B v0.1
//! both give ids 0, 1 and 2.
//!
//! # Example
//! ```
//! use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};
//!
//! let vocab = [("<unk>", 0), ("<s>", 1), ("</s>", 2), ("▁", 3), ("h", 4), ("i", 5),
//!              ("hi", 6), ("▁hi", 7)];
//! let vocab = vocab.iter().map(|&(p, id)| (p.to_string(), id))
//!     .chain((0..=255u32).map(|b| (format!("<0x{b:02X}>"), 8 + b)));
//! let tokenizer = Tokenizer::from_vocab_and_merges(vocab, ["h i", "▁ hi"]).unwrap();
//! let ids = tokenizer.encode("hi hi!", EncodeOptions::default());
//! assert_eq!(ids, [1, 7, 7, 8 + u32::from(b'!')]);
//! assert_eq!(tokenizer.decode(&ids, DecodeOptions::default()), "hi hi!");
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod byte_level;
mod decode;
mod encode;
mod error;
mod hash;
mod load;
mod options;
mod special;
mod vocab;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use decode::StreamDecoder;
pub use error::TokenizerError;
pub use load::{byte_level_bpe_from_json, TokenizerJson};
pub use options::{
    token_type, AddedToken, ByteLevelBpe, DecodeOptions, EncodeOptions, Pretokenizer,
    SentencePieceVocab,
};
pub use vocab::TokenKind;

use byte_level::ByteVocab;
use encode::Scratch;
use vocab::{MergeSpec, PrependScheme, Vocab, VocabSpec};

/// The two tokenizer families.
#[derive(Clone)]
enum Tables {
    SentencePiece(Arc<Vocab>),
    ByteLevel(Arc<ByteVocab>),
}

/// A BPE tokenizer: SentencePiece-compatible (Mistral, Llama 2) or byte-level (GPT-2 style:
/// SmolLM, Llama 3). Cheap to clone (the tables are shared) and usable from many threads at
/// once.
#[derive(Clone)]
pub struct Tokenizer {
    tables: Tables,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tables {
            Tables::SentencePiece(vocab) => f
                .debug_struct("Tokenizer")
                .field("kind", &"sentencepiece")
                .field("vocab_size", &self.vocab_size())
                .field("merge_pairs", &vocab.pairs.len())
                .field("byte_fallback", &vocab.byte_ids.is_some())
                .field("bos_id", &vocab.bos_id)
                .field("eos_id", &vocab.eos_id)
                .field("unk_id", &vocab.unk_id)
                .finish(),
            Tables::ByteLevel(vocab) => f
                .debug_struct("Tokenizer")
                .field("kind", &"byte-level")
                .field("tables", vocab)
                .field("bos_id", &vocab.bos_id)
                .field("eos_id", &vocab.eos_id)
                .finish(),
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `{piece: id}` and merges `"left right"`, as
    /// stored in a torchless model file header. Byte fallback is on (all 256
    /// `<0xNN>` pieces must exist), `<unk>` is the unknown piece if present,
    /// and special tokens are inferred (see the crate docs).
    ///
    /// Errors if ids are not exactly `0..n`, a piece or id repeats, a merge is
    /// malformed or names a piece (or a concatenation) not in the vocabulary,
    /// or a byte piece is missing.
    pub fn from_vocab_and_merges<P, M>(
        vocab: impl IntoIterator<Item = (P, u32)>,
        merges: impl IntoIterator<Item = M>,
    ) -> Result<Self, TokenizerError>
    where
        P: Into<String>,
        M: Into<String>,
    {
        let spec = VocabSpec {
            vocab: vocab
                .into_iter()
                .map(|(piece, id)| (piece.into(), u64::from(id)))
                .collect(),
            merges: merges
                .into_iter()
                .map(|m| MergeSpec::Joined(m.into()))
                .collect(),
            unk_piece: Some("<unk>".to_owned()),
            byte_fallback: true,
            specials: None,
            prepend: PrependScheme::Always,
        };
        Self::build(spec)
    }

    /// Builds the tokenizer of a GGUF SentencePiece vocabulary (`tokenizer.ggml.model =
    /// "llama"`: Mistral, Llama 2, TinyLlama), encoding exactly as llama.cpp does (see
    /// [`SentencePieceVocab`]): merges by score, byte fallback, control tokens matched only
    /// with [`EncodeOptions::parse_special`], user-defined tokens matched in any text, the
    /// dummy-prefix space before each stretch of text when `add_space_prefix`. Special and
    /// user-defined tokens are found as llama.cpp finds them: longest token first.
    ///
    /// Decoding follows SentencePiece: the dummy-prefix space of the first piece is dropped
    /// (when `add_space_prefix`), byte pieces are reassembled into UTF-8, control, unknown and
    /// unused tokens decode to nothing (their text without `skip_special`, except unused ones),
    /// user-defined tokens to their text as it is.
    ///
    /// Errors if the scores or token types do not have one entry per piece, a piece repeats,
    /// BOS/EOS/UNK lie outside the vocabulary, a BYTE token is not `<0xNN>`, or there is neither
    /// a piece for every byte (`<0xNN>`, or the character itself for ASCII) nor an unknown
    /// piece.
    pub fn from_sentencepiece_vocab(vocab: SentencePieceVocab) -> Result<Self, TokenizerError> {
        Ok(Tokenizer {
            tables: Tables::SentencePiece(Arc::new(Vocab::from_sentencepiece(vocab)?)),
        })
    }

    /// Builds a byte-level BPE tokenizer (see [`ByteLevelBpe`]).
    ///
    /// Errors if ids are not exactly `0..n`, a piece or id repeats, an added token disagrees
    /// with the vocabulary, a merge is malformed or names a piece (or a concatenation) not in
    /// the vocabulary, or BOS/EOS lie outside it.
    pub fn from_byte_level_bpe(spec: ByteLevelBpe) -> Result<Self, TokenizerError> {
        Ok(Tokenizer {
            tables: Tables::ByteLevel(Arc::new(ByteVocab::build(spec, false)?)),
        })
    }

    /// Builds the byte-level BPE tokenizer of a GGUF file (`tokenizer.ggml.model = "gpt2"`)
    /// exactly as llama.cpp encodes it. [`from_byte_level_bpe`](Self::from_byte_level_bpe)
    /// follows Hugging Face `tokenizers` instead; the two differ only where llama.cpp does:
    ///
    /// - added tokens are found longest first (llama.cpp's partition), not leftmost-longest:
    ///   different only when two occurrences overlap;
    /// - Llama 3's contractions are `'[sS]`, ... (llama.cpp's regex), not case-folded: `'ſ`
    ///   followed by letters stays one word;
    /// - of two identical merges the first counts (Hugging Face: the last).
    ///
    /// Added tokens marked `special` are control tokens (matched only with
    /// [`EncodeOptions::parse_special`]); the others are user-defined ones, matched in any
    /// text.
    pub fn from_gguf_byte_level_bpe(spec: ByteLevelBpe) -> Result<Self, TokenizerError> {
        Ok(Tokenizer {
            tables: Tables::ByteLevel(Arc::new(ByteVocab::build(spec, true)?)),
        })
    }

    /// Builds the tokenizer from the text of a Hugging Face `tokenizer.json`
    /// with a BPE model. Merges may be `"left right"` strings or `[left,
    /// right]` pairs.
    ///
    /// A file whose pre-tokenizer or decoder is `ByteLevel` gives a byte-level
    /// tokenizer (see [`byte_level_bpe_from_json`]); BOS comes from a
    /// `TemplateProcessing` post-processor if there is one. Otherwise it is a
    /// SentencePiece tokenizer: special tokens are the `added_tokens` marked
    /// `special` (inferred as for [`from_vocab_and_merges`](Self::from_vocab_and_merges)
    /// if the file has no `added_tokens`), and the normalizer, pre-tokenizer and
    /// decoder are not interpreted beyond where a `Metaspace` pre-tokenizer puts
    /// the dummy prefix around special tokens: encoding follows SentencePiece.
    pub fn from_tokenizer_json_str(json: &str) -> Result<Self, TokenizerError> {
        if let Some(spec) = load::parse_byte_level_json(json)? {
            return Self::from_byte_level_bpe(spec);
        }
        Self::build(load::parse_tokenizer_json(json)?)
    }

    /// Reads a Hugging Face `tokenizer.json` file; see
    /// [`from_tokenizer_json_str`](Self::from_tokenizer_json_str).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_tokenizer_json_str(&json)
    }

    fn build(spec: VocabSpec) -> Result<Self, TokenizerError> {
        Ok(Tokenizer {
            tables: Tables::SentencePiece(Arc::new(Vocab::build(spec)?)),
        })
    }

    /// Encodes `text` into ids. Never fails: characters outside the
    /// vocabulary become byte pieces (or `<unk>` without byte fallback).
    ///
    /// `options.add_bos` is followed as given; [`adds_bos`](Self::adds_bos)
    /// says what the model expects.
    pub fn encode(&self, text: &str, options: EncodeOptions) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if options.add_bos {
            out.extend(self.bos_id());
        }
        let vocab = match &self.tables {
            Tables::SentencePiece(vocab) => &**vocab,
            Tables::ByteLevel(vocab) => {
                vocab.encode(text, options.parse_special, &mut out);
                return out;
            }
        };
        let mut scratch = Scratch::default();
        if let Some(partition) = &vocab.llama_cpp {
            // llama.cpp: the found tokens split the text; each stretch gets the prefix.
            let prefix = vocab.prepend != PrependScheme::Never;
            let mut pos = 0;
            for found in partition.find_all(text, options.parse_special) {
                let stretch = text.get(pos..found.start).unwrap_or_default();
                vocab.encode_plain(stretch, prefix, &mut scratch, &mut out);
                out.push(found.id);
                pos = found.end;
            }
            let rest = text.get(pos..).unwrap_or_default();
            vocab.encode_plain(rest, prefix, &mut scratch, &mut out);
            return out;
        }
        if !options.parse_special {
            let prefix = vocab.prepend != PrependScheme::Never;
            vocab.encode_plain(text, prefix, &mut scratch, &mut out);
            return out;
        }
        let mut pos = 0;
        let mut encode_stretch = |start: usize, end: usize, out: &mut Vec<u32>| {
            let prefix = match vocab.prepend {
                PrependScheme::Always => true,
                PrependScheme::First => start == 0,
                PrependScheme::Never => false,
            };
            let stretch = text.get(start..end).unwrap_or_default();
            vocab.encode_plain(stretch, prefix, &mut scratch, out);
        };
        for found in vocab.specials.find_all(text) {
            encode_stretch(pos, found.start, &mut out);
            out.push(found.id);
            pos = found.end;
        }
        encode_stretch(pos, text.len(), &mut out);
        out
    }

    /// Decodes ids into text, exactly as SentencePiece's `decode_ids` with the
    /// default options (see [`DecodeOptions`]). Ids outside the vocabulary are
    /// ignored (SentencePiece would reject the whole sequence).
    ///
    /// A byte-level tokenizer concatenates the tokens' bytes and reads them as
    /// UTF-8, one U+FFFD per ill-formed sequence, as Hugging Face does.
    pub fn decode(&self, ids: &[u32], options: DecodeOptions) -> String {
        match &self.tables {
            Tables::SentencePiece(vocab) => decode::decode(vocab, ids, options),
            Tables::ByteLevel(vocab) => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                vocab.decode_bytes(ids, options.skip_special, &mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The bytes token `id` stands for (its UTF-8 text for SentencePiece pieces,
    /// the raw byte for byte pieces, nothing for control and unused tokens), or `None` if it
    /// is out of range.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        match &self.tables {
            Tables::SentencePiece(vocab) => {
                let kind = *vocab.kinds.get(id as usize)?;
                Some(match kind {
                    TokenKind::Byte(byte) => vec![byte],
                    _ => vocab.surfaces[id as usize].as_bytes().to_vec(),
                })
            }
            Tables::ByteLevel(vocab) => vocab.bytes.get(id as usize).map(|b| b.to_vec()),
        }
    }

    /// A decoder fed one id at a time, with the default [`DecodeOptions`].
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        self.stream_decoder_with(DecodeOptions::default())
    }

    /// A decoder fed one id at a time, with the given options.
    pub fn stream_decoder_with(&self, options: DecodeOptions) -> StreamDecoder<'_> {
        match &self.tables {
            Tables::SentencePiece(vocab) => StreamDecoder::new(vocab, options),
            Tables::ByteLevel(vocab) => StreamDecoder::new_byte_level(vocab, options),
        }
    }

    /// The number of pieces; valid ids are `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.pieces.len(),
            Tables::ByteLevel(vocab) => vocab.pieces.len(),
        }
    }

    /// The piece of an id, e.g. `"▁Hello"` or `"<0x0A>"` (SentencePiece),
    /// `"Ġhello"` (byte-level).
    pub fn token_to_piece(&self, id: u32) -> Option<&str> {
        let pieces = match &self.tables {
            Tables::SentencePiece(vocab) => &vocab.pieces,
            Tables::ByteLevel(vocab) => &vocab.pieces,
        };
        pieces.get(id as usize).map(|p| &**p)
    }

    /// The id of a piece.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.piece_ids.get(piece).copied(),
            Tables::ByteLevel(vocab) => vocab.piece_ids.get(piece).copied(),
        }
    }

    /// What kind of token an id is, or `None` if it is out of range.
    /// Byte-level tokens are `Normal` or, for special added tokens, `Control`.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        let kinds = match &self.tables {
            Tables::SentencePiece(vocab) => &vocab.kinds,
            Tables::ByteLevel(vocab) => &vocab.kinds,
        };
        kinds.get(id as usize).copied()
    }

    /// The beginning-of-sequence id (`<s>`), if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.bos_id,
            Tables::ByteLevel(vocab) => vocab.bos_id,
        }
    }

    /// The end-of-sequence id (`</s>`), if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.eos_id,
            Tables::ByteLevel(vocab) => vocab.eos_id,
        }
    }

    /// The unknown-piece id (`<unk>`), if the vocabulary has one (byte-level
    /// vocabularies have none: every byte is a piece).
    pub fn unk_id(&self) -> Option<u32> {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.unk_id,
            Tables::ByteLevel(_) => None,
        }
    }

    /// Whether prompts for this model start with BOS: always for SentencePiece
    /// vocabularies that have `<s>` (as a GGUF vocabulary says), as the file says for
    /// byte-level ones (SmolLM's and GPT-2's do not; Llama 3's do).
    pub fn adds_bos(&self) -> bool {
        match &self.tables {
            Tables::SentencePiece(vocab) => vocab.add_bos && vocab.bos_id.is_some(),
            Tables::ByteLevel(vocab) => vocab.add_bos && vocab.bos_id.is_some(),
        }
    }

    /// Encoding options for a prompt of this model: BOS as [`adds_bos`](Self::adds_bos)
    /// says, special-token text not parsed.
    pub fn prompt_options(&self) -> EncodeOptions {
        EncodeOptions {
            add_bos: self.adds_bos(),
            parse_special: false,
        }
    }

    /// Whether this is a byte-level (GPT-2 style) tokenizer.
    pub fn is_byte_level(&self) -> bool {
        matches!(self.tables, Tables::ByteLevel(_))
    }

    /// The byte-level pre-tokenizer, `None` for SentencePiece.
    pub fn pretokenizer(&self) -> Option<Pretokenizer> {
        match &self.tables {
            Tables::SentencePiece(_) => None,
            Tables::ByteLevel(vocab) => Some(vocab.pretokenizer),
        }
    }

    /// The added tokens of a byte-level tokenizer (empty for SentencePiece,
    /// whose control pieces are part of the vocabulary).
    pub fn added_tokens(&self) -> &[AddedToken] {
        match &self.tables {
            Tables::SentencePiece(_) => &[],
            Tables::ByteLevel(vocab) => &vocab.added,
        }
    }

    /// Whether `id` is a special token: a control token or `<unk>` (user-defined tokens are
    /// not).
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.token_kind(id),
            Some(TokenKind::Control | TokenKind::Unknown)
        )
    }
}
