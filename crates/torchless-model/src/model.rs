//! The loaded model: immutable weights (memory-mapped), configuration, tokenizer and RoPE tables.
//!
//! [`Mistral`] keeps every weight resident; [`LazyMistral`] brings each layer's pages in just
//! before the layer runs and gives them back right after. Both run the one forward pass in
//! `forward.rs`; the [`Residency`] type parameter only decides what happens around each layer.

use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use torchless_format::{
    layer_tensor_name, Config, ModelFile, Residency as Advice, TensorData, TokenizerData,
    TokenizerKind,
};
use torchless_kernels::{MatRef, RopeTable};
use torchless_tokenizer::{AddedToken, ByteLevelBpe, Pretokenizer, Tokenizer};

use crate::error::{ModelError, Result};
use crate::session::{Session, SessionOptions};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Resident {}
    impl Sealed for super::Lazy {}
}

/// How a model's weights stay in memory. Implemented by [`Resident`] and [`Lazy`] only.
pub trait Residency: sealed::Sealed + Send + Sync + 'static {
    /// Short name for logs (`"resident"` or `"lazy"`).
    const NAME: &'static str;
    /// Whether pages are given back after each layer (and after the output projection).
    const RELEASE_AFTER_USE: bool;
}

/// Weight pages are mapped as they are first used and stay mapped: the fastest mode; after the
/// first token, resident memory is about the file size.
#[derive(Debug, Clone, Copy)]
pub struct Resident;

impl Residency for Resident {
    const NAME: &'static str = "resident";
    const RELEASE_AFTER_USE: bool = false;
}

/// Only the layer being computed is resident: its pages are requested just before it runs and
/// released right after, so resident memory stays around one layer plus the output matrix.
#[derive(Debug, Clone, Copy)]
pub struct Lazy;

impl Residency for Lazy {
    const NAME: &'static str = "lazy";
    const RELEASE_AFTER_USE: bool = true;
}

/// A Mistral model whose weights are all resident in memory.
pub type Mistral = Model<Resident>;

/// A Mistral model that keeps only the layer being computed in memory (under 1 GB for 7B int8).
pub type LazyMistral = Model<Lazy>;

/// Progress of [`Model::load_with`], reported to the caller's callback (more kinds of progress
/// may be added: match with a catch-all arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadProgress {
    /// The header was parsed and every tensor checked.
    Validated {
        /// Number of tensors in the file.
        tensors: usize,
    },
    /// With [`LoadOptions::read_into_memory`]: `done` of `total` bytes of the file read.
    Reading {
        /// Bytes read so far.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// The tokenizer was built from the embedded vocabulary.
    TokenizerReady,
    /// Loading finished.
    Done,
}

/// Options for loading a model.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// Called as loading proceeds (e.g. to draw a progress bar). Loading prints nothing itself.
    pub progress: Option<&'a mut dyn FnMut(LoadProgress)>,
    /// Use this tokenizer instead of the one embedded in the file.
    pub tokenizer: Option<Tokenizer>,
    /// Read the whole file into this process's memory instead of mapping it (llama.cpp's
    /// `--no-mmap`; see [`ModelFile::read_into_memory`]): slower to load, and decode can be
    /// faster where page-cache memory streams slower than fresh memory (measured on a virtual
    /// machine: 11-15%). Only for resident models: a [`LazyMistral`] refuses it.
    pub read_into_memory: bool,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("progress", &self.progress.is_some())
            .field("tokenizer", &self.tokenizer.is_some())
            .field("read_into_memory", &self.read_into_memory)
            .finish()
    }
}

/// Names of one transformer block's tensors (Hugging Face names).
#[derive(Debug, Clone)]
pub(crate) struct LayerNames {
    pub input_norm: String,
    pub q_proj: String,
    pub k_proj: String,
    pub v_proj: String,
    pub o_proj: String,
    pub post_attention_norm: String,
    pub gate_proj: String,
    pub up_proj: String,
    pub down_proj: String,
}

