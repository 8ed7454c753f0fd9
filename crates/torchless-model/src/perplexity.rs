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

impl<R: Residency> Session<'_, R> {
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
        let bos = self.model().tokenizer().bos_id().unwrap_or(1);
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
        let chunks: Vec<&[u32]> = text.chunks(ctx - 1).collect();
        let mut total_nll = 0.0f64;
        let mut count = 0usize;
        for (i, chunk) in chunks.iter().enumerate() {
            self.reset();
            let mut input = Vec::with_capacity(chunk.len() + 1);
            input.push(bos);
            input.extend_from_slice(chunk);
            let mut failed = None;
            self.evaluate(&input, |t, logits| {
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
