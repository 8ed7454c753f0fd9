//! Text generation: prompt processing, then one token at a time through a [`Sampler`], streamed
//! as text pieces from the tokenizer's streaming decoder, with timing statistics returned.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use torchless_tokenizer::Tokenizer;

use crate::constrained::Grammar;
use crate::error::{ModelError, Result};
use crate::model::Residency;
use crate::sampling::SamplingParams;
use crate::session::Session;
pub use crate::token_step::GeneratedToken;
use crate::token_step::{FinishReason, StepRules, TokenStep};

/// Options for [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are chosen (default greedy).
    pub sampling: SamplingParams,
    /// Stop when the model produces its end-of-sequence token (default `true`; the EOS token is
    /// reported but adds no text).
    pub stop_at_eos: bool,
    /// Report the top-`logprobs` log-probabilities of every generated position (`0`: none).
    pub logprobs: usize,
    /// More ids that end generation as EOS does (e.g. a chat template's `<|im_end|>`), whatever
    /// `stop_at_eos` says; like EOS, such a token is reported, adds no text, and stays in the
    /// cache.
    pub stop_tokens: Vec<u32>,
    /// Structured output: only tokens that keep the text a valid prefix of a document of this
    /// grammar are sampled (the mask comes before every other sampling step), stop tokens only
    /// once the document is complete, and the generation ends when nothing more may follow.
    pub grammar: Option<Grammar>,
}

impl GenerateOptions {
    /// The rules of the per-token step, plus `stop_texts` (which only the scheduler takes).
    pub(crate) fn step_rules(&self, tokenizer: &Tokenizer, stop_texts: Vec<String>) -> StepRules {
        let mut stop_tokens = self.stop_tokens.clone();
        if let Some(eos) = tokenizer.eos_id().filter(|_| self.stop_at_eos) {
            stop_tokens.push(eos);
        }
        StepRules {
            max_tokens: self.max_tokens,
            stop_tokens,
            stop_texts,
            top_logprobs: self.logprobs,
            grammar: self.grammar.clone(),
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
            logprobs: 0,
            stop_tokens: Vec::new(),
            grammar: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced its end-of-sequence token.
    EndOfSequence,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// Timing of a generation (returned, never printed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Time the model took to load.
    pub load_time: Duration,
    /// Tokens of the prompt processed.
    pub prompt_tokens: usize,
    /// Time spent processing the prompt (prefill).
    pub prompt_time: Duration,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent generating (from the first sampled token to the last).
    pub generation_time: Duration,
    /// Why generation ended.
    pub stop_reason: StopReason,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    /// Generated tokens per second (each needs one forward pass after the first).
    pub fn generation_tokens_per_second(&self) -> f64 {
        rate(
            self.generated_tokens.saturating_sub(1),
            self.generation_time,
        )
    }
}

fn rate(n: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        n as f64 / time.as_secs_f64()
    }
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Ids of the generated tokens (EOS included if it ended the generation).
    pub ids: Vec<u32>,
    /// The generated text (special tokens left out).
    pub text: String,
    /// Per-token details, in order.
    pub tokens: Vec<GeneratedToken>,
    /// Timing.
    pub stats: GenerationStats,
}

/// A generation in progress, yielding one token at a time (an [`Iterator`]).
///
/// Created by [`Session::stream`]. The prompt is processed by the first call to `next`.
pub struct TokenStream<'s, 'm, R: Residency> {
    session: &'s mut Session<'m, R>,
    prompt: Vec<u32>,
    step: TokenStep<'m>,
    prompt_time: Duration,
    generation_started: Option<Instant>,
    generation_time: Duration,
    stop_reason: Option<StopReason>,
    /// A limit the last token reached: reported by the next call, which runs nothing (the
    /// token was returned and stays pending).
    limit_reached: Option<StopReason>,
    failed: bool,
}

impl<R: Residency> std::fmt::Debug for TokenStream<'_, '_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("generated", &self.step.generated())
            .field("stop_reason", &self.stop_reason)
            .finish()
    }
}

impl<R: Residency> TokenStream<'_, '_, R> {
    /// Statistics so far (complete once the iterator returned `None`).
    pub fn stats(&self) -> GenerationStats {
        GenerationStats {
            load_time: self.session.model().load_time(),
            prompt_tokens: self.prompt.len(),
            prompt_time: self.prompt_time,
            generated_tokens: self.step.generated(),
            generation_time: self.generation_time,
            stop_reason: self.stop_reason.unwrap_or(StopReason::Cancelled),
        }
    }

