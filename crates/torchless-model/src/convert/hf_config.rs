//! Reading a Hugging Face `config.json` of a Mistral or Llama model (both the older layout with top-level
//! `rope_theta` / `torch_dtype` and the transformers-5 layout with `rope_parameters` / `dtype`)
//! into the torchless [`Config`] and the exporter's metadata strings.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::value::RawValue;
use torchless_format::{python_float_str, Activation, Architecture, Config, QuantKind};

use super::error::{refuse, ConvertError};

/// A JSON object whose values are kept as raw text, so numbers can be printed the way Python's
/// `str()` prints what `json.load` made of them (an integer stays `10000`, a float becomes `10000.0`).
struct RawObject {
    /// The file, for errors.
    file: String,
    /// What the object is, for messages (`config.json` or `config.json `rope_parameters``).
    what: String,
    fields: BTreeMap<String, Box<RawValue>>,
}

/// A JSON number as Python's `json` module reads it: integer literal or float.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PyNumber {
    Int(i64),
    Float(f64),
}

impl PyNumber {
    fn value(self) -> f64 {
        match self {
            PyNumber::Int(i) => i as f64,
            PyNumber::Float(x) => x,
        }
    }

    /// Python's `str()` of the value.
    fn python_str(self) -> String {
        match self {
            PyNumber::Int(i) => i.to_string(),
            PyNumber::Float(x) => python_float_str(x),
        }
    }
}

impl RawObject {
    fn parse(text: &str, file: &str, what: &str) -> Result<Self, ConvertError> {
        let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text)
            .map_err(|e| ConvertError::input(file, format!("{what} is not a JSON object: {e}")))?;
        Ok(Self {
            file: file.to_string(),
            what: what.to_string(),
            fields,
        })
    }

    /// The raw value of `key`, `None` when absent or `null`.
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .get(key)
            .map(|raw| raw.get().trim())
            .filter(|text| *text != "null")
    }

    fn has_key(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    fn error(&self, message: String) -> ConvertError {
        ConvertError::input(&self.file, message)
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConvertError> {
        self.get(key)
            .map(|text| {
                serde_json::from_str::<String>(text).map_err(|_| {
                    self.error(format!(
                        "{}: `{key}` is {text}, expected a string",
                        self.what
                    ))
                })
            })
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConvertError> {
        self.get(key)
            .map(|text| {
                serde_json::from_str::<Vec<String>>(text).map_err(|_| {
                    self.error(format!(
                        "{}: `{key}` is {text}, expected a list of strings",
                        self.what
                    ))
                })
            })
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<PyNumber>, ConvertError> {
        let Some(text) = self.get(key) else {
            return Ok(None);
        };
        let bad = || {
            self.error(format!(
                "{}: `{key}` is {text}, expected a number",
                self.what
            ))
        };
        let starts_like_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if !starts_like_number {
            return Err(bad());
        }
        if text.contains(['.', 'e', 'E']) {
            // Rust's parser is correctly rounded, like Python's float().
            let x: f64 = text.parse().map_err(|_| bad())?;
            Ok(Some(PyNumber::Float(x)))
        } else {
            let i: i64 = text.parse().map_err(|_| bad())?;
            Ok(Some(PyNumber::Int(i)))
        }
    }

    fn dim(&self, key: &str) -> Result<usize, ConvertError> {
        match self.number(key)? {
            Some(PyNumber::Int(n)) if (1..=1 << 24).contains(&n) => Ok(n as usize),
            Some(other) => refuse!(
                &self.file,
                "{}: `{key}` is {}, expected a positive whole number",
                self.what,
                other.python_str()
            ),
            None => refuse!(&self.file, "{}: `{key}` is missing", self.what),
        }
    }

    fn object(&self, key: &str) -> Result<Option<RawObject>, ConvertError> {
        self.get(key)
            .map(|text| RawObject::parse(text, &self.file, &format!("{} `{key}`", self.what)))
            .transpose()
    }
}

/// What `config.json` says, turned into the torchless configuration.
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// The model configuration (quant set by the caller).
    pub config: Config,
    /// `rope_theta` exactly as the original exporter prints it (`str()` of the JSON value).
    rope_theta_str: String,
    /// `rms_norm_eps` exactly as the original exporter prints it.
    norm_eps_str: String,
}

impl HfConfig {
    /// The header metadata, with the original exporter's strings.
    pub fn metadata(&self, quant: QuantKind) -> Vec<(String, String)> {
        let mut config = self.config.clone();
        config.quant = quant;
        let mut metadata = config.to_metadata();
        for (key, value) in &mut metadata {
            match key.as_str() {
                "rope_theta" => value.clone_from(&self.rope_theta_str),
                "norm_eps" => value.clone_from(&self.norm_eps_str),
                _ => {}
            }
        }
        metadata
    }

    /// Reads and validates `dir/config.json`.
    pub fn read(dir: &Path) -> Result<HfConfig, ConvertError> {
        let path = dir.join("config.json");
        let what = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConvertError::input(
                    &path,
                    format!(
                        "{what} is missing: {} is not a Hugging Face checkpoint directory",
                        dir.display()
                    ),
                )
            } else {
                ConvertError::io(&path, format!("cannot read {what}"), e)
            }
        })?;
        Self::parse(&text, &what)
    }

    /// Parses the text of a `config.json`; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<HfConfig, ConvertError> {
        parse_config(text, what)
    }
}