impl LayerNames {
    fn new(layer: usize) -> Self {
        let name = |suffix: &str| layer_tensor_name(layer, suffix);
        Self {
            input_norm: name("input_layernorm.weight"),
            q_proj: name("self_attn.q_proj.weight"),
            k_proj: name("self_attn.k_proj.weight"),
            v_proj: name("self_attn.v_proj.weight"),
            o_proj: name("self_attn.o_proj.weight"),
            post_attention_norm: name("post_attention_layernorm.weight"),
            gate_proj: name("mlp.gate_proj.weight"),
            up_proj: name("mlp.up_proj.weight"),
            down_proj: name("mlp.down_proj.weight"),
        }
    }

    pub fn all(&self) -> [&str; 9] {
        [
            &self.input_norm,
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.post_attention_norm,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// Zero-copy views of one transformer block's weights.
pub(crate) struct LayerWeights<'a> {
    pub input_norm: &'a [f32],
    pub q_proj: MatRef<'a>,
    pub k_proj: MatRef<'a>,
    pub v_proj: MatRef<'a>,
    pub o_proj: MatRef<'a>,
    pub post_attention_norm: &'a [f32],
    pub gate_proj: MatRef<'a>,
    pub up_proj: MatRef<'a>,
    pub down_proj: MatRef<'a>,
}

pub(crate) const EMBED: &str = "model.embed_tokens.weight";
pub(crate) const FINAL_NORM: &str = "model.norm.weight";

/// Builds the tokenizer a model file describes: SentencePiece from the vocabulary and merges,
/// or byte-level BPE with its pre-tokenizer, added tokens, BOS/EOS and BOS rule from the
/// metadata. Errors name the pre-tokenizer or the inconsistency.
pub fn tokenizer_from_data(data: TokenizerData) -> Result<Tokenizer> {
    Ok(match data.kind {
        TokenizerKind::SentencePiece => Tokenizer::from_vocab_and_merges(data.vocab, data.merges)?,
        TokenizerKind::ByteLevelBpe => {
            let name = data.pretokenizer.as_deref().unwrap_or("gpt2");
            let pretokenizer =
                Pretokenizer::from_name(name).ok_or_else(|| ModelError::InvalidOption {
                    option: "tokenizer_pre".into(),
                    message: format!(
                        "byte-level pre-tokenizer {name:?} is not supported (gpt2, smollm, llama-bpe)"
                    ),
                })?;
            Tokenizer::from_byte_level_bpe(ByteLevelBpe {
                vocab: data.vocab,
                merges: data.merges,
                pretokenizer,
                added_tokens: data
                    .added_tokens
                    .into_iter()
                    .map(|t| AddedToken {
                        id: t.id,
                        content: t.content,
                        special: t.special,
                    })
                    .collect(),
                bos_id: data.bos_id,
                eos_id: data.eos_id,
                add_bos: data.add_bos.unwrap_or(false),
            })?
        }
    })
}

/// Most bytes of `lm_head` that lazy mode maps at once. It is the largest matrix (524 MB as f32
/// for 7B); mapped whole next to the last layers, it set the peak resident set.
const OUTPUT_CHUNK_BYTES: usize = 64 << 20;

/// Splits `rows` rows totalling `bytes` into consecutive ranges of at most about `max_bytes`
/// each (at least one row per range; one empty range for no rows).
fn split_rows(rows: usize, bytes: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let chunks = bytes.div_ceil(max_bytes.max(1)).clamp(1, rows.max(1));
    let per_chunk = rows.div_ceil(chunks).max(1);
    let mut ranges: Vec<Range<usize>> = (0..rows)
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(rows))
        .collect();
    if ranges.is_empty() {
        ranges.push(0..0);
    }
    ranges
}

/// A loaded Mistral model: immutable, `Send + Sync`, shared by any number of [`Session`]s.
///
/// Use the aliases [`Mistral`] (resident weights) and [`LazyMistral`] (low memory).
pub struct Model<R: Residency = Resident> {
    file: ModelFile,
    config: Config,
    tokenizer: Tokenizer,
    rope: RopeTable,
    layers: Vec<LayerNames>,
    /// Row ranges of `lm_head` that lazy mode maps one at a time.
    output_chunks: Vec<Range<usize>>,
    load_time: Duration,
    _residency: PhantomData<R>,
}

impl<R: Residency> std::fmt::Debug for Model<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("file", &self.file.source_name())
            .field("residency", &R::NAME)
            .field("config", &self.config)
            .finish()
    }
}

