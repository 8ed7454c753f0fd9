//! Options shared by the subcommands that run a model.

use std::path::PathBuf;

use clap::Args;
use torchless_model::{KvType, KvTypes, SamplingParams, SessionOptions};

/// How to load and run the model (`--lazy`, `-t`, `--json` mean the same everywhere).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file: a llama.cpp GGUF file (`.gguf`, used as it is: F32, F16, BF16, Q8_0, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K weights) or a torchless model file.
    pub model: PathBuf,
    /// Low-memory mode: keep only the layer being computed resident (about one layer of RAM
    /// instead of the whole file; a little slower).
    #[arg(long)]
    pub lazy: bool,
    /// Read the whole model file into memory instead of mapping it (as llama.cpp's --no-mmap):
    /// slower to start (about a second per 4 GB); decode can be much faster where the page cache
    /// streams slower than fresh memory (some virtual machines: up to 1.8× measured).
    #[arg(long = "no-mmap", conflicts_with = "lazy")]
    pub no_mmap: bool,
    /// Threads for generation [default: one per core].
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Threads for prompt processing (also `-tb`) [default: same as --threads].
    #[arg(long = "batch-threads", value_name = "N")]
    pub batch_threads: Option<usize>,
    /// Context length: prompt plus generated tokens [default: the model's max_position_embeddings].
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Tokens per batch when processing a prompt.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = SessionOptions::default().batch_size
    )]
    pub batch_size: usize,
    /// Faster, inexact prompt processing for int8 models: quantize activations to 7-bit
    /// integers per 64-group in batched products (generation itself stays exact).
    #[arg(long = "int8-activations")]
    pub int8_activations: bool,
    /// GGUF weights: multiply exactly (dequantized to f32, f32 activations) instead of
    /// quantizing the activations per block as llama.cpp does (Q8_0 / Q8_K); slower, and what
    /// `transformers` computes on the same file.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub cache: KvCacheArgs,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the configuration, the kernel path, per-phase timings and ids on stderr.
    #[arg(long)]
    pub debug: bool,
}

impl ModelArgs {
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            context_len: self.ctx_size,
            batch_size: self.batch_size,
            threads: self.threads.unwrap_or(0),
            batch_threads: self.batch_threads.unwrap_or(0),
            int8_activations: self.int8_activations,
            exact_activations: self.exact,
            cache_type_k: self.cache.cache_type_k,
            cache_type_v: self.cache.cache_type_v,
        }
    }
}

/// How the KV cache stores keys and values (llama.cpp's flags and spellings; `-ctk` / `-ctv`
/// work too).
#[derive(Args, Debug, Clone, Default)]
pub struct KvCacheArgs {
    /// KV cache type for keys: f32 (exact), f16 (half the memory) or q8_0 (ggml's Q8_0, 34
    /// bytes per 32 values; needs a head dimension that is a multiple of 32). Also `-ctk`.
    #[arg(
        long = "cache-type-k",
        value_name = "TYPE",
        default_value = "f32",
        value_parser = parse_kv_type
    )]
    pub cache_type_k: KvType,
    /// KV cache type for values: f32, f16 or q8_0. Also `-ctv`.
    #[arg(
        long = "cache-type-v",
        value_name = "TYPE",
        default_value = "f32",
        value_parser = parse_kv_type
    )]
    pub cache_type_v: KvType,
}

impl KvCacheArgs {
    pub fn types(&self) -> KvTypes {
        KvTypes {
            keys: self.cache_type_k,
            values: self.cache_type_v,
        }
    }
}

/// `f32`, `f16` or `q8_0` (any case).
pub fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| {
        let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
        format!(
            "unknown KV cache type `{s}`: use one of {}",
            names.join(", ")
        )
    })
}

/// How tokens are chosen (llama.cpp's defaults and names).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 means greedy (always the most likely token).
    #[arg(long = "temp", value_name = "T", default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only (0: off).
    #[arg(long = "top-k", value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probabilities reach P (1.0: off).
    #[arg(long = "top-p", value_name = "P", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0.0: off).
    #[arg(long = "min-p", value_name = "P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1.0: off).
    #[arg(long = "repeat-penalty", value_name = "X", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long = "repeat-last-n", value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed, for reproducible sampling [default: a fresh random seed, shown by --debug].
    #[arg(short = 's', long, value_name = "N")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(random_seed),
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// `torchless generate` (and the bare `torchless MODEL PROMPT`).
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (BOS is added). Omit it when using --prompt-ids; "-" reads it from stdin.
    pub prompt: Option<String>,
    /// Token ids to use as the prompt instead of text, e.g. 1,415,5565 (BOS is not added).
    #[arg(
        long = "prompt-ids",
        value_name = "IDS",
        value_delimiter = ',',
        conflicts_with = "prompt"
    )]
    pub prompt_ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(
        short = 'n',
        long = "max-tokens",
        value_name = "N",
        default_value_t = SessionOptions::default().batch_size
    )]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating after the end-of-sequence token.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Report the K most likely tokens and their log-probabilities at each generated position.
    #[arg(long, value_name = "K")]
    pub logprobs: Option<usize>,
}
