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
use crate::options::{AddedToken, ByteLevelBpe, Pretokenizer};
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

pub(crate) use byte_level_bpe_from_json as parse_byte_level_json;

/// What a Hugging Face `tokenizer.json` holds, read by the same parser that
/// [`Tokenizer::from_tokenizer_json_str`](crate::Tokenizer::from_tokenizer_json_str) uses, in
/// the form a torchless model file stores it (vocabulary in file order, merges as
/// `"left right"`): what a converter embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerJson {
    /// SentencePiece-style BPE (Mistral, Llama 2).
    SentencePiece {
        /// The model's `vocab` in file order. Added tokens missing from it are left out, as
        /// the original exporter leaves them out.
        vocab: Vec<(String, u32)>,
        /// Merges as `"left right"`, highest priority first.
        merges: Vec<String>,
    },
    /// Byte-level BPE (a `ByteLevel` pre-tokenizer or decoder), see [`byte_level_bpe_from_json`].
    ByteLevel(ByteLevelBpe),
}

impl TokenizerJson {
    /// Parses the text of a `tokenizer.json` with a BPE model. Errors name the field, as for
    /// [`Tokenizer::from_tokenizer_json_str`](crate::Tokenizer::from_tokenizer_json_str); a
    /// `[left, right]` merge whose pieces hold a space is refused (a `"left right"` string
    /// cannot hold it).
    pub fn parse(json: &str) -> Result<Self, TokenizerError> {
        if let Some(spec) = parse_byte_level_json(json)? {
            return Ok(TokenizerJson::ByteLevel(spec));
        }
        let (spec, model_vocab) = parse_tokenizer_json_parts(json)?;
        let mut vocab = Vec::with_capacity(model_vocab);
        for (piece, id) in spec.vocab.into_iter().take(model_vocab) {
            let id = checked_id(&piece, id)?;
            vocab.push((piece, id));
        }
        let mut merges = Vec::with_capacity(spec.merges.len());
        for (rank, merge) in spec.merges.into_iter().enumerate() {
            merges.push(joined_merge(rank, merge)?);
        }
        Ok(TokenizerJson::SentencePiece { vocab, merges })
    }
}

/// A merge as the `"left right"` string a model file stores.
fn joined_merge(rank: usize, merge: MergeSpec) -> Result<String, TokenizerError> {
    match merge {
        MergeSpec::Joined(text) => Ok(text),
        MergeSpec::Pair(left, right) => {
            if left.contains(' ') || right.contains(' ') || left.is_empty() || right.is_empty() {
                return Err(TokenizerError::MalformedMerge {
                    rank,
                    merge: format!("{left} {right}"),
                });
            }
            Ok(format!("{left} {right}"))
        }
    }
}

pub(crate) fn parse_tokenizer_json(json: &str) -> Result<VocabSpec, TokenizerError> {
    parse_tokenizer_json_parts(json).map(|(spec, _)| spec)
}

/// The spec, and how many of its vocabulary entries come from `model.vocab` (the added
/// tokens missing from it follow).
fn parse_tokenizer_json_parts(json: &str) -> Result<(VocabSpec, usize), TokenizerError> {
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
    let model_vocab = vocab.len();
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

    let spec = VocabSpec {
        vocab,
        merges,
        unk_piece,
        byte_fallback: byte_fallback.unwrap_or(false),
        specials,
        prepend,
    };
    Ok((spec, model_vocab))
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

/// Whether a `pre_tokenizer` or `decoder` section is, or contains, a `ByteLevel` step.
fn has_byte_level(value: &Value) -> bool {
    if value.get("type").and_then(Value::as_str) == Some("ByteLevel") {
        return true;
    }
    ["pretokenizers", "decoders"].iter().any(|key| {
        value
            .get(*key)
            .and_then(Value::as_array)
            .is_some_and(|steps| steps.iter().any(has_byte_level))
    })
}

#[derive(Deserialize)]
struct ByteLevelFileJson<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    added_tokens: Option<&'a RawValue>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    post_processor: Option<Value>,
    #[serde(default)]
    decoder: Option<Value>,
}

#[derive(Deserialize)]
struct ByteLevelModelJson<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    vocab: Option<&'a RawValue>,
    #[serde(borrow, default)]
    merges: Option<&'a RawValue>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    ignore_merges: Option<bool>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
}

