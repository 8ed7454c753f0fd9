//! Speed measurement as `llama-bench` does it: prompt processing (one prefill of `n_prompt`
//! tokens) and generation (`n_gen` greedy steps, optionally of several sequences stepping
//! together), repeated, with medians. The figures are returned, never printed.

use std::time::Instant;
use torchless_format::Config;

use crate::error::{ModelError, Result};
use crate::model::{Model, Residency};
use crate::sampling::argmax;
use crate::session::{Session, SessionOptions};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt tokens processed in one prefill (0: no prompt-processing test).
    pub n_prompt: usize,
    /// Tokens generated one at a time after the prompt (0: no generation test).
    pub n_gen: usize,
    /// Repetitions (at least 1); medians are reported.
    pub repetitions: usize,
    /// Sequences generated together, one token of each per forward pass (at least 1).
    pub parallel: usize,
    /// The sessions' options; the context is widened to hold `n_prompt + n_gen` if needed.
    pub session: SessionOptions,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n_prompt: 512,
            n_gen: 128,
            repetitions: 3,
            parallel: 1,
            session: SessionOptions::default(),
        }
    }
}

/// The figures of one [`bench()`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Prompt tokens/s of each repetition (empty without a prompt test).
    pub pp_runs: Vec<f64>,
    /// Generated tokens/s of each repetition, all sequences together (empty without a
    /// generation test).
    pub tg_runs: Vec<f64>,
    /// Bytes of weights each generated token reads: one pass reads the weights once for all
    /// parallel sequences.
    pub bytes_per_token: u64,
    /// The prompt chunk a forward pass takes.
    pub batch_size: usize,
    /// Floating-point operations per prompt token of the prefill (a multiply-add counts 2):
    /// the layers' matrix products, attention over the positions each token sees, and the
    /// output head for the last token only (as prefill computes it), over the prompt's tokens.
    pub prompt_flops_per_token: f64,
}

impl BenchReport {
    /// Median prompt tokens/s (0 without a prompt test).
    pub fn pp_median(&self) -> f64 {
        median(&self.pp_runs)
    }

    /// Median generated tokens/s (0 without a generation test).
    pub fn tg_median(&self) -> f64 {
        median(&self.tg_runs)
    }

    /// Prompt processing in GFLOP/s (the median's), by
    /// [`prompt_flops_per_token`](Self::prompt_flops_per_token).
    pub fn pp_gflops(&self) -> f64 {
        self.prompt_flops_per_token * self.pp_median() / 1e9
    }

