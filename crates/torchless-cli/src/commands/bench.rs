//! `torchless bench MODEL -p 128 -n 32 -r 3 -t 2`: prompt-processing and generation speed as
//! medians over repetitions, with the bytes each generated token reads and the bandwidth that
//! implies, next to a read-bandwidth probe run in the same process.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use torchless_model::sampling::argmax;
use torchless_model::{Lazy, Residency, Resident};

use super::load_model;
use crate::options::ModelArgs;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one prefill (0: skip).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_name = "N",
        default_value_t = 512
    )]
    pub n_prompt: usize,
    /// Tokens generated one at a time after the prompt (0: skip).
    #[arg(short = 'n', long = "n-gen", value_name = "N", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions; medians are reported.
    #[arg(
        short = 'r',
        long = "repetitions",
        value_name = "N",
        default_value_t = 3
    )]
    pub repetitions: usize,
    /// Size of the buffer the read-bandwidth probe sums, in MiB (0: skip the probe). The buffer
    /// counts in the process's peak RSS: use 0 when measuring memory.
    #[arg(long = "probe-mib", value_name = "MIB", default_value_t = 1024)]
    pub probe_mib: usize,
    /// Sequences generated together (continuous batching, as `torchless serve --parallel`):
    /// each step runs one token of every sequence in one pass over the weights; tg is then the
    /// aggregate tokens/s of all of them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub parallel: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.model.lazy {
        run_with::<Lazy>(args)
    } else {
        run_with::<Resident>(args)
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn run_with<R: Residency>(args: BenchArgs) -> anyhow::Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let model = load_model::<R>(&args.model)?;
    let config = model.config();
    let needed = args.n_prompt.max(1) + args.n_gen;
    if needed > config.max_position_embeddings {
        bail!(
            "-p {} plus -n {} exceeds the model's context of {} positions",
            args.n_prompt,
            args.n_gen,
            config.max_position_embeddings
        );
    }
    let mut options = args.model.session_options();
    options.context_len = Some(options.context_len.unwrap_or(needed).max(needed));
    let mut sessions = (0..args.parallel)
        .map(|_| model.session_with(options.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot create a session")?;

    // A fixed prompt of ordinary tokens (ids past the specials and byte pieces when there are
    // any), shifted per sequence so parallel sequences differ.
    let vocab = config.vocab_size as u32;
    let first = if vocab > 1000 { 259 } else { 3.min(vocab - 1) };
    let prompt = |seq: u32| -> Vec<u32> {
        (0..args.n_prompt as u32)
            .map(|i| first + (i * 7919 + seq * 104_729) % (vocab - first))
            .collect()
    };

    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..args.repetitions {
        let mut next = Vec::with_capacity(args.parallel);
        for (seq, session) in sessions.iter_mut().enumerate() {
            session.reset();
            next.push(if args.n_prompt > 0 {
                let ids = prompt(seq as u32);
                let start = Instant::now();
                let logits = session.prefill(&ids)?;
                let seconds = start.elapsed().as_secs_f64();
                // pp is the first sequence's prefill (they are all the same work).
                if seq == 0 {
                    pp.push(args.n_prompt as f64 / seconds);
                }
                argmax(logits)
            } else {
                1
            });
        }
        if args.n_gen > 0 {
            let start = Instant::now();
            for _ in 0..args.n_gen {
                if let [session] = sessions.as_mut_slice() {
                    next[0] = argmax(session.step(next[0])?);
                } else {
                    let mut batch: Vec<_> = sessions.iter_mut().collect();
                    torchless_model::Session::step_batch(&mut batch, &next)?;
                    for (token, session) in next.iter_mut().zip(&sessions) {
                        *token = argmax(session.logits());
                    }
                }
            }
            tg.push((args.n_gen * args.parallel) as f64 / start.elapsed().as_secs_f64());
        }
        if args.model.debug {
            eprintln!(
                "repetition {}: pp {:.2} tok/s, tg {:.3} tok/s",
                rep + 1,
                pp.last().copied().unwrap_or(0.0),
                tg.last().copied().unwrap_or(0.0)
            );
        }
    }
    let session = &sessions[0];
    let pp_median = median(&mut pp);
    let tg_median = median(&mut tg);
    // One step reads the weights once for all parallel sequences.
    let bytes_per_token = model.bytes_per_token() / args.parallel as u64;
    let gb_per_s = bytes_per_token as f64 * tg_median / 1e9;
    let threads = args
        .model
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let probe = (args.probe_mib > 0)
        .then(|| torchless_model::kernels::measure_read_bandwidth(args.probe_mib << 20, threads));
    let fraction = probe.map(|bw| gb_per_s / bw);

    if args.model.json {
        let value = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "residency": model.residency(),
            "quant": config.quant.as_str(),
            "int8_activations": args.model.int8_activations,
            "batch_size": session.batch_size(),
            "threads": threads,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "parallel": args.parallel,
            "repetitions": args.repetitions,
            "pp_tokens_per_s": pp_median,
            "tg_tokens_per_s": tg_median,
            "pp_runs": pp,
            "tg_runs": tg,
            "bytes_per_token": bytes_per_token,
            "gb_per_s": gb_per_s,
            "read_bandwidth_gb_per_s": probe,
            "bandwidth_fraction": fraction,
            "kernels": torchless_model::kernels::cpu_path(),
            "load_s": model.load_time().as_secs_f64(),
        });
        println!("{value}");
    } else {
        println!(
            "| model | mode | threads | test | tokens/s | bytes/token | GB/s | of read bandwidth |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let name = args
            .model
            .model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if args.n_prompt > 0 {
            println!(
                "| {name} | {}{} | {threads} | pp{} | {pp_median:.2} | | | |",
                model.residency(),
                if args.model.int8_activations {
                    ", int8 activations"
                } else {
                    ""
                },
                args.n_prompt
            );
        }
        if args.n_gen > 0 {
            println!(
                "| {name} | {}{} | {threads} | tg{} | {tg_median:.3} | {bytes_per_token} | {gb_per_s:.2} | {} |",
                model.residency(),
                if args.parallel > 1 {
                    format!(", {} sequences", args.parallel)
                } else {
                    String::new()
                },
                args.n_gen,
                match (probe, fraction) {
                    (Some(bw), Some(f)) => format!("{:.0}% of {bw:.1} GB/s", f * 100.0),
                    _ => "-".to_string(),
                }
            );
        }
    }
    eprintln!(
        "load {:.2} s | kernels {} | medians of {} runs",
        model.load_time().as_secs_f64(),
        torchless_model::kernels::cpu_path(),
        args.repetitions
    );
    Ok(())
}
