//! The tokenizer of a Hugging Face checkpoint as a model file stores it: `tokenizer.json` read
//! by the tokenizer crate's parser ([`TokenizerJson`]), vocabulary in file order (the original
//! exporter copies the `vocab` object as Python's `json` reads it, which keeps the order), and
//! what `tokenizer_config.json` adds for byte-level (Llama-family) tokenizers.
//!
//! SentencePiece-style BPE with byte fallback (Mistral, Llama 2) is stored exactly as the
//! original exporter stores it; byte-level BPE (SmolLM, Llama 3) with its added tokens and the
//! pre-tokenizer's llama.cpp name.

use std::path::Path;

use torchless_format::{AddedTokenData, TokenizerData, TokenizerKind};
use torchless_tokenizer::{Tokenizer, TokenizerError, TokenizerJson};

use super::error::ConvertError;
use crate::vocab::tokenizer_from_data;

/// Reads `path` (a `tokenizer.json`) into the vocabulary and merges stored in a model file, and
/// checks that the torchless tokenizer accepts them.
pub fn read_tokenizer_json(path: &Path) -> Result<TokenizerData, ConvertError> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ConvertError::input(path, format!("{what} is missing"))
        } else {
            ConvertError::io(path, format!("cannot read {what}"), e)
        }
    })?;
    parse_tokenizer_json(&text, path)
}

/// Parses the text of a `tokenizer.json`; `path` names it in errors.
pub fn parse_tokenizer_json(text: &str, path: &Path) -> Result<TokenizerData, ConvertError> {
    let what = path.display();
    let parsed = TokenizerJson::parse(text).map_err(|e| unreadable(e, path))?;
    let unusable = |e: Box<dyn std::error::Error + Send + Sync>| {
        ConvertError::tokenizer(
            path,
            format!("{what}: the vocabulary is not usable by torchless"),
            Some(e),
        )
    };
    match parsed {
        TokenizerJson::SentencePiece { vocab, merges } => {
            Tokenizer::from_vocab_and_merges(vocab.iter().cloned(), merges.iter().cloned())
                .map_err(|e| unusable(Box::new(e)))?;
            Ok(TokenizerData::sentencepiece(vocab, merges))
        }
        TokenizerJson::ByteLevel(spec) => {
            let mut data = TokenizerData::sentencepiece(spec.vocab, spec.merges);
            data.kind = TokenizerKind::ByteLevelBpe;
            data.pretokenizer = Some(spec.pretokenizer.name().to_string());
            data.added_tokens = spec
                .added_tokens
                .into_iter()
                .map(|t| AddedTokenData {
                    id: t.id,
                    content: t.content,
                    special: t.special,
                })
                .collect();
            // BOS/EOS come from tokenizer_config.json (see `TokenizerConfig::apply`); no BOS by
            // default, as GPT-2-style tokenizers have none.
            data.add_bos = Some(false);
            tokenizer_from_data(data.clone()).map_err(|e| unusable(Box::new(e)))?;
            Ok(data)
        }
    }
}

/// Settings of a byte-level `tokenizer.json` that the tokenizer crate refuses by name.
const BYTE_LEVEL_FIELDS: [&str; 6] = [
    "pre_tokenizer",
    "normalizer",
    "model.byte_fallback",
    "model.continuing_subword_prefix",
    "model.end_of_word_suffix",
    "model.ignore_merges",
];

/// Why the tokenizer crate could not read `path`, said as the converter says it: what kind of
/// problem, then the parser's own words.
fn unreadable(e: TokenizerError, path: &Path) -> ConvertError {
    let what = path.display();
    let (message, source): (String, Box<dyn std::error::Error + Send + Sync>) = match e {
        TokenizerError::UnsupportedModel(kind) => {
            let message = format!(
                "{what}: tokenizer model type {kind:?} is not supported (Mistral uses a byte-fallback \"BPE\" model)"
            );
            return ConvertError::tokenizer(path, message, None);
        }
        TokenizerError::Json(e) => (
            format!("{what} is not a tokenizer.json (no `model` object)"),
            Box::new(e),
        ),
        TokenizerError::Field { ref field, .. } if field == "model" => (
            format!("{what} is not a tokenizer.json (no `model` object)"),
            Box::new(e),
        ),
        TokenizerError::Field { ref field, .. } if BYTE_LEVEL_FIELDS.contains(&field.as_str()) => (
            format!("{what}: the byte-level tokenizer is not usable by torchless"),
            Box::new(e),
        ),
        e => (
            format!("{what}: cannot read the BPE vocabulary and merges"),
            Box::new(e),
        ),
    };
    ConvertError::tokenizer(path, message, Some(source))
}

