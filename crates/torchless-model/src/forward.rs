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
//!     q, k = rope(q, positions), rope(k, positions)
//!     kv_cache[layer] ← k, v
//!     a = attention(q, kv_cache[layer])               each query head reads its KV group,
//!                                                     over the sliding window ending at its position
//!     x = x + a Woᵀ
//!     h = rmsnorm(x) · post_attention_layernorm
//!     x = x + (silu(h Wgateᵀ) ⊙ h Wupᵀ) Wdownᵀ
//! logits = (rmsnorm(x) · norm) lm_headᵀ                only for the rows asked for
//! ```

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use torchless_kernels::MatRef;

use torchless_kernels::Kernels;

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::model::{Model, Residency};
use crate::session::Session;

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
    pub(crate) fn new(
        batch: usize,
        hidden: usize,
        q_dim: usize,
        kv_dim: usize,
        inter: usize,
    ) -> Self {
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
}

/// The rows of a forward batch that belong to one sequence: they run at positions `start..`
/// and read and extend `kv_cache`.
pub(crate) struct SequenceRows<'a> {
    pub(crate) kv_cache: &'a mut KvCache,
    pub(crate) start: usize,
    pub(crate) rows: Range<usize>,
}

/// Everything one forward pass works on besides the model.
pub(crate) struct Pass<'a, 'c> {
    pub(crate) kernels: Kernels,
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

/// Runs `f` with lazy mode's paging helper beside it when the model pages its weights (a helper
/// thread maps the next step, layer or `lm_head` chunk, and releases the previous one while this
/// one is computed), or directly otherwise.
pub(crate) fn with_paging<R: Residency, T>(
    model: &Model<R>,
    f: impl FnOnce(Option<&AtomicUsize>) -> Result<T>,
) -> Result<T> {
    if !R::RELEASE_AFTER_USE {
        return f(None);
    }
    let progress = AtomicUsize::new(0);
    let (result, released) = std::thread::scope(|scope| {
        let helper = scope.spawn(|| model.page_ahead(&progress));
        // Tells the helper to stop however this pass ends (result, error or unwinding).
        struct Finished<'a>(&'a AtomicUsize);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.store(usize::MAX, Ordering::Release);
            }
        }
        let finished = Finished(&progress);
        let result = f(Some(&progress));
        drop(finished);
        (result, helper.join().unwrap_or(0))
    });
    for step in released..model.lazy_steps() {
        model.release_step(step);
    }
    result
}

impl Scratch {
    /// The buffer a several-session decode step collects its logits in.
    pub(crate) fn batch_logits(&mut self) -> &mut Vec<f32> {
        &mut self.batch_logits
    }
}

impl<R: Residency> Session<'_, R> {
    /// Runs `tokens` (at most one batch, already validated) at positions `self.position..`, stores
    /// their keys and values, and leaves the logits of the batch rows `logit_rows` in
    /// `self.logits` (row-major, `logit_rows.len() x vocab`).
    pub(crate) fn forward_batch(&mut self, tokens: &[u32], logit_rows: Range<usize>) -> Result<()> {
        let model = self.model;
        let mut sequences = [SequenceRows {
            kv_cache: &mut self.kv_cache,
            start: self.position,
            rows: 0..tokens.len(),
        }];
        let mut pass = Pass {
            kernels: self.kernels,
            scratch: &mut self.scratch,
            tokens,
            sequences: &mut sequences,
            logit_rows,
            logits: &mut self.logits,
        };
        with_paging(model, |progress| forward(model, &mut pass, progress))?;
        self.position += tokens.len();
        Ok(())
    }
}

