//! The typed model configuration stored (as strings) in the header's `metadata`, and the list of
//! tensors a Mistral model needs.

use std::collections::BTreeMap;

use crate::error::FormatErrorKind;

/// Activation functions the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (`x * sigmoid(x)`), Mistral's activation, used in a SwiGLU MLP.
    Silu,
}

/// The weight storage the exporter recorded in `metadata.quant`.
///
/// Informational: each tensor carries its own dtype, which is what readers go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// All tensors float32.
    F32,
    /// `*_proj` tensors int8 in groups of 64, the rest float32.
    Int8,
    /// `*_proj` tensors int4 in groups of 32 (the output matrix and embedding may be int8 or
    /// int4 too), the rest float32.
    Int4,
}

impl QuantKind {
    /// The metadata string (`"f32"`, `"int8"` or `"int4"`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantKind::F32 => "f32",
            QuantKind::Int8 => "int8",
            QuantKind::Int4 => "int4",
        }
    }
}

/// Model families the engine runs. Both are the same decoder (RMSNorm, GQA, RoPE, SwiGLU); the
/// name is kept for display and for converters, and decides nothing in the forward pass: the
/// window, the RoPE base and tied embeddings are their own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Mistral (`MistralForCausalLM`): the default when the metadata names none.
    Mistral,
    /// Llama (`LlamaForCausalLM`: Llama 2/3, TinyLlama, SmolLM, ...).
    Llama,
}

impl Architecture {
    /// The metadata string (`"mistral"` or `"llama"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Mistral => "mistral",
            Architecture::Llama => "llama",
        }
    }
}

/// Which dimensions of a head RoPE rotates together, i.e. how the rows of the query and key
/// projections are ordered within each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopeLayout {
    /// Pairs `(i, i + head_dim/2)`: Hugging Face's rotate-half, the layout of torchless files.
    #[default]
    Halves,
    /// Pairs `(2j, 2j + 1)`: GGUF files, whose `attn_q`/`attn_k` rows llama.cpp's converter
    /// permutes so that each rotate-half pair becomes adjacent. Pair `j` still turns by
    /// frequency `j`; since `q·k` is invariant to permuting the dimensions of both alike, the
    /// attention equals the un-permuted model's (up to summation order) with no row copied.
    Adjacent,
}

impl RopeLayout {
    /// The metadata string (`"halves"` or `"adjacent"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RopeLayout::Halves => "halves",
            RopeLayout::Adjacent => "adjacent",
        }
    }
}

/// Metadata keys this version reads. Any other key is refused, naming it, so a file written by a
/// newer exporter with settings this reader would silently ignore fails clearly instead.
pub const KNOWN_METADATA_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "sliding_window",
    "rope_theta",
    "norm_eps",
    "act_type",
    "quant",
    "architecture",
    "tie_word_embeddings",
    "chat_template",
    "tokenizer_kind",
    "tokenizer_pre",
    "bos_token_id",
    "eos_token_id",
    "add_bos_token",
    "rope_layout",
];

/// Hyper-parameters of a Mistral model, parsed from the header metadata and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention: `n_heads / n_kv_heads` queries share one).
    pub n_kv_heads: usize,
    /// Dimension of one attention head.
    pub head_dim: usize,
    /// Number of rows of the embedding and of `lm_head`.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; positions beyond it are refused.
    pub max_position_embeddings: usize,
    /// Attention window: a query at position `p` sees keys `p - w + 1 ..= p`. `None`: unlimited.
    pub sliding_window: Option<usize>,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Storage recorded by the exporter.
    pub quant: QuantKind,
    /// Model family (metadata `architecture`; `mistral` when absent).
    pub architecture: Architecture,
    /// The embedding matrix is also the output projection: the file has no `lm_head.weight`
    /// (metadata `tie_word_embeddings`; `false` when absent).
    pub tie_word_embeddings: bool,
    /// How the query and key rows are ordered within a head (metadata `rope_layout`; `halves`
    /// when absent; GGUF files: `adjacent`).
    pub rope_layout: RopeLayout,
}

/// Upper bound for any single dimension: catches absurd metadata before anything is allocated.
pub(crate) const MAX_DIM: usize = 1 << 24;