fn parse_config(text: &str, what: &str) -> Result<HfConfig, ConvertError> {
    let cfg = RawObject::parse(text, what, what)?;

    let architecture = check_architecture(&cfg)?;

    let hidden_act = cfg.string("hidden_act")?.unwrap_or_else(|| "silu".into());
    if hidden_act != "silu" {
        refuse!(what, "{what}: hidden_act is {hidden_act:?}; Mistral uses \"silu\", nothing else is supported");
    }
    if let Some(scaling) = cfg.get("rope_scaling") {
        refuse!(
            what,
            "{what}: rope_scaling {scaling} is not supported (Mistral uses plain RoPE)"
        );
    }
    if cfg.get("attention_bias").is_some_and(|v| v == "true")
        || cfg.get("mlp_bias").is_some_and(|v| v == "true")
    {
        refuse!(
            what,
            "{what}: biases in attention or MLP are not part of Mistral and are not supported"
        );
    }
    let tie_word_embeddings = match cfg.get("tie_word_embeddings") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => refuse!(
            what,
            "{what}: tie_word_embeddings is {other}, expected true or false"
        ),
    };

    let hidden_size = cfg.dim("hidden_size")?;
    let n_heads = cfg.dim("num_attention_heads")?;
    let head_dim = match cfg.number("head_dim")? {
        None => {
            if hidden_size % n_heads != 0 {
                refuse!(what, "{what}: hidden_size {hidden_size} is not divisible by num_attention_heads {n_heads} and no head_dim is given");
            }
            hidden_size / n_heads
        }
        Some(_) => cfg.dim("head_dim")?,
    };

    let (rope_theta, rope_theta_str) = rope_theta(&cfg)?;
    let norm_eps = match cfg.number("rms_norm_eps")? {
        Some(eps) if eps.value() > 0.0 && eps.value().is_finite() => eps,
        Some(eps) => refuse!(
            what,
            "{what}: rms_norm_eps is {}, expected a positive number",
            eps.python_str()
        ),
        None => refuse!(what, "{what}: `rms_norm_eps` is missing"),
    };
    // Llama configs have no window; a Mistral config always names one (null for none).
    if architecture == Architecture::Mistral && !cfg.has_key("sliding_window") {
        refuse!(what, "{what}: `sliding_window` is missing (Mistral configs give a number, or null for no window)");
    }
    let sliding_window = match cfg.number("sliding_window")? {
        None => None,
        Some(PyNumber::Int(w)) if w >= 0 => Some(w as usize),
        Some(other) => refuse!(
            what,
            "{what}: sliding_window is {}, expected a whole number or null",
            other.python_str()
        ),
    };

    let config = Config {
        hidden_size,
        intermediate_size: cfg.dim("intermediate_size")?,
        n_layers: cfg.dim("num_hidden_layers")?,
        n_heads,
        n_kv_heads: cfg.dim("num_key_value_heads")?,
        head_dim,
        vocab_size: cfg.dim("vocab_size")?,
        max_position_embeddings: cfg.dim("max_position_embeddings")?,
        sliding_window,
        rope_theta: rope_theta.value(),
        norm_eps: norm_eps.value(),
        activation: Activation::Silu,
        quant: QuantKind::F32,
        architecture,
        tie_word_embeddings,
        rope_layout: Default::default(),
    };
    config.validate().map_err(|e| {
        ConvertError::input(what, format!("{what}: inconsistent configuration: {e}"))
    })?;

    // `torch_dtype` / `dtype` are not needed: each safetensors tensor says its own type.
    Ok(HfConfig {
        config,
        rope_theta_str,
        norm_eps_str: norm_eps.python_str(),
    })
}

