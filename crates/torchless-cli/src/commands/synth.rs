//! `torchless synth --shape mistral-7b|mistral-1b|tiny --quant f32|int8|int4 --seed S OUT.bin`:
//! the arguments, the progress bar and the summary line around
//! [`torchless_model::convert::synth`].

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use torchless_model::convert::{synth, Shape, SynthOptions};

use super::convert::{human_size, progress_to_bar, storage, Quant};
use crate::output;

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output model file.
    pub output: PathBuf,
    /// Model shape.
    #[arg(long, value_enum)]
    pub shape: ShapeArg,
    /// Storage of the `*_proj` matrices: f32, int8 (groups of 64) or int4 (groups of 32, f16
    /// scales, rounded to nearest).
    #[arg(long, value_enum, default_value_t = Quant::F32)]
    pub quant: Quant,
    /// Storage of `lm_head` and the token embedding: f32, int8 or int4.
    #[arg(long = "quant-output", value_enum, default_value_t = Quant::F32)]
    pub quant_output: Quant,
    /// Random seed: the same seed gives the same file, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use this tokenizer.json's vocabulary (its size becomes vocab_size) instead of a synthetic one.
    #[arg(long, value_name = "TOKENIZER_JSON")]
    pub tokenizer: Option<PathBuf>,
    /// Threads generating weights [default: one per core].
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Override max_position_embeddings (e.g. a tiny model that can generate for long, for
    /// server tests).
    #[arg(long = "max-positions", value_name = "N")]
    pub max_positions: Option<usize>,
}

/// `--shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShapeArg {
    /// Mistral-7B-v0.1: hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads.
    #[value(name = "mistral-7b")]
    Mistral7b,
    /// hidden 2048, intermediate 5632, 16 layers, 16 heads, 4 KV heads.
    #[value(name = "mistral-1b")]
    Mistral1b,
    /// hidden 64, intermediate 176, 2 layers, 4 heads, 2 KV heads, window 16, vocab 1024.
    Tiny,
}

impl ShapeArg {
    fn shape(self) -> Shape {
        match self {
            ShapeArg::Mistral7b => Shape::Mistral7b,
            ShapeArg::Mistral1b => Shape::Mistral1b,
            ShapeArg::Tiny => Shape::Tiny,
        }
    }
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let shape = args.shape.shape();
    let storage = storage(args.quant, args.quant_output);
    let bar = output::progress_bar(0, "generating", true);
    let mut progress = progress_to_bar(&bar, false);
    let result = synth(
        &args.output,
        SynthOptions {
            storage,
            seed: args.seed,
            tokenizer: args.tokenizer.clone(),
            // `-t 0` means one thread (the library reads 0 as one per core); the bytes never
            // depend on it.
            threads: args.threads.map_or(0, |t| t.max(1)),
            max_positions: args.max_positions,
            progress: Some(&mut progress),
            ..SynthOptions::new(shape)
        },
    );
    bar.finish_and_clear();
    let report = result?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} ({}, {}, seed {}, {} tensors, {}) in {:.1} s ({:.0} MB/s)",
        args.output.display(),
        shape.name(),
        storage.describe(),
        args.seed,
        report.tensors,
        human_size(report.bytes),
        secs,
        report.bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}
