//! `torchless convert HF_DIR|MODEL.gguf OUT.bin [--quant f32|int8|int4]`: the arguments, the
//! progress bar and the summary line around [`torchless_model::convert`].

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use torchless_model::convert::{self, ConvertOptions, ConvertProgress, ConvertedFrom, Storage};
use torchless_model::format::int4::Int4Method;
use torchless_model::format::QuantKind;

use crate::output;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint directory (config.json, tokenizer.json, *.safetensors), or a
    /// llama.cpp GGUF file (architecture `llama`, byte-level vocabulary; F32, F16, BF16, Q8_0,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K tensors). A GGUF needs no conversion to run
    /// (`torchless MODEL.gguf "..."` uses its weights as they are); converting keeps a tensor's
    /// values bit for bit where a torchless dtype holds its type (F32 as f32, Q4_0 as int4: the
    /// same bytes) and otherwise dequantizes it exactly, then stores it as --quant says (f32,
    /// or quantized again to int8/int4).
    pub input: PathBuf,
    /// Output model file.
    pub output: PathBuf,
    /// Storage of the `*_proj` matrices: f32, int8 (groups of 64) or int4 (groups of 32 with f16
    /// scales; a matrix whose rows are not whole groups falls back to int8).
    #[arg(long, value_enum, default_value_t = Quant::F32)]
    pub quant: Quant,
    /// Storage of the output matrix (`lm_head`) and the token embedding, which decode reads as
    /// much of as a layer or two: f32 (exact), int8 or int4.
    #[arg(long = "quant-output", value_enum, default_value_t = Quant::F32)]
    pub quant_output: Quant,
    /// How int4 scales are chosen.
    #[arg(long = "int4-method", value_enum, default_value_t = Int4Choice::Search)]
    pub int4_method: Int4Choice,
}

/// `--int4-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Int4Choice {
    /// Error-minimizing scale search per group.
    Search,
    /// Round to nearest with `d = extreme / -8` (llama.cpp Q4_0's rule).
    Nearest,
}

impl Int4Choice {
    pub fn method(self) -> Int4Method {
        match self {
            Int4Choice::Search => Int4Method::Search,
            Int4Choice::Nearest => Int4Method::RoundToNearest,
        }
    }
}

/// Storage of one class of tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quant {
    /// float32.
    F32,
    /// int8 with one f32 inverse scale per 64 values.
    Int8,
    /// int4 with one f16 scale per 32 values of a row.
    Int4,
}

impl Quant {
    pub fn kind(self) -> QuantKind {
        match self {
            Quant::F32 => QuantKind::F32,
            Quant::Int8 => QuantKind::Int8,
            Quant::Int4 => QuantKind::Int4,
        }
    }
}

/// `--quant` and `--quant-output`.
pub fn storage(weights: Quant, output: Quant) -> Storage {
    Storage::new(weights.kind(), output.kind())
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = output::progress_bar(0, "converting", true);
    let mut progress = progress_to_bar(&bar, true);
    let result = convert::convert(
        &args.input,
        &args.output,
        ConvertOptions {
            storage: storage(args.quant, args.quant_output),
            int4_method: args.int4_method.method(),
            progress: Some(&mut progress),
        },
    );
    bar.finish_and_clear();
    let report = result?;
    let input = args.input.display();
    let from = match &report.from {
        ConvertedFrom::Checkpoint {
            tensors,
            dtypes,
            bytes,
            skipped,
        } => {
            if let Some(first) = skipped.first() {
                eprintln!(
                    "note: left out {} tensor(s) the engine does not use ({first})",
                    skipped.len()
                );
            }
            let dtypes: Vec<String> = dtypes.iter().map(|d| d.to_string()).collect();
            format!(
                "{input} ({tensors} {} tensors, {})",
                dtypes.join("/"),
                human_size(*bytes)
            )
        }
        ConvertedFrom::Gguf {
            version,
            tensors,
            types,
            file_bytes,
            copied,
            dequantized,
        } => {
            let dequantized = if dequantized.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} dequantized from {}",
                    tensors - copied,
                    dequantized.join("/")
                )
            };
            format!(
                "{input} (GGUF v{version}, {tensors} tensors: {}, {}; {copied} copied as they are{dequantized})",
                types.join("/"),
                human_size(*file_bytes)
            )
        }
        other => format!("{input} ({other:?})"),
    };
    eprintln!(
        "converted {from} -> {} ({}, {}) in {:.1} s",
        args.output.display(),
        report.storage.describe(),
        human_size(report.output_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A progress callback that drives `bar`: bytes processed and, with `count_tensors`,
/// `converting i/n` for the tensor being written.
pub fn progress_to_bar(bar: &ProgressBar, count_tensors: bool) -> impl FnMut(ConvertProgress) + '_ {
    let mut tensors = 0;
    move |p| match p {
        ConvertProgress::Started { tensors: n, bytes } => {
            tensors = n;
            bar.set_length(bytes);
            if count_tensors {
                bar.set_message(format!("converting 0/{n}"));
            }
        }
        ConvertProgress::Tensor { index } if count_tensors => {
            bar.set_message(format!("converting {}/{tensors}", index + 1));
        }
        ConvertProgress::Bytes { done } => bar.set_position(done),
        ConvertProgress::Finishing => bar.finish_and_clear(),
        _ => {}
    }
}

/// `1.23 GB`, `4.5 MB`, `12 KB`.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}
