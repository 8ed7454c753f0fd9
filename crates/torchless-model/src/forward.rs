//! The Mistral forward pass, once, for every weight storage and batch size.
//!
//! For a batch of `n` consecutive tokens at positions `start..start + n` (or, for a decode step
//! of several sessions, one token of each at its own position, with its own KV cache):
//!
//! ```text
//! x = embed(tokens)                                   [n, hidden]
//! for each layer:
//!     h = rmsnorm(x) · input_layernorm
//!     q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ                   [n, n_heads·hd], [n, n_kv_heads·hd] ×2
//!     q, k = rope(q, positions), rope(k, positions)    pairs (i, i + hd/2), or (2j, 2j + 1)
//!                                                     for GGUF rows (RopeLayout::Adjacent)
//!     kv_cache[layer] ← k, v
//!     a = attention(q, kv_cache[layer])               each query head reads its KV group,
//!                                                     over the sliding window ending at its position
//!     x = x + a Woᵀ
//!     h = rmsnorm(x) · post_attention_layernorm
//!     x = x + (silu(h Wgateᵀ) ⊙ h Wupᵀ) Wdownᵀ
//! logits = (rmsnorm(x) · norm) lm_headᵀ                only for the rows asked for
//! ```

use std::ops::Range;

use torchless_format::{Config, RopeLayout};
use torchless_kernels::{Kernels, MatRef, RopeTable};

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::residency::Pager;
use crate::weights::{LayerWeights, Weights};

/// Activations for up to `batch` tokens, allocated once per session.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// The residual stream.
    x: Vec<f32>,
    /// Normalized input of the current sub-block.
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output (all heads concatenated).
    attn: Vec<f32>,
    /// Output of o_proj / down_proj before it is added to the residual.
    delta: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Lazy mode: the logits of one `lm_head` chunk.
    logit_chunk: Vec<f32>,
    /// Several sessions' decode step: the logits of every row, before they go to their sessions.
    batch_logits: Vec<f32>,
}

impl Scratch {
    /// Buffers for batches of up to `batch` tokens of a model with `config`.
    pub(crate) fn new(batch: usize, config: &Config) -> Self {
        let (hidden, q_dim, kv_dim, inter) = dims(config);
        Self {
            x: vec![0.0; batch * hidden],
            normed: vec![0.0; batch * hidden.max(q_dim)],
            q: vec![0.0; batch * q_dim],
            k: vec![0.0; batch * kv_dim],
            v: vec![0.0; batch * kv_dim],
            attn: vec![0.0; batch * q_dim],
            delta: vec![0.0; batch * hidden],
            gate: vec![0.0; batch * inter],
            up: vec![0.0; batch * inter],
            logit_chunk: Vec::new(),
            batch_logits: Vec::new(),
        }
    }

    /// The buffer a several-session decode step collects its logits in.
    pub(crate) fn batch_logits(&mut self) -> &mut Vec<f32> {
        &mut self.batch_logits
    }

    /// The buffers cut to `n` rows.
    fn rows(&mut self, n: usize, config: &Config) -> Activations<'_> {
        let (hidden, q_dim, kv_dim, inter) = dims(config);
        Activations {
            x: &mut self.x[..n * hidden],
            normed: &mut self.normed[..n * hidden],
            q: &mut self.q[..n * q_dim],
            k: &mut self.k[..n * kv_dim],
            v: &mut self.v[..n * kv_dim],
            attn: &mut self.attn[..n * q_dim],
            delta: &mut self.delta[..n * hidden],
            gate: &mut self.gate[..n * inter],
            up: &mut self.up[..n * inter],
            logit_chunk: &mut self.logit_chunk,
        }
    }
}

/// Row lengths: hidden, query, key/value, intermediate.
fn dims(config: &Config) -> (usize, usize, usize, usize) {
    (
        config.hidden_size,
        config.q_dim(),
        config.kv_dim(),
        config.intermediate_size,
    )
}

/// The [`Scratch`] buffers of one pass, `n` rows each (see [`Scratch`] for what they hold).
struct Activations<'s> {
    x: &'s mut [f32],
    normed: &'s mut [f32],
    q: &'s mut [f32],
    k: &'s mut [f32],
    v: &'s mut [f32],
    attn: &'s mut [f32],
    delta: &'s mut [f32],
    gate: &'s mut [f32],
    up: &'s mut [f32],
    logit_chunk: &'s mut Vec<f32>,
}

/// The rows of a forward batch that belong to one sequence: they run at positions `start..`
/// and read and extend `kv_cache`.
pub(crate) struct SequenceRows<'a> {
    pub(crate) kv_cache: &'a mut KvCache,
    pub(crate) start: usize,
    pub(crate) rows: Range<usize>,
}