/// `MistralForCausalLM` / `model_type: "mistral"` or `LlamaForCausalLM` / `"llama"`; anything
/// else is refused by name.
fn check_architecture(cfg: &RawObject) -> Result<Architecture, ConvertError> {
    const KNOWN: [(&str, &str, Architecture); 2] = [
        ("MistralForCausalLM", "mistral", Architecture::Mistral),
        ("LlamaForCausalLM", "llama", Architecture::Llama),
    ];
    let what = &cfg.what;
    let model_type = cfg.string("model_type")?;
    let architectures = cfg.strings("architectures")?.unwrap_or_default();
    let by_class = KNOWN
        .iter()
        .find(|(class, _, _)| architectures.iter().any(|a| a == class));
    if !architectures.is_empty() && by_class.is_none() {
        refuse!(
            what,
            "{what}: architecture {} is not supported (only MistralForCausalLM and LlamaForCausalLM)",
            architectures.join(", ")
        );
    }
    let by_type = match model_type.as_deref() {
        None => None,
        Some(name) => match KNOWN.iter().find(|(_, t, _)| *t == name) {
            Some(known) => Some(known),
            None => refuse!(
                what,
                "{what}: model_type {name:?} is not supported (only \"mistral\" and \"llama\")"
            ),
        },
    };
    match (by_class, by_type) {
        (Some(a), Some(b)) if a.2 != b.2 => refuse!(
            what,
            "{what}: architectures says {} but model_type says {:?}",
            a.0,
            b.1
        ),
        (Some(&(_, _, arch)), _) | (None, Some(&(_, _, arch))) => Ok(arch),
        (None, None) => refuse!(what, "{what}: neither model_type (\"mistral\", \"llama\") nor architectures (MistralForCausalLM, LlamaForCausalLM): not a supported checkpoint"),
    }
}

