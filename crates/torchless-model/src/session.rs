//! An inference session: the mutable state of one conversation (KV cache, position, scratch
//! buffers) over a shared, immutable model.

use std::ops::Range;
#[cfg(feature = "parallel")]
use std::sync::Arc;

use torchless_kernels::{Kernels, KvType, RopeTable};

use crate::error::{ModelError, Result};
use crate::forward::{Forward, Pass, Scratch, SequenceRows};
use crate::kv_cache::{KvCache, KvTypes};
use crate::model::Model;
use crate::residency::Residency;
use crate::weights::Weights;

/// Largest RoPE table a session builds for itself (contexts longer than the model's shared
/// table): 1 GiB, two million positions at head_dim 128.
const MAX_ROPE_BYTES: u128 = 1 << 30;

/// Options for a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Positions the session can hold, prompt and generation together (default: the model's
    /// `max_position_embeddings`). The KV cache never holds more than the sliding window plus one
    /// batch, however long the context.
    pub context_len: Option<usize>,
    /// Most tokens processed in one batch of a prefill (default 512, llama.cpp's micro-batch:
    /// every batch reads all the weights once, so larger batches amortize that read and the
    /// packing of weight tiles; scratch buffers grow with it, ~105 MB at 512 for a 7B model).
    pub batch_size: usize,
    /// Threads for generating one token at a time (`0`: the global rayon pool, one per core).
    pub threads: usize,
    /// Threads for batched prompt processing (`0`: same as `threads`).
    pub batch_threads: usize,
    /// Faster, inexact prompt processing for int8 models (default off): batched products quantize
    /// their activations per 64-group to 7-bit integers and multiply in integer arithmetic
    /// (see [`crate::kernels::Kernels::with_int8_activations`]). Generating one token at a time,
    /// batches of fewer than 5 tokens and f32 models are unaffected.
    pub int8_activations: bool,
    /// GGUF weights (ggml blocks) multiplied exactly (default off): dequantized to f32 and
    /// multiplied with f32 activations, the reference path that matches `transformers` on the
    /// same file to f32 rounding (see [`crate::kernels::Kernels::with_exact_blocks`]). Off, the
    /// activations are quantized per block as llama.cpp does (Q8_0 per 32 for the 32-value
    /// formats, Q8_K per 256 for the K-quants), faster. Other weights are unaffected.
    pub exact_activations: bool,
    /// How the KV cache stores keys (llama.cpp's `--cache-type-k`; default f32, exact). f16
    /// halves the cache, Q8_0 (per 32 values a half scale and 8-bit codes) takes 34/128 of it
    /// and needs a head dimension that is a multiple of 32. Attention reads either in place.
    pub cache_type_k: KvType,
    /// How the KV cache stores values (llama.cpp's `--cache-type-v`; default f32).
    pub cache_type_v: KvType,
}

impl SessionOptions {
    /// The cache element types these options ask for.
    pub fn kv_types(&self) -> KvTypes {
        KvTypes {
            keys: self.cache_type_k,
            values: self.cache_type_v,
        }
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            context_len: None,
            batch_size: 512,
            threads: 0,
            batch_threads: 0,
            int8_activations: false,
            exact_activations: false,
            cache_type_k: KvType::F32,
            cache_type_v: KvType::F32,
        }
    }
}

/// The state of one sequence being processed by a model.
///
/// A session owns its KV cache and scratch buffers (allocated once); the model is only borrowed,
/// so several sessions can run on one model, in parallel threads if wanted.
pub struct Session<'m, R: Residency> {
    model: &'m Model<R>,
    /// The model's weights, resolved once for the session's life.
    weights: Weights<'m>,
    /// RoPE angles for a context longer than the model's shared table covers.
    own_rope: Option<RopeTable>,
    kernels: Kernels,
    kv_cache: KvCache,
    scratch: Scratch,
    /// Logits of the rows asked for in the last forward call.
    logits: Vec<f32>,
    /// Positions stored in the KV cache.
    position: usize,
    /// Every token fed to the model so far, then a token generated but not yet fed, if any.
    tokens: Vec<u32>,
    pending: Option<u32>,
    context_len: usize,
    batch_size: usize,
    /// See [`Session::chunk_invariant_from`].
    chunk_invariant_from: Option<usize>,
    #[cfg(feature = "parallel")]
    decode_pool: Option<Arc<rayon::ThreadPool>>,
    #[cfg(feature = "parallel")]
    batch_pool: Option<Arc<rayon::ThreadPool>>,
}

