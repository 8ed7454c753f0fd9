//! `torchless synth --shape mistral-7b|mistral-1b|tiny --quant f32|int8|int4 --seed S OUT.bin`: a model
//! file with real Mistral shapes and random weights, for benchmarks and memory tests without the
//! 14 GB download.
//!
//! Weights are approximately normal (std 0.02; norm weights 1 + 0.02·z), generated from the seed
//! chunk by chunk on every core (each chunk has its own stream, so the bytes do not depend on the
//! thread count) while the main thread writes, so the file goes out at disk speed. int8 tensors
//! are quantized with the exporter's exact semantics (`torchless_format::quant`), so a synthetic
//! int8 file is what the converter would make from the same f32 values; int4 tensors use the
//! round-to-nearest quantizer (`torchless_format::int4`).

pub mod random;
pub mod vocab;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use torchless_model::format::int4::{self, Int4Method};
use torchless_model::format::quant::{quantize_group, GROUP_SIZE};
use torchless_model::format::{
    Activation, Architecture, Config, DType, ModelWriter, QuantKind, TensorSpec, TokenizerData,
    ALIGNMENT,
};

use super::convert::{hf_tokenizer, human_size, PartialFile, Quant, Storage};
use crate::output;
use random::Rng;

/// Values per generated chunk (a multiple of the int8 group size).
const CHUNK: usize = 1 << 20;
/// Standard deviation of the random weights.
const STD: f32 = 0.02;

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output model file.
    pub output: PathBuf,
    /// Model shape.
    #[arg(long, value_enum)]
    pub shape: Shape,
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

/// The shapes `synth` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// Mistral-7B-v0.1: hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads.
    #[value(name = "mistral-7b")]
    Mistral7b,
    /// hidden 2048, intermediate 5632, 16 layers, 16 heads, 4 KV heads.
    #[value(name = "mistral-1b")]
    Mistral1b,
    /// hidden 64, intermediate 176, 2 layers, 4 heads, 2 KV heads, window 16, vocab 1024.
    Tiny,
}

impl Shape {
    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Mistral7b => "mistral-7b",
            Shape::Mistral1b => "mistral-1b",
            Shape::Tiny => "tiny",
        }
    }

    /// The configuration (vocab_size as for the synthetic vocabulary).
    pub fn config(self, quant: QuantKind) -> Config {
        let (hidden, intermediate, layers, heads, kv_heads, vocab, max_pos, window) = match self {
            Shape::Mistral7b => (4096, 14336, 32, 32, 8, 32000, 32768, 4096),
            Shape::Mistral1b => (2048, 5632, 16, 16, 4, 32000, 32768, 4096),
            Shape::Tiny => (64, 176, 2, 4, 2, 1024, 256, 16),
        };
        Config {
            hidden_size: hidden,
            intermediate_size: intermediate,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hidden / heads,
            vocab_size: vocab,
            max_position_embeddings: max_pos,
            sliding_window: Some(window),
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            activation: Activation::Silu,
            quant,
            architecture: Architecture::Mistral,
            tie_word_embeddings: false,
        }
    }
}

/// One tensor of the plan, with its place in the file.
struct Planned {
    dtype: DType,
    n_elements: usize,
    /// Mean of the values (1 for norm weights, 0 otherwise).
    mean: f32,
    offset: u64,
    scale_offset: Option<u64>,
}

/// A unit of generation: `len` values of tensor `tensor` from `start`.
#[derive(Clone, Copy)]
struct Job {
    tensor: usize,
    chunk: usize,
    start: usize,
    len: usize,
}

