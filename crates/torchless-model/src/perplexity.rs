//! Teacher-forced evaluation: the mean negative log-likelihood of a text under the model, and
//! the divergence of two sessions' next-token distributions, with two ways of cutting the text
//! into windows and choosing the positions scored ([`Scoring`]).

use crate::error::{ModelError, Result};
use crate::model::Residency;
use crate::sampling::logsumexp;
use crate::session::Session;

/// How a text is cut into windows evaluated from an empty cache, and which positions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// Chunks of at most `ctx` tokens, each starting with BOS (for a model whose prompts have
    /// none, plain windows whose first token is context only); every token after the first of
    /// its chunk is predicted and scored, the last chunk may be short. Hugging Face's strided
    /// evaluation without overlap.
    #[default]
    EveryPosition,
    /// As llama.cpp's `llama-perplexity` (and its `--kl-divergence`): the ids (with BOS first
    /// when the model's prompts start with it) cut into `len / ctx` windows of exactly `ctx`
    /// tokens, the rest dropped; the first token of each window replaced by BOS when the model
    /// uses one; only the second half scored: the predictions made at positions
    /// `ctx/2 .. ctx-1` (of tokens `ctx/2 + 1 ..= ctx - 1`), so every scored token has at least
    /// `ctx/2` tokens of context. Figures comparable to llama.cpp's on the same file and text.
    LlamaPerplexity,
}

/// One window of a text: its tokens and the positions whose predictions are scored.
struct Window {
    tokens: Vec<u32>,
    /// Positions whose logits count (each predicts the token after it, if any).
    scored: std::ops::Range<usize>,
}

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
    /// Positions compared (every position of every chunk; with
    /// [`Scoring::LlamaPerplexity`], the scored ones).
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
    /// `ids` cut into windows as `scoring` says.
    fn windows(&self, ids: &[u32], ctx: usize, scoring: Scoring) -> Result<Vec<Window>> {
        match scoring {
            Scoring::EveryPosition => Ok(self
                .chunks(ids, ctx)?
                .into_iter()
                .map(|tokens| Window {
                    scored: 0..tokens.len(),
                    tokens,
                })
                .collect()),
            Scoring::LlamaPerplexity => {
                if ctx < 4 {
                    return Err(ModelError::InvalidOption {
                        option: "ctx".into(),
                        message: format!(
                            "{ctx} leaves no second half to score in a window; use 4 or more"
                        ),
                    });
                }
                if ids.len() < ctx {
                    return Err(ModelError::InvalidOption {
                        option: "ctx".into(),
                        message: format!(
                            "llama-perplexity scoring needs at least one window of {ctx} tokens; \
                             the text has {}",
                            ids.len()
                        ),
                    });
                }
                let tokenizer = self.model().tokenizer();
                let bos = tokenizer.adds_bos().then(|| tokenizer.bos_id()).flatten();
                Ok(ids
                    .chunks_exact(ctx)
                    .map(|chunk| {
                        let mut tokens = chunk.to_vec();
                        if let Some(bos) = bos {
                            tokens[0] = bos;
                        }
                        Window {
                            tokens,
                            scored: ctx / 2..ctx - 1,
                        }
                    })
                    .collect())
            }
        }
    }

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
        progress: impl FnMut(usize, usize),
    ) -> Result<Divergence> {
        self.divergence_with(other, ids, ctx, Scoring::EveryPosition, progress)
    }

    /// [`divergence`](Self::divergence) with the windows and positions of `scoring`.
    pub fn divergence_with<R2: Residency>(
        &mut self,
        other: &mut Session<'_, R2>,
        ids: &[u32],
        ctx: usize,
        scoring: Scoring,
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
        let windows = self.windows(ids, ctx, scoring)?;
        let (mut sum_kl, mut max_kl, mut agree, mut positions) = (0.0f64, 0.0f64, 0usize, 0usize);
        let (mut nll, mut other_nll, mut predicted) = (0.0f64, 0.0f64, 0usize);
        for (i, window) in windows.iter().enumerate() {
            let (input, first) = (&window.tokens, window.scored.start);
            self.reset();
            other.reset();
            // This session's log-probabilities for the scored rows, then the other's row by row.
            let mut reference: Vec<f64> = Vec::with_capacity(window.scored.len() * vocab);
            self.evaluate_from(input, first, |t, logits| {
                if window.scored.contains(&t) {
                    let lse = logsumexp(logits);
                    reference.extend(logits.iter().map(|&l| f64::from(l) - lse));
                }
            })?;
            other.evaluate_from(input, first, |t, logits| {
                if !window.scored.contains(&t) {
                    return;
                }
                let row = t - first;
                let log_p = &reference[row * vocab..(row + 1) * vocab];
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
            progress(i + 1, windows.len());
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
        progress: impl FnMut(usize, usize),
    ) -> Result<Perplexity> {
        self.perplexity_with(ids, ctx, Scoring::EveryPosition, progress)
    }

    /// [`perplexity`](Self::perplexity) with the windows and positions of `scoring`
    /// ([`Scoring::LlamaPerplexity`]: figures comparable to `llama-perplexity`'s).
    pub fn perplexity_with(
        &mut self,
        ids: &[u32],
        ctx: usize,
        scoring: Scoring,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Perplexity> {
        let windows = self.windows(ids, ctx, scoring)?;
        let mut total_nll = 0.0f64;
        let mut count = 0usize;
        for (i, window) in windows.iter().enumerate() {
            let input = &window.tokens;
            self.reset();
            let mut failed = None;
            self.evaluate_from(input, window.scored.start, |t, logits| {
                if !window.scored.contains(&t) {
                    return;
                }
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
            progress(i + 1, windows.len());
        }
        self.reset();
        let mean_nll = total_nll / count as f64;
        Ok(Perplexity {
            tokens: count,
            chunks: windows.len(),
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
