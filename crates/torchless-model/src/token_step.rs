//! What happens to one row of logits once the model produced it, for every way of generating
//! ([`Session::stream`](crate::Session::stream) and the [`Scheduler`](crate::Scheduler)): pick the
//! token (sampling with the repetition penalty over the sequence so far), measure its
//! log-probability, turn it into text, hold back text that could be the start of a stop text,
//! and decide whether the generation ends there. Kept in one place so that a request served
//! among others gives exactly what a session generating alone gives.

use torchless_tokenizer::{StreamDecoder, Tokenizer};

use crate::constrained::{Constraint, Grammar};
use crate::error::Result;
use crate::model::Residency;
use crate::sampling::{logsumexp, top_logprobs, Sampler, SamplingParams};
use crate::session::Session;

/// One generated token, as the streaming callback, the iterator and the scheduler's events see
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    /// Token id.
    pub id: u32,
    /// Text that became final with this token (may be empty: a multi-byte character split
    /// across byte tokens appears with its last byte, and text that could be the beginning of a
    /// stop text waits until it cannot).
    pub text: String,
    /// Natural-log probability of this token under the model (before sampling adjustments).
    pub logprob: f64,
    /// The top log-probabilities at this position, most likely first, if asked for.
    pub top_logprobs: Vec<(u32, f64)>,
}

/// Why a generation ended with a given token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The token is EOS (unless told to go past it) or one of the request's stop tokens.
    EndOfSequence,
    /// The text so far contains one of the request's stop texts (cut from the output).
    StopText,
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The session's context holds no position for another token.
    ContextFull,
}

/// What ends a generation and what is reported along the way.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepRules {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Ids that end the generation (EOS included when it should stop).
    pub stop_tokens: Vec<u32>,
    /// Texts that end the generation; the text is cut where the first one starts.
    pub stop_texts: Vec<String>,
    /// How many top log-probabilities to report per token.
    pub top_logprobs: usize,
    /// The structured-output grammar, if any.
    pub grammar: Option<Grammar>,
}

/// The outcome of one step: the token, and whether the generation ends with it.
#[derive(Debug)]
pub(crate) struct Picked {
    pub token: GeneratedToken,
    pub finish: Option<FinishReason>,
}

/// The per-token state of one generation: sampler, streaming decoder and held-back text.
pub(crate) struct TokenStep<'m> {
    rules: StepRules,
    sampler: Sampler,
    /// `None` once its last bytes were taken by [`finish_text`](Self::finish_text).
    decoder: Option<StreamDecoder<'m>>,
    /// Decoded text not yet released: it might be the start of a stop text.
    held: String,
    generated: usize,
    stopped_by_text: bool,
    /// The structured-output state, when the request has a grammar.
    constraint: Option<Constraint>,
}

impl std::fmt::Debug for TokenStep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStep")
            .field("rules", &self.rules)
            .field("generated", &self.generated)
            .field("held", &self.held)
            .finish()
    }
}

impl<'m> TokenStep<'m> {
    /// Fails if a sampling parameter is out of range.
    pub fn new(
        tokenizer: &'m Tokenizer,
        sampling: SamplingParams,
        rules: StepRules,
    ) -> Result<Self> {
        Ok(Self {
            constraint: rules.grammar.as_ref().map(Grammar::constraint),
            rules,
            sampler: Sampler::new(sampling)?,
            decoder: Some(tokenizer.stream_decoder()),
            held: String::new(),
            generated: 0,
            stopped_by_text: false,
        })
    }

    /// Tokens picked so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Whether the generation is over before its first token (`max_tokens` is 0).
    pub fn done_before_start(&self) -> Option<FinishReason> {
        (self.rules.max_tokens == 0).then_some(FinishReason::MaxTokens)
    }

    /// Picks the next token from `session`'s current logits (the session is not changed: the
    /// caller runs the token next). On a finish, the token's text is everything left but the
    /// decoder's incomplete last bytes, which [`finish_text`](Self::finish_text) gives.
    pub fn next<R: Residency>(&mut self, session: &Session<'m, R>) -> Result<Picked> {
        // Log-probabilities are those of the model itself, before penalties and temperature.
        let raw = session.logits();
        let lse = logsumexp(raw);
        let top = match self.rules.top_logprobs {
            0 => Vec::new(),
            k => top_logprobs(raw, k),
        };
        let mut logits = raw.to_vec();
        // The mask comes first, so that penalties, temperature and top-k/p only ever see
        // tokens the grammar allows.
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.mask_logits(&mut logits, &self.rules.stop_tokens)?;
        }
        let id = self.sampler.sample(&mut logits, session.tokens())?;
        let is_stop = self.rules.stop_tokens.contains(&id);
        let mut grammar_done = false;
        if let Some(constraint) = self.constraint.as_mut().filter(|_| !is_stop) {
            constraint.accept(id)?;
            grammar_done = constraint.is_finished();
        }
        let logprob = f64::from(raw[id as usize]) - lse;
        self.generated += 1;

        if let Some(decoder) = self.decoder.as_mut() {
            decoder.push_to(id, &mut self.held);
        }
        let finish = if is_stop || grammar_done {
            Some(FinishReason::EndOfSequence)
        } else if let Some(at) = find_stop(&self.held, &self.rules.stop_texts) {
            self.held.truncate(at);
            self.stopped_by_text = true;
            Some(FinishReason::StopText)
        } else if self.generated >= self.rules.max_tokens {
            Some(FinishReason::MaxTokens)
        } else if session.position() + 1 > session.context_len() {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        let text = if finish.is_some() {
            std::mem::take(&mut self.held)
        } else {
            let cut = self.held.len() - held_back(&self.held, &self.rules.stop_texts);
            let rest = self.held.split_off(cut);
            std::mem::replace(&mut self.held, rest)
        };
        Ok(Picked {
            token: GeneratedToken {
                id,
                text,
                logprob,
                top_logprobs: top,
            },
            finish,
        })
    }

    /// The decoder's incomplete last bytes (each replaced as the full decoder would), to append
    /// after the last token; nothing when a stop text ended the generation, since what follows
    /// it is cut.
    pub fn finish_text(&mut self) -> String {
        let tail = self.decoder.take().map(StreamDecoder::finish);
        if self.stopped_by_text {
            String::new()
        } else {
            tail.unwrap_or_default()
        }
    }
}

/// Where the first complete stop text starts in `text`, if one occurs.
fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// How many bytes at the end of `text` must wait: the longest tail that is the beginning of a
/// stop text (it may complete with the next tokens). Always a character boundary.
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut keep = 0;
    for s in stop {
        for (i, _) in text.char_indices().rev().take(s.chars().count()) {
            let tail = &text[i..];
            if tail.len() > keep && s.starts_with(tail) && tail.len() < s.len() {
                keep = tail.len();
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_texts_are_found_and_their_beginnings_held_back() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\ndef", &stop), Some(3));
        assert_eq!(find_stop("abcEN", &stop), None);
        assert_eq!(held_back("abcEN", &stop), 2);
        assert_eq!(held_back("abc\n", &stop), 1);
        assert_eq!(held_back("abc", &stop), 0);
        assert_eq!(held_back("aé", &["é!".to_string()]), "é".len());
        assert_eq!(find_stop("x", &[String::new()]), None);
    }
}
