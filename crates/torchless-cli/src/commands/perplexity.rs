//! `torchless perplexity MODEL [FILE | --text T | --prompt-ids ...]`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use torchless_model::{KvType, Lazy, Residency, Resident, Scoring};

use super::load_model;
use crate::options::{parse_kv_type, ModelArgs};
use crate::output;

#[derive(Args, Debug, Clone)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to evaluate ("-" for stdin).
    #[arg(conflicts_with_all = ["text", "prompt_ids"])]
    pub file: Option<PathBuf>,
    /// Text to evaluate.
    #[arg(long, conflicts_with = "prompt_ids")]
    pub text: Option<String>,
    /// Token ids to evaluate, e.g. 1,415,5565 (a leading BOS is kept as the first chunk's BOS).
    #[arg(long = "prompt-ids", value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Tokens per chunk, BOS included; each chunk is evaluated from an empty cache
    /// [default: 512, or the model's context when that is shorter].
    #[arg(long, value_name = "N")]
    pub ctx: Option<usize>,
    /// Instead of the perplexity alone: evaluate the text both exactly and with
    /// --int8-activations, and report the KL divergence of the second's next-token distributions
    /// from the first's (mean, max), their top-1 agreement and both perplexities.
    #[arg(long = "kl-int8-activations", conflicts_with_all = ["kl_reference", "kl_exact"])]
    pub kl_int8_activations: bool,
    /// Instead of the perplexity alone (GGUF files): evaluate the text with the weights
    /// multiplied exactly and with the activations quantized per block (the default, as
    /// llama.cpp), and report the KL divergence of the second from the first.
    #[arg(long = "kl-exact", conflicts_with = "kl_reference")]
    pub kl_exact: bool,
    /// Score as llama.cpp's `llama-perplexity` does, for figures comparable to its own on the
    /// same file and text: windows of exactly --ctx tokens (the text with BOS first, cut into
    /// len / ctx windows, the rest dropped), each window's first token replaced by BOS when the
    /// model uses one, and only the second half of each window scored (perplexity and KL).
    #[arg(long = "llama-compat")]
    pub llama_compat: bool,
    /// Instead of the perplexity alone: evaluate the text with this model and with REF (the
    /// same model in another precision, e.g. its f32 file for an int8 one; same vocabulary)
    /// and report the KL divergence of this model's next-token distributions from REF's, their
    /// top-1 agreement and both perplexities.
    #[arg(long = "kl-reference", value_name = "REF")]
    pub kl_reference: Option<PathBuf>,
    /// With --kl-reference: how the reference run's KV cache stores keys (f32, f16, q8_0).
    /// REF may be the model's own file: `--kl-reference MODEL -ctk q8_0` measures what a q8_0
    /// key cache costs against the exact f32 one.
    #[arg(
        long = "kl-reference-cache-type-k",
        value_name = "TYPE",
        default_value = "f32",
        value_parser = parse_kv_type
    )]
    pub kl_reference_cache_type_k: KvType,
    /// With --kl-reference: how the reference run's KV cache stores values.
    #[arg(
        long = "kl-reference-cache-type-v",
        value_name = "TYPE",
        default_value = "f32",
        value_parser = parse_kv_type
    )]
    pub kl_reference_cache_type_v: KvType,
}

/// Chunk length when `--ctx` is not given (llama.cpp's default).
const DEFAULT_CTX: usize = 512;

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    if args.model.lazy {
        run_with::<Lazy>(args)
    } else {
        run_with::<Resident>(args)
    }
}

