//! Synthetic models: a model file with real Mistral shapes and random weights, for benchmarks
//! and memory tests without the 14 GB download (`torchless synth`).
//!
//! Weights are approximately normal (std 0.02; norm weights 1 + 0.02·z), generated from the seed
//! chunk by chunk on every core (each chunk has its own stream, so the bytes do not depend on the
//! thread count) while the calling thread writes them through the format crate's
//! [`ModelWriter`](torchless_format::ModelWriter), so the file goes out at disk speed. int8
//! tensors are quantized with the exporter's exact semantics (`torchless_format::quant`), so a
//! synthetic int8 file is what the converter would make from the same f32 values; int4 tensors
//! use the round-to-nearest quantizer (`torchless_format::int4`).

mod random;
mod vocab;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use torchless_format::int4::{self, Int4Method};
use torchless_format::quant::{quantize_group, GROUP_SIZE};
use torchless_format::{
    Activation, Architecture, Config, DType, ModelWriter, QuantKind, TensorSpec,
};

use super::error::ConvertError;
use super::hf_tokenizer::read_tokenizer_json;
use super::options::{report, ConvertProgress, ProgressFn, Storage};
use super::output::ModelOutput;
use random::Rng;

pub use vocab::synthetic_vocab;

/// Values per generated chunk (a multiple of the int8 group size).
const CHUNK: usize = 1 << 20;
/// Standard deviation of the random weights.
const STD: f32 = 0.02;

/// The shapes [`synth`] can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Mistral-7B-v0.1: hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads.
    Mistral7b,
    /// hidden 2048, intermediate 5632, 16 layers, 16 heads, 4 KV heads.
    Mistral1b,
    /// hidden 64, intermediate 176, 2 layers, 4 heads, 2 KV heads, window 16, vocab 1024.
    Tiny,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [Shape::Mistral7b, Shape::Mistral1b, Shape::Tiny];

    /// The name (`mistral-7b`, `mistral-1b`, `tiny`).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Mistral7b => "mistral-7b",
            Shape::Mistral1b => "mistral-1b",
            Shape::Tiny => "tiny",
        }
    }

    /// The shape of a name.
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
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
            rope_layout: Default::default(),
        }
    }
}

/// Options of [`synth`].
pub struct SynthOptions<'a> {
    /// The model's shape.
    pub shape: Shape,
    /// Storage of the projections and of the output matrix (int4 rounded to nearest).
    pub storage: Storage,
    /// Random seed: the same seed gives the same file, byte for byte.
    pub seed: u64,
    /// Use this `tokenizer.json`'s vocabulary (its size becomes `vocab_size`) instead of a
    /// synthetic one.
    pub tokenizer: Option<PathBuf>,
    /// Threads generating weights (0: one per core). The bytes do not depend on it.
    pub threads: usize,
    /// Override `max_position_embeddings`.
    pub max_positions: Option<usize>,
    /// Called as the file is written.
    pub progress: Option<&'a mut dyn FnMut(ConvertProgress)>,
}

impl SynthOptions<'_> {
    /// A synthetic model of `shape`, all f32, seed 0, a synthetic vocabulary.
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            storage: Storage::default(),
            seed: 0,
            tokenizer: None,
            threads: 0,
            max_positions: None,
            progress: None,
        }
    }
}

