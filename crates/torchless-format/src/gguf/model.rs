//! A GGUF file read as a model: the configuration from the `llama.*` metadata, the tensor table
//! under the model's (Hugging Face) names with each tensor at its own type, and the tokenizer
//! from `tokenizer.ggml.*`. Every key is type-checked and every tensor checked against the
//! configuration once, so a lying file fails here, naming the key or the tensor as the file
//! spells it.

use std::collections::BTreeMap;

use super::reader::{GgufHeader, GgufTensorInfo};
use super::types::{BlockFormat, GgmlType, GgufArray, GgufValue};
use crate::config::{
    layer_tensor_name, Activation, Architecture, Config, QuantKind, RopeLayout, MAX_DIM,
};
use crate::error::FormatErrorKind;
use crate::tensor::{DType, TensorInfo};
use crate::tokenizer_data::{AddedTokenData, TokenizerData, TokenizerKind};

type Res<T> = Result<T, FormatErrorKind>;

/// What a GGUF file is as a model.
#[derive(Debug)]
pub(crate) struct GgufModel {
    /// The configuration (`rope_layout` [`RopeLayout::Adjacent`]).
    pub(crate) config: Config,
    /// Every tensor under its Hugging Face name; offsets from the data section's start.
    pub(crate) tensors: BTreeMap<String, TensorInfo>,
    /// Hugging Face name → the name in the file.
    pub(crate) stored_names: BTreeMap<String, String>,
}

/// A block's GGUF suffix and the Hugging Face suffix of the same tensor.
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm.weight"),
    ("attn_q", "self_attn.q_proj.weight"),
    ("attn_k", "self_attn.k_proj.weight"),
    ("attn_v", "self_attn.v_proj.weight"),
    ("attn_output", "self_attn.o_proj.weight"),
    ("ffn_norm", "post_attention_layernorm.weight"),
    ("ffn_gate", "mlp.gate_proj.weight"),
    ("ffn_up", "mlp.up_proj.weight"),
    ("ffn_down", "mlp.down_proj.weight"),
];

/// The Hugging Face name of GGUF tensor `name` in a model of `n_layers` blocks.
fn hf_name(name: &str, n_layers: usize) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let suffix = rest.strip_suffix(".weight")?;
    // Canonical decimal only ("blk.01" is not block 1).
    let layer: usize = layer
        .parse()
        .ok()
        .filter(|l: &usize| l.to_string() == layer)?;
    if layer >= n_layers {
        return None;
    }
    let (_, hf) = LAYER_TENSORS.iter().find(|(gguf, _)| *gguf == suffix)?;
    Some(layer_tensor_name(layer, hf))
}

/// The GGUF name of Hugging Face tensor `name` (the inverse of [`hf_name`]).
fn gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let parsed = name.strip_prefix("model.layers.").and_then(|rest| {
        let (layer, suffix) = rest.split_once('.')?;
        let (gguf, _) = LAYER_TENSORS.iter().find(|(_, hf)| *hf == suffix)?;
        Some(format!("blk.{layer}.{gguf}.weight"))
    });
    parsed.unwrap_or_else(|| name.to_string())
}

/// How a metadata value reads in a message: its GGUF type and (short) value.
pub(crate) fn describe(value: &GgufValue) -> String {
    match value {
        GgufValue::String(s) if s.len() > 40 => format!("a STRING of {} bytes", s.len()),
        GgufValue::String(s) => format!("STRING {s:?}"),
        GgufValue::Array(a) => format!("an ARRAY of {} {}", a.len(), a.element_type_name()),
        GgufValue::Bool(b) => format!("BOOL {b}"),
        GgufValue::F32(x) => format!("FLOAT32 {x}"),
        GgufValue::F64(x) => format!("FLOAT64 {x}"),
        other => match other.as_i64() {
            Some(v) => format!("{} {v}", other.type_name()),
            None => format!("{} {other:?}", other.type_name()),
        },
    }
}

/// Typed access to the metadata: a value of the wrong type is an error naming the key, the
/// type found and the type expected.
struct Meta<'a>(&'a GgufHeader);

impl<'a> Meta<'a> {
    fn wrong(key: &str, value: &GgufValue, expected: &str) -> FormatErrorKind {
        FormatErrorKind::BadMetadata {
            key: key.into(),
            value: describe(value),
            expected: expected.into(),
        }
    }

    fn missing(key: &str) -> FormatErrorKind {
        FormatErrorKind::MissingMetadata { key: key.into() }
    }