/// The RoPE base: `rope_parameters.rope_theta` (transformers 5) or top-level `rope_theta` (older
/// layout), with the string the original exporter writes (`str(cfg["rope_theta"])`).
fn rope_theta(cfg: &RawObject) -> Result<(PyNumber, String), ConvertError> {
    let what = &cfg.what;
    let top = cfg.number("rope_theta")?;
    let nested = match cfg.object("rope_parameters")? {
        Some(params) => {
            if let Some(kind) = params.string("rope_type")? {
                if kind != "default" {
                    refuse!(what, "{what}: rope_parameters.rope_type {kind:?} is not supported (Mistral uses \"default\")");
                }
            }
            params.number("rope_theta")?
        }
        None => None,
    };
    let theta = match (nested, top) {
        (Some(n), Some(t)) if n.value() != t.value() => refuse!(
            what,
            "{what}: rope_parameters.rope_theta {} and rope_theta {} disagree",
            n.python_str(),
            t.python_str()
        ),
        // The original exporter prints the top-level value; keep its exact string.
        (_, Some(t)) => (t, t.python_str()),
        (Some(n), None) => (n, python_float_str(n.value())),
        (None, None) => refuse!(
            what,
            "{what}: no rope_theta (neither top-level nor in rope_parameters)"
        ),
    };
    if !(theta.0.value() > 0.0 && theta.0.value().is_finite()) {
        refuse!(
            what,
            "{what}: rope_theta is {}, expected a positive number",
            theta.1
        );
    }
    Ok(theta)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"architectures": ["MistralForCausalLM"], "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "vocab_size": 32000}"#;

    fn meta(c: &HfConfig) -> BTreeMap<String, String> {
        c.metadata(QuantKind::Int8).into_iter().collect()
    }

    #[test]
    fn old_layout_gives_the_exporters_strings() {
        let c = parse_config(OLD, "config.json").unwrap();
        let m = meta(&c);
        assert_eq!(m["rope_theta"], "10000.0");
        assert_eq!(m["norm_eps"], "1e-05");
        assert_eq!(m["sliding_window"], "4096");
        assert_eq!(m["quant"], "int8");
        assert!(!m.contains_key("head_dim"));
    }

    #[test]
    fn new_layout_and_integer_theta() {
        let new = OLD
            .replace(
                "\"rope_theta\": 10000.0,",
                "\"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": \"default\"},",
            )
            .replace("\"sliding_window\": 4096", "\"sliding_window\": null");
        let m = meta(&parse_config(&new, "c").unwrap());
        assert_eq!(m["rope_theta"], "1000000.0");
        assert_eq!(m["sliding_window"], "None");
        // Python's str() of a JSON integer has no ".0".
        let int = OLD.replace("10000.0", "1000000");
        assert_eq!(
            meta(&parse_config(&int, "c").unwrap())["rope_theta"],
            "1000000"
        );
    }

    #[test]
    fn head_dim_differing_from_hidden_over_heads_is_recorded() {
        let c = OLD.replace("\"vocab_size\"", "\"head_dim\": 64, \"vocab_size\"");
        let m = meta(&parse_config(&c, "c").unwrap());
        assert_eq!(m["head_dim"], "64");
        let same = OLD.replace("\"vocab_size\"", "\"head_dim\": 128, \"vocab_size\"");
        assert!(!meta(&parse_config(&same, "c").unwrap()).contains_key("head_dim"));
    }

    #[test]
    fn llama_configs_have_no_window_and_may_tie_embeddings() {
        let llama = OLD
            .replace("MistralForCausalLM", "LlamaForCausalLM")
            .replace("\"mistral\"", "\"llama\"")
            .replace("\"sliding_window\": 4096, ", "")
            .replace(
                "\"tie_word_embeddings\": false",
                "\"tie_word_embeddings\": true",
            );
        let c = parse_config(&llama, "c").unwrap();
        assert_eq!(c.config.architecture, Architecture::Llama);
        assert!(c.config.tie_word_embeddings);
        let m = meta(&c);
        assert_eq!(m["architecture"], "llama");
        assert_eq!(m["tie_word_embeddings"], "true");
        assert_eq!(m["sliding_window"], "None");
        assert!(!c
            .config
            .expected_tensors()
            .iter()
            .any(|t| t.name == "lm_head.weight"));
        // The Mistral layout writes neither key, as the original exporter.
        let m = meta(&parse_config(OLD, "c").unwrap());
        assert!(!m.contains_key("architecture") && !m.contains_key("tie_word_embeddings"));
    }

    #[test]
    fn refuses_other_architectures_and_options() {
        let gemma = OLD
            .replace("MistralForCausalLM", "GemmaForCausalLM")
            .replace("\"mistral\"", "\"gemma\"");
        let e = parse_config(&gemma, "c").unwrap_err().to_string();
        assert!(e.contains("GemmaForCausalLM"), "{e}");
        let mixed = OLD.replace("\"mistral\"", "\"llama\"");
        let e = parse_config(&mixed, "c").unwrap_err().to_string();
        assert!(e.contains("model_type"), "{e}");
        let scaled = OLD.replace(
            "\"vocab_size\"",
            "\"rope_scaling\": {\"type\": \"linear\"}, \"vocab_size\"",
        );
        assert!(parse_config(&scaled, "c").is_err());
        let gelu = OLD.replace("\"silu\"", "\"gelu\"");
        assert!(parse_config(&gelu, "c").is_err());
        let missing = OLD.replace("\"hidden_size\": 4096,", "");
        let e = parse_config(&missing, "c").unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let heads = OLD.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5");
        assert!(parse_config(&heads, "c").is_err());
    }
}