impl std::fmt::Debug for SynthOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynthOptions")
            .field("shape", &self.shape)
            .field("storage", &self.storage)
            .field("seed", &self.seed)
            .field("tokenizer", &self.tokenizer)
            .field("threads", &self.threads)
            .field("max_positions", &self.max_positions)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What [`synth`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthReport {
    /// Tensors written.
    pub tensors: usize,
    /// Size of the file.
    pub bytes: u64,
}

/// One tensor to generate.
struct Planned {
    dtype: DType,
    n_elements: usize,
    /// Mean of the values (1 for norm weights, 0 otherwise).
    mean: f32,
}

/// A unit of generation: `len` values of tensor `tensor` from `start`.
#[derive(Clone, Copy)]
struct Job {
    tensor: usize,
    chunk: usize,
    start: usize,
    len: usize,
}

/// The generated values of one job, as the writer takes them: f32 values, int8 codes with
/// their inverse scales, or int4 codes with their f16 scales.
#[derive(Default)]
struct Block {
    values: Vec<f32>,
    codes: Vec<i8>,
    inv_scales: Vec<f32>,
    packed: Vec<u8>,
    scales: Vec<u16>,
}

/// Writes a synthetic model to `output`.
pub fn synth(output: &Path, mut options: SynthOptions<'_>) -> Result<SynthReport, ConvertError> {
    let storage = options.storage;
    let mut config = options.shape.config(storage.kind());
    if let Some(n) = options.max_positions {
        config.max_position_embeddings = n;
    }
    let tokenizer = match &options.tokenizer {
        Some(path) => {
            let data = read_tokenizer_json(path)?;
            config.vocab_size = data.vocab.len();
            data
        }
        None => synthetic_vocab(config.vocab_size)?,
    };
    config
        .validate()
        .map_err(|e| ConvertError::InvalidOption(format!("invalid configuration: {e}")))?;

    let mut expected = config.expected_tensors();
    // The exporter's order: the checkpoint index, which is alphabetical.
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    let specs: Vec<TensorSpec> = expected
        .iter()
        .map(|t| storage.spec(&t.name, &t.shape))
        .collect();
    let plan: Vec<Planned> = specs
        .iter()
        .map(|spec| Planned {
            dtype: spec.dtype,
            n_elements: spec.shape.iter().product(),
            mean: if spec.name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            },
        })
        .collect();
    let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    // Pre-quantized groups go to the writer as they are: the method is never used.
    let mut out = ModelOutput::create(
        output,
        &config.to_metadata(),
        specs,
        &tokenizer,
        Int4Method::RoundToNearest,
    )?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, 64);
    write_payload(
        out.writer(),
        &plan,
        &names,
        options.seed,
        threads,
        &mut options.progress,
    )?;
    report(&mut options.progress, ConvertProgress::Finishing);
    let model = out.finish()?;
    Ok(SynthReport {
        tensors: plan.len(),
        bytes: model.file_len() as u64,
    })
}

/// Generates every tensor on `threads` threads and writes it.
fn write_payload<W: std::io::Write>(
    writer: &mut ModelWriter<W>,
    plan: &[Planned],
    names: &[String],
    seed: u64,
    threads: usize,
    progress: &mut ProgressFn<'_>,
) -> Result<(), ConvertError> {
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
    report(
        progress,
        ConvertProgress::Started {
            tensors: plan.len(),
            bytes: total,
        },
    );

    let workers = threads.min(jobs.len()).max(1);
    let mut receivers = Vec::with_capacity(workers);
    let mut recyclers = Vec::with_capacity(workers);
    std::thread::scope(|scope| {
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
        let result = write_jobs(writer, plan, names, &jobs, &receivers, &recyclers, progress);
        // Unblock the workers if writing failed half-way.
        drop(receivers);
        result
    })
}

