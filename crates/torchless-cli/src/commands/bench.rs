//! `torchless bench MODEL -p 128 -n 32 -r 3 -t 2`: prompt-processing and generation speed as
//! medians over repetitions, with the bytes each generated token reads and the bandwidth that
//! implies, next to a read-bandwidth probe run in the same process.

use anyhow::bail;
use clap::Args;
use torchless_model::bench::{bench, BenchOptions};
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

fn run_with<R: Residency>(args: BenchArgs) -> anyhow::Result<()> {
    // Flag-level checks first, in the flags' own words (the library checks the same).
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let model = load_model::<R>(&args.model)?;
    let config = model.config();
    if args.n_prompt.max(1) + args.n_gen > config.max_position_embeddings {
        bail!(
            "-p {} plus -n {} exceeds the model's context of {} positions",
            args.n_prompt,
            args.n_gen,
            config.max_position_embeddings
        );
    }
    let options = BenchOptions {
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        repetitions: args.repetitions,
        parallel: args.parallel,
        session: args.model.session_options(),
    };
    let report = bench(&model, &options, |rep, pp, tg| {
        if args.model.debug {
            eprintln!("repetition {}: pp {pp:.2} tok/s, tg {tg:.3} tok/s", rep + 1);
        }
    })?;
    let pp_median = report.pp_median();
    let tg_median = report.tg_median();
    let bytes_per_token = report.bytes_per_token;
    let gb_per_s = report.gb_per_s();
    let threads = args
        .model
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The best of the probe's read loops, so the share below cannot pass 100% for want of a
    // better loop.
    let best_loop = (args.probe_mib > 0)
        .then(|| {
            torchless_model::kernels::measure_read_bandwidth_best(args.probe_mib << 20, threads)
        })
        .flatten();
    let probe = best_loop.map(|b| b.gb_per_s);
    let read_loop = best_loop.map(|b| format!("{} x{}", b.read_loop.name(), b.streams));
    let fraction = probe.map(|bw| gb_per_s / bw);
    // Prefill is bound by multiply-adds: its GFLOP/s next to the FMA peak of as many threads.
    let pp_gflops = report.pp_gflops();
    let prefill_threads = args.model.batch_threads.unwrap_or(threads);
    let fma_peak = (args.n_prompt > 0 && args.probe_mib > 0)
        .then(|| torchless_model::kernels::measure_fma_peak(prefill_threads));

    if args.model.json {
        let value = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "residency": model.residency(),
            "quant": super::weight_types(model.file()),
            "int8_activations": args.model.int8_activations,
            "exact": args.model.exact,
            "batch_size": report.batch_size,
            "threads": threads,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "parallel": args.parallel,
            "repetitions": args.repetitions,
            "pp_tokens_per_s": pp_median,
            "pp_gflops": (args.n_prompt > 0).then_some(pp_gflops),
            "fma_peak_gflops": fma_peak,
            "tg_tokens_per_s": tg_median,
            "pp_runs": report.pp_runs,
            "tg_runs": report.tg_runs,
            "bytes_per_token": bytes_per_token,
            "gb_per_s": gb_per_s,
            "read_bandwidth_gb_per_s": probe,
            "read_loop": read_loop,
            "bandwidth_fraction": fraction,
            "kernels": torchless_model::kernels::cpu_path(),
            "load_s": model.load_time().as_secs_f64(),
        });
        println!("{value}");
    } else {
        println!(
            "| model | mode | threads | test | tokens/s | bytes/token | GB/s (tg), GFLOP/s (pp) | of read bandwidth (tg), of FMA peak (pp) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let name = args
            .model
            .model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if args.n_prompt > 0 {
            println!(
                "| {name} | {}{}{} | {prefill_threads} | pp{} | {pp_median:.2} | | {pp_gflops:.1} GFLOP/s | {} |",
                model.residency(),
                if args.model.int8_activations {
                    ", int8 activations"
                } else {
                    ""
                },
                if args.model.exact { ", exact" } else { "" },
                args.n_prompt,
                match fma_peak {
                    Some(peak) if peak > 0.0 => format!(
                        "{:.0}% of the f32 FMA peak {peak:.0} GFLOP/s",
                        100.0 * pp_gflops / peak
                    ),
                    _ => "-".to_string(),
                }
            );
        }
        if args.n_gen > 0 {
            println!(
                "| {name} | {}{}{} | {threads} | tg{} | {tg_median:.3} | {bytes_per_token} | {gb_per_s:.2} | {} |",
                model.residency(),
                if args.model.exact { ", exact" } else { "" },
                if args.parallel > 1 {
                    format!(", {} sequences", args.parallel)
                } else {
                    String::new()
                },
                args.n_gen,
                match (probe, fraction, &read_loop) {
                    (Some(bw), Some(f), Some(l)) => {
                        format!("{:.0}% of {bw:.1} GB/s ({l})", f * 100.0)
                    }
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
