//! `torchless info MODEL`: configuration, tensors, dtypes and sizes (`--json` for scripts,
//! `--check` to scan the weights for NaN and infinities). A GGUF file also shows its version, a
//! summary of its metadata and each tensor's ggml type under its own name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use torchless_model::format::gguf::GgufValue;
use torchless_model::format::{Architecture, FileFormat, ModelFile};

use crate::options::KvCacheArgs;

#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// Model file (GGUF or torchless).
    pub model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
    /// Scan every weight for NaN or infinite values (reads the whole file); exits with 1 if any.
    #[arg(long)]
    pub check: bool,
    /// The KV cache types to size (the cache line shows its bytes per token for them).
    #[command(flatten)]
    pub cache: KvCacheArgs,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let file = ModelFile::open(&args.model)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    file.validate_mistral().context("not a complete model")?;
    let c = file.config();
    let mut by_dtype: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let entry = by_dtype.entry(t.dtype.as_str()).or_default();
        entry.0 += 1;
        entry.1 += t.n_elements as u64;
        entry.2 += t.bytes_read() as u64;
    }
    let params: u64 = file.tensors().map(|t| t.n_elements as u64).sum();
    let non_finite = if args.check {
        Some(file.non_finite_tensors()?)
    } else {
        None
    };

    let gguf_version = match file.format() {
        FileFormat::Gguf { version } => Some(version),
        FileFormat::Torchless => None,
    };
    let summary = gguf_summary(&file);
    let kv_types = args.cache.types();
    kv_types
        .check_head_dim(c.head_dim)
        .context("unsupported KV cache type")?;
    let kv_per_token = super::kv_bytes_per_token(c, kv_types);
    if args.json {
        let dtypes: serde_json::Map<String, serde_json::Value> = by_dtype
            .iter()
            .map(|(k, (n, elements, bytes))| {
                (
                    k.to_string(),
                    serde_json::json!({"tensors": n, "elements": elements, "bytes": bytes}),
                )
            })
            .collect();
        let mut value = serde_json::json!({
            "file": args.model.display().to_string(),
            "file_bytes": file.file_len(),
            "header_bytes": file.payload_start(),
            "config": {
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "n_layers": c.n_layers,
                "n_heads": c.n_heads,
                "n_kv_heads": c.n_kv_heads,
                "head_dim": c.head_dim,
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
                "sliding_window": c.sliding_window,
                "rope_theta": c.rope_theta,
                "norm_eps": c.norm_eps,
                "quant": c.quant.as_str(),
                "architecture": c.architecture.as_str(),
                "tie_word_embeddings": c.tie_word_embeddings,
            },
            "format": if gguf_version.is_some() { "gguf" } else { "torchless" },
            "gguf_version": gguf_version,
            "weights": super::weight_types(&file),
            "metadata": file.metadata(),
            "n_tensors": file.n_tensors(),
            "parameters": params,
            "dtypes": dtypes,
            "kv_cache": super::kv_cache_json(c, kv_types, None),
        });
        if args.tensors {
            value["tensors"] = file
                .tensors()
                .map(|t| {
                    let mut v = serde_json::json!({"name": file.stored_name(&t.name), "dtype": t.dtype.as_str(), "shape": t.shape, "bytes": t.bytes_read()});
                    if gguf_version.is_some() {
                        v["model_name"] = t.name.clone().into();
                    }
                    v
                })
                .collect::<Vec<_>>()
                .into();
        }
        if let Some(bad) = &non_finite {
            value["non_finite"] = bad
                .iter()
                .map(|(name, count)| serde_json::json!({"tensor": name, "count": count}))
                .collect::<Vec<_>>()
                .into();
        }
        println!("{value}");
    } else {
        let kind = match gguf_version {
            Some(v) => format!(", GGUF v{v}"),
            None => String::new(),
        };
        println!(
            "file            {} ({} bytes{kind})",
            args.model.display(),
            file.file_len()
        );
        for (key, value) in &summary {
            println!("{key:<15} {value}");
        }
        let family = match c.architecture {
            Architecture::Mistral => "Mistral",
            Architecture::Llama => "Llama",
        };
        let tied = if c.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        };
        println!("architecture    {family}, {params} parameters{tied}");
        println!("hidden_size     {}", c.hidden_size);
        println!("intermediate    {}", c.intermediate_size);
        println!("layers          {}", c.n_layers);
        println!(
            "heads           {} (kv heads {}, head_dim {})",
            c.n_heads, c.n_kv_heads, c.head_dim
        );
        println!("vocab_size      {}", c.vocab_size);
        println!("max positions   {}", c.max_position_embeddings);
        println!(
            "sliding window  {}",
            c.sliding_window
                .map_or("none".to_string(), |w| w.to_string())
        );
        println!("rope_theta      {}", c.rope_theta);
        println!("norm_eps        {}", c.norm_eps);
        if gguf_version.is_some() {
            println!("weights         {}", super::weight_types(&file));
        } else {
            println!("quant           {}", c.quant.as_str());
        }
        println!(
            "kv cache        {kv_per_token} bytes per token ({} keys, {} values, all layers)",
            kv_types.keys, kv_types.values
        );
        println!("tensors         {}", file.n_tensors());
        for (dtype, (n, elements, bytes)) in &by_dtype {
            println!("  {dtype:<5} {n:>5} tensors {elements:>14} values {bytes:>14} bytes");
        }
        if args.tensors {
            for t in file.tensors() {
                println!(
                    "  {:<52} {:<5} {:?}",
                    file.stored_name(&t.name),
                    t.dtype.as_str(),
                    t.shape
                );
            }
        }
        if let Some(bad) = &non_finite {
            if bad.is_empty() {
                println!("check           all weights finite");
            }
            for (name, count) in bad {
                println!("check           {name}: {count} NaN/infinite values");
            }
        }
    }
    if let Some(bad) = non_finite {
        if !bad.is_empty() {
            bail!("{} tensor(s) hold NaN or infinite values", bad.len());
        }
    }
    Ok(())
}

