//! `torchless`: run Mistral models on the CPU from the terminal.
//!
//! `torchless MODEL "PROMPT"` streams a completion; subcommands cover chat, an OpenAI-compatible
//! server, perplexity, benchmarks, inspection, tokenization and model conversion. Text goes to stdout; statistics, progress and
//! errors to stderr.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod options;
mod output;

use options::GenerateArgs;

#[derive(Parser, Debug)]
#[command(
    name = "torchless",
    version,
    about = "Mistral inference on the CPU",
    long_about = "Mistral inference on the CPU.\n\n\
        Without a subcommand, `torchless MODEL \"PROMPT\"` streams a completion (same as `torchless generate`). \
        MODEL is a llama.cpp GGUF file, used as it is, or a torchless model file.",
    after_help = "Examples:\n  \
        torchless mistral-7b-instruct-v0.2.Q4_K_M.gguf \"Paris is the capital of\" -n 32\n  \
        torchless mistral-7b-int8.bin \"Paris is the capital of\" -n 32\n  \
        torchless chat mistral-7b-instruct-int8.bin\n  \
        torchless perplexity mistral-7b-int8.bin wiki.txt --ctx 512\n  \
        torchless bench mistral-7b-int8.bin -p 128 -n 32 -r 3 -t 2\n  \
        torchless serve mistral-7b-instruct-int8.bin --port 8080 --parallel 4\n  \
        torchless convert ./Mistral-7B-v0.1 mistral-7b-int8.bin --quant int8"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Complete a prompt, streaming the text as it is generated (the default command).
    Generate(GenerateArgs),
    /// Multi-turn chat with the Mistral instruct template; reads one message per line.
    Chat(commands::chat::ChatArgs),
    /// Teacher-forced mean negative log-likelihood and perplexity of a text.
    Perplexity(commands::perplexity::PerplexityArgs),
    /// Serve the model over HTTP with an OpenAI-compatible API (continuous batching).
    Serve(commands::serve::ServeArgs),
    /// Measure prompt processing and generation speed (tokens/s, GB/s).
    Bench(commands::bench::BenchArgs),
    /// Show a model file's configuration and tensors (a GGUF file's types and metadata too).
    Info(commands::info::InfoArgs),
    /// Print the token ids of a text.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Convert a Hugging Face Mistral/Llama checkpoint or a GGUF file into a torchless model file.
    Convert(commands::convert::ConvertArgs),
    /// Write a model file with given shapes and random weights (for benchmarks).
    Synth(commands::synth::SynthArgs),
    /// Drop model files from the page cache so that the next load caches them in 2 MiB pages.
    Recache(commands::recache::RecacheArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "generate",
    "chat",
    "perplexity",
    "bench",
    "serve",
    "info",
    "tokenize",
    "convert",
    "synth",
    "recache",
    "help",
];

/// `torchless MODEL PROMPT` is `torchless generate MODEL PROMPT`; llama.cpp's `-tb N` is
/// `--batch-threads N`, `-ctk T` / `-ctv T` are `--cache-type-k T` / `--cache-type-v T`.
fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args
        .into_iter()
        .map(|a| {
            if a == "-tb" {
                "--batch-threads".into()
            } else if a == "-ctk" {
                "--cache-type-k".into()
            } else if a == "-ctv" {
                "--cache-type-v".into()
            } else {
                a
            }
        })
        .collect();
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        let top_level_flag = matches!(first, "-h" | "--help" | "-V" | "--version");
        if !SUBCOMMANDS.contains(&first) && !top_level_flag {
            args.insert(1, "generate".into());
        }
    }
    args
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors exit with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Recache(args) => commands::recache::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e);
            ExitCode::from(1)
        }
    }
}