    /// A non-negative integer of any width.
    fn uint(&self, key: &str) -> Res<Option<u64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, v, "a non-negative integer")),
        }
    }

    /// A dimension: an integer in `1..=2^24`.
    fn dim(&self, key: &str) -> Res<Option<usize>> {
        match self.uint(key)? {
            None => Ok(None),
            Some(n) if (1..=MAX_DIM as u64).contains(&n) => Ok(Some(n as usize)),
            Some(_) => Err(Self::wrong(
                key,
                self.0.get(key).unwrap_or(&GgufValue::U64(0)),
                &format!("a whole number between 1 and {MAX_DIM}"),
            )),
        }
    }

    fn need_dim(&self, key: &str) -> Res<usize> {
        self.dim(key)?.ok_or_else(|| Self::missing(key))
    }

    /// A FLOAT32 or FLOAT64. An f32 is read as the shortest decimal that rounds to it (llama.cpp
    /// stores `1e-5` as 9.99999974737875e-6; this gives back the `1e-05` of `config.json`).
    fn float(&self, key: &str) -> Res<Option<f64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(x)) => {
                Ok(Some(format!("{x}").parse::<f64>().unwrap_or(f64::from(*x))))
            }
            Some(GgufValue::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(Self::wrong(key, v, "a FLOAT32")),
        }
    }

    fn positive_float(&self, key: &str) -> Res<Option<f64>> {
        match self.float(key)? {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(FormatErrorKind::BadMetadata {
                key: key.into(),
                value: x.to_string(),
                expected: "a positive finite number".into(),
            }),
            other => Ok(other),
        }
    }

    fn string(&self, key: &str) -> Res<Option<&'a str>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(key, v, "a STRING")),
        }
    }

    fn boolean(&self, key: &str) -> Res<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong(key, v, "a BOOL")),
        }
    }

    fn strings(&self, key: &str) -> Res<Option<&'a [String]>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(GgufArray::String(v))) => Ok(Some(v)),
            Some(v) => Err(Self::wrong(key, v, "an ARRAY of STRING")),
        }
    }

    /// An array of numbers of at least `n` entries (llama.cpp reads the first `n`), as `T`.
    fn numbers<T>(
        &self,
        key: &str,
        n: usize,
        convert: impl Fn(&GgufArray) -> Option<Vec<T>>,
        expected: &str,
    ) -> Res<Option<Vec<T>>> {
        let Some(value) = self.0.get(key) else {
            return Ok(None);
        };
        let mut values = value
            .as_array()
            .and_then(convert)
            .ok_or_else(|| Self::wrong(key, value, expected))?;
        if values.len() < n {
            return Err(FormatErrorKind::BadTokenizer {
                reason: format!(
                    "{key} has {} entries for the {n} pieces of tokenizer.ggml.tokens",
                    values.len()
                ),
            });
        }
        values.truncate(n);
        Ok(Some(values))
    }
}

