//! Reading a Hugging Face `tokenizer.json` into a [`VocabSpec`].
//!
//! The file is 1.8 MB for Mistral, almost all vocabulary and merges, so those
//! two are deserialized straight into vectors (no intermediate `Value` tree);
//! every section is parsed on its own so that an error names the field.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::TokenizerError;
use crate::vocab::{MergeSpec, PrependScheme, VocabSpec};

fn field_error(field: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Field {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// Parses one section, naming it in the error.
fn parse_field<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    field: &str,
) -> Result<T, TokenizerError> {
    serde_json::from_str(raw.get()).map_err(|e| field_error(field, e.to_string()))
}

fn required<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<&'a RawValue, TokenizerError> {
    match raw {
        Some(raw) if raw.get() != "null" => Ok(raw),
        _ => Err(field_error(field, "missing")),
    }
}

#[derive(Deserialize)]
struct FileJson<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    added_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pre_tokenizer: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ModelJson<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    vocab: Option<&'a RawValue>,
    #[serde(borrow, default)]
    merges: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unk_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    byte_fallback: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u64,
    content: String,
    #[serde(default)]
    special: bool,
}

/// `{piece: id, ...}` in file order.
struct VocabEntries(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for VocabEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = VocabEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object {piece: id}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VocabEntries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(piece) = map.next_key::<String>()? {
                    let id = map.next_value::<u64>().map_err(|e| {
                        de::Error::custom(format!(
                            "id of piece {piece:?} must be a non-negative integer: {e}"
                        ))
                    })?;
                    entries.push((piece, id));
                }
                Ok(VocabEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

impl<'de> Deserialize<'de> for MergeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MergeVisitor;
        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = MergeSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a merge \"left right\" or [left, right]")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MergeSpec, E> {
                Ok(MergeSpec::Joined(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<MergeSpec, E> {
                Ok(MergeSpec::Joined(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergeSpec, A::Error> {
                let left: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let right: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(MergeSpec::Pair(left, right))
            }
        }
        deserializer.deserialize_any(MergeVisitor)
    }
}

/// The merge list, with the position of a bad entry in the error.
struct Merges(Vec<MergeSpec>);

impl<'de> Deserialize<'de> for Merges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MergesVisitor;
        impl<'de> Visitor<'de> for MergesVisitor {
            type Value = Merges;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of merges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Merges, A::Error> {
                let mut merges = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                loop {
                    let index = merges.len();
                    match seq.next_element::<MergeSpec>() {
                        Ok(Some(merge)) => merges.push(merge),
                        Ok(None) => return Ok(Merges(merges)),
                        Err(e) => return Err(de::Error::custom(format!("merge #{index}: {e}"))),
                    }
                }
            }
        }
        deserializer.deserialize_seq(MergesVisitor)
    }
}

pub(crate) fn parse_tokenizer_json(json: &str) -> Result<VocabSpec, TokenizerError> {
    let file: FileJson<'_> = serde_json::from_str(json)?;
    let model = required(file.model, "model")?;
    // Serde would also accept a struct written as an array.
    if !model.get().starts_with('{') {
        return Err(field_error("model", "invalid type: expected an object"));
    }
    let model: ModelJson<'_> = parse_field(model, "model")?;

    if let Some(kind) = model.kind {
        let kind: String = parse_field(kind, "model.type")?;
        if kind != "BPE" {
            return Err(TokenizerError::UnsupportedModel(kind));
        }
    }
    let VocabEntries(mut vocab) =
        parse_field(required(model.vocab, "model.vocab")?, "model.vocab")?;
    let Merges(merges) = parse_field(required(model.merges, "model.merges")?, "model.merges")?;
    let unk_piece: Option<String> = match model.unk_token {
        Some(raw) => parse_field(raw, "model.unk_token")?,
        None => None,
    };
    let byte_fallback: Option<bool> = match model.byte_fallback {
        Some(raw) => parse_field(raw, "model.byte_fallback")?,
        None => None,
    };

    let specials = match file.added_tokens {
        Some(raw) => {
            let added: Option<Vec<AddedTokenJson>> = parse_field(raw, "added_tokens")?;
            added
                .map(|added| add_tokens(added, &mut vocab))
                .transpose()?
        }
        None => None,
    };
    let prepend = match file.pre_tokenizer {
        Some(raw) => prepend_scheme(&parse_field::<Value>(raw, "pre_tokenizer")?),
        None => PrependScheme::Always,
    };

    Ok(VocabSpec {
        vocab,
        merges,
        unk_piece,
        byte_fallback: byte_fallback.unwrap_or(false),
        specials,
        prepend,
    })
}

/// Returns the special added tokens, and adds to `vocab` any added token that
/// is not in it yet (Hugging Face allows added tokens beyond the model vocab).
fn add_tokens(
    added: Vec<AddedTokenJson>,
    vocab: &mut Vec<(String, u64)>,
) -> Result<Vec<String>, TokenizerError> {
    let by_piece: std::collections::HashMap<&str, u64, crate::hash::PairBuildHasher> = vocab
        .iter()
        .map(|(piece, id)| (piece.as_str(), *id))
        .collect();
    let mut extra = Vec::new();
    let mut specials = Vec::new();
    for token in added {
        match by_piece.get(token.content.as_str()) {
            Some(&vocab_id) if vocab_id != token.id => {
                return Err(TokenizerError::AddedToken {
                    content: token.content,
                    id: token.id,
                    problem: format!("the vocabulary gives it id {vocab_id}"),
                })
            }
            Some(_) => {}
            None => extra.push((token.content.clone(), token.id)),
        }
        if token.special {
            specials.push(token.content);
        }
    }
    vocab.extend(extra);
    Ok(specials)
}

/// Where the dummy prefix goes around special tokens: the classic layout
/// (normalizer `Prepend("▁")`) puts it before every stretch of text; a
/// `Metaspace` pre-tokenizer says so with `prepend_scheme`.
fn prepend_scheme(pre_tokenizer: &Value) -> PrependScheme {
    let metaspace = |p: &&Value| p.get("type").and_then(Value::as_str) == Some("Metaspace");
    let found = match pre_tokenizer.get("pretokenizers").and_then(Value::as_array) {
        Some(sequence) => sequence.iter().find(metaspace),
        None => Some(pre_tokenizer).filter(metaspace),
    };
    let Some(metaspace) = found else {
        return PrependScheme::Always;
    };
    match metaspace.get("prepend_scheme").and_then(Value::as_str) {
        Some("first") => PrependScheme::First,
        Some("never") => PrependScheme::Never,
        Some(_) => PrependScheme::Always,
        None => match metaspace.get("add_prefix_space").and_then(Value::as_bool) {
            Some(false) => PrependScheme::Never,
            _ => PrependScheme::Always,
        },
    }
}