/// A GGUF file's metadata in a few lines: its name, llama.cpp's file type (`Q4_K_M`, ...),
/// quantization version and tokenizer (nothing for a torchless file).
fn gguf_summary(file: &ModelFile) -> Vec<(&'static str, String)> {
    let Some(metadata) = file.gguf_metadata() else {
        return Vec::new();
    };
    let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let text = |key: &str| get(key).and_then(GgufValue::as_str).map(str::to_string);
    let mut lines = Vec::new();
    if let Some(name) = text("general.name") {
        lines.push(("name", name));
    }
    if let Some(ftype) = get("general.file_type").and_then(GgufValue::as_u64) {
        lines.push((
            "file type",
            match file_type_name(ftype) {
                Some(name) => format!("{name} (general.file_type {ftype})"),
                None => format!("general.file_type {ftype}"),
            },
        ));
    }
    if let Some(v) = get("general.quantization_version").and_then(GgufValue::as_u64) {
        lines.push(("quant version", v.to_string()));
    }
    if let Some(model) = text("tokenizer.ggml.model") {
        let pre = text("tokenizer.ggml.pre").map_or(String::new(), |p| format!(", pre {p}"));
        let pieces = get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map_or(0, |a| a.len());
        let kind = match model.as_str() {
            "llama" => "SentencePiece",
            "gpt2" => "byte-level BPE",
            _ => "unknown",
        };
        lines.push((
            "tokenizer",
            format!("{kind} ({model}{pre}), {pieces} pieces"),
        ));
    }
    if let Some(template) = file.chat_template() {
        lines.push(("chat template", format!("{} bytes", template.len())));
    }
    lines
}

/// llama.cpp's names of its file types (`llama_ftype`).
fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}