/// Everything one forward pass works on besides the weights.
pub(crate) struct Pass<'a, 'c> {
    pub(crate) scratch: &'a mut Scratch,
    pub(crate) tokens: &'a [u32],
    /// The sequences, covering `0..tokens.len()` in order. More than one: a decode step of
    /// several sessions, one row each, whose projections go through
    /// [`Kernels::matvec_batch`] so every row is bit-identical to that session stepping alone.
    pub(crate) sequences: &'a mut [SequenceRows<'c>],
    /// Rows whose logits are computed, into `logits` (row-major, `logit_rows.len() x vocab`).
    pub(crate) logit_rows: Range<usize>,
    pub(crate) logits: &'a mut Vec<f32>,
}

/// The model as the forward pass reads it, and the kernels it runs on.
pub(crate) struct Forward<'a> {
    config: &'a Config,
    rope: &'a RopeTable,
    weights: &'a Weights<'a>,
    kernels: Kernels,
    eps: f32,
    attention_scale: f32,
}

impl<'a> Forward<'a> {
    pub(crate) fn new(
        config: &'a Config,
        rope: &'a RopeTable,
        weights: &'a Weights<'a>,
        kernels: Kernels,
    ) -> Self {
        Self {
            config,
            rope,
            weights,
            kernels,
            eps: config.norm_eps as f32,
            attention_scale: 1.0 / (config.head_dim as f32).sqrt(),
        }
    }

    /// The forward pass over `pass.tokens`; positions are left to the caller to advance. With a
    /// `pager` (lazy weights), tells it which layer or output chunk is being computed.
    pub(crate) fn run(&self, pass: &mut Pass<'_, '_>, pager: Option<&Pager<'_>>) -> Result<()> {
        let n = pass.tokens.len();
        let products = Products {
            kernels: self.kernels,
            rows: n,
            independent_rows: pass.sequences.len() > 1,
        };
        let mut act = pass.scratch.rows(n, self.config);
        let hidden = self.config.hidden_size;
        for (row, &token) in act.x.chunks_exact_mut(hidden).zip(pass.tokens) {
            embed(&self.weights.embedding, token, row)?;
        }
        if let Some(pager) = pager {
            pager.embedding_read();
        }
        for (layer, w) in self.weights.layers.iter().enumerate() {
            if let Some(pager) = pager {
                pager.enter(layer);
            }
            self.attention(layer, w, &products, &mut act, pass.sequences)?;
            self.mlp(w, &products, &mut act)?;
        }
        self.output(
            &products,
            &mut act,
            pass.logit_rows.clone(),
            pass.logits,
            pager,
        )
    }