/// Reads a byte-level BPE `tokenizer.json` (one whose pre-tokenizer or decoder is
/// `ByteLevel`): vocabulary, merges, added tokens, the pre-tokenizer (recognized by its
/// configuration, see [`Pretokenizer`]) and BOS from a `TemplateProcessing` post-processor.
/// Returns `None` for any other file (SentencePiece-style ones are read by
/// [`Tokenizer::from_tokenizer_json_str`](crate::Tokenizer::from_tokenizer_json_str)).
///
/// Errors name the field: settings that would change the ids and that this version does not
/// implement (a normalizer, an unknown pre-tokenizer, byte fallback, subword affixes) are
/// refused rather than ignored. EOS is not in `tokenizer.json` (it lives in
/// `tokenizer_config.json`), so `eos_id` is `None`.
pub fn byte_level_bpe_from_json(json: &str) -> Result<Option<ByteLevelBpe>, TokenizerError> {
    let file: ByteLevelFileJson<'_> = serde_json::from_str(json)?;
    let byte_level = file.pre_tokenizer.as_ref().is_some_and(has_byte_level)
        || file.decoder.as_ref().is_some_and(has_byte_level);
    if !byte_level {
        return Ok(None);
    }
    let model: ByteLevelModelJson<'_> = parse_field(required(file.model, "model")?, "model")?;
    if let Some(kind) = model.kind.filter(|k| k != "BPE") {
        return Err(TokenizerError::UnsupportedModel(kind));
    }
    let pre = file
        .pre_tokenizer
        .as_ref()
        .filter(|p| !p.is_null())
        .ok_or_else(|| field_error("pre_tokenizer", "a byte-level tokenizer needs one"))?;
    let pretokenizer =
        Pretokenizer::from_hf_json(pre).map_err(|e| field_error("pre_tokenizer", e))?;
    if let Some(normalizer) = file.normalizer.filter(|n| !n.is_null()) {
        return Err(field_error(
            "normalizer",
            format!("{normalizer} is not supported for byte-level tokenizers"),
        ));
    }
    if model.byte_fallback == Some(true) {
        return Err(field_error(
            "model.byte_fallback",
            "byte-level BPE has every byte already",
        ));
    }
    for (field, affix) in [
        (
            "model.continuing_subword_prefix",
            &model.continuing_subword_prefix,
        ),
        ("model.end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if affix.as_deref().is_some_and(|a| !a.is_empty()) {
            return Err(field_error(field, "subword affixes are not supported"));
        }
    }
    let ignore_merges = model.ignore_merges.unwrap_or(false);
    if ignore_merges != (pretokenizer == Pretokenizer::Llama3) {
        return Err(field_error(
            "model.ignore_merges",
            format!(
                "{ignore_merges} with the {} pre-tokenizer is not supported (only Llama 3's ignores merges)",
                pretokenizer.name()
            ),
        ));
    }

    let VocabEntries(entries) = parse_field(required(model.vocab, "model.vocab")?, "model.vocab")?;
    let mut vocab = Vec::with_capacity(entries.len());
    for (piece, id) in entries {
        let id = checked_id(&piece, id)?;
        vocab.push((piece, id));
    }
    let Merges(specs) = parse_field(required(model.merges, "model.merges")?, "model.merges")?;
    let mut merges = Vec::with_capacity(specs.len());
    for (rank, spec) in specs.into_iter().enumerate() {
        merges.push(joined_merge(rank, spec)?);
    }
    let added: Vec<AddedTokenJson> = match file.added_tokens {
        Some(raw) => {
            parse_field::<Option<Vec<AddedTokenJson>>>(raw, "added_tokens")?.unwrap_or_default()
        }
        None => Vec::new(),
    };
    let mut added_tokens = Vec::with_capacity(added.len());
    for token in added {
        added_tokens.push(AddedToken {
            id: checked_id(&token.content, token.id)?,
            content: token.content,
            special: token.special,
        });
    }
    let bos_id = file.post_processor.as_ref().and_then(template_bos);
    Ok(Some(ByteLevelBpe {
        vocab,
        merges,
        pretokenizer,
        added_tokens,
        bos_id,
        eos_id: None,
        add_bos: bos_id.is_some(),
    }))
}

/// `id` as a vocabulary id (below 2^31, as the SentencePiece tables require too).
fn checked_id(piece: &str, id: u64) -> Result<u32, TokenizerError> {
    u32::try_from(id)
        .ok()
        .filter(|&id| id < crate::vocab::UNKNOWN_CHAR)
        .ok_or_else(|| TokenizerError::IdOutOfRange {
            piece: piece.to_owned(),
            id,
        })
}

/// The id a `TemplateProcessing` post-processor (alone or in a `Sequence`) puts before a
/// single sequence, e.g. Llama 3's `<|begin_of_text|>`.
fn template_bos(post: &Value) -> Option<u32> {
    if let Some(steps) = post.get("processors").and_then(Value::as_array) {
        return steps.iter().find_map(template_bos);
    }
    if post.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
        return None;
    }
    let first = post.get("single")?.as_array()?.first()?;
    let name = first.pointer("/SpecialToken/id")?.as_str()?;
    let ids = post
        .get("special_tokens")?
        .get(name)?
        .get("ids")?
        .as_array()?;
    match ids.as_slice() {
        [id] => id.as_u64().and_then(|id| u32::try_from(id).ok()),
        _ => None,
    }
}
