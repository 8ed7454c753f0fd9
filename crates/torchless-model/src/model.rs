//! The loaded model: the file (mapped or read into memory), configuration, tokenizer and RoPE
//! tables, every weight checked against the configuration at load.
//!
//! [`Mistral`] keeps every weight resident; [`LazyMistral`] brings each layer's pages in just
//! before the layer runs and gives them back right after. Both run the one forward pass in
//! `forward.rs`; the [`Residency`] type parameter only decides what happens around each layer.

use std::marker::PhantomData;
use std::path::Path;
use std::time::{Duration, Instant};

use torchless_format::{Config, ModelFile};
use torchless_kernels::RopeTable;
use torchless_tokenizer::Tokenizer;

use crate::error::{ModelError, Result};
pub use crate::residency::{Lazy, Residency, Resident};
use crate::residency::{Pager, PagingPlan};
use crate::vocab::tokenizer_from_data;
use crate::weights::{Weights, EMBEDDING};

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
    /// faster where page-cache memory streams slower than fresh memory (as on some virtual
    /// machines). Only for resident models: a [`LazyMistral`] refuses it.
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

/// A loaded Mistral model: immutable, `Send + Sync`, shared by any number of sessions
/// ([`session`](Self::session)).
///
/// Use the aliases [`Mistral`] (resident weights) and [`LazyMistral`] (low memory).
pub struct Model<R: Residency = Resident> {
    file: ModelFile,
    config: Config,
    tokenizer: Tokenizer,
    rope: RopeTable,
    /// What lazy mode pages, step by step (also how the output matrix is cut for it).
    paging: PagingPlan,
    bytes_per_token: u64,
    load_time: Duration,
    /// A chat template that replaces the file's (`--chat-template-file`).
    pub(crate) chat_template_override: Option<String>,
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
            return Err(ModelError::VocabularyMismatch {
                pieces: tokenizer.vocab_size(),
                embedding_rows: config.vocab_size,
            });
        }
        report(LoadProgress::TokenizerReady);

        // The first positions' angles, shared by every session; a session whose context is
        // longer builds its own table (so a file claiming millions of positions costs nothing
        // until a session asks for them).
        let rope = RopeTable::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings.min(SHARED_ROPE_POSITIONS),
        )?;
        let paging = PagingPlan::new(&file, &config)?;
        // Every tensor's shape and dtype, checked here once: sessions resolve the same views.
        Weights::resolve(&file, &config, paging.output_chunks())?;
        let bytes_per_token = weight_bytes_per_token(&file, &config)?;
        let model = Self {
            file,
            config,
            tokenizer,
            rope,
            paging,
            bytes_per_token,
            load_time: Duration::ZERO,
            chat_template_override: None,
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
        self.bytes_per_token
    }

    pub(crate) fn rope(&self) -> &RopeTable {
        &self.rope
    }

    /// Typed views of every weight (checked at load, so this fails only if load would have).
    pub(crate) fn weights(&self) -> Result<Weights<'_>> {
        Weights::resolve(&self.file, &self.config, self.paging.output_chunks())
    }

    /// Runs `f`, one forward pass, with this model's paging around it (a [`Pager`] for lazy
    /// models, nothing for resident ones).
    pub(crate) fn paged<T>(&self, f: impl FnOnce(Option<&Pager<'_>>) -> Result<T>) -> Result<T> {
        self.paging.run::<R, T>(&self.file, f)
    }

    #[cfg(test)]
    pub(crate) fn paging_mut(&mut self) -> &mut PagingPlan {
        &mut self.paging
    }
}

/// Positions whose RoPE angles the model computes at load (the table is `head_dim` floats per
/// position: 32 MiB for head_dim 128). Mistral 7B's 32768 positions fit.
pub(crate) const SHARED_ROPE_POSITIONS: usize = 1 << 16;

/// See [`Model::bytes_per_token`].
fn weight_bytes_per_token(file: &ModelFile, config: &Config) -> Result<u64> {
    let all: u64 = file.tensors().map(|t| t.bytes_read() as u64).sum();
    if config.tie_word_embeddings {
        return Ok(all);
    }
    let embedding = file.tensor_info(EMBEDDING)?.bytes_read();
    let embedding_row = embedding / config.vocab_size.max(1);
    Ok(all - embedding as u64 + embedding_row as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokenizer_with_more_pieces_than_embedding_rows_is_refused() {
        let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models");
        let larger = Mistral::load(format!("{models}/small-gqa-f32.bin")).unwrap();
        let pieces = larger.tokenizer().vocab_size();
        let options = LoadOptions {
            tokenizer: Some(larger.tokenizer().clone()),
            ..Default::default()
        };
        let e = Mistral::load_with(format!("{models}/llama-tied-f32.bin"), options).unwrap_err();
        let ModelError::VocabularyMismatch {
            pieces: found,
            embedding_rows,
        } = e
        else {
            panic!("{e}");
        };
        assert_eq!(found, pieces);
        assert!(embedding_rows < pieces, "{embedding_rows} rows");
        assert_eq!(
            e.to_string(),
            format!("invalid tokenizer: it has {pieces} pieces but the model only {embedding_rows} embedding rows")
        );
    }
}