impl<R: Residency> std::fmt::Debug for Session<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("position", &self.position)
            .field("context_len", &self.context_len)
            .field("cache_capacity", &self.kv_cache.capacity())
            .field("pending", &self.pending)
            .finish()
    }
}

impl<R: Residency> Model<R> {
    /// A new inference session with default options (full context, all threads).
    pub fn session(&self) -> Result<Session<'_, R>> {
        Session::new(self, SessionOptions::default())
    }

    /// A new inference session.
    pub fn session_with(&self, options: SessionOptions) -> Result<Session<'_, R>> {
        Session::new(self, options)
    }
}

impl<'m, R: Residency> Session<'m, R> {
    /// A new session on `model`.
    pub fn new(model: &'m Model<R>, options: SessionOptions) -> Result<Self> {
        let config = model.config();
        let max_positions = config.max_position_embeddings;
        let context_len = options.context_len.unwrap_or(max_positions);
        if context_len == 0 || context_len > max_positions {
            return Err(ModelError::InvalidOption {
                option: "context length".into(),
                message: format!(
                    "{context_len} is outside 1..={max_positions} (max_position_embeddings)"
                ),
            });
        }
        if options.batch_size == 0 {
            return Err(ModelError::InvalidOption {
                option: "batch size".into(),
                message: "must be at least 1".into(),
            });
        }
        let capacity = match config.sliding_window {
            Some(window) if window < context_len => (window + options.batch_size).min(context_len),
            _ => context_len,
        };
        let kv_cache = KvCache::new(
            config.n_layers,
            config.n_kv_heads,
            config.head_dim,
            capacity,
            config.sliding_window,
            options.kv_types(),
        )?;
        let batch_size = options
            .batch_size
            .min(kv_cache.max_batch_at())
            .min(context_len);
        let scratch = Scratch::new(batch_size, config);
        let own_rope = if context_len > model.rope().max_positions() {
            let bytes = 4 * config.head_dim as u128 * context_len as u128;
            if bytes > MAX_ROPE_BYTES {
                return Err(ModelError::InvalidOption {
                    option: "context length".into(),
                    message: format!(
                        "{context_len} positions need a RoPE table of {bytes} bytes, more than \
                         {MAX_ROPE_BYTES}; use a shorter context"
                    ),
                });
            }
            Some(RopeTable::new(
                config.head_dim,
                config.rope_theta,
                context_len,
            )?)
        } else {
            None
        };
        #[cfg(feature = "parallel")]
        let (decode_pool, batch_pool) = {
            let pool = |n: usize| -> Result<Option<Arc<rayon::ThreadPool>>> {
                Ok(match n {
                    0 => None,
                    n => Some(Arc::new(torchless_kernels::thread_pool(n)?)),
                })
            };
            let decode = pool(options.threads)?;
            let batch = match options.batch_threads {
                0 => decode.clone(),
                n if n == options.threads => decode.clone(),
                n => pool(n)?,
            };
            (decode, batch)
        };
        let weights = model.weights()?;
        let kernels = Kernels::auto()
            .with_int8_activations(options.int8_activations)
            .with_exact_blocks(options.exact_activations);
        let chunk_invariant_from = match capacity < context_len {
            // A rolling cache wraps, and wrapped positions take another attention loop.
            true => None,
            false => invariant_from(&kernels, &weights, batch_size),
        };
        Ok(Self {
            model,
            weights,
            own_rope,
            kernels,
            kv_cache,
            scratch,
            logits: Vec::new(),
            position: 0,
            tokens: Vec::new(),
            pending: None,
            context_len,
            batch_size,
            chunk_invariant_from,
            #[cfg(feature = "parallel")]
            decode_pool,
            #[cfg(feature = "parallel")]
            batch_pool,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<R> {
        self.model
    }

    /// Number of positions processed (stored in the KV cache).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Positions this session can hold.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// Most tokens per prefill batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The shortest prefill chunk from which a position's keys and values (so the logits of
    /// what follows) have the same bits whatever chunk computes it, or `None` when the kernels promise no such length (a
    /// BLAS GEMM, a sliding window's rolling cache, a batch size below twice that length).
    ///
    /// With it, a prompt's positions are the same however it is cut into chunks of at least
    /// that many tokens: a prompt cache can reuse any prefix that prefill computed (not one a
    /// decode step computed: a single token runs other kernels). ggml quantized weights and int4
    /// give 2 and 5, f32 2, int8 17 (5 with int8 activations). Prefill keeps every chunk at that
    /// length or more where the prompt allows (see [`next_chunk_len`](Self::next_chunk_len)).
    pub fn chunk_invariant_from(&self) -> Option<usize> {
        self.chunk_invariant_from
    }

    /// How many of `remaining` prompt tokens the next prefill chunk takes: a whole batch, or
    /// the rest if it fits, except that a tail shorter than
    /// [`chunk_invariant_from`](Self::chunk_invariant_from) is never left behind (the chunk
    /// before it is shortened instead).
    pub fn next_chunk_len(&self, remaining: usize) -> usize {
        self.next_chunk_len_at_most(remaining, usize::MAX)
    }

    /// [`next_chunk_len`](Self::next_chunk_len) with chunks of at most `limit` tokens where
    /// that changes no result: with [`chunk_invariant_from`](Self::chunk_invariant_from)
    /// `Some(min)`, `limit` is raised to `2 * min` if lower (so the tail rule can hold);
    /// without it, chunks stay whole batches (their alignment is what makes them reusable).
    pub fn next_chunk_len_at_most(&self, remaining: usize, limit: usize) -> usize {
        plan_chunk(remaining, self.batch_size, limit, self.chunk_invariant_from)
    }

    /// The KV cache (capacity and memory figures).
    pub fn kv_cache(&self) -> &KvCache {
        &self.kv_cache
    }

    /// Every token of the sequence so far, including a generated token not yet processed.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The logits of the last position processed (empty before the first call).
    pub fn logits(&self) -> &[f32] {
        let vocab = self.model.config().vocab_size;
        let n = self.logits.len();
        &self.logits[n.saturating_sub(vocab)..]
    }

    /// A token that was generated (returned to the caller) but not yet run through the model; it
    /// is processed first by the next [`prefill`](Self::prefill) or [`step`](Self::step).
    pub fn pending_token(&self) -> Option<u32> {
        self.pending
    }

    pub(crate) fn set_pending(&mut self, token: u32) {
        self.pending = Some(token);
        self.tokens.push(token);
    }

    /// Forgets everything: the next token is at position 0 again.
    pub fn reset(&mut self) {
        self.position = 0;
        self.tokens.clear();
        self.pending = None;
        self.logits.clear();
    }

    /// Goes back to `position` (e.g. to regenerate from there). Fails if the rolling cache has
    /// already overwritten keys the positions after it would attend to.
    pub fn rewind(&mut self, position: usize) -> Result<()> {
        if position > self.position {
            return Err(ModelError::InvalidOption {
                option: "rewind position".into(),
                message: format!("{position} is past the current position {}", self.position),
            });
        }
        let needed_from = self
            .kv_cache
            .attended_positions(position)
            .start
            .min(position);
        let oldest = self.kv_cache.oldest_cached(self.position);
        if needed_from < oldest {
            return Err(ModelError::RewindTooFar {
                to: position,
                oldest,
                position: self.position,
            });
        }
        self.position = position;
        self.pending = None;
        self.tokens.truncate(position);
        self.logits.clear();
        Ok(())
    }

    /// Runs `tokens` after what the session holds and returns the logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let input = self.take_input(tokens)?;
        if input.is_empty() {
            return Err(ModelError::EmptyInput(
                "nothing to process: no tokens given",
            ));
        }
        let last = input.len() - 1;
        self.run(&input, |_, _| {}, last..last + 1)?;
        Ok(self.logits())
    }

    /// Runs one token and returns its logits (decode).
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.prefill(&[token])
    }

    /// One decode step of several sessions on the same model, as one forward pass: `tokens[i]`
    /// is run after what `sessions[i]` holds, and its logits are then in `sessions[i].logits()`.
    ///
    /// The weights are read from memory once for the whole step instead of once per session
    /// (decode is bound by that read, so a step of a few sessions costs little more than one),
    /// and each session's logits are bit-identical to what [`step`](Self::step) would give it
    /// alone: batching never changes what a session generates. This is what a server's
    /// continuous batching runs between prompts.
    ///
    /// Every session must belong to the same model, have no pending token (feed generated tokens
    /// here instead) and have room for one more position; at most the first session's
    /// [`batch_size`](Self::batch_size) sessions go in one step. Nothing is changed when a check
    /// fails; a failure inside the pass resets every session, as [`prefill`](Self::prefill)
    /// does.
    pub fn step_batch(sessions: &mut [&mut Session<'m, R>], tokens: &[u32]) -> Result<()> {
        let invalid = |message: String| ModelError::InvalidOption {
            option: "batched decode step".into(),
            message,
        };
        if tokens.len() != sessions.len() {
            return Err(invalid(format!(
                "{} tokens for {} sessions",
                tokens.len(),
                sessions.len()
            )));
        }
        let Some(first) = sessions.first() else {
            return Ok(());
        };
        let model = first.model;
        if sessions.len() > first.batch_size {
            return Err(invalid(format!(
                "{} sessions, more than the first session's batch size {}",
                sessions.len(),
                first.batch_size
            )));
        }
        for (i, (session, &token)) in sessions.iter().zip(tokens).enumerate() {
            if !std::ptr::eq(session.model, model) {
                return Err(invalid(format!("session {i} runs another model")));
            }
            if session.pending.is_some() {
                return Err(invalid(format!("session {i} has a pending token")));
            }
            session.check_tokens(&[token])?;
            session.check_room(session.position + 1)?;
        }
        if let [session] = sessions {
            return session.step(tokens[0]).map(|_| ());
        }
        for (session, &token) in sessions.iter_mut().zip(tokens) {
            session.tokens.push(token);
        }
        let result = Self::forward_sessions(sessions, tokens);
        if result.is_err() {
            for session in sessions.iter_mut() {
                session.reset();
            }
        }
        result
    }

    /// The forward pass of [`step_batch`](Self::step_batch) (inputs validated), in the first
    /// session's decode pool and with its weights and scratch buffers.
    fn forward_sessions(sessions: &mut [&mut Session<'m, R>], tokens: &[u32]) -> Result<()> {
        // The RoPE table must cover every session's position: the longest one any of them has
        // (lent for the pass, given back after).
        let longest = (0..sessions.len())
            .filter(|&i| sessions[i].own_rope.is_some())
            .max_by_key(|&i| sessions[i].context_len);
        let own_rope = longest.and_then(|i| sessions[i].own_rope.take());
        let result = Self::forward_sessions_with(sessions, tokens, own_rope.as_ref());
        if let Some(i) = longest {
            sessions[i].own_rope = own_rope;
        }
        result
    }

    fn forward_sessions_with(
        sessions: &mut [&mut Session<'m, R>],
        tokens: &[u32],
        own_rope: Option<&RopeTable>,
    ) -> Result<()> {
        let [first, rest @ ..] = sessions else {
            return Ok(());
        };
        let model = first.model;
        let vocab = model.config().vocab_size;
        #[cfg(feature = "parallel")]
        let pool = first.decode_pool.clone();
        let mut batch_logits = std::mem::take(first.scratch.batch_logits());
        let mut sequences = Vec::with_capacity(rest.len() + 1);
        sequences.push(SequenceRows {
            kv_cache: &mut first.kv_cache,
            start: first.position,
            rows: 0..1,
        });
        for (i, session) in rest.iter_mut().enumerate() {
            sequences.push(SequenceRows {
                kv_cache: &mut session.kv_cache,
                start: session.position,
                rows: i + 1..i + 2,
            });
        }
        let rope = own_rope.unwrap_or(model.rope());
        let forward = Forward::new(model.config(), rope, &first.weights, first.kernels);
        let mut pass = Pass {
            scratch: &mut first.scratch,
            tokens,
            sequences: &mut sequences,
            logit_rows: 0..tokens.len(),
            logits: &mut batch_logits,
        };
        // One token per sequence: a burst of short parallel products.
        let mut run = || model.paged(|pager| spinning::<R, _>(|| forward.run(&mut pass, pager)));
        #[cfg(feature = "parallel")]
        let result = match pool {
            Some(pool) => pool.install(run),
            None => run(),
        };
        #[cfg(not(feature = "parallel"))]
        let result = run();
        drop(sequences);
        if result.is_ok() {
            debug_assert_eq!(
                batch_logits.len(),
                sessions.len() * vocab,
                "a row per session"
            );
            for (session, row) in sessions.iter_mut().zip(batch_logits.chunks_exact(vocab)) {
                session.position += 1;
                session.logits.clear();
                session.logits.extend_from_slice(row);
            }
        }
        *sessions[0].scratch.batch_logits() = batch_logits;
        result
    }

    /// Runs `tokens` (at most one batch, already validated) at positions `self.position..`,
    /// stores their keys and values, and leaves the logits of the batch rows `logit_rows` in
    /// `self.logits` (row-major, `logit_rows.len() x vocab`).
    fn forward_batch(&mut self, tokens: &[u32], logit_rows: Range<usize>) -> Result<()> {
        let model = self.model;
        let rope = self.own_rope.as_ref().unwrap_or(model.rope());
        let forward = Forward::new(model.config(), rope, &self.weights, self.kernels);
        let mut sequences = [SequenceRows {
            kv_cache: &mut self.kv_cache,
            start: self.position,
            rows: 0..tokens.len(),
        }];
        let mut pass = Pass {
            scratch: &mut self.scratch,
            tokens,
            sequences: &mut sequences,
            logit_rows,
            logits: &mut self.logits,
        };
        model.paged(|pager| forward.run(&mut pass, pager))?;
        self.position += tokens.len();
        Ok(())
    }

    /// Runs `tokens` and calls `on_logits(i, logits)` for every one of them (teacher forcing, e.g.
    /// for perplexity). `i` indexes `tokens` (a pending token, if any, is processed first and
    /// gets no call).
    pub fn evaluate(&mut self, tokens: &[u32], on_logits: impl FnMut(usize, &[f32])) -> Result<()> {
        self.evaluate_from(tokens, 0, on_logits)
    }

    /// Like [`evaluate`](Self::evaluate), computing logits (and calling `on_logits`) only for
    /// the tokens from index `first` on: the output projection of the others is skipped.
    pub fn evaluate_from(
        &mut self,
        tokens: &[u32],
        first: usize,
        mut on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        let offset = usize::from(self.pending.is_some());
        let input = self.take_input(tokens)?;
        let wanted = (first + offset).min(input.len())..input.len();
        self.run(
            &input,
            |i, row| {
                if i >= offset {
                    on_logits(i - offset, row)
                }
            },
            wanted,
        )
    }

    /// Checks `tokens` and prepends a pending token; records them in the history. Input that is
    /// refused here leaves the session unchanged.
    fn take_input(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        self.check_tokens(tokens)?;
        let mut input = Vec::with_capacity(tokens.len() + 1);
        input.extend(self.pending);
        input.extend_from_slice(tokens);
        self.check_room(self.position + input.len())?;
        self.pending = None;
        self.tokens.extend_from_slice(tokens);
        Ok(input)
    }

    /// Fails on the first id of `tokens` outside the vocabulary.
    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab_size = self.model.config().vocab_size;
        match tokens.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(ModelError::InvalidToken { id, vocab_size }),
            None => Ok(()),
        }
    }

    /// Fails unless `needed` positions fit in the session's context.
    fn check_room(&self, needed: usize) -> Result<()> {
        if needed > self.context_len {
            return Err(ModelError::ContextOverflow {
                needed,
                context_len: self.context_len,
                max_positions: self.model.config().max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Feeds `input` batch by batch; logits are computed for the positions in `wanted` (indices
    /// into `input`), handed to `on_logits` per row, and the last row stays in `self.logits`.
    /// A failure inside the forward pass (a kernel refusing its shapes) resets the session, since
    /// its cache may hold a partly written batch.
    fn run(
        &mut self,
        input: &[u32],
        on_logits: impl FnMut(usize, &[f32]),
        wanted: Range<usize>,
    ) -> Result<()> {
        let result = self.run_batches(input, on_logits, wanted);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn run_batches(
        &mut self,
        input: &[u32],
        mut on_logits: impl FnMut(usize, &[f32]),
        wanted: Range<usize>,
    ) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        let mut done = 0;
        while done < input.len() {
            let batch = &input[done..done + self.next_chunk_len(input.len() - done)];
            let range = done..done + batch.len();
            let lo = wanted.start.clamp(range.start, range.end) - done;
            let hi = wanted.end.clamp(range.start, range.end) - done;
            self.forward_in_pool(batch, lo..hi)?;
            for (i, row) in self.logits.chunks_exact(vocab).enumerate() {
                on_logits(done + lo + i, row);
            }
            done += batch.len();
        }
        Ok(())
    }

    fn forward_in_pool(&mut self, batch: &[u32], logit_rows: Range<usize>) -> Result<()> {
        #[cfg(feature = "parallel")]
        {
            let pool = if batch.len() > 1 {
                self.batch_pool.clone()
            } else {
                self.decode_pool.clone()
            };
            let run = || {
                if batch.len() == 1 {
                    // One token: a burst of short parallel products.
                    spinning::<R, _>(|| self.forward_batch(batch, logit_rows))
                } else {
                    self.forward_batch(batch, logit_rows)
                }
            };
            match pool {
                Some(pool) => pool.install(run),
                None => run(),
            }
        }
        #[cfg(not(feature = "parallel"))]
        self.forward_batch(batch, logit_rows)
    }
}

/// [`Session::next_chunk_len_at_most`] for a session of `batch` tokens per chunk whose chunks
/// must keep `min` tokens or more (`batch >= 2 * min`).
fn plan_chunk(remaining: usize, batch: usize, limit: usize, min: Option<usize>) -> usize {
    let batch = match min {
        Some(min) => limit.clamp(2 * min, batch),
        None => batch,
    };
    match min {
        _ if remaining <= batch => remaining,
        Some(min) if remaining - batch < min => remaining - min,
        _ => batch,
    }
}

/// See [`Session::chunk_invariant_from`]: the longest of the lengths the kernels promise for
/// attention and for every layer's products, if `batch` leaves room for two chunks of it.
fn invariant_from(kernels: &Kernels, weights: &Weights<'_>, batch: usize) -> Option<usize> {
    // The output matrix is left out: the promise is about keys and values, and the logits a
    // prompt cache needs (the prompt's last token) are a one-row product in any chunk.
    let mut from = kernels.attention_batch_invariant_from();
    for layer in &weights.layers {
        for w in layer.matrices() {
            from = from.max(kernels.batch_invariant_from(w)?);
        }
    }
    (batch >= 2 * from).then_some(from)
}

/// Runs `f`, one decode step, with the pool's threads spinning between its parallel products
/// (`torchless_kernels::with_spinning_workers`): handed to rayon one by one, every product
/// would wake the other threads, and under a hypervisor a wake-up takes tens of microseconds.
/// Not for weights paged in lazily: there a step waits on page faults, and spinning threads
/// would only take CPU from the paging helper.
fn spinning<R: Residency, T>(f: impl FnOnce() -> T) -> T {
    if R::RELEASE_AFTER_USE {
        return f();
    }
    #[cfg(feature = "parallel")]
    return torchless_kernels::with_spinning_workers(f);
    #[cfg(not(feature = "parallel"))]
    f()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{LazyMistral, Mistral};
    use crate::residency::split_rows;

    /// Every logit of evaluating `ids`, then of one decode step.
    fn all_logits<R: Residency>(session: &mut Session<'_, R>, ids: &[u32], out: &mut Vec<f32>) {
        session
            .evaluate(ids, |_, row| out.extend_from_slice(row))
            .unwrap();
        out.extend_from_slice(session.step(3).unwrap());
    }

    /// Chunk plans, exhaustively over small sizes: chunks sum to the prompt, none exceeds the
    /// batch (or the limit, where it is at least twice the minimum), and with a minimum no chunk
    /// is shorter than it unless the whole prompt is.
    #[test]
    fn chunk_plans_never_leave_a_short_tail() {
        for min in [None, Some(1), Some(2), Some(5)] {
            let floor = min.unwrap_or(1);
            for batch in 2 * floor..=24 {
                for limit in 1..=26 {
                    for total in 1..=70 {
                        let mut done = 0;
                        let mut chunks = Vec::new();
                        while done < total {
                            let c = plan_chunk(total - done, batch, limit, min);
                            assert!(c >= 1, "{min:?} b{batch} l{limit} t{total}: empty chunk");
                            chunks.push(c);
                            done += c;
                        }
                        let what = format!("{min:?} b{batch} l{limit} t{total}: {chunks:?}");
                        assert_eq!(done, total, "{what}");
                        let cap = match min {
                            Some(m) => limit.clamp(2 * m, batch),
                            None => batch,
                        };
                        assert!(chunks.iter().all(|&c| c <= cap), "{what}");
                        if let Some(m) = min {
                            if total >= m {
                                assert!(chunks.iter().all(|&c| c >= m), "{what}");
                            }
                        }
                    }
                }
            }
        }
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
            let vocab = lazy.config().vocab_size;
            let paging = lazy.paging_mut();
            paging.set_output_chunks(split_rows(vocab, vocab, vocab.div_ceil(7)));
            assert_eq!(paging.output_chunks().len(), 7);
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