/// The forward pass over `pass.tokens`; positions are left to the caller to advance.
pub(crate) fn forward<R: Residency>(
    model: &Model<R>,
    pass: &mut Pass<'_, '_>,
    progress: Option<&AtomicUsize>,
) -> Result<()> {
    let config = model.config();
    let kernels = pass.kernels;
    let n = pass.tokens.len();
    let (hidden, q_dim, kv_dim, inter) = (
        config.hidden_size,
        config.q_dim(),
        config.kv_dim(),
        config.intermediate_size,
    );
    let eps = config.norm_eps as f32;
    let attention_scale = 1.0 / (config.head_dim as f32).sqrt();
    let rope = model.rope();
    let independent_rows = pass.sequences.len() > 1;
    // `Y = X Wᵀ` over `rows` rows: a GEMM for one sequence's consecutive tokens; one matvec per
    // row, streaming the weights once, for several sequences.
    let project_rows = |w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], rows: usize| {
        if independent_rows {
            kernels.matvec_batch(w, xs, ys, rows)
        } else {
            kernels.matmul(w, xs, ys, rows)
        }
    };
    let project = |w: &MatRef<'_>, xs: &[f32], ys: &mut [f32]| project_rows(w, xs, ys, n);
    // Projections of one input (q/k/v, gate/up): for a single token one parallel job, which
    // quantizes the input once for int4 weights; results as from `project`.
    let project_many = |ws: &[MatRef<'_>], xs: &[f32], ys: &mut [&mut [f32]]| {
        if n == 1 {
            return kernels.matvec_many(ws, xs, ys);
        }
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            project(w, xs, y)?;
        }
        Ok(())
    };
    let Scratch {
        x,
        normed,
        q,
        k,
        v,
        attn,
        delta,
        gate,
        up,
        logit_chunk,
        batch_logits: _,
    } = &mut *pass.scratch;
    let (x, normed, q, k, v, attn, delta, gate, up) = (
        &mut x[..n * hidden],
        &mut normed[..n * hidden],
        &mut q[..n * q_dim],
        &mut k[..n * kv_dim],
        &mut v[..n * kv_dim],
        &mut attn[..n * q_dim],
        &mut delta[..n * hidden],
        &mut gate[..n * inter],
        &mut up[..n * inter],
    );

    let embedding = model.embedding()?;
    for (row, &token) in x.chunks_exact_mut(hidden).zip(pass.tokens) {
        embed(&embedding, token, row)?;
    }
    model.release_embedding();

    for layer in 0..config.n_layers {
        if let Some(progress) = progress {
            progress.store(layer, Ordering::Release);
        }
        let w = model.layer(layer)?;

        // Attention block.
        rmsnorm_rows(&kernels, x, w.input_norm, eps, normed, hidden)?;
        project_many(
            &[w.q_proj, w.k_proj, w.v_proj],
            normed,
            &mut [&mut *q, &mut *k, &mut *v],
        )?;
        for sequence in pass.sequences.iter_mut() {
            let SequenceRows {
                kv_cache,
                start,
                rows,
            } = sequence;
            let start = *start;
            let q = &mut q[rows.start * q_dim..rows.end * q_dim];
            let k = &mut k[rows.start * kv_dim..rows.end * kv_dim];
            let v = &v[rows.start * kv_dim..rows.end * kv_dim];
            rope.apply_batch(q, q_dim, start)?;
            rope.apply_batch(k, kv_dim, start)?;
            kv_cache.store(layer, start, k, v)?;
            let cache = &**kv_cache;
            kernels.attention_batch(
                q,
                &cache.view(layer)?,
                config.n_heads,
                attention_scale,
                |t| cache.slots(cache.attended_positions(start + t)),
                &mut attn[rows.start * q_dim..rows.end * q_dim],
            )?;
        }
        project(&w.o_proj, attn, delta)?;
        kernels.add(x, delta)?;

        // MLP block (SwiGLU).
        rmsnorm_rows(&kernels, x, w.post_attention_norm, eps, normed, hidden)?;
        project_many(
            &[w.gate_proj, w.up_proj],
            normed,
            &mut [&mut *gate, &mut *up],
        )?;
        kernels.silu_mul_inplace(gate, up)?;
        project(&w.down_proj, gate, delta)?;
        kernels.add(x, delta)?;
    }

    // Output: final norm and lm_head, only for the rows whose logits are wanted.
    let logit_rows = pass.logit_rows.clone();
    let rows = logit_rows.len();
    let vocab = config.vocab_size;
    let logits = &mut *pass.logits;
    logits.resize(rows * vocab, 0.0);
    if rows > 0 {
        let x = &x[logit_rows.start * hidden..logit_rows.end * hidden];
        let normed = &mut normed[..rows * hidden];
        rmsnorm_rows(&kernels, x, model.final_norm()?, eps, normed, hidden)?;
        let lm_head = model.lm_head()?;
        match progress {
            None => project_rows(&lm_head, normed, logits, rows)?,
            // Lazy mode: lm_head a chunk of rows (of logit columns) at a time.
            Some(progress) => {
                for (c, chunk) in model.output_chunks().iter().enumerate() {
                    progress.store(config.n_layers + c, Ordering::Release);
                    if chunk.is_empty() {
                        continue;
                    }
                    let part = lm_head.rows_range(chunk.clone())?;
                    logit_chunk.resize(rows * chunk.len(), 0.0);
                    project_rows(&part, normed, logit_chunk, rows)?;
                    for (logits, part) in logits
                        .chunks_exact_mut(vocab)
                        .zip(logit_chunk.chunks_exact(chunk.len()))
                    {
                        logits[chunk.clone()].copy_from_slice(part);
                    }
                }
            }
        }
    }
    Ok(())
}

fn rmsnorm_rows(
    kernels: &torchless_kernels::Kernels,
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
    }
    Ok(())
}
