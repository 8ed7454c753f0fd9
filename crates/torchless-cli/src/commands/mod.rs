//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod generate;
pub mod info;
pub mod perplexity;
pub mod recache;
pub mod serve;
pub mod synth;
pub mod tokenize;

use std::path::Path;

use anyhow::Context;
use torchless_model::{ChatRenderer, LoadOptions, Model, Residency};

use crate::options::ModelArgs;
use crate::output;

/// Reads `--chat-template-file` and checks that it parses, before any model is loaded, so a bad
/// template fails at once with one line.
pub fn read_chat_template(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the chat template {}", path.display()))?;
    ChatRenderer::new(&source)
        .map_err(|e| anyhow::anyhow!("chat template {}: {e}", path.display()))?;
    Ok(Some(source))
}

/// Loads the model named in `args` with a progress bar on stderr.
pub fn load_model<R: Residency>(args: &ModelArgs) -> anyhow::Result<Model<R>> {
    let (bar, mut progress) = output::load_progress();
    let model = Model::<R>::load_with(
        &args.model,
        LoadOptions {
            progress: Some(&mut progress),
            tokenizer: None,
            read_into_memory: args.no_mmap,
        },
    );
    bar.finish_and_clear();
    let model = model.with_context(|| {
        format!(
            "cannot load model {} (a GGUF file or a torchless model file)",
            args.model.display()
        )
    })?;
    if args.debug {
        print_debug_header(&model, args);
    }
    note_small_pages(&model, args);
    Ok(model)
}

/// Files below this size are not worth a note.
const SMALL_PAGES_NOTE_BYTES: usize = 256 << 20;

/// A one-line note when a mapped model sits in the page cache in 4 KiB pages (a file just
/// written or downloaded): decoding from it is markedly slower until it is recached.
fn note_small_pages<R: Residency>(model: &Model<R>, args: &ModelArgs) {
    let file = model.file();
    if file.file_len() < SMALL_PAGES_NOTE_BYTES {
        return;
    }
    if let Some(share) = file.huge_page_share() {
        if share.mostly_small_pages() {
            eprintln!(
                "note: {} is cached in 4 KiB pages ({} of {} MiB sampled in 2 MiB pages), which \
                 slows decoding (a 7B model measured ~20%); `torchless recache {}` fixes it \
                 once, or use --no-mmap",
                args.model.display(),
                share.huge_bytes >> 20,
                share.resident_bytes >> 20,
                args.model.display()
            );
        }
    }
}

fn print_debug_header<R: Residency>(model: &Model<R>, args: &ModelArgs) {
    let c = model.config();
    eprintln!(
        "model: {} ({}, {} weights)",
        args.model.display(),
        model.residency(),
        weight_types(model.file())
    );
    eprintln!(
        "config: hidden {} | intermediate {} | layers {} | heads {} | kv heads {} | head_dim {} | vocab {} | window {:?} | rope_theta {} | eps {} | max positions {}",
        c.hidden_size, c.intermediate_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
        c.vocab_size, c.sliding_window, c.rope_theta, c.norm_eps, c.max_position_embeddings
    );
    eprintln!(
        "kernels: {}{}{} | blas: {} | threads {} (batch {}) | load {:.3} s",
        torchless_model::kernels::cpu_path(),
        if args.int8_activations {
            " (int8 activations in batches)"
        } else {
            ""
        },
        if args.exact {
            " (GGUF blocks exact)"
        } else {
            ""
        },
        torchless_model::kernels::blas_backend().unwrap_or("none"),
        args.threads.map_or("auto".to_string(), |t| t.to_string()),
        args.batch_threads
            .map_or("same".to_string(), |t| t.to_string()),
        model.load_time().as_secs_f64()
    );
}

/// What a file's weights are stored as, for messages: `int8` (a torchless file's `quant`), or a
/// GGUF file's ggml types with their tensor counts, most frequent first (`Q4_K ×113, Q6_K ×18,
/// F32 ×61`).
pub fn weight_types(file: &torchless_model::format::ModelFile) -> String {
    use torchless_model::format::FileFormat;
    if file.format() == FileFormat::Torchless {
        return file.config().quant.as_str().to_string();
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in file.tensors() {
        let name = t.dtype.as_str();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(n, c)| format!("{} ×{c}", n.to_uppercase()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The KV cache's element types and size per token (all layers, keys and values), and for a
/// context of `ctx` positions the most one slot holds.
pub fn kv_cache_json(
    config: &torchless_model::Config,
    types: torchless_model::KvTypes,
    ctx: Option<usize>,
) -> serde_json::Value {
    let per_token = kv_bytes_per_token(config, types);
    let mut v = serde_json::json!({
        "type_k": types.keys.name(),
        "type_v": types.values.name(),
        "bytes_per_token": per_token as u64,
    });
    if let Some(ctx) = ctx {
        v["bytes_per_slot"] = serde_json::json!((per_token * ctx as u128) as u64);
    }
    v
}

/// Bytes one position takes in the KV cache: keys and values of every layer.
pub fn kv_bytes_per_token(
    config: &torchless_model::Config,
    types: torchless_model::KvTypes,
) -> u128 {
    types.bytes_per_layer_position(config.n_kv_heads * config.head_dim) * config.n_layers as u128
}