/// What `tokenizer_config.json` adds for a Llama-family model: BOS/EOS ids (by token text),
/// whether prompts start with BOS, and the chat template.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// The BOS token's text.
    pub bos_token: Option<String>,
    /// The EOS token's text.
    pub eos_token: Option<String>,
    /// Whether prompts start with BOS.
    pub add_bos_token: Option<bool>,
    /// The chat template (the one named `default` when the file lists several).
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` if present (absent: nothing added).
    pub fn read(dir: &Path) -> Result<TokenizerConfig, ConvertError> {
        let path = dir.join("tokenizer_config.json");
        let what = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TokenizerConfig::default())
            }
            Err(e) => return Err(ConvertError::io(&path, format!("cannot read {what}"), e)),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            ConvertError::tokenizer(
                &path,
                format!("{what} is not valid JSON"),
                Some(Box::new(e)),
            )
        })?;
        // A token is a string or an object with `content` (older AddedToken serialization).
        let token = |key: &str| -> Option<String> {
            let t = v.get(key)?;
            t.as_str()
                .map(str::to_string)
                .or_else(|| t.get("content")?.as_str().map(str::to_string))
        };
        let chat_template = match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: the one called "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(other) => {
                return Err(ConvertError::tokenizer(
                    &path,
                    format!("{what}: chat_template is {other}, expected a string"),
                    None,
                ))
            }
        };
        Ok(TokenizerConfig {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            add_bos_token: v.get("add_bos_token").and_then(|b| b.as_bool()),
            chat_template,
        })
    }

    /// Sets BOS/EOS and `add_bos` of a byte-level tokenizer from this config (SentencePiece
    /// data is left as the original exporter writes it); `path` names the config in errors.
    pub fn apply(&self, data: &mut TokenizerData, path: &Path) -> Result<(), ConvertError> {
        if data.kind != TokenizerKind::ByteLevelBpe {
            return Ok(());
        }
        let id_of = |content: &str| -> Result<u32, ConvertError> {
            data.added_tokens
                .iter()
                .find(|t| t.content == content)
                .map(|t| t.id)
                .or_else(|| {
                    data.vocab
                        .iter()
                        .find(|(p, _)| p == content)
                        .map(|(_, id)| *id)
                })
                .ok_or_else(|| {
                    ConvertError::tokenizer(
                        path,
                        format!(
                            "{}: token {content:?} is not in the vocabulary",
                            path.display()
                        ),
                        None,
                    )
                })
        };
        if let Some(bos) = &self.bos_token {
            data.bos_id = Some(id_of(bos)?);
        }
        if let Some(eos) = &self.eos_token {
            data.eos_id = Some(id_of(eos)?);
        }
        if let Some(add) = self.add_bos_token {
            data.add_bos = Some(add);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_vocab(merges: &str) -> String {
        let mut vocab = vec![
            "\"<unk>\": 0".to_string(),
            "\"<s>\": 1".into(),
            "\"</s>\": 2".into(),
        ];
        for b in 0..256 {
            vocab.push(format!("\"<0x{b:02X}>\": {}", b + 3));
        }
        // Deliberately not in alphabetical order.
        vocab.push("\"b\": 259".into());
        vocab.push("\"a\": 260".into());
        vocab.push("\"ab\": 261".into());
        format!(
            "{{\"model\": {{\"type\": \"BPE\", \"vocab\": {{{}}}, \"merges\": {merges}}}}}",
            vocab.join(", ")
        )
    }

    fn parse(text: &str) -> Result<TokenizerData, ConvertError> {
        parse_tokenizer_json(text, Path::new("t"))
    }

    /// The message and its causes, as the command line prints them.
    fn full_message(e: &dyn std::error::Error) -> String {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }

    #[test]
    fn keeps_file_order_and_accepts_both_merge_forms() {
        let joined = parse(&small_vocab("[\"a b\"]")).unwrap();
        assert_eq!(joined.vocab[259], ("b".to_string(), 259));
        assert_eq!(joined.vocab[260], ("a".to_string(), 260));
        assert_eq!(joined.merges, ["a b"]);
        let pairs = parse(&small_vocab("[[\"a\", \"b\"]]")).unwrap();
        assert_eq!(pairs, joined);
    }

    #[test]
    fn refuses_unusable_vocabularies() {
        let e = parse(&small_vocab("[\"a c\"]")).unwrap_err();
        assert!(
            full_message(&e).contains("not usable"),
            "{}",
            full_message(&e)
        );
        let e = parse(
            "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.5]], \"merges\": []}}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("Unigram"), "{e}");
        let e = parse(&small_vocab("[[\"a \", \"b\"]]")).unwrap_err();
        assert!(
            full_message(&e).contains("merge #0"),
            "{}",
            full_message(&e)
        );
    }
}
