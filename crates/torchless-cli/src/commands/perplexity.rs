//! `torchless perplexity MODEL [FILE | --text T | --prompt-ids ...]`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use torchless_model::{EncodeOptions, Lazy, Residency, Resident};

use super::load_model;
use crate::options::ModelArgs;
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
        (Some(text), _) => model.tokenizer().encode(&text, EncodeOptions::default()),
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
    let mut session = model
        .session_with(options)
        .context("cannot create a session")?;
    let bar = output::progress_bar(0, "perplexity", false);
    let start = Instant::now();
    let result = session.perplexity(&ids, ctx, |done, total| {
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
            "seconds": seconds,
        });
        println!("{value}");
    } else {
        println!(
            "tokens {} | chunks {} | mean NLL {:.6} | perplexity {:.4}",
            result.tokens, result.chunks, result.mean_nll, result.perplexity
        );
    }
    eprintln!(
        "load {:.2} s | evaluated {} tokens in {:.2} s ({:.1} tok/s)",
        model.load_time().as_secs_f64(),
        result.tokens + result.chunks,
        seconds,
        (result.tokens + result.chunks) as f64 / seconds.max(1e-9)
    );
    Ok(())
}