/// Generated bytes of one job (quantized tensors also give their scales, as stored).
#[derive(Default)]
struct Block {
    bytes: Vec<u8>,
    scale_bytes: Vec<u8>,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let storage = Storage::new(args.quant, args.quant_output);
    let mut config = args.shape.config(storage.kind());
    if let Some(n) = args.max_positions {
        config.max_position_embeddings = n;
    }
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            let data = hf_tokenizer::read_tokenizer(path)?;
            config.vocab_size = data.vocab.len();
            data
        }
        None => vocab::synthetic_vocab(config.vocab_size)?,
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;

    let mut expected = config.expected_tensors();
    // The exporter's order: the checkpoint index, which is alphabetical.
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    let specs: Vec<TensorSpec> = expected
        .iter()
        .map(|t| {
            TensorSpec::new(
                t.name.clone(),
                storage.dtype_of(&t.name, &t.shape),
                t.shape.clone(),
            )
        })
        .collect();
    let metadata = config.to_metadata();
    let (header, plan) = header_and_plan(&metadata, specs, &tokenizer)?;

    let partial = PartialFile::new(&args.output);
    let file = File::create(partial.path())
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut out = Output {
        // Small: chunks of a megabyte or more go straight to the file without a copy.
        file: BufWriter::with_capacity(64 << 10, file),
        position: 0,
        path: args.output.display().to_string(),
    };
    out.file
        .write_all(&header)
        .map_err(|e| anyhow!("cannot write {}: {e}", out.path))?;

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let payload = write_payload(&mut out, &plan, args.seed, threads)?;
    let file = out
        .file
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", out.path, e.error()))?;
    file.sync_all()
        .with_context(|| format!("cannot flush {} to disk", args.output.display()))?;
    // The first load then reads it back in large page-cache folios (faster to map).
    let _ = torchless_model::format::evict_from_page_cache(&file);
    drop(file);
    partial.commit()?;

    super::convert::read_back(&args.output)?;
    let secs = started.elapsed().as_secs_f64();
    let size = header.len() as u64 + payload;
    eprintln!(
        "wrote {} ({}, {}, seed {}, {} tensors, {}) in {:.1} s ({:.0} MB/s)",
        args.output.display(),
        args.shape.name(),
        storage.describe(),
        args.seed,
        plan.len(),
        human_size(size),
        secs,
        size as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}

/// The header bytes exactly as [`ModelWriter`] writes them, and where every tensor goes (read back
/// from that header, so the layout is the writer's by construction).
fn header_and_plan(
    metadata: &[(String, String)],
    specs: Vec<TensorSpec>,
    tokenizer: &TokenizerData,
) -> anyhow::Result<(Vec<u8>, Vec<Planned>)> {
    #[derive(Deserialize)]
    struct Header {
        tensors: BTreeMap<String, Location>,
    }
    #[derive(Deserialize)]
    struct Location {
        offset: u64,
        scale_offset: Option<u64>,
    }

    let mut header = Vec::new();
    drop(ModelWriter::new(
        &mut header,
        "<header>",
        metadata,
        specs.clone(),
        Some(tokenizer),
    )?);
    let json = header
        .get(8..)
        .map(|h| {
            let end = h.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            &h[..end]
        })
        .ok_or_else(|| anyhow!("internal error: empty header"))?;
    let parsed: Header = serde_json::from_slice(json).context("internal error: header JSON")?;
    let mut plan = Vec::with_capacity(specs.len());
    for spec in specs {
        let location = parsed
            .tensors
            .get(&spec.name)
            .ok_or_else(|| anyhow!("internal error: `{}` not in the header", spec.name))?;
        plan.push(Planned {
            mean: if spec.name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            },
            n_elements: spec.shape.iter().product(),
            offset: location.offset,
            scale_offset: location.scale_offset,
            dtype: spec.dtype,
        });
    }
    Ok((header, plan))
}

struct Output {
    file: BufWriter<File>,
    /// Payload bytes written so far.
    position: u64,
    path: String,
}

