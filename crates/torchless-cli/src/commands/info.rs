//! `torchless info MODEL`: configuration, tensors, dtypes and sizes (`--json` for scripts,
//! `--check` to scan the weights for NaN and infinities).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use torchless_model::format::{Architecture, ModelFile};

#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// Model file.
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
            "metadata": file.metadata(),
            "n_tensors": file.n_tensors(),
            "parameters": params,
            "dtypes": dtypes,
        });
        if args.tensors {
            value["tensors"] = file
                .tensors()
                .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.as_str(), "shape": t.shape, "bytes": t.bytes_read()}))
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
        println!(
            "file            {} ({} bytes)",
            args.model.display(),
            file.file_len()
        );
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
        println!("quant           {}", c.quant.as_str());
        println!("tensors         {}", file.n_tensors());
        for (dtype, (n, elements, bytes)) in &by_dtype {
            println!("  {dtype:<5} {n:>5} tensors {elements:>14} values {bytes:>14} bytes");
        }
        if args.tensors {
            for t in file.tensors() {
                println!("  {:<52} {:<5} {:?}", t.name, t.dtype.as_str(), t.shape);
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