    /// Weight bytes read per second during generation (the median's), in GB/s.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes_per_token as f64 * self.tg_median() / 1e9
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// Measures `model`'s prompt-processing and generation speed. The prompt is a fixed sequence of
/// ordinary tokens (past the special and byte pieces when the vocabulary has them), shifted per
/// sequence so parallel sequences differ; generation is greedy. `each_repetition` gets the
/// repetition's index and its pp and tg figures (0 for a test not run) as soon as it is done.
pub fn bench<R: Residency>(
    model: &Model<R>,
    options: &BenchOptions,
    mut each_repetition: impl FnMut(usize, f64, f64),
) -> Result<BenchReport> {
    let invalid = |option: &str, message: String| ModelError::InvalidOption {
        option: option.into(),
        message,
    };
    if options.repetitions == 0 {
        return Err(invalid("repetitions", "must be at least 1".into()));
    }
    if options.parallel == 0 {
        return Err(invalid("parallel", "must be at least 1".into()));
    }
    let config = model.config();
    let needed = options.n_prompt.max(1) + options.n_gen;
    if needed > config.max_position_embeddings {
        return Err(invalid(
            "n_prompt",
            format!(
                "{} prompt plus {} generated tokens exceed the model's context of {} positions",
                options.n_prompt, options.n_gen, config.max_position_embeddings
            ),
        ));
    }
    let mut session_options = options.session.clone();
    session_options.context_len = Some(session_options.context_len.unwrap_or(needed).max(needed));
    let mut sessions = (0..options.parallel)
        .map(|_| model.session_with(session_options.clone()))
        .collect::<Result<Vec<_>>>()?;

    let vocab = config.vocab_size as u32;
    let first = if vocab > 1000 { 259 } else { 3.min(vocab - 1) };
    let prompt = |seq: u32| -> Vec<u32> {
        (0..options.n_prompt as u32)
            .map(|i| first + (i * 7919 + seq * 104_729) % (vocab - first))
            .collect()
    };

    let (mut pp_runs, mut tg_runs) = (Vec::new(), Vec::new());
    for repetition in 0..options.repetitions {
        let mut next = Vec::with_capacity(options.parallel);
        let mut pp = 0.0;
        for (seq, session) in sessions.iter_mut().enumerate() {
            session.reset();
            next.push(if options.n_prompt > 0 {
                let ids = prompt(seq as u32);
                let start = Instant::now();
                let logits = session.prefill(&ids)?;
                let seconds = start.elapsed().as_secs_f64();
                // pp is the first sequence's prefill (they are all the same work).
                if seq == 0 {
                    pp = options.n_prompt as f64 / seconds;
                    pp_runs.push(pp);
                }
                argmax(logits)
            } else {
                1
            });
        }
        let mut tg = 0.0;
        if options.n_gen > 0 {
            let start = Instant::now();
            for _ in 0..options.n_gen {
                if let [session] = sessions.as_mut_slice() {
                    next[0] = argmax(session.step(next[0])?);
                } else {
                    let mut batch: Vec<_> = sessions.iter_mut().collect();
                    Session::step_batch(&mut batch, &next)?;
                    for (token, session) in next.iter_mut().zip(&sessions) {
                        *token = argmax(session.logits());
                    }
                }
            }
            tg = (options.n_gen * options.parallel) as f64 / start.elapsed().as_secs_f64();
            tg_runs.push(tg);
        }
        each_repetition(repetition, pp, tg);
    }
    Ok(BenchReport {
        pp_runs,
        tg_runs,
        bytes_per_token: model.bytes_per_token() / options.parallel as u64,
        batch_size: sessions[0].batch_size(),
        prompt_flops_per_token: prompt_flops(config, options.n_prompt)
            / options.n_prompt.max(1) as f64,
    })
}

/// Floating-point operations of a prefill of `n` tokens (see
/// [`BenchReport::prompt_flops_per_token`]).
pub fn prompt_flops(config: &Config, n: usize) -> f64 {
    let (dim, hidden) = (config.hidden_size as f64, config.intermediate_size as f64);
    let (q_dim, kv_dim) = (config.q_dim() as f64, config.kv_dim() as f64);
    let per_layer = dim * (q_dim + 2.0 * kv_dim) + q_dim * dim + 3.0 * dim * hidden;
    // Token i attends to min(i + 1, window) positions: QKᵀ and PV, q_dim multiply-adds each.
    let window = config.sliding_window.unwrap_or(usize::MAX);
    let attended: f64 = (0..n).map(|i| (i + 1).min(window) as f64).sum();
    let layers = config.n_layers as f64;
    let head = config.vocab_size as f64 * dim;
    let tokens = n as f64;
    2.0 * (layers * (tokens * per_layer + 2.0 * q_dim * attended) + if n > 0 { head } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_flops_count_mistral_7b() {
        let config = Config {
            hidden_size: 4096,
            intermediate_size: 14336,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            vocab_size: 32000,
            max_position_embeddings: 32768,
            sliding_window: Some(2),
            rope_theta: 1e4,
            norm_eps: 1e-5,
            activation: torchless_format::Activation::Silu,
            quant: torchless_format::QuantKind::F32,
            architecture: torchless_format::Architecture::Mistral,
            tie_word_embeddings: false,
            rope_layout: torchless_format::RopeLayout::Halves,
        };
        // Mistral 7B has 7,241,732,096 parameters: minus the embedding and output matrices
        // (2 x 32000 x 4096) and the 65 norm vectors of 4096, 6,979,321,856 in the layers'
        // matrices, each a multiply-add per token.
        let matrices = 7_241_732_096.0 - 2.0 * 32000.0 * 4096.0 - 65.0 * 4096.0;
        let head = 2.0 * 32000.0 * 4096.0;
        // Three tokens with a window of 2 attend to 1 + 2 + 2 positions: 2 x 4096 multiply-adds
        // (QKᵀ and PV) each, in every layer.
        let attention = 32.0 * 5.0 * 2.0 * 2.0 * 4096.0;
        assert_eq!(
            prompt_flops(&config, 3),
            3.0 * 2.0 * matrices + attention + head
        );
        assert_eq!(prompt_flops(&config, 0), 0.0);
    }

    #[test]
    fn medians_of_odd_even_and_no_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