fn run_with<R: Residency>(args: PerplexityArgs) -> anyhow::Result<()> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) if path.as_os_str() == "-" => {
            Some(std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?)
        }
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, Some(text)) => Some(text.clone()),
        (None, None) => None,
    };
    if text.is_none() && args.prompt_ids.is_none() {
        bail!("nothing to evaluate: give a FILE, --text or --prompt-ids");
    }
    let model = load_model::<R>(&args.model)?;
    let ids = match (text, &args.prompt_ids) {
        (Some(text), _) => model
            .tokenizer()
            .encode(&text, model.tokenizer().prompt_options()),
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("nothing to evaluate"),
    };
    let max = model.config().max_position_embeddings;
    let ctx = match args.ctx {
        Some(ctx) if ctx > max => {
            bail!("--ctx {ctx} is longer than the model's context of {max} positions")
        }
        Some(ctx) => ctx,
        None => DEFAULT_CTX.min(max),
    };
    let mut options = args.model.session_options();
    options.context_len = Some(ctx.clamp(1, max));
    let scoring = if args.llama_compat {
        Scoring::LlamaPerplexity
    } else {
        Scoring::EveryPosition
    };
    if args.kl_int8_activations || args.kl_exact {
        let pair = if args.kl_exact {
            Pair::ExactBlocks
        } else {
            Pair::Int8Activations
        };
        return run_divergence(&model, options, &ids, ctx, scoring, pair, args.model.json);
    }
    if let Some(reference) = &args.kl_reference {
        let reference_model = torchless_model::Mistral::load(reference)
            .with_context(|| format!("cannot load the reference model {}", reference.display()))?;
        if reference_model.tokenizer().vocab_size() != model.tokenizer().vocab_size() {
            bail!(
                "{} has a vocabulary of {} tokens, this model {}: the distributions cannot be compared",
                reference.display(),
                reference_model.tokenizer().vocab_size(),
                model.tokenizer().vocab_size()
            );
        }
        let reference_options = torchless_model::SessionOptions {
            cache_type_k: args.kl_reference_cache_type_k,
            cache_type_v: args.kl_reference_cache_type_v,
            ..options.clone()
        };
        let mut reference_session = reference_model
            .session_with(reference_options)
            .context("cannot create a session")?;
        let mut session = model
            .session_with(options)
            .context("cannot create a session")?;
        let start = Instant::now();
        let d = reference_session.divergence_with(&mut session, &ids, ctx, scoring, |_, _| {})?;
        print_divergence(
            &d,
            "this model vs the reference",
            "model",
            "reference",
            start,
            args.model.json,
        );
        return Ok(());
    }
    let mut session = model
        .session_with(options)
        .context("cannot create a session")?;
    let bar = output::progress_bar(0, "perplexity", false);
    let start = Instant::now();
    let result = session.perplexity_with(&ids, ctx, scoring, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let result = result?;
    let seconds = start.elapsed().as_secs_f64();
    if args.model.json {
        let value = serde_json::json!({
            "tokens": result.tokens,
            "chunks": result.chunks,
            "mean_nll": result.mean_nll,
            "ppl": result.perplexity,
            "scoring": if args.llama_compat { "llama-perplexity" } else { "every position" },
            "seconds": seconds,
        });
        println!("{value}");
    } else {
        let scoring = if args.llama_compat {
            " (second halves, as llama-perplexity)"
        } else {
            ""
        };
        println!(
            "tokens {} | chunks {} | mean NLL {:.6} | perplexity {:.4}{scoring}",
            result.tokens, result.chunks, result.mean_nll, result.perplexity
        );
    }
    let evaluated = if args.llama_compat {
        result.chunks * ctx
    } else {
        result.tokens + result.chunks
    };
    eprintln!(
        "load {:.2} s | evaluated {} tokens in {:.2} s ({:.1} tok/s)",
        model.load_time().as_secs_f64(),
        evaluated,
        seconds,
        evaluated as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Which two paths of one model `run_divergence` compares.
#[derive(Clone, Copy)]
enum Pair {
    /// Exact int8 products against `--int8-activations`.
    Int8Activations,
    /// GGUF blocks multiplied exactly (`--exact`) against quantized activations (the default).
    ExactBlocks,
}

/// `--kl-int8-activations` / `--kl-exact`: the exact path against the faster one on the same
/// text.
fn run_divergence<R: Residency>(
    model: &torchless_model::Model<R>,
    options: torchless_model::SessionOptions,
    ids: &[u32],
    ctx: usize,
    scoring: Scoring,
    pair: Pair,
    json: bool,
) -> anyhow::Result<()> {
    let (exact_options, fast_options) = match pair {
        Pair::Int8Activations => (
            torchless_model::SessionOptions {
                int8_activations: false,
                ..options.clone()
            },
            torchless_model::SessionOptions {
                int8_activations: true,
                ..options
            },
        ),
        Pair::ExactBlocks => (
            torchless_model::SessionOptions {
                exact_activations: true,
                ..options.clone()
            },
            torchless_model::SessionOptions {
                exact_activations: false,
                ..options
            },
        ),
    };
    let mut exact = model
        .session_with(exact_options)
        .context("cannot create a session")?;
    let mut fast = model
        .session_with(fast_options)
        .context("cannot create a session")?;
    let bar = output::progress_bar(0, "kl divergence", false);
    let start = Instant::now();
    let result = exact.divergence_with(&mut fast, ids, ctx, scoring, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let d = result?;
    let (title, other) = match pair {
        Pair::Int8Activations => ("int8 activations vs exact", "int8_activations"),
        Pair::ExactBlocks => ("quantized activations vs exact", "quantized_activations"),
    };
    print_divergence(&d, title, other, "exact", start, json);
    Ok(())
}

/// Prints a divergence of `other` (`d.other_mean_nll`) from the reference (`d.mean_nll`).
fn print_divergence(
    d: &torchless_model::Divergence,
    title: &str,
    other: &str,
    reference: &str,
    start: Instant,
    json: bool,
) {
    if json {
        let mut value = serde_json::json!({
            "positions": d.positions,
            "mean_kl": d.mean_kl,
            "max_kl": d.max_kl,
            "top1_agreement": d.top1_agreement,
            "seconds": start.elapsed().as_secs_f64(),
        });
        value[format!("mean_nll_{reference}")] = d.mean_nll.into();
        value[format!("mean_nll_{other}")] = d.other_mean_nll.into();
        println!("{value}");
    } else {
        println!(
            "{title} over {} positions | KL mean {:.6} max {:.6} nats | top-1 agreement {:.2}% | mean NLL {:.6} vs {:.6} (perplexity {:.4} vs {:.4})",
            d.positions,
            d.mean_kl,
            d.max_kl,
            100.0 * d.top1_agreement,
            d.other_mean_nll,
            d.mean_nll,
            d.other_mean_nll.exp(),
            d.mean_nll.exp()
        );
    }
}