    /// Why the generation ended (`None` while it runs).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }

    /// Text held back by the streaming decoder (an incomplete UTF-8 sequence at the very end),
    /// replaced as the full decoder would; call after the last token.
    pub fn finish_text(mut self) -> String {
        self.step.finish_text()
    }

    fn next_token(&mut self) -> Result<Option<GeneratedToken>> {
        if self.stop_reason.is_some() {
            return Ok(None);
        }
        if let Some(reason) = self.limit_reached.take() {
            self.stop_reason = Some(reason);
            return Ok(None);
        }
        if self.step.generated() == 0 {
            if self.step.done_before_start().is_some() {
                self.stop_reason = Some(StopReason::MaxTokens);
                return Ok(None);
            }
            let start = Instant::now();
            self.session.prefill(&self.prompt)?;
            self.prompt_time = start.elapsed();
            self.generation_started = Some(Instant::now());
        } else {
            // The previous token is pending in the session: run it.
            self.session.prefill(&[])?;
        }
        let picked = self.step.next(self.session)?;
        self.session.set_pending(picked.token.id);
        if let Some(started) = self.generation_started {
            self.generation_time = started.elapsed();
        }
        match picked.finish {
            // A stream has no stop texts: only a stop token ends it at once.
            Some(FinishReason::EndOfSequence | FinishReason::StopText) => {
                self.stop_reason = Some(StopReason::EndOfSequence)
            }
            Some(FinishReason::MaxTokens) => self.limit_reached = Some(StopReason::MaxTokens),
            Some(FinishReason::ContextFull) => self.limit_reached = Some(StopReason::ContextFull),
            None => {}
        }
        Ok(Some(picked.token))
    }
}

impl<R: Residency> Iterator for TokenStream<'_, '_, R> {
    type Item = Result<GeneratedToken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_token() {
            Ok(token) => token.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl<'m, R: Residency> Session<'m, R> {
    /// Starts generating after `prompt` (token ids, appended to what the session holds). Iterate
    /// the returned stream to get tokens as they are produced.
    ///
    /// The last generated token stays pending in the session, so a following call (e.g. the next
    /// chat turn) continues the same sequence.
    pub fn stream<'s>(
        &'s mut self,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<TokenStream<'s, 'm, R>> {
        if prompt.is_empty() && self.pending_token().is_none() {
            return Err(ModelError::EmptyInput(
                "the prompt is empty: give at least one token (usually BOS)",
            ));
        }
        let tokenizer = self.model().tokenizer();
        let rules = options.step_rules(tokenizer, Vec::new());
        let step = TokenStep::new(tokenizer, options.sampling, rules)?;
        Ok(TokenStream {
            session: self,
            prompt: prompt.to_vec(),
            step,
            prompt_time: Duration::ZERO,
            generation_started: None,
            generation_time: Duration::ZERO,
            stop_reason: None,
            limit_reached: None,
            failed: false,
        })
    }

    /// Generates after `prompt`, calling `on_token` for each token as it is produced; returning
    /// [`ControlFlow::Break`] from it stops early. Returns the ids, text and statistics.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: GenerateOptions,
        mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let mut stream = self.stream(prompt, options)?;
        let mut tokens = Vec::new();
        let mut text = String::new();
        while let Some(token) = stream.next() {
            let token = token?;
            text.push_str(&token.text);
            let flow = on_token(&token);
            tokens.push(token);
            if flow.is_break() {
                stream.stop_reason = Some(StopReason::Cancelled);
                break;
            }
        }
        let stats = stream.stats();
        text.push_str(&stream.finish_text());
        Ok(Generation {
            ids: tokens.iter().map(|t| t.id).collect(),
            text,
            tokens,
            stats,
        })
    }

    /// Encodes `prompt` (with BOS when the session is empty and the model's prompts start with
    /// one) and generates from it, without a callback. The simplest way to get a completion.
    pub fn complete(&mut self, prompt: &str, options: GenerateOptions) -> Result<Generation> {
        let tokenizer = self.model().tokenizer();
        let ids = tokenizer.encode(
            prompt,
            torchless_tokenizer::EncodeOptions {
                add_bos: tokenizer.adds_bos()
                    && self.position() == 0
                    && self.pending_token().is_none(),
                parse_special: false,
            },
        );
        self.generate(&ids, options, |_| ControlFlow::Continue(()))
    }
}