/// The configuration, tensor table and checks of a GGUF file opened as a model.
pub(crate) fn open_model(header: &GgufHeader) -> Res<GgufModel> {
    let meta = Meta(header);
    let arch_key = "general.architecture";
    let arch = meta
        .string(arch_key)?
        .ok_or_else(|| Meta::missing(arch_key))?;
    if arch != "llama" {
        return Err(FormatErrorKind::UnsupportedArchitecture {
            architecture: arch.into(),
        });
    }
    let key = |k: &str| format!("llama.{k}");
    if let Some(experts) = meta.uint(&key("expert_count"))? {
        if experts > 0 {
            return Err(FormatErrorKind::Unsupported {
                feature: format!(
                    "a mixture of experts (llama.expert_count = {experts}, as in Mixtral)"
                ),
            });
        }
    }
    if let Some(kind) = meta.string(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(FormatErrorKind::Unsupported {
                feature: format!("RoPE scaling {kind:?} (llama.rope.scaling.type)"),
            });
        }
    }
    if let Some(factor) = meta.float(&key("rope.scaling.factor"))? {
        if factor != 0.0 && factor != 1.0 {
            return Err(FormatErrorKind::Unsupported {
                feature: format!("RoPE scaling by {factor} (llama.rope.scaling.factor)"),
            });
        }
    }
    let hidden_size = meta.need_dim(&key("embedding_length"))?;
    let n_heads = meta.need_dim(&key("attention.head_count"))?;
    let n_kv_heads = meta
        .dim(&key("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    let head_dim = match meta.dim(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden_size % n_heads == 0 => hidden_size / n_heads,
        None => {
            return Err(FormatErrorKind::InvalidConfig {
                reason: format!(
                    "llama.embedding_length {hidden_size} is not divisible by llama.attention.head_count {n_heads}"
                ),
            })
        }
    };
    if let Some(v) = meta.dim(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(FormatErrorKind::Unsupported {
                feature: format!(
                    "value heads of {v} dims (llama.attention.value_length) with key heads of {head_dim}"
                ),
            });
        }
    }
    if let Some(rot) = meta.uint(&key("rope.dimension_count"))? {
        if rot != head_dim as u64 {
            return Err(FormatErrorKind::Unsupported {
                feature: format!(
                    "partial rotary embeddings (llama.rope.dimension_count {rot}, head dim {head_dim})"
                ),
            });
        }
    }
    let n_layers = meta.need_dim(&key("block_count"))?;
    let intermediate_size = meta.need_dim(&key("feed_forward_length"))?;
    let max_position_embeddings = meta.need_dim(&key("context_length"))?;
    let rope_theta = meta
        .positive_float(&key("rope.freq_base"))?
        .unwrap_or(10_000.0);
    let eps_key = key("attention.layer_norm_rms_epsilon");
    let norm_eps = meta
        .positive_float(&eps_key)?
        .ok_or_else(|| Meta::missing(&eps_key))?;
    // llama.cpp writes 0 for "no window" (e.g. MobileLLM); Mistral v0.1 files made by its
    // converter carry no key at all (llama.cpp attends to the whole context then too).
    let sliding_window = match meta.uint(&key("attention.sliding_window"))? {
        None | Some(0) => None,
        Some(w) => Some(usize::try_from(w).unwrap_or(usize::MAX)),
    };

    if header.tensor("rope_freqs.weight").is_some() {
        return Err(FormatErrorKind::Unsupported {
            feature: "RoPE frequency factors (tensor rope_freqs.weight: Llama 3.1-style scaling)"
                .into(),
        });
    }
    let embedding =
        header
            .tensor("token_embd.weight")
            .ok_or_else(|| FormatErrorKind::MissingTensor {
                name: "token_embd.weight".into(),
            })?;
    let vocab_size = match embedding.dims() {
        [_, rows] => usize::try_from(*rows).unwrap_or(usize::MAX),
        _ => {
            return Err(FormatErrorKind::WrongShape {
                tensor: "token_embd.weight".into(),
                expected: vec![0, hidden_size],
                found: embedding.shape_rows_major(),
            })
        }
    };
    if vocab_size == 0 || hidden_size as u64 != embedding.dims()[0] {
        return Err(FormatErrorKind::WrongShape {
            tensor: "token_embd.weight".into(),
            expected: vec![vocab_size.max(1), hidden_size],
            found: embedding.shape_rows_major(),
        });
    }
    if let Some(declared) = meta.uint(&key("vocab_size"))? {
        if declared != vocab_size as u64 {
            return Err(FormatErrorKind::BadMetadata {
                key: key("vocab_size"),
                value: declared.to_string(),
                expected: format!("{vocab_size}, the rows of token_embd.weight"),
            });
        }
    }
    let config = Config {
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        max_position_embeddings,
        sliding_window,
        rope_theta,
        norm_eps,
        activation: Activation::Silu,
        quant: QuantKind::F32,
        architecture: Architecture::Llama,
        tie_word_embeddings: header.tensor("output.weight").is_none(),
        rope_layout: RopeLayout::Adjacent,
    };
    config.validate()?;

    // Every tensor of the file must be one of the model's.
    let mut stored_names = BTreeMap::new();
    for info in &header.tensors {
        let Some(hf) = hf_name(info.name(), n_layers) else {
            return Err(FormatErrorKind::UnexpectedTensor {
                tensor: info.name().into(),
                reason: format!(
                    "a {n_layers}-block llama model has token_embd, output_norm, output and \
                     blk.N.{{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, \
                     ffn_up, ffn_down}}.weight (N < {n_layers})"
                ),
            });
        };
        stored_names.insert(hf, info.name().to_string());
    }
    // Every tensor the model needs must be there. Each tensor of the file is a distinct one of
    // them, so with fewer tensors than needed one is absent: the names are tried in order and
    // the first absent one reported (within the first `tensors / 9 + 1` blocks, so a lying
    // block count cannot make a list of millions of names).
    let needed = 2 + usize::from(!config.tie_word_embeddings) + 9 * n_layers;
    if stored_names.len() < needed {
        let names = ["token_embd.weight", "output_norm.weight"]
            .into_iter()
            .map(String::from)
            .chain((0..n_layers).flat_map(|layer| {
                LAYER_TENSORS
                    .iter()
                    .map(move |(gguf, _)| format!("blk.{layer}.{gguf}.weight"))
            }));
        for name in names {
            if header.tensor(&name).is_none() {
                return Err(FormatErrorKind::MissingTensor { name });
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for expected in config.expected_tensors() {
        let stored = gguf_name(&expected.name);
        let info = header
            .tensor(&stored)
            .ok_or_else(|| FormatErrorKind::MissingTensor {
                name: stored.clone(),
            })?;
        let dtype = tensor_dtype(info, header.data_start)?;
        let shape = info.shape_rows_major();
        // Norms are vectors; a `[1, n]` one has the same layout.
        let same = shape == expected.shape
            || (expected.shape.len() == 1
                && shape.iter().product::<usize>() == expected.shape[0]
                && shape.iter().rev().skip(1).all(|&d| d == 1));
        if !same {
            return Err(FormatErrorKind::WrongShape {
                tensor: stored,
                expected: expected.shape,
                found: shape,
            });
        }
        if !expected.may_be_quantized && dtype != DType::F32 {
            return Err(FormatErrorKind::WrongDtype {
                tensor: stored,
                expected: "F32 (a norm's weights)".into(),
                found: info.ggml_type().name().into(),
            });
        }
        let n_elements = usize::try_from(info.n_elements()).unwrap_or(usize::MAX);
        tensors.insert(
            expected.name.clone(),
            TensorInfo {
                name: expected.name,
                dtype,
                shape: expected.shape,
                n_elements,
                offset: info.offset() as usize,
                scales: None,
            },
        );
    }
    Ok(GgufModel {
        config,
        tensors,
        stored_names,
    })
}

/// The dtype a GGUF tensor has as a model tensor; F32 data must be 4-byte aligned in the file
/// (the map is page-aligned, so the file offset decides) to be viewed as `&[f32]`.
fn tensor_dtype(info: &GgufTensorInfo, data_start: usize) -> Res<DType> {
    if info.ggml_type() == GgmlType::F32 {
        let absolute = data_start as u64 + info.offset();
        if !absolute.is_multiple_of(4) {
            return Err(FormatErrorKind::Misaligned {
                tensor: info.name().into(),
                what: "data",
                offset: absolute,
                align: 4,
            });
        }
        return Ok(DType::F32);
    }
    match BlockFormat::from_ggml(info.ggml_type()) {
        Some(format) => Ok(DType::Blocks(format)),
        None => Err(FormatErrorKind::UnsupportedTensorType {
            tensor: info.name().into(),
            ggml_type: info.ggml_type().name().into(),
        }),
    }
}

/// The chat template (`tokenizer.chat_template`), if the file has one.
pub(crate) fn chat_template(header: &GgufHeader) -> Res<Option<&str>> {
    Meta(header).string("tokenizer.chat_template")
}

/// The tokenizer of a GGUF file, from `tokenizer.ggml.*`, with llama.cpp's default ids and
/// pre-tokenizer where a key is absent (`add_bos` and `add_space_prefix` stay `None`: their
/// defaults depend on the tokenizer, which applies them). `embedding_rows`: the model's, when the file has weights (the vocabulary must
/// have exactly one piece per row, as llama.cpp requires); `None` for a vocabulary-only file.
pub(crate) fn tokenizer_data(
    header: &GgufHeader,
    embedding_rows: Option<usize>,
) -> Res<TokenizerData> {
    let meta = Meta(header);
    let bad = |reason: String| FormatErrorKind::BadTokenizer { reason };
    let model_key = "tokenizer.ggml.model";
    let model = meta
        .string(model_key)?
        .ok_or_else(|| Meta::missing(model_key))?;
    let kind = match model {
        "llama" => TokenizerKind::ScoredSentencePiece,
        "gpt2" => TokenizerKind::GgufByteLevelBpe,
        other => {
            return Err(bad(format!(
                "{model_key} {other:?} is not supported: torchless reads \"llama\" (SentencePiece) \
                 and \"gpt2\" (byte-level BPE) vocabularies"
            )))
        }
    };
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = meta
        .strings(tokens_key)?
        .ok_or_else(|| Meta::missing(tokens_key))?;
    let n = tokens.len();
    if n == 0 {
        return Err(bad(format!("{tokens_key} is empty")));
    }
    if let Some(rows) = embedding_rows {
        if n != rows {
            return Err(bad(format!(
                "{tokens_key} has {n} pieces but token_embd.weight has {rows} rows (one piece per row)"
            )));
        }
    }
    let scores = meta
        .numbers("tokenizer.ggml.scores", n, floats, "an ARRAY of FLOAT32")?
        .unwrap_or_else(|| vec![0.0; n]);
    let token_types = meta
        .numbers(
            "tokenizer.ggml.token_type",
            n,
            |a| {
                a.to_i64_vec()?
                    .into_iter()
                    .map(|t| i32::try_from(t).ok())
                    .collect()
            },
            "an ARRAY of INT32",
        )?
        .unwrap_or_else(|| vec![1; n]);
    let id = |key: &str| -> Res<Option<u32>> {
        match meta.uint(key)? {
            None => Ok(None),
            Some(id) if (id as usize) < n && id < u64::from(u32::MAX) => Ok(Some(id as u32)),
            Some(id) => Err(bad(format!(
                "{key} = {id} is outside the vocabulary of {n} pieces"
            ))),
        }
    };
    let (bos_id, eos_id, unk_id) = (
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
        id("tokenizer.ggml.unknown_token_id")?,
    );
    let add_bos = meta.boolean("tokenizer.ggml.add_bos_token")?;
    let add_space_prefix = meta.boolean("tokenizer.ggml.add_space_prefix")?;
    let vocab: Vec<(String, u32)> = tokens
        .iter()
        .enumerate()
        .map(|(i, piece)| (piece.clone(), i as u32))
        .collect();
    Ok(match kind {
        TokenizerKind::GgufByteLevelBpe => {
            let merges_key = "tokenizer.ggml.merges";
            let merges = meta
                .strings(merges_key)?
                .ok_or_else(|| Meta::missing(merges_key))?;
            let pre = meta
                .string("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string();
            // llama.cpp's token types: 3 = control (special), 4 = user-defined (added, matched
            // in any text).
            let added_tokens = tokens
                .iter()
                .zip(&token_types)
                .enumerate()
                .filter(|(_, (_, &t))| t == 3 || t == 4)
                .map(|(id, (content, &t))| AddedTokenData {
                    id: id as u32,
                    content: content.clone(),
                    special: t == 3,
                })
                .collect();
            TokenizerData {
                kind,
                vocab,
                merges: merges.to_vec(),
                added_tokens,
                // Absent: llama.cpp's default for the pre-tokenizer (the tokenizer knows it).
                add_bos,
                pretokenizer: Some(pre),
                bos_id,
                eos_id,
                scores: Vec::new(),
                token_types: Vec::new(),
                unk_id,
                add_space_prefix,
            }
        }
        _ => TokenizerData {
            kind,
            vocab,
            merges: Vec::new(),
            added_tokens: Vec::new(),
            pretokenizer: None,
            // llama.cpp's defaults for a SentencePiece vocabulary.
            bos_id: bos_id.or(Some(1).filter(|_| n > 1)),
            eos_id: eos_id.or(Some(2).filter(|_| n > 2)),
            // Absent: llama.cpp's default, true for both (the tokenizer's too).
            add_bos,
            scores,
            token_types,
            unk_id: unk_id.or(Some(0)),
            add_space_prefix,
        },
    })
}

/// A FLOAT32 array (or an INT32 one, which llama.cpp also accepts for scores) as `f32`.
fn floats(array: &GgufArray) -> Option<Vec<f32>> {
    match array {
        GgufArray::F32(v) => Some(v.clone()),
        GgufArray::I32(v) => Some(v.iter().map(|&x| x as f32).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (gguf, hf) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.11.ffn_down.weight",
                "model.layers.11.mlp.down_proj.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
        ] {
            assert_eq!(hf_name(gguf, 12).as_deref(), Some(hf), "{gguf}");
            assert_eq!(gguf_name(hf), gguf, "{hf}");
        }
        for foreign in [
            "blk.12.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.0.attn_qkv.weight",
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
        ] {
            assert_eq!(hf_name(foreign, 12), None, "{foreign}");
        }
    }
}
