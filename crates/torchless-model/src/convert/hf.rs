//! A Hugging Face Mistral or Llama checkpoint (`config.json`, `tokenizer.json`, safetensors
//! weights in bf16, f16 or f32, one file or sharded) into a torchless model file,
//! byte-compatible with the original Python exporter.
//!
//! Streams tensor by tensor: a reader thread turns checkpoint bytes into f32 chunks, the calling
//! thread hands them to the format crate's [`ModelWriter`](torchless_format::ModelWriter) (which
//! quantizes int8 and int4 tensors on the fly), so memory stays at a few chunks whatever the
//! model size.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use torchless_format::{Architecture, TensorSpec};

use super::checkpoint::Checkpoint;
use super::error::ConvertError;
use super::hf_config::HfConfig;
use super::hf_tokenizer::{read_tokenizer_json, TokenizerConfig};
use super::options::{report, ConvertOptions, ConvertProgress, ConvertReport, ConvertedFrom};
use super::output::ModelOutput;

/// Values per chunk handed from the reader thread to the writer (4 MB of f32).
const CHUNK: usize = 1 << 20;

/// Converts the checkpoint in directory `dir` into the model file `output`.
pub fn convert_checkpoint(
    dir: &Path,
    output: &Path,
    mut options: ConvertOptions<'_>,
) -> Result<ConvertReport, ConvertError> {
    if !dir.is_dir() {
        return Err(ConvertError::input(
            dir,
            format!(
                "{} is not a directory or a GGUF file (expected a Hugging Face checkpoint directory or MODEL.gguf)",
                dir.display()
            ),
        ));
    }
    let hf = HfConfig::read(dir)?;
    let tokenizer_json = dir.join("tokenizer.json");
    let mut tokenizer = read_tokenizer_json(&tokenizer_json)?;
    let tokenizer_config = TokenizerConfig::read(dir)?;
    tokenizer_config.apply(&mut tokenizer, &dir.join("tokenizer_config.json"))?;
    if tokenizer.vocab.len() > hf.config.vocab_size {
        return Err(ConvertError::tokenizer(
            &tokenizer_json,
            format!(
                "{}: the vocabulary has {} pieces but config.json has vocab_size {}",
                tokenizer_json.display(),
                tokenizer.vocab.len(),
                hf.config.vocab_size
            ),
            None,
        ));
    }
    let checkpoint = Checkpoint::open(dir, &hf.config)?;
    refuse_overwriting_inputs(output, &checkpoint)?;

    let storage = options.storage;
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
        .map(|t| storage.spec(&t.name, &t.shape))
        .collect();

    let mut out = ModelOutput::create(output, &metadata, specs, &tokenizer, options.int4_method)?;
    let bytes = write_tensors(&checkpoint, &mut out, &mut options)?;
    report(&mut options.progress, ConvertProgress::Finishing);
    let model = out.finish()?;
    Ok(ConvertReport {
        from: ConvertedFrom::Checkpoint {
            tensors: checkpoint.tensors.len(),
            dtypes: checkpoint.dtypes(),
            bytes,
            skipped: checkpoint.skipped.clone(),
        },
        storage,
        output_bytes: model.file_len() as u64,
    })
}

/// Writing over a shard that is being read would destroy the input.
fn refuse_overwriting_inputs(output: &Path, checkpoint: &Checkpoint) -> Result<(), ConvertError> {
    let Ok(out) = output.canonicalize() else {
        return Ok(());
    };
    for shard in &checkpoint.shards {
        if shard.path.canonicalize().is_ok_and(|p| p == out) {
            return Err(ConvertError::input(
                output,
                format!("the output {} is one of the input files", output.display()),
            ));
        }
    }
    Ok(())
}

enum Message {
    Begin(usize),
    Chunk(Vec<f32>, u64),
    End,
    Done,
    Failed(ConvertError),
}

/// Streams every tensor through the writer; returns the checkpoint bytes read.
fn write_tensors(
    checkpoint: &Checkpoint,
    out: &mut ModelOutput,
    options: &mut ConvertOptions<'_>,
) -> Result<u64, ConvertError> {
    let total: u64 = checkpoint.tensors.iter().map(|t| t.source_bytes()).sum();
    report(
        &mut options.progress,
        ConvertProgress::Started {
            tensors: checkpoint.tensors.len(),
            bytes: total,
        },
    );
    let (data_tx, data_rx) = sync_channel::<Message>(2);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<f32>>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || read_tensors(checkpoint, data_tx, recycle_rx));
        let result = consume(checkpoint, out, &data_rx, &recycle_tx, options);
        // If writing failed, hanging up unblocks the reader so the scope can end.
        drop(data_rx);
        result
    })?;
    Ok(total)
}

fn consume(
    checkpoint: &Checkpoint,
    out: &mut ModelOutput,
    data: &Receiver<Message>,
    recycle: &SyncSender<Vec<f32>>,
    options: &mut ConvertOptions<'_>,
) -> Result<(), ConvertError> {
    let writer = out.writer();
    let mut done = 0;
    loop {
        // The reader always ends with `Done` or `Failed`; hanging up early means it panicked.
        let Ok(message) = data.recv() else {
            return Err(ConvertError::Internal(
                "the reader thread stopped early".into(),
            ));
        };
        match message {
            Message::Begin(index) => {
                report(&mut options.progress, ConvertProgress::Tensor { index });
                writer.begin_tensor(&checkpoint.tensors[index].name)?;
            }
            Message::Chunk(values, bytes) => {
                writer.push(&values)?;
                done += bytes;
                report(&mut options.progress, ConvertProgress::Bytes { done });
                let _ = recycle.try_send(values);
            }
            Message::End => writer.end_tensor()?,
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
