//! From a model file to its tokenizer: the one function every caller goes through (loading a
//! model, `torchless tokenize`, the converter's check of what it embeds), so a file's tokenizer
//! kind, pre-tokenizer, added tokens and BOS rule are read the same way everywhere, for
//! torchless and GGUF files alike.

use std::path::Path;

use torchless_format::{read_tokenizer_data, TokenizerData, TokenizerKind};
use torchless_tokenizer::{AddedToken, ByteLevelBpe, Pretokenizer, SentencePieceVocab, Tokenizer};

use crate::error::{ModelError, Result};

/// Builds the tokenizer a model file describes: SentencePiece from the vocabulary and merges,
/// a GGUF SentencePiece vocabulary from its pieces, scores and token types, or byte-level BPE
/// with its pre-tokenizer, added tokens, BOS/EOS and BOS rule from the metadata. Errors name the
/// pre-tokenizer or the inconsistency; an unknown pre-tokenizer is refused, never guessed.
pub fn tokenizer_from_data(data: TokenizerData) -> Result<Tokenizer> {
    Ok(match data.kind {
        TokenizerKind::SentencePiece => Tokenizer::from_vocab_and_merges(data.vocab, data.merges)?,
        TokenizerKind::ScoredSentencePiece => {
            Tokenizer::from_sentencepiece_vocab(SentencePieceVocab {
                // The GGUF reader gives the pieces in id order, one per id.
                pieces: data.vocab.into_iter().map(|(piece, _)| piece).collect(),
                scores: data.scores,
                token_types: data.token_types,
                bos_id: data.bos_id,
                eos_id: data.eos_id,
                unk_id: data.unk_id,
                add_bos: data.add_bos.unwrap_or(true),
                add_space_prefix: data.add_space_prefix.unwrap_or(true),
            })?
        }
        TokenizerKind::ByteLevelBpe | TokenizerKind::GgufByteLevelBpe => {
            let gguf = data.kind == TokenizerKind::GgufByteLevelBpe;
            // torchless files name it as llama.cpp does (and once wrote `gpt2` for `gpt-2`);
            // a GGUF without `tokenizer.ggml.pre` gets llama.cpp's `default`.
            let name = data.pretokenizer.as_deref().unwrap_or("gpt2");
            let pretokenizer = Pretokenizer::from_gguf_name(name)
                .or_else(|| Pretokenizer::from_name(name))
                .ok_or_else(|| ModelError::InvalidOption {
                    option: "tokenizer pre-tokenizer".into(),
                    message: format!(
                        "byte-level pre-tokenizer {name:?} (GGUF tokenizer.ggml.pre) is not \
                         supported (default, gpt-2, llama-bpe, smollm, qwen2, tekken)"
                    ),
                })?;
            let spec = ByteLevelBpe {
                vocab: data.vocab,
                merges: data.merges,
                pretokenizer,
                added_tokens: data
                    .added_tokens
                    .into_iter()
                    .map(|t| AddedToken {
                        id: t.id,
                        content: t.content,
                        special: t.special,
                    })
                    .collect(),
                bos_id: data.bos_id,
                eos_id: data.eos_id,
                // A GGUF that does not say: llama.cpp's default for its pre-tokenizer.
                add_bos: data
                    .add_bos
                    .unwrap_or(gguf && pretokenizer.gguf_default_add_bos()),
            };
            if gguf {
                Tokenizer::from_gguf_byte_level_bpe(spec)?
            } else {
                Tokenizer::from_byte_level_bpe(spec)?
            }
        }
    })
}

/// The tokenizer embedded in an opened model file (what [`Model::load`](crate::Model::load)
/// uses), without loading the weights.
pub fn tokenizer_for(file: &torchless_format::ModelFile) -> Result<Tokenizer> {
    tokenizer_from_data(file.tokenizer_data()?)
}

/// The tokenizer of a model file (torchless or GGUF, including a vocabulary-only GGUF), or of
/// a Hugging Face `tokenizer.json` when `path` ends in `.json` (any case).
///
/// ```
/// use torchless_model::load_tokenizer;
///
/// let tokenizer = load_tokenizer("../../tests/fixtures/models/llama-untied-f32.bin")?;
/// let ids = tokenizer.encode("Hi", tokenizer.prompt_options());
/// assert_eq!(ids, [42, 75]); // Hugging Face `tokenizers` gives the same
/// # Ok::<(), torchless_model::ModelError>(())
/// ```
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        return Ok(Tokenizer::from_file(path)?);
    }
    tokenizer_from_data(read_tokenizer_data(path)?)
}