fn write_jobs<W: std::io::Write>(
    writer: &mut ModelWriter<W>,
    plan: &[Planned],
    names: &[String],
    jobs: &[Job],
    receivers: &[Receiver<Block>],
    recyclers: &[SyncSender<Block>],
    progress: &mut ProgressFn<'_>,
) -> Result<(), ConvertError> {
    let workers = receivers.len();
    let mut done = 0;
    for (j, job) in jobs.iter().enumerate() {
        let p = &plan[job.tensor];
        if job.start == 0 {
            report(progress, ConvertProgress::Tensor { index: job.tensor });
            writer.begin_tensor(&names[job.tensor])?;
        }
        let Ok(block) = receivers[j % workers].recv() else {
            return Err(ConvertError::Internal("a generator thread stopped".into()));
        };
        match p.dtype {
            // Storage gives torchless dtypes only (never ggml blocks).
            DType::F32 | DType::Blocks(_) => writer.push(&block.values)?,
            DType::Int8 => writer.push_int8_groups(&block.codes, &block.inv_scales)?,
            DType::Int4 => writer.push_int4_groups(&block.packed, &block.scales)?,
        }
        done += p.dtype.data_len(job.len) as u64;
        report(progress, ConvertProgress::Bytes { done });
        let _ = recyclers[j % workers].try_send(block);
        if job.start + job.len == p.n_elements {
            writer.end_tensor()?;
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

/// Fills `block` with the values of one job, made 64 at a time (8 steps of the 8-lane
/// generator) so the stream does not depend on how the job is cut.
fn generate(p: &Planned, job: &Job, seed: u64, block: &mut Block) {
    let mut rng = Rng::for_stream(seed, job.tensor as u64, job.chunk as u64);
    let mut group = [0.0f32; GROUP_SIZE];
    match p.dtype {
        DType::F32 | DType::Blocks(_) => {
            block.values.resize(job.len, 0.0);
            for out in block.values.chunks_mut(GROUP_SIZE) {
                rng.fill_normal(out, p.mean, STD);
            }
        }
        DType::Int8 => {
            block.codes.resize(job.len, 0);
            block.inv_scales.clear();
            for out in block.codes.chunks_mut(GROUP_SIZE) {
                let values = &mut group[..out.len()];
                rng.fill_normal(values, p.mean, STD);
                block.inv_scales.push(quantize_group_fast(values, out));
            }
        }
        DType::Int4 => {
            // Jobs start on a group (CHUNK is a multiple of 64) and rows are whole groups.
            block.packed.resize(job.len / 2, 0);
            block.scales.clear();
            let mut values = [0.0f32; int4::GROUP_SIZE];
            for out in block.packed.chunks_mut(int4::GROUP_BYTES) {
                rng.fill_normal(&mut values, p.mean, STD);
                // Round to nearest: random normal weights are finite and far below f16's range.
                let scale =
                    int4::quantize_group(&values, Int4Method::RoundToNearest, out).unwrap_or(0);
                block.scales.push(scale);
            }
        }
    }
}

/// [`quantize_group`] for finite values, bit for bit, without its per-value `rintf` call:
/// adding 1.5 * 2^23 rounds half to even in f32 for every |v| < 2^22 (here |v| <= 127 plus
/// rounding), so the result is identical and the loop vectorizes.
/// Writes the int8 values and returns the inverse scale.
fn quantize_group_fast(values: &[f32], out: &mut [i8]) -> f32 {
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
        return torchless_format::quant::ZERO_GROUP_INV_SCALE;
    }
    let inv_scale = (1.0 / absmax) * 127.0;
    if !inv_scale.is_finite() {
        // Subnormal absmax: not reachable with generated weights; defer to the reference.
        return quantize_group(values, out).unwrap_or(f32::MAX);
    }
    for (o, &x) in out.iter_mut().zip(values) {
        // x + MAGIC lands in [2^23, 2^24), where the f32 spacing is 1: the addition rounds half
        // to even and the integer sits in the low mantissa bits (MAGIC's bits are 0x4B40_0000).
        let q = (x * inv_scale + MAGIC).to_bits() as i32 - 0x4B40_0000;
        *o = q.clamp(-127, 127) as i8;
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
            let mut got = [0i8; GROUP_SIZE];
            let got_inv = quantize_group_fast(group, &mut got[..group.len()]);
            assert_eq!(got_inv.to_bits(), want_inv.to_bits(), "group {i}");
            assert_eq!(got[..group.len()], want[..group.len()], "group {i}");
        }
    }
}
