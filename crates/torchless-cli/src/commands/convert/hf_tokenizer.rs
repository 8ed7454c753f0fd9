//! Reading the vocabulary and merges of a Hugging Face `tokenizer.json`, in file order (the original
//! exporter copies the `vocab` object as Python's `json` reads it, which keeps the order).
//!
//! Two kinds of `tokenizer.json` are read: SentencePiece-style BPE with byte fallback (Mistral,
//! Llama 2), stored exactly as the original exporter stores it, and byte-level BPE (GPT-2 style:
//! a `ByteLevel` pre-tokenizer or decoder; SmolLM, Llama 3), stored with its added tokens and
//! the pre-tokenizer's llama.cpp name.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use torchless_model::format::{AddedTokenData, TokenizerData, TokenizerKind};
use torchless_model::Tokenizer;

#[derive(Deserialize)]
struct TokenizerFile {
    model: TokenizerModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

/// Only the model type, read first so a non-BPE tokenizer gets a clear message.
#[derive(Deserialize)]
struct ModelTypeOnly {
    model: ModelKind,
}

#[derive(Deserialize)]
struct ModelKind {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct TokenizerModel {
    vocab: OrderedVocab,
    merges: Vec<Merge>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

/// `{piece: id}` kept in file order.
struct OrderedVocab(Vec<(String, u32)>);

impl<'de> Deserialize<'de> for OrderedVocab {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VocabVisitor;
        impl<'de> Visitor<'de> for VocabVisitor {
            type Value = OrderedVocab;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping pieces to ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedVocab, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((piece, id)) = map.next_entry::<String, u32>()? {
                    entries.push((piece, id));
                }
                Ok(OrderedVocab(entries))
            }
        }
        deserializer.deserialize_map(VocabVisitor)
    }
}

/// Reads `path` (a `tokenizer.json`) into the vocabulary and merges stored in a model file, and
/// checks that the torchless tokenizer accepts them.
pub fn read_tokenizer(path: &Path) -> anyhow::Result<TokenizerData> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{what} is missing")
        } else {
            anyhow!("cannot read {what}: {e}")
        }
    })?;
    parse_tokenizer(&text, &what)
}

/// Parses the text of a `tokenizer.json`; `what` names it in errors.
pub fn parse_tokenizer(text: &str, what: &str) -> anyhow::Result<TokenizerData> {
    let kind: ModelTypeOnly = serde_json::from_str(text)
        .with_context(|| format!("{what} is not a tokenizer.json (no `model` object)"))?;
    if let Some(kind) = kind.model.kind {
        if kind != "BPE" {
            bail!("{what}: tokenizer model type {kind:?} is not supported (Mistral uses a byte-fallback \"BPE\" model)");
        }
    }
    let file: TokenizerFile = serde_json::from_str(text)
        .with_context(|| format!("{what}: cannot read the BPE vocabulary and merges"))?;
    // The tokenizer crate recognizes byte-level files and their pre-tokenizer (and refuses
    // settings it would get wrong, by name).
    let byte_level = torchless_model::tokenizer::byte_level_bpe_from_json(text)
        .with_context(|| format!("{what}: the byte-level tokenizer is not usable by torchless"))?;
    let pretokenizer = byte_level
        .as_ref()
        .map(|spec| spec.pretokenizer.name().to_string());
    let byte_level = byte_level.is_some();
    let model = file.model;
    let mut merges = Vec::with_capacity(model.merges.len());
    for (rank, merge) in model.merges.into_iter().enumerate() {
        merges.push(match merge {
            Merge::Joined(text) => text,
            Merge::Pair(left, right) => {
                if left.contains(' ') || right.contains(' ') {
                    bail!("{what}: merge {rank} [{left:?}, {right:?}] has a piece with a space, which the model file's \"left right\" merges cannot hold");
                }
                format!("{left} {right}")
            }
        });
    }
    let mut data = TokenizerData::sentencepiece(model.vocab.0, merges);
    if byte_level {
        data.kind = TokenizerKind::ByteLevelBpe;
        data.pretokenizer = pretokenizer;
        data.added_tokens = file
            .added_tokens
            .into_iter()
            .map(|t| AddedTokenData {
                id: t.id,
                content: t.content,
                special: t.special,
            })
            .collect();
        // BOS/EOS come from tokenizer_config.json (see `apply_tokenizer_config`); no BOS by
        // default, as GPT-2-style tokenizers have none.
        data.add_bos = Some(false);
        torchless_model::tokenizer_from_data(data.clone())
            .with_context(|| format!("{what}: the vocabulary is not usable by torchless"))?;
    } else {
        Tokenizer::from_vocab_and_merges(data.vocab.iter().cloned(), data.merges.iter().cloned())
            .with_context(|| format!("{what}: the vocabulary is not usable by torchless"))?;
    }
    Ok(data)
}

/// What `tokenizer_config.json` adds for a Llama-family model: BOS/EOS ids (by token text),
/// whether prompts start with BOS, and the chat template.
#[derive(Debug, Default)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub chat_template: Option<String>,
}

/// Reads `dir/tokenizer_config.json` if present (absent: nothing added).
pub fn read_tokenizer_config(dir: &Path) -> anyhow::Result<TokenizerConfig> {
    let path = dir.join("tokenizer_config.json");
    let what = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenizerConfig::default()),
        Err(e) => bail!("cannot read {what}: {e}"),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))?;
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
        Some(other) => bail!("{what}: chat_template is {other}, expected a string"),
    };
    Ok(TokenizerConfig {
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
        add_bos_token: v.get("add_bos_token").and_then(|b| b.as_bool()),
        chat_template,
    })
}

impl TokenizerConfig {
    /// Sets BOS/EOS and `add_bos` of a byte-level tokenizer from this config (SentencePiece
    /// data is left as the original exporter writes it).
    pub fn apply(&self, data: &mut TokenizerData, what: &str) -> anyhow::Result<()> {
        if data.kind != TokenizerKind::ByteLevelBpe {
            return Ok(());
        }
        let id_of = |content: &str| -> anyhow::Result<u32> {
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
                .ok_or_else(|| anyhow!("{what}: token {content:?} is not in the vocabulary"))
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

    #[test]
    fn keeps_file_order_and_accepts_both_merge_forms() {
        let joined = parse_tokenizer(&small_vocab("[\"a b\"]"), "t").unwrap();
        assert_eq!(joined.vocab[259], ("b".to_string(), 259));
        assert_eq!(joined.vocab[260], ("a".to_string(), 260));
        assert_eq!(joined.merges, ["a b"]);
        let pairs = parse_tokenizer(&small_vocab("[[\"a\", \"b\"]]"), "t").unwrap();
        assert_eq!(pairs, joined);
    }

    #[test]
    fn refuses_unusable_vocabularies() {
        let e = parse_tokenizer(&small_vocab("[\"a c\"]"), "t").unwrap_err();
        assert!(format!("{e:#}").contains("not usable"), "{e:#}");
        let e = parse_tokenizer(
            "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.5]], \"merges\": []}}",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("Unigram"), "{e}");
    }
}