impl<R: Residency> Model<R> {
    /// Loads a torchless model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, LoadOptions::default())
    }

    /// Loads a torchless model file, reporting progress and optionally replacing the tokenizer.
    pub fn load_with(path: impl AsRef<Path>, mut options: LoadOptions<'_>) -> Result<Self> {
        let start = Instant::now();
        let file = if options.read_into_memory {
            if R::RELEASE_AFTER_USE {
                return Err(ModelError::InvalidOption {
                    option: "read_into_memory".into(),
                    message: "a lazy model maps its file to give layers back; reading the whole \
                              file into memory is for resident models"
                        .into(),
                });
            }
            let mut reading = |done, total| {
                if let Some(cb) = options.progress.as_mut() {
                    cb(LoadProgress::Reading { done, total });
                }
            };
            ModelFile::read_into_memory(path.as_ref(), Some(&mut reading))?
        } else {
            ModelFile::open(path.as_ref())?
        };
        Self::from_file_with(file, start, &mut options)
    }

    /// Builds a model from an already opened file (e.g. one held in memory).
    pub fn from_file(file: ModelFile) -> Result<Self> {
        Self::from_file_with(file, Instant::now(), &mut LoadOptions::default())
    }

    fn from_file_with(
        file: ModelFile,
        start: Instant,
        options: &mut LoadOptions<'_>,
    ) -> Result<Self> {
        let mut report = |p: LoadProgress| {
            if let Some(cb) = options.progress.as_mut() {
                cb(p);
            }
        };
        file.validate_mistral()?;
        let config = file.config().clone();
        report(LoadProgress::Validated {
            tensors: file.n_tensors(),
        });

        let tokenizer = match options.tokenizer.take() {
            Some(t) => t,
            None => tokenizer_from_data(file.tokenizer_data()?)?,
        };
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::InvalidOption {
                option: "tokenizer".into(),
                message: format!(
                    "it has {} pieces but the model only {} embedding rows",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        report(LoadProgress::TokenizerReady);

        let rope = RopeTable::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
        )?;
        let layers = (0..config.n_layers).map(LayerNames::new).collect();
        let lm_head_bytes = file.tensor_info(config.output_tensor_name())?.bytes_read();
        let output_chunks = split_rows(config.vocab_size, lm_head_bytes, OUTPUT_CHUNK_BYTES);
        let model = Self {
            file,
            config,
            tokenizer,
            rope,
            layers,
            output_chunks,
            load_time: Duration::ZERO,
            _residency: PhantomData,
        };
        report(LoadProgress::Done);
        Ok(Self {
            load_time: start.elapsed(),
            ..model
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer (embedded in the file unless replaced at load).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The underlying file (tensor table, metadata).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// Wall time [`load`](Self::load) took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// `"resident"`, `"resident (read into memory)"` or `"lazy"`.
    pub fn residency(&self) -> &'static str {
        match (R::NAME, self.file.is_in_memory()) {
            ("resident", true) => "resident (read into memory)",
            (name, _) => name,
        }
    }

    /// Bytes of weights one decode step reads: every layer, the final norm and the output matrix
    /// (plus one embedding row, unless the embedding is the output matrix and read whole anyway).
    pub fn bytes_per_token(&self) -> u64 {
        if self.config.tie_word_embeddings {
            return self.file.tensors().map(|t| t.bytes_read() as u64).sum();
        }
        let embed_row = self
            .file
            .tensor_info(EMBED)
            .map(|t| (t.bytes_read() / self.config.vocab_size.max(1)) as u64)
            .unwrap_or(0);
        let weights: u64 = self
            .file
            .tensors()
            .filter(|t| t.name != EMBED)
            .map(|t| t.bytes_read() as u64)
            .sum();
        weights + embed_row
    }

    /// A new inference session with default options (full context, all threads).
    pub fn session(&self) -> Result<Session<'_, R>> {
        Session::new(self, SessionOptions::default())
    }

    /// A new inference session.
    pub fn session_with(&self, options: SessionOptions) -> Result<Session<'_, R>> {
        Session::new(self, options)
    }

    pub(crate) fn rope(&self) -> &RopeTable {
        &self.rope
    }

    pub(crate) fn layer(&self, layer: usize) -> Result<LayerWeights<'_>> {
        let names = &self.layers[layer];
        let h = self.config.hidden_size;
        Ok(LayerWeights {
            input_norm: self.vector(&names.input_norm, h)?,
            q_proj: self.matrix(&names.q_proj)?,
            k_proj: self.matrix(&names.k_proj)?,
            v_proj: self.matrix(&names.v_proj)?,
            o_proj: self.matrix(&names.o_proj)?,
            post_attention_norm: self.vector(&names.post_attention_norm, h)?,
            gate_proj: self.matrix(&names.gate_proj)?,
            up_proj: self.matrix(&names.up_proj)?,
            down_proj: self.matrix(&names.down_proj)?,
        })
    }

    pub(crate) fn final_norm(&self) -> Result<&[f32]> {
        self.vector(FINAL_NORM, self.config.hidden_size)
    }

    pub(crate) fn lm_head(&self) -> Result<MatRef<'_>> {
        self.matrix(self.config.output_tensor_name())
    }

    pub(crate) fn embedding(&self) -> Result<MatRef<'_>> {
        self.matrix(EMBED)
    }

    /// Row ranges of `lm_head` that lazy mode computes one at a time.
    pub(crate) fn output_chunks(&self) -> &[Range<usize>] {
        &self.output_chunks
    }

    /// Lazy mode's steps of a forward pass, in order: the layers, then the `lm_head` chunks.
    pub(crate) fn lazy_steps(&self) -> usize {
        self.layers.len() + self.output_chunks.len()
    }

    /// Lazy mode's paging helper, run on its own thread during a forward pass: maps step `s + 1`
    /// and gives back step `s - 1` while the forward pass computes step `s` (see
    /// [`lazy_steps`](Self::lazy_steps)), so the page-table work (kernel time on one core)
    /// overlaps the bandwidth-bound step instead of stalling both compute threads. `progress`
    /// holds the step being computed, or `usize::MAX` once the pass is over; the helper never
    /// runs more than one step ahead, which bounds the resident set to about three layers.
    /// Returns the first step it has not given back (the caller releases the rest).
    pub(crate) fn page_ahead(&self, progress: &AtomicUsize) -> usize {
        let steps = self.lazy_steps();
        let (mut released, mut next) = (0, 0);
        loop {
            let at = progress.load(Ordering::Acquire);
            if at == usize::MAX {
                return released;
            }
            while released < at.min(steps) {
                self.release_step(released);
                released += 1;
            }
            if next < steps && at + 1 >= next {
                self.set_step_residency(next, Advice::Populate);
                next += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }

    /// After a lazy step ran: give its pages back.
    pub(crate) fn release_step(&self, step: usize) {
        if R::RELEASE_AFTER_USE {
            self.set_step_residency(step, Advice::DontNeed);
        }
    }

    /// Advice is best effort: a failure only costs speed or memory, never correctness.
    fn set_step_residency(&self, step: usize, advice: Advice) {
        let _ = match self.layers.get(step) {
            Some(names) => self.file.set_group_residency(&names.all(), advice),
            None => match self.output_chunks.get(step - self.layers.len()) {
                Some(rows) => self.file.set_rows_residency(
                    self.config.output_tensor_name(),
                    rows.clone(),
                    advice,
                ),
                None => Ok(()),
            },
        };
    }

    /// After the embedding lookup (lazy mode): give the rows read back.
    pub(crate) fn release_embedding(&self) {
        if R::RELEASE_AFTER_USE {
            let _ = self.file.set_group_residency(&[EMBED], Advice::DontNeed);
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<&[f32]> {
        let tensor = self.file.tensor(name)?;
        match tensor.data {
            TensorData::F32(values) if values.len() == len => Ok(values),
            _ => Err(ModelError::InvalidOption {
                option: name.to_string(),
                message: format!("expected {len} float32 values"),
            }),
        }
    }

    fn matrix(&self, name: &str) -> Result<MatRef<'_>> {
        let tensor = self.file.tensor(name)?;
        let (rows, cols) = match tensor.info.shape.as_slice() {
            &[rows, cols] => (rows, cols),
            shape => {
                return Err(ModelError::InvalidOption {
                    option: name.to_string(),
                    message: format!("expected a matrix, found shape {shape:?}"),
                })
            }
        };
        Ok(match tensor.data {
            TensorData::F32(values) => MatRef::f32(values, rows, cols)?,
            TensorData::Int8(view) => MatRef::int8(view.values, view.inv_scales, rows, cols)?,
            TensorData::Int4(view) => MatRef::int4(view.packed, view.scales, rows, cols)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_into_chunks_of_bounded_size() {
        assert_eq!(split_rows(32000, 524 << 20, 64 << 20), {
            // 524 MiB in 64 MiB pieces: 9 chunks of 3556 rows, the last one shorter.
            let mut v: Vec<_> = (0..8).map(|c| c * 3556..(c + 1) * 3556).collect();
            v.push(28448..32000);
            v
        });
        assert_eq!(split_rows(10, 100, 1000), vec![0..10]);
        assert_eq!(split_rows(3, 100, 1), vec![0..1, 1..2, 2..3]);
        assert_eq!(split_rows(0, 0, 64), vec![0..0]);
    }

    /// Every logit of evaluating `ids`, then of one decode step.
    fn all_logits<R: Residency>(session: &mut Session<'_, R>, ids: &[u32], out: &mut Vec<f32>) {
        session
            .evaluate(ids, |_, row| out.extend_from_slice(row))
            .unwrap();
        out.extend_from_slice(session.step(3).unwrap());
    }

    /// Lazy mode computes the logits a chunk of `lm_head` rows at a time: with chunks that cut
    /// the vocabulary unevenly, every logit (one row in decode, all rows in evaluation) must be
    /// bit-identical to the resident model's single product.
    #[test]
    fn chunked_output_gives_the_same_logits() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models");
        for file in ["small-gqa-int8.bin", "small-mha-f32.bin"] {
            let path = Path::new(fixtures).join(file);
            let eager = Mistral::load(&path).unwrap();
            let mut lazy = LazyMistral::load(&path).unwrap();
            let vocab = lazy.config.vocab_size;
            lazy.output_chunks = split_rows(vocab, vocab, vocab.div_ceil(7));
            assert_eq!(lazy.output_chunks.len(), 7);
            let ids: Vec<u32> = (0..23).map(|i| (i * 131 + 7) % vocab as u32).collect();
            let options = SessionOptions {
                batch_size: 5,
                ..Default::default()
            };
            let (mut expected, mut found) = (Vec::new(), Vec::new());
            let mut session = eager.session_with(options.clone()).unwrap();
            all_logits(&mut session, &ids, &mut expected);
            let mut session = lazy.session_with(options).unwrap();
            all_logits(&mut session, &ids, &mut found);
            assert_eq!(expected.len(), (ids.len() + 1) * vocab, "{file}");
            assert!(expected == found, "{file}");
        }
    }
}