    /// `x += attention(rope(rmsnorm(x) Wq/Wk/Wv)) Wo`, storing the keys and values of `layer`.
    fn attention(
        &self,
        layer: usize,
        w: &LayerWeights<'_>,
        products: &Products,
        act: &mut Activations<'_>,
        sequences: &mut [SequenceRows<'_>],
    ) -> Result<()> {
        let (hidden, q_dim, kv_dim, _) = dims(self.config);
        let kernels = &self.kernels;
        rmsnorm_rows(kernels, act.x, w.attn_norm, self.eps, act.normed, hidden)?;
        products.many(
            &[w.wq, w.wk, w.wv],
            act.normed,
            &mut [&mut *act.q, &mut *act.k, &mut *act.v],
        )?;
        for SequenceRows {
            kv_cache,
            start,
            rows,
        } in sequences.iter_mut()
        {
            let start = *start;
            let q = &mut act.q[rows.start * q_dim..rows.end * q_dim];
            let k = &mut act.k[rows.start * kv_dim..rows.end * kv_dim];
            let v = &act.v[rows.start * kv_dim..rows.end * kv_dim];
            // A GGUF file's query and key rows are llama.cpp's permutation of each head (the
            // rotate-half pairs made adjacent): rotating adjacent pairs uses them as they are,
            // and q·k is the same sum as in the un-permuted model. Costs nothing: no weight is
            // copied, the rotation reads the same tables.
            match self.config.rope_layout {
                RopeLayout::Halves => {
                    self.rope.apply_batch(q, q_dim, start)?;
                    self.rope.apply_batch(k, kv_dim, start)?;
                }
                RopeLayout::Adjacent => {
                    self.rope.apply_batch_adjacent(q, q_dim, start)?;
                    self.rope.apply_batch_adjacent(k, kv_dim, start)?;
                }
            }
            kv_cache.store(layer, start, k, v)?;
            let cache = &**kv_cache;
            kernels.attention_batch(
                q,
                &cache.view(layer)?,
                self.config.n_heads,
                self.attention_scale,
                |t| cache.slots(cache.attended_positions(start + t)),
                &mut act.attn[rows.start * q_dim..rows.end * q_dim],
            )?;
        }
        products.one(&w.wo, act.attn, act.delta)?;
        Ok(kernels.add(act.x, act.delta)?)
    }

    /// `x += (silu(rmsnorm(x) Wgate) ⊙ rmsnorm(x) Wup) Wdown` (SwiGLU).
    fn mlp(
        &self,
        w: &LayerWeights<'_>,
        products: &Products,
        act: &mut Activations<'_>,
    ) -> Result<()> {
        let kernels = &self.kernels;
        let hidden = self.config.hidden_size;
        rmsnorm_rows(kernels, act.x, w.ffn_norm, self.eps, act.normed, hidden)?;
        products.many(
            &[w.w_gate, w.w_up],
            act.normed,
            &mut [&mut *act.gate, &mut *act.up],
        )?;
        kernels.silu_mul_inplace(act.gate, act.up)?;
        products.one(&w.w_down, act.gate, act.delta)?;
        Ok(kernels.add(act.x, act.delta)?)
    }

    /// `logits = rmsnorm(x) · norm · outputᵀ`, only for `logit_rows`; with a `pager`, the
    /// output matrix a chunk of rows (of logit columns) at a time.
    fn output(
        &self,
        products: &Products,
        act: &mut Activations<'_>,
        logit_rows: Range<usize>,
        logits: &mut Vec<f32>,
        pager: Option<&Pager<'_>>,
    ) -> Result<()> {
        let rows = logit_rows.len();
        let (hidden, vocab) = (self.config.hidden_size, self.config.vocab_size);
        logits.resize(rows * vocab, 0.0);
        if rows == 0 {
            return Ok(());
        }
        let x = &act.x[logit_rows.start * hidden..logit_rows.end * hidden];
        let normed = &mut act.normed[..rows * hidden];
        let weights = self.weights;
        rmsnorm_rows(
            &self.kernels,
            x,
            weights.final_norm,
            self.eps,
            normed,
            hidden,
        )?;
        let Some(pager) = pager else {
            return products.rows(&weights.output, normed, logits, rows);
        };
        let layers = weights.layers.len();
        for (c, (chunk, part)) in weights.output_chunks.iter().enumerate() {
            pager.enter(layers + c);
            if chunk.is_empty() {
                continue;
            }
            let logit_chunk = &mut *act.logit_chunk;
            logit_chunk.resize(rows * chunk.len(), 0.0);
            products.rows(part, normed, logit_chunk, rows)?;
            for (logits, part) in logits
                .chunks_exact_mut(vocab)
                .zip(logit_chunk.chunks_exact(chunk.len()))
            {
                logits[chunk.clone()].copy_from_slice(part);
            }
        }
        Ok(())
    }
}

/// The matrix products of one pass, `Y = X Wᵀ` over its rows.
struct Products {
    kernels: Kernels,
    /// Rows of the pass (tokens).
    rows: usize,
    /// The rows belong to different sequences (a several-session decode step).
    independent_rows: bool,
}

impl Products {
    /// `Y = X Wᵀ` over `rows` rows: a GEMM for one sequence's consecutive tokens; one matvec
    /// per row, streaming the weights once, for several sequences.
    fn rows(&self, w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], rows: usize) -> Result<()> {
        if self.independent_rows {
            self.kernels.matvec_batch(w, xs, ys, rows)?;
        } else {
            self.kernels.matmul(w, xs, ys, rows)?;
        }
        Ok(())
    }

    /// `Y = X Wᵀ` over every row of the pass.
    fn one(&self, w: &MatRef<'_>, xs: &[f32], ys: &mut [f32]) -> Result<()> {
        self.rows(w, xs, ys, self.rows)
    }

    /// Products of one input (q/k/v, gate/up): for a single token, or one token of each of
    /// several sequences, one parallel job, which quantizes the inputs once for int4 weights;
    /// for a prompt chunk, ggml quantized weights of one type quantize it once; results as from
    /// [`one`](Self::one).
    fn many(&self, ws: &[MatRef<'_>], xs: &[f32], ys: &mut [&mut [f32]]) -> Result<()> {
        if self.rows == 1 {
            return Ok(self.kernels.matvec_many(ws, xs, ys)?);
        }
        if self.independent_rows {
            return Ok(self.kernels.matvec_batch_many(ws, xs, ys, self.rows)?);
        }
        Ok(self.kernels.matmul_many(ws, xs, ys, self.rows)?)
    }
}

fn rmsnorm_rows(
    kernels: &Kernels,
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    hidden: usize,
) -> Result<()> {
    for (row, out_row) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
        kernels.rmsnorm(row, weight, eps, out_row)?;
    }
    Ok(())
}

/// Copies (or dequantizes) the embedding row of `token` into `out`.
fn embed(embedding: &MatRef<'_>, token: u32, out: &mut [f32]) -> Result<()> {
    let vocab_size = embedding.rows();
    let invalid = || ModelError::InvalidToken {
        id: token,
        vocab_size,
    };
    let row = token as usize;
    if row >= vocab_size {
        return Err(invalid());
    }
    match embedding {
        MatRef::F32(m) => out.copy_from_slice(m.row(row).ok_or_else(invalid)?),
        MatRef::Int8(m) => m.dequantize_row(row, out)?,
        MatRef::Int4(m) => m.dequantize_row(row, out)?,
        // GGUF blocks: the row dequantized exactly (as gguf-py does).
        MatRef::Blocks(m) => m.dequantize_row(row, out)?,
    }
    Ok(())
}