impl Config {
    /// Parses and validates the metadata map (every value a string, as the exporter writes it).
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Self, FormatErrorKind> {
        let unknown: Vec<String> = metadata
            .keys()
            .filter(|k| !KNOWN_METADATA_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(FormatErrorKind::UnknownMetadata { keys: unknown });
        }
        let hidden_size = dim(metadata, "hidden_size")?;
        let n_heads = dim(metadata, "n_heads")?;
        let head_dim = match metadata.get("head_dim") {
            Some(_) => dim(metadata, "head_dim")?,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(FormatErrorKind::InvalidConfig {
                        reason: format!(
                            "hidden_size {hidden_size} is not divisible by n_heads {n_heads}"
                        ),
                    });
                }
                hidden_size / n_heads
            }
        };
        let config = Config {
            hidden_size,
            intermediate_size: dim(metadata, "intermediate_size")?,
            n_layers: dim(metadata, "n_layers")?,
            n_heads,
            n_kv_heads: dim(metadata, "n_kv_heads")?,
            head_dim,
            vocab_size: dim(metadata, "vocab_size")?,
            max_position_embeddings: dim(metadata, "max_position_embeddings")?,
            sliding_window: window(metadata)?,
            rope_theta: positive_float(metadata, "rope_theta")?,
            norm_eps: positive_float(metadata, "norm_eps")?,
            activation: match required(metadata, "act_type")? {
                "silu" | "swiglu" => Activation::Silu,
                other => {
                    return Err(bad(
                        "act_type",
                        other,
                        "\"silu\" (the only activation Mistral uses)",
                    ))
                }
            },
            quant: match required(metadata, "quant")? {
                "f32" => QuantKind::F32,
                "int8" => QuantKind::Int8,
                "int4" => QuantKind::Int4,
                other => return Err(bad("quant", other, "\"f32\", \"int8\" or \"int4\"")),
            },
            architecture: match metadata.get("architecture").map(|s| s.trim()) {
                None | Some("mistral") => Architecture::Mistral,
                Some("llama") => Architecture::Llama,
                Some(other) => return Err(bad("architecture", other, "\"mistral\" or \"llama\"")),
            },
            tie_word_embeddings: optional_bool(metadata, "tie_word_embeddings")?.unwrap_or(false),
            rope_layout: match metadata.get("rope_layout").map(|s| s.trim()) {
                None | Some("halves") => RopeLayout::Halves,
                Some("adjacent") => RopeLayout::Adjacent,
                Some(other) => return Err(bad("rope_layout", other, "\"halves\" or \"adjacent\"")),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks relations between the sizes.
    pub fn validate(&self) -> Result<(), FormatErrorKind> {
        let invalid = |reason: String| Err(FormatErrorKind::InvalidConfig { reason });
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return invalid(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return invalid(format!(
                "head_dim {} is odd; rotary embeddings need pairs",
                self.head_dim
            ));
        }
        if self.n_heads * self.head_dim > MAX_DIM {
            return invalid(format!(
                "n_heads {} x head_dim {} is absurdly large",
                self.n_heads, self.head_dim
            ));
        }
        if !self.norm_eps.is_finite() || !self.rope_theta.is_finite() {
            return invalid("norm_eps and rope_theta must be finite".into());
        }
        Ok(())
    }

    /// Number of query heads that share one key/value head.
    pub fn n_queries_per_kv(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Width of the concatenated query heads (`n_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The metadata map the exporter would write for this configuration.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let mut entries = vec![
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("n_layers", self.n_layers.to_string()),
            ("n_heads", self.n_heads.to_string()),
            ("n_kv_heads", self.n_kv_heads.to_string()),
            ("vocab_size", self.vocab_size.to_string()),
            (
                "max_position_embeddings",
                self.max_position_embeddings.to_string(),
            ),
            (
                "sliding_window",
                self.sliding_window
                    .map_or_else(|| "None".to_string(), |w| w.to_string()),
            ),
            ("rope_theta", python_float_str(self.rope_theta)),
            ("norm_eps", python_float_str(self.norm_eps)),
            ("act_type", "silu".to_string()),
            ("quant", self.quant.as_str().to_string()),
        ];
        if self.head_dim * self.n_heads != self.hidden_size {
            entries.push(("head_dim", self.head_dim.to_string()));
        }
        // Written only when not the default, so Mistral files stay byte-identical to the
        // original exporter's.
        if self.architecture != Architecture::Mistral {
            entries.push(("architecture", self.architecture.as_str().to_string()));
        }
        if self.tie_word_embeddings {
            entries.push(("tie_word_embeddings", "true".to_string()));
        }
        if self.rope_layout != RopeLayout::Halves {
            entries.push(("rope_layout", self.rope_layout.as_str().to_string()));
        }
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// The name of the output projection's matrix: `lm_head.weight`, or the embedding matrix when
    /// the embeddings are tied.
    pub fn output_tensor_name(&self) -> &'static str {
        if self.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
    }

    /// Every tensor a Mistral model of this configuration needs, with its shape and role.
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        let h = self.hidden_size;
        let mut list = Vec::with_capacity(3 + 9 * self.n_layers);
        if !self.tie_word_embeddings {
            list.push(ExpectedTensor::matrix(
                "lm_head.weight",
                [self.vocab_size, h],
            ));
        }
        list.extend([
            ExpectedTensor::matrix("model.embed_tokens.weight", [self.vocab_size, h]),
            ExpectedTensor::norm("model.norm.weight", h),
        ]);
        for layer in 0..self.n_layers {
            let name = |suffix: &str| layer_tensor_name(layer, suffix);
            list.extend([
                ExpectedTensor::norm(name("input_layernorm.weight"), h),
                ExpectedTensor::norm(name("post_attention_layernorm.weight"), h),
                ExpectedTensor::matrix(name("self_attn.q_proj.weight"), [self.q_dim(), h]),
                ExpectedTensor::matrix(name("self_attn.k_proj.weight"), [self.kv_dim(), h]),
                ExpectedTensor::matrix(name("self_attn.v_proj.weight"), [self.kv_dim(), h]),
                ExpectedTensor::matrix(name("self_attn.o_proj.weight"), [h, self.q_dim()]),
                ExpectedTensor::matrix(name("mlp.gate_proj.weight"), [self.intermediate_size, h]),
                ExpectedTensor::matrix(name("mlp.up_proj.weight"), [self.intermediate_size, h]),
                ExpectedTensor::matrix(name("mlp.down_proj.weight"), [h, self.intermediate_size]),
            ]);
        }
        list
    }
}

/// The Hugging Face name of a per-layer tensor, e.g. `model.layers.3.self_attn.q_proj.weight`.
pub fn layer_tensor_name(layer: usize, suffix: &str) -> String {
    format!("model.layers.{layer}.{suffix}")
}

/// A tensor a Mistral model needs: its name, shape and whether it may be int8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// Hugging Face tensor name.
    pub name: String,
    /// PyTorch shape (row-major; linear weights are `[out, in]`).
    pub shape: Vec<usize>,
    /// Matrices may be stored quantized (int8, int4); norm weights must be f32.
    pub may_be_quantized: bool,
}

impl ExpectedTensor {
    fn matrix(name: impl Into<String>, shape: [usize; 2]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            may_be_quantized: true,
        }
    }

    fn norm(name: impl Into<String>, len: usize) -> Self {
        Self {
            name: name.into(),
            shape: vec![len],
            may_be_quantized: false,
        }
    }
}

/// Python's `str(float)`: shortest round-trip digits, scientific notation outside `1e-4 <= |x| < 1e16`.
///
/// The original exporter writes metadata with `str()`, so `10000.0` and `1e-05` must come out
/// exactly that way for files to be interchangeable.
pub fn python_float_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits as `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                let (a, b) = digits.split_at(int_len as usize);
                format!("{a}.{b}")
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

fn required<'a>(
    metadata: &'a BTreeMap<String, String>,
    key: &str,
) -> Result<&'a str, FormatErrorKind> {
    metadata
        .get(key)
        .map(|s| s.trim())
        .ok_or_else(|| FormatErrorKind::MissingMetadata { key: key.into() })
}

fn bad(key: &str, value: &str, expected: &str) -> FormatErrorKind {
    FormatErrorKind::BadMetadata {
        key: key.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

fn dim(metadata: &BTreeMap<String, String>, key: &str) -> Result<usize, FormatErrorKind> {
    let value = required(metadata, key)?;
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_DIM).contains(&n) => Ok(n),
        _ => Err(bad(
            key,
            value,
            &format!("a whole number between 1 and {MAX_DIM}"),
        )),
    }
}

fn window(metadata: &BTreeMap<String, String>) -> Result<Option<usize>, FormatErrorKind> {
    let value = required(metadata, "sliding_window")?;
    // The original exporter writes Python's `None`; its later binary format writes 0 for "no window".
    match value {
        "None" | "none" | "null" | "0" => Ok(None),
        _ => match value.parse::<usize>() {
            Ok(n) if n <= (1 << 40) => Ok(Some(n)),
            _ => Err(bad("sliding_window", value, "a whole number or \"None\"")),
        },
    }
}

/// `true`/`false` (also Python's `True`/`False` and `1`/`0`); `None` when the key is absent.
pub(crate) fn optional_bool(
    metadata: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<bool>, FormatErrorKind> {
    match metadata.get(key).map(|s| s.trim()) {
        None => Ok(None),
        Some("true" | "True" | "1") => Ok(Some(true)),
        Some("false" | "False" | "0") => Ok(Some(false)),
        Some(other) => Err(bad(key, other, "\"true\" or \"false\"")),
    }
}

fn positive_float(metadata: &BTreeMap<String, String>, key: &str) -> Result<f64, FormatErrorKind> {
    let value = required(metadata, key)?;
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(bad(key, value, "a positive finite number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_matches_cpython() {
        // Expected strings are what CPython 3.11 prints for str(x).
        let cases = [
            (10000.0, "10000.0"),
            (1000000.0, "1000000.0"),
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.0001, "0.0001"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (2.5e-7, "2.5e-07"),
            (1.0, "1.0"),
            (-3.25, "-3.25"),
            (500000.0, "500000.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_str(x), want, "str({x:?})");
        }
    }
}
