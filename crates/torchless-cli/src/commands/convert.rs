//! `torchless convert HF_DIR OUT.bin [--quant f32|int8]`: a Hugging Face Mistral or Llama
//! checkpoint (`config.json`, `tokenizer.json`, safetensors weights in bf16, f16 or f32, one file
//! or sharded) into a torchless model file, byte-compatible with the original Python exporter.
//! `torchless convert MODEL.gguf OUT.bin` reads a llama.cpp GGUF file instead ([`gguf`]).
//!
//! Streams tensor by tensor: a reader thread turns checkpoint bytes into f32 chunks, the main thread
//! hands them to the format crate's [`ModelWriter`] (which quantizes int8 tensors on the fly), so
//! memory stays at a few chunks whatever the model size.

pub mod checkpoint;
pub mod gguf;
pub mod hf_config;
pub mod hf_tokenizer;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use torchless_model::format::{
    int4, int4::Int4Method, Architecture, DType, ModelFile, ModelWriter, QuantKind, TensorSpec,
};

use crate::output;
use checkpoint::{open_checkpoint, Checkpoint};

/// Values per chunk handed from the reader thread to the writer (4 MB of f32).
const CHUNK: usize = 1 << 20;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint directory (config.json, tokenizer.json, *.safetensors), or a
    /// llama.cpp GGUF file (architecture `llama`; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
    /// Q6_K tensors).
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

    fn dtype(self) -> DType {
        match self {
            Quant::F32 => DType::F32,
            Quant::Int8 => DType::Int8,
            Quant::Int4 => DType::Int4,
        }
    }
}

/// What a written file stores each tensor as: `weights` for the `*_proj` matrices (the exporter's
/// rule), `output` for `lm_head` and the token embedding, f32 for everything else (norms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    pub weights: Quant,
    pub output: Quant,
}

impl Storage {
    pub fn new(weights: Quant, output: Quant) -> Self {
        Self { weights, output }
    }

    /// The `quant` metadata label: the storage of the projection matrices.
    pub fn kind(self) -> QuantKind {
        self.weights.kind()
    }

    /// The storage of tensor `name` of `shape`. int4 needs rows of whole groups; a matrix
    /// without them is stored int8 instead (never the case for Mistral or Llama shapes).
    pub fn dtype_of(self, name: &str, shape: &[usize]) -> DType {
        let quant = if name.contains("_proj") {
            self.weights
        } else if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            self.output
        } else {
            Quant::F32
        };
        let whole_groups = shape
            .last()
            .is_some_and(|&cols| cols % int4::GROUP_SIZE == 0);
        if quant == Quant::Int4 && !whole_groups {
            DType::Int8
        } else {
            quant.dtype()
        }
    }

    /// `int4`, or `int4 + int8 output` when the output matrix differs.
    pub fn describe(self) -> String {
        if self.output == Quant::F32 {
            self.kind().as_str().to_string()
        } else {
            format!(
                "{} + {} output",
                self.kind().as_str(),
                self.output.kind().as_str()
            )
        }
    }
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = &args.input;
    if dir.is_file() && gguf::is_gguf(dir) {
        return gguf::run(&args);
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a directory or a GGUF file (expected a Hugging Face checkpoint directory or MODEL.gguf)",
            dir.display()
        );
    }
    let hf = hf_config::read_config(dir)?;
    let mut tokenizer = hf_tokenizer::read_tokenizer(&dir.join("tokenizer.json"))?;
    let tokenizer_config = hf_tokenizer::read_tokenizer_config(dir)?;
    tokenizer_config.apply(
        &mut tokenizer,
        &dir.join("tokenizer_config.json").display().to_string(),
    )?;
    if tokenizer.vocab.len() > hf.config.vocab_size {
        bail!(
            "{}: the vocabulary has {} pieces but config.json has vocab_size {}",
            dir.join("tokenizer.json").display(),
            tokenizer.vocab.len(),
            hf.config.vocab_size
        );
    }
    let checkpoint = open_checkpoint(dir, &hf.config)?;
    refuse_overwriting_inputs(&args.output, &checkpoint)?;

    let storage = Storage::new(args.quant, args.quant_output);
    let mut metadata = hf.metadata(storage.kind());
    // Mistral files stay byte-identical to the original exporter's (its [INST] template is
    // built in); Llama-family files carry the checkpoint's own template.
    if hf.config.architecture != Architecture::Mistral {
        if let Some(template) = &tokenizer_config.chat_template {
            metadata.push(("chat_template".into(), template.clone()));
        }
    }
    let specs: Vec<TensorSpec> = checkpoint
        .tensors
        .iter()
        .map(|t| {
            TensorSpec::new(
                t.name.clone(),
                storage.dtype_of(&t.name, &t.shape),
                t.shape.clone(),
            )
        })
        .collect();

    let partial = PartialFile::new(&args.output);
    let file = File::create(partial.path())
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    // Errors name the requested file, not the temporary one.
    let writer = ModelWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        args.output.display().to_string(),
        &metadata,
        specs,
        Some(&tokenizer),
    )?
    .with_int4_method(args.int4_method.method());
    let bytes_in = write_tensors(&checkpoint, writer)?;
    partial.commit()?;

    let model = read_back(&args.output)?;

    let secs = started.elapsed().as_secs_f64();
    let dtypes: Vec<String> = checkpoint.dtypes().iter().map(|d| d.to_string()).collect();
    if !checkpoint.skipped.is_empty() {
        eprintln!(
            "note: left out {} tensor(s) the engine does not use ({})",
            checkpoint.skipped.len(),
            checkpoint.skipped[0]
        );
    }
    eprintln!(
        "converted {} ({} {} tensors, {}) -> {} ({}, {}) in {:.1} s",
        dir.display(),
        checkpoint.tensors.len(),
        dtypes.join("/"),
        human_size(bytes_in),
        args.output.display(),
        storage.describe(),
        human_size(model.file_len() as u64),
        secs
    );
    Ok(())
}

