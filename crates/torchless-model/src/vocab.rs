//! From a model file to its tokenizer: the one function every caller goes through (loading a
//! model, `torchless tokenize`, the converter's check of what it embeds), so a file's tokenizer
//! kind, pre-tokenizer, added tokens and BOS rule are read the same way everywhere.

use std::path::Path;

use torchless_format::{ModelFile, TokenizerData, TokenizerKind};
use torchless_tokenizer::{AddedToken, ByteLevelBpe, Pretokenizer, Tokenizer};

use crate::error::{ModelError, Result};

/// Builds the tokenizer a model file describes: SentencePiece from the vocabulary and merges,
/// or byte-level BPE with its pre-tokenizer, added tokens, BOS/EOS and BOS rule from the
/// metadata. Errors name the pre-tokenizer or the inconsistency.
pub fn tokenizer_from_data(data: TokenizerData) -> Result<Tokenizer> {
    Ok(match data.kind {
        TokenizerKind::SentencePiece => Tokenizer::from_vocab_and_merges(data.vocab, data.merges)?,
        TokenizerKind::ByteLevelBpe => {
            let name = data.pretokenizer.as_deref().unwrap_or("gpt2");
            let pretokenizer =
                Pretokenizer::from_name(name).ok_or_else(|| ModelError::InvalidOption {
                    option: "tokenizer_pre".into(),
                    message: format!(
                        "byte-level pre-tokenizer {name:?} is not supported (gpt2, smollm, llama-bpe)"
                    ),
                })?;
            Tokenizer::from_byte_level_bpe(ByteLevelBpe {
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
                add_bos: data.add_bos.unwrap_or(false),
            })?
        }
    })
}

/// The tokenizer embedded in an opened model file (what [`Model::load`](crate::Model::load)
/// uses), without loading the weights.
pub fn tokenizer_for(file: &ModelFile) -> Result<Tokenizer> {
    tokenizer_from_data(file.tokenizer_data()?)
}

/// The tokenizer of a model file, or of a Hugging Face `tokenizer.json` when `path` ends in
/// `.json` (any case).
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
    tokenizer_for(&ModelFile::open(path)?)
}
