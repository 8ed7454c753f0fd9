//! Teacher-forced evaluation: the mean negative log-likelihood of a text under the model.

use crate::error::{ModelError, Result};
use crate::model::Residency;
use crate::sampling::logsumexp;
use crate::session::Session;

/// Result of [`Session::perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Number of tokens predicted (every token of every chunk but its first).
    pub tokens: usize,
    /// Number of chunks evaluated.
    pub chunks: usize,
    /// Mean negative log-likelihood in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
}

/// Result of [`Session::divergence`]: how far another session's next-token distributions are
/// from this one's (e.g. the inexact int8-activation path against the exact one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// Positions compared (every position of every chunk).
    pub positions: usize,
    /// Mean of `KL(P_self || P_other)` over the positions, in nats.
    pub mean_kl: f64,
    /// Largest KL divergence at one position, in nats.
    pub max_kl: f64,
    /// Fraction of positions where both distributions have the same most likely token.
    pub top1_agreement: f64,
    /// Mean negative log-likelihood of the text under this session (as [`Perplexity::mean_nll`]).
    pub mean_nll: f64,
    /// The same under the other session.
    pub other_mean_nll: f64,
}

impl<R: Residency> Session<'_, R> {
    /// `ids` cut into chunks of at most `ctx` tokens, each starting with BOS (a leading BOS in
    /// `ids` is not counted twice). For a model whose prompts have no BOS (SmolLM2, GPT-2
    /// style), the chunks are plain windows of `ctx` tokens and each window's first token is
    /// context only, as Hugging Face's strided evaluation with no overlap does.
    fn chunks(&self, ids: &[u32], ctx: usize) -> Result<Vec<Vec<u32>>> {
        let tokenizer = self.model().tokenizer();
        if !tokenizer.adds_bos() {
            if ctx < 2 {
                return Err(ModelError::InvalidOption {
                    option: "ctx".into(),
                    message: format!("{ctx} leaves no token to predict in a window; use 2 or more"),
                });
            }
            if ids.len() < 2 {
                return Err(ModelError::EmptyInput("fewer than two tokens to evaluate"));
            }
            return Ok(ids
                .chunks(ctx)
                .filter(|chunk| chunk.len() >= 2)
                .map(<[u32]>::to_vec)
                .collect());
        }
        let bos = tokenizer.bos_id().unwrap_or(1);
        let text = ids.strip_prefix(&[bos]).unwrap_or(ids);
        if ctx < 2 {
            return Err(ModelError::InvalidOption {
                option: "ctx".into(),
                message: format!("{ctx} leaves no token to predict after the BOS; use 2 or more"),
            });
        }
        if text.is_empty() {
            return Err(ModelError::EmptyInput("no tokens to evaluate"));
        }
        Ok(text
            .chunks(ctx - 1)
            .map(|chunk| {
                let mut input = Vec::with_capacity(chunk.len() + 1);
                input.push(bos);
                input.extend_from_slice(chunk);
                input
            })
            .collect())
    }

    /// Evaluates `ids` like [`Self::perplexity`] in this session and in `other` (the same model
    /// run with other options, or another model with the same vocabulary) and compares their
    /// next-token distributions at every position: KL divergence from this session's, top-1
    /// agreement, and both mean NLLs. Both sessions are reset before and after.
    pub fn divergence<R2: Residency>(
        &mut self,
        other: &mut Session<'_, R2>,
        ids: &[u32],
        ctx: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Divergence> {
        let vocab = self.model().config().vocab_size;
        if other.model().config().vocab_size != vocab {
            return Err(ModelError::InvalidOption {
                option: "other session".into(),
                message: format!(
                    "vocabulary of {} tokens, this model has {vocab}",
                    other.model().config().vocab_size
                ),
            });
        }
        let chunks = self.chunks(ids, ctx)?;
        let (mut sum_kl, mut max_kl, mut agree, mut positions) = (0.0f64, 0.0f64, 0usize, 0usize);
        let (mut nll, mut other_nll, mut predicted) = (0.0f64, 0.0f64, 0usize);
        for (i, input) in chunks.iter().enumerate() {
            self.reset();
            other.reset();
            // This session's log-probabilities for the whole chunk, then the other's row by row.
            let mut reference: Vec<f64> = Vec::with_capacity(input.len() * vocab);
            self.evaluate(input, |_, logits| {
                let lse = logsumexp(logits);
                reference.extend(logits.iter().map(|&l| f64::from(l) - lse));
            })?;
            other.evaluate(input, |t, logits| {
                let log_p = &reference[t * vocab..(t + 1) * vocab];
                let lse = logsumexp(logits);
                let kl: f64 = log_p
                    .iter()
                    .zip(logits)
                    .map(|(&lp, &l)| lp.exp() * (lp - (f64::from(l) - lse)))
                    .sum();
                sum_kl += kl;
                max_kl = max_kl.max(kl);
                agree += usize::from(argmax_f64(log_p) == argmax_f32(logits));
                positions += 1;
                if let Some(&next) = input.get(t + 1) {
                    nll -= log_p[next as usize];
                    other_nll += lse - f64::from(logits[next as usize]);
                    predicted += 1;
                }
            })?;
            progress(i + 1, chunks.len());
        }
        self.reset();
        other.reset();
        let n = positions.max(1) as f64;
        let m = predicted.max(1) as f64;
        Ok(Divergence {
            positions,
            mean_kl: sum_kl / n,
            max_kl,
            top1_agreement: agree as f64 / n,
            mean_nll: nll / m,
            other_mean_nll: other_nll / m,
        })
    }

    /// Evaluates `ids` in chunks of at most `ctx` tokens, each starting with BOS and run from an
    /// empty cache: every token after the BOS is predicted from the ones before it in its chunk.
    /// A leading BOS in `ids` is not counted twice. `progress(done, total)` counts chunks.
    ///
    /// The session is reset before and after.
    pub fn perplexity(
        &mut self,
        ids: &[u32],
        ctx: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Perplexity> {
        let chunks = self.chunks(ids, ctx)?;
        let mut total_nll = 0.0f64;
        let mut count = 0usize;
        for (i, input) in chunks.iter().enumerate() {
            self.reset();
            let mut failed = None;
            self.evaluate(input, |t, logits| {
                // Logits at position t predict token t + 1.
                if let Some(&next) = input.get(t + 1) {
                    match logits.get(next as usize) {
                        Some(&l) => {
                            total_nll += logsumexp(logits) - f64::from(l);
                            count += 1;
                        }
                        None => failed = Some(next),
                    }
                }
            })?;
            if let Some(id) = failed {
                return Err(ModelError::InvalidToken {
                    id,
                    vocab_size: self.model().config().vocab_size,
                });
            }
            progress(i + 1, chunks.len());
        }
        self.reset();
        let mean_nll = total_nll / count as f64;
        Ok(Perplexity {
            tokens: count,
            chunks: chunks.len(),
            mean_nll,
            perplexity: mean_nll.exp(),
        })
    }
}

fn argmax_f64(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn argmax_f32(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