impl Output {
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| anyhow!("cannot write {}: {e}", self.path))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Zero padding up to payload offset `target`.
    fn pad_to(&mut self, target: u64) -> anyhow::Result<()> {
        const ZEROS: [u8; ALIGNMENT] = [0; ALIGNMENT];
        if target < self.position {
            bail!("internal error: layout goes backwards at payload byte {target}");
        }
        while self.position < target {
            let n = (target - self.position).min(ALIGNMENT as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Generates and writes every tensor; returns the payload size.
fn write_payload(
    out: &mut Output,
    plan: &[Planned],
    seed: u64,
    threads: usize,
) -> anyhow::Result<u64> {
    let mut jobs = Vec::new();
    for (tensor, p) in plan.iter().enumerate() {
        let mut start = 0;
        let mut chunk = 0;
        while start < p.n_elements {
            let len = CHUNK.min(p.n_elements - start);
            jobs.push(Job {
                tensor,
                chunk,
                start,
                len,
            });
            start += len;
            chunk += 1;
        }
    }
    let total: u64 = plan
        .iter()
        .map(|p| p.dtype.data_len(p.n_elements) as u64)
        .sum();
    let bar = output::progress_bar(total, "generating", true);

    let workers = threads.min(jobs.len()).max(1);
    let mut receivers = Vec::with_capacity(workers);
    let mut recyclers = Vec::with_capacity(workers);
    let result = std::thread::scope(|scope| {
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Block>(2);
            let (recycle_tx, recycle_rx) = sync_channel::<Block>(3);
            receivers.push(rx);
            recyclers.push(recycle_tx);
            let jobs = &jobs;
            scope.spawn(move || {
                generate_jobs(plan, jobs, seed, w, workers, &tx, &recycle_rx);
            });
        }
        let result = write_jobs(out, plan, &jobs, &receivers, &recyclers, &bar);
        // Unblock the workers if writing failed half-way.
        drop(receivers);
        result
    });
    bar.finish_and_clear();
    result?;
    let end = out.position.div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
    out.pad_to(end)?;
    Ok(out.position)
}

fn write_jobs(
    out: &mut Output,
    plan: &[Planned],
    jobs: &[Job],
    receivers: &[Receiver<Block>],
    recyclers: &[SyncSender<Block>],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let workers = receivers.len();
    let mut scales: Vec<u8> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let p = &plan[job.tensor];
        if job.start == 0 {
            out.pad_to(p.offset)?;
            scales.clear();
        }
        let block = receivers[j % workers]
            .recv()
            .map_err(|_| anyhow!("internal error: a generator thread stopped"))?;
        out.write(&block.bytes)?;
        scales.extend_from_slice(&block.scale_bytes);
        bar.inc(block.bytes.len() as u64);
        let _ = recyclers[j % workers].try_send(block);
        if job.start + job.len == p.n_elements {
            if let Some(scale_offset) = p.scale_offset {
                out.pad_to(scale_offset)?;
                out.write(&scales)?;
            }
        }
    }
    Ok(())
}

/// Worker `w` of `workers`: jobs `w, w + workers, ...`, in order.
fn generate_jobs(
    plan: &[Planned],
    jobs: &[Job],
    seed: u64,
    w: usize,
    workers: usize,
    tx: &SyncSender<Block>,
    recycle: &Receiver<Block>,
) {
    for job in jobs.iter().skip(w).step_by(workers) {
        let mut block = recycle.try_recv().unwrap_or_default();
        generate(&plan[job.tensor], job, seed, &mut block);
        if tx.send(block).is_err() {
            return;
        }
    }
}

/// Fills `block` with the bytes of one job. Values are made 64 at a time in a stack buffer and
/// converted at once, so they never travel through memory as f32.
fn generate(p: &Planned, job: &Job, seed: u64, block: &mut Block) {
    let mut rng = Rng::for_stream(seed, job.tensor as u64, job.chunk as u64);
    let mut group = [0.0f32; GROUP_SIZE];
    block.scale_bytes.clear();
    match p.dtype {
        DType::F32 => {
            // Every byte is overwritten: only the length matters.
            block.bytes.resize(job.len * 4, 0);
            for out in block.bytes.chunks_mut(GROUP_SIZE * 4) {
                let values = &mut group[..out.len() / 4];
                rng.fill_normal(values, p.mean, STD);
                for (b, v) in out.chunks_exact_mut(4).zip(values.iter()) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        DType::Int8 => {
            block.bytes.resize(job.len, 0);
            for out in block.bytes.chunks_mut(GROUP_SIZE) {
                let values = &mut group[..out.len()];
                rng.fill_normal(values, p.mean, STD);
                let inv_scale = quantize_group_fast(values, out);
                block
                    .scale_bytes
                    .extend_from_slice(&inv_scale.to_le_bytes());
            }
        }
        DType::Int4 => {
            // Jobs start on a group (CHUNK is a multiple of 64) and rows are whole groups.
            block.bytes.resize(job.len / 2, 0);
            let mut values = [0.0f32; int4::GROUP_SIZE];
            for out in block.bytes.chunks_mut(int4::GROUP_BYTES) {
                rng.fill_normal(&mut values, p.mean, STD);
                // Round to nearest: random normal weights are finite and far below f16's range.
                let scale =
                    int4::quantize_group(&values, Int4Method::RoundToNearest, out).unwrap_or(0);
                block.scale_bytes.extend_from_slice(&scale.to_le_bytes());
            }
        }
    }
}

/// [`quantize_group`] for finite values, bit for bit, without its per-value `rintf` call:
/// adding 1.5 * 2^23 rounds half to even in f32 for every |v| < 2^22 (here |v| <= 127 plus
/// rounding), so the result is identical and the loop vectorizes.
/// Writes the int8 values as bytes and returns the inverse scale.
fn quantize_group_fast(values: &[f32], out: &mut [u8]) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    // Plain compare (the values are finite), so this is one `maxps` per four values.
    let absmax = values.iter().fold(0.0f32, |m, &x| {
        let a = x.abs();
        if a > m {
            a
        } else {
            m
        }
    });
    if absmax == 0.0 {
        out.fill(0);
        return torchless_model::format::quant::ZERO_GROUP_INV_SCALE;
    }
    let inv_scale = (1.0 / absmax) * 127.0;
    if !inv_scale.is_finite() {
        // Subnormal absmax: not reachable with generated weights; defer to the reference.
        let mut q = [0i8; GROUP_SIZE];
        let q = &mut q[..values.len()];
        let inv = quantize_group(values, q).unwrap_or(f32::MAX);
        for (o, &v) in out.iter_mut().zip(q.iter()) {
            *o = v as u8;
        }
        return inv;
    }
    for (o, &x) in out.iter_mut().zip(values) {
        // x + MAGIC lands in [2^23, 2^24), where the f32 spacing is 1: the addition rounds half
        // to even and the integer sits in the low mantissa bits (MAGIC's bits are 0x4B40_0000).
        let q = (x * inv_scale + MAGIC).to_bits() as i32 - 0x4B40_0000;
        *o = q.clamp(-127, 127) as i8 as u8;
    }
    inv_scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_the_published_ones() {
        // Mistral-7B-v0.1's config.json (../shared/reference/mistral-7b-v0.1).
        let c = Shape::Mistral7b.config(QuantKind::Int8);
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads
            ),
            (4096, 14336, 32, 32, 8)
        );
        assert_eq!((c.vocab_size, c.max_position_embeddings), (32000, 32768));
        assert_eq!(
            (c.sliding_window, c.rope_theta, c.norm_eps),
            (Some(4096), 10000.0, 1e-5)
        );
        let params: usize = c
            .expected_tensors()
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(params, 7_241_732_096);
        let c = Shape::Mistral1b.config(QuantKind::F32);
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.vocab_size
            ),
            (2048, 5632, 16, 16, 4, 32000)
        );
        for shape in [Shape::Mistral7b, Shape::Mistral1b, Shape::Tiny] {
            shape.config(QuantKind::F32).validate().unwrap();
        }
    }

    #[test]
    fn fast_quantization_equals_the_exporters() {
        let mut values = vec![0.0f32; 1 << 16];
        Rng::for_stream(1, 2, 3).fill_normal(&mut values, 0.0, 0.02);
        // Ties and edge cases: exact halves after scaling, zeros, a lone maximum, tiny values.
        values[..8].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -2.5, -0.5, 126.5, -127.0]);
        values[64..128].fill(0.0);
        values[128..192].fill(1e-30);
        values[192] = 3.0;
        values[256..320].fill(1e-40);
        for (i, group) in values.chunks(GROUP_SIZE).chain([&values[..37]]).enumerate() {
            let mut want = [0i8; GROUP_SIZE];
            let want_inv = quantize_group(group, &mut want[..group.len()]).unwrap();
            let mut got = [0u8; GROUP_SIZE];
            let got_inv = quantize_group_fast(group, &mut got[..group.len()]);
            assert_eq!(got_inv.to_bits(), want_inv.to_bits(), "group {i}");
            for (g, w) in got[..group.len()].iter().zip(&want) {
                assert_eq!(*g as i8, *w, "group {i}");
            }
        }
    }
}
