//! Reading the vocabulary and merges of a Hugging Face `tokenizer.json`, in file order (the original
//! exporter copies the `vocab` object as Python's `json` reads it, which keeps the order).

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use torchless_model::format::TokenizerData;
use torchless_model::Tokenizer;

#[derive(Deserialize)]
struct TokenizerFile {
    model: TokenizerModel,
}

/// Only the model type, read first so a non-BPE tokenizer gets a clear message.
#[derive(Deserialize)]
struct TokenizerKind {
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
    let kind: TokenizerKind = serde_json::from_str(text)
        .with_context(|| format!("{what} is not a tokenizer.json (no `model` object)"))?;
    if let Some(kind) = kind.model.kind {
        if kind != "BPE" {
            bail!("{what}: tokenizer model type {kind:?} is not supported (Mistral uses a byte-fallback \"BPE\" model)");
        }
    }
    let file: TokenizerFile = serde_json::from_str(text)
        .with_context(|| format!("{what}: cannot read the BPE vocabulary and merges"))?;
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
    let data = TokenizerData::sentencepiece(model.vocab.0, merges);
    Tokenizer::from_vocab_and_merges(data.vocab.iter().cloned(), data.merges.iter().cloned())
        .with_context(|| format!("{what}: the vocabulary is not usable by torchless"))?;
    Ok(data)
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
