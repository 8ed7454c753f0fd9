//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod generate;
pub mod info;
pub mod perplexity;
pub mod serve;
pub mod synth;
pub mod tokenize;

use anyhow::Context;
use torchless_model::{LoadOptions, Model, Residency};

use crate::options::ModelArgs;
use crate::output;

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
            "cannot load model {} (a torchless model file; make one with `torchless convert`)",
            args.model.display()
        )
    })?;
    if args.debug {
        print_debug_header(&model, args);
    }
    Ok(model)
}

fn print_debug_header<R: Residency>(model: &Model<R>, args: &ModelArgs) {
    let c = model.config();
    eprintln!(
        "model: {} ({}, {} weights)",
        args.model.display(),
        model.residency(),
        c.quant.as_str()
    );
    eprintln!(
        "config: hidden {} | intermediate {} | layers {} | heads {} | kv heads {} | head_dim {} | vocab {} | window {:?} | rope_theta {} | eps {} | max positions {}",
        c.hidden_size, c.intermediate_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
        c.vocab_size, c.sliding_window, c.rope_theta, c.norm_eps, c.max_position_embeddings
    );
    eprintln!(
        "kernels: {}{} | blas: {} | threads {} (batch {}) | load {:.3} s",
        torchless_model::kernels::cpu_path(),
        if args.int8_activations {
            " (int8 activations in batches)"
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