/// `1.23 GB`, `4.5 MB`, `12 KB`.
pub(crate) fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}

/// Writing over a shard that is being read would destroy the input.
/// Opens a model file just written and checks it is complete: what every writer ends with.
pub(crate) fn read_back(path: &Path) -> anyhow::Result<ModelFile> {
    let model = ModelFile::open(path)
        .with_context(|| format!("{} was written but does not read back", path.display()))?;
    model
        .validate_mistral()
        .with_context(|| format!("{} was written but is incomplete", path.display()))?;
    Ok(model)
}

fn refuse_overwriting_inputs(output: &Path, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    let Ok(out) = output.canonicalize() else {
        return Ok(());
    };
    for shard in &checkpoint.shards {
        if shard.path.canonicalize().is_ok_and(|p| p == out) {
            bail!("the output {} is one of the input files", output.display());
        }
    }
    Ok(())
}

/// The output is written to `OUT.partial` and renamed when complete, so a failed or interrupted
/// conversion never leaves a truncated file under the requested name.
pub(crate) struct PartialFile {
    target: PathBuf,
    partial: PathBuf,
    committed: bool,
}

impl PartialFile {
    pub(crate) fn new(target: &Path) -> Self {
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        Self {
            target: target.to_path_buf(),
            partial: PathBuf::from(name),
            committed: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.partial
    }

    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.partial, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

enum Message {
    Begin(usize),
    Chunk(Vec<f32>, u64),
    End,
    Done,
    Failed(anyhow::Error),
}

/// Streams every tensor through `writer`; returns the checkpoint bytes read.
fn write_tensors(
    checkpoint: &Checkpoint,
    mut writer: ModelWriter<BufWriter<File>>,
) -> anyhow::Result<u64> {
    let total: u64 = checkpoint.tensors.iter().map(|t| t.source_bytes()).sum();
    let n = checkpoint.tensors.len();
    let bar = output::progress_bar(total, &format!("converting 0/{n}"), true);
    let (data_tx, data_rx) = sync_channel::<Message>(2);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<f32>>(4);
    let result = std::thread::scope(|scope| {
        scope.spawn(move || read_tensors(checkpoint, data_tx, recycle_rx));
        let result = consume(checkpoint, &mut writer, &data_rx, &recycle_tx, &bar);
        // If writing failed, hanging up unblocks the reader so the scope can end.
        drop(data_rx);
        result
    });
    bar.finish_and_clear();
    result?;
    let out = writer.finish()?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow!("cannot write the model file: {}", e.error()))?;
    file.sync_all()
        .context("cannot flush the model file to disk")?;
    // The first load then reads it back in large page-cache folios (faster to map).
    let _ = torchless_model::format::evict_from_page_cache(&file);
    Ok(total)
}

fn consume(
    checkpoint: &Checkpoint,
    writer: &mut ModelWriter<BufWriter<File>>,
    data: &Receiver<Message>,
    recycle: &SyncSender<Vec<f32>>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let n = checkpoint.tensors.len();
    loop {
        let message = data
            .recv()
            .map_err(|_| anyhow!("internal error: the reader thread stopped early"))?;
        match message {
            Message::Begin(i) => {
                bar.set_message(format!("converting {}/{n}", i + 1));
                writer.begin_tensor(&checkpoint.tensors[i].name)?;
            }
            Message::Chunk(values, bytes) => {
                writer.push(&values)?;
                bar.inc(bytes);
                let _ = recycle.try_send(values);
            }
            Message::End => {
                writer.end_tensor()?;
            }
            Message::Done => return Ok(()),
            Message::Failed(e) => return Err(e),
        }
    }
}

/// The reader thread: every tensor in order, in f32 chunks. Stops quietly when the writer side
/// hangs up (it failed and reports its own error).
fn read_tensors(checkpoint: &Checkpoint, data: SyncSender<Message>, recycle: Receiver<Vec<f32>>) {
    let mut scratch = Vec::new();
    for (i, tensor) in checkpoint.tensors.iter().enumerate() {
        if data.send(Message::Begin(i)).is_err() {
            return;
        }
        let mut start = 0;
        while start < tensor.n_elements {
            let len = CHUNK.min(tensor.n_elements - start);
            let mut buf = recycle.try_recv().unwrap_or_default();
            buf.resize(len, 0.0);
            if let Err(e) = checkpoint.read_f32(tensor, start, &mut buf, &mut scratch) {
                let _ = data.send(Message::Failed(e));
                return;
            }
            let bytes = (len * tensor.dtype.size()) as u64;
            if data.send(Message::Chunk(buf, bytes)).is_err() {
                return;
            }
            start += len;
        }
        if data.send(Message::End).is_err() {
            return;
        }
    }
    let _ = data.send(Message::Done);
}
