//! The Mistral forward pass, once, for every weight storage and batch size.
//!
//! For a batch of `n` consecutive tokens at positions `start..start + n`:
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

use crate::error::{ModelError, Result};
use crate::model::Residency;
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
        }
    }
}

impl<R: Residency> Session<'_, R> {
    /// Runs `tokens` (at most one batch, already validated) at positions `self.position..`, stores
    /// their keys and values, and leaves the logits of the batch rows `logit_rows` in
    /// `self.logits` (row-major, `logit_rows.len() x vocab`).
    pub(crate) fn forward_batch(&mut self, tokens: &[u32], logit_rows: Range<usize>) -> Result<()> {
        if !R::RELEASE_AFTER_USE {
            return self.forward_layers(tokens, logit_rows, None);
        }
        // Lazy mode: a helper thread maps the next step (layer or lm_head chunk) and releases
        // the previous one while this one is computed.
        let model = self.model;
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
            let result = self.forward_layers(tokens, logit_rows, Some(&progress));
            drop(finished);
            (result, helper.join().unwrap_or(0))
        });
        for step in released..model.lazy_steps() {
            model.release_step(step);
        }
        result
    }

    fn forward_layers(
        &mut self,
        tokens: &[u32],
        logit_rows: Range<usize>,
        progress: Option<&AtomicUsize>,
    ) -> Result<()> {
        let model = self.model;
        let config = model.config();
        let kernels = self.kernels;
        let n = tokens.len();
        let start = self.position;
        let (hidden, q_dim, kv_dim, inter) = (
            config.hidden_size,
            config.q_dim(),
            config.kv_dim(),
            config.intermediate_size,
        );
        let eps = config.norm_eps as f32;
        let attention_scale = 1.0 / (config.head_dim as f32).sqrt();
        let rope = model.rope();
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
        } = &mut self.scratch;
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
        for (row, &token) in x.chunks_exact_mut(hidden).zip(tokens) {
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
            kernels.matmul(&w.q_proj, normed, q, n)?;
            kernels.matmul(&w.k_proj, normed, k, n)?;
            kernels.matmul(&w.v_proj, normed, v, n)?;
            rope.apply_batch(q, q_dim, start)?;
            rope.apply_batch(k, kv_dim, start)?;
            self.kv_cache.store(layer, start, k, v)?;
            let cache = &self.kv_cache;
            kernels.attention_batch(
                q,
                &cache.view(layer)?,
                config.n_heads,
                attention_scale,
                |t| cache.slots(cache.attended_positions(start + t)),
                attn,
            )?;
            kernels.matmul(&w.o_proj, attn, delta, n)?;
            kernels.add(x, delta)?;

            // MLP block (SwiGLU).
            rmsnorm_rows(&kernels, x, w.post_attention_norm, eps, normed, hidden)?;
            kernels.matmul(&w.gate_proj, normed, gate, n)?;
            kernels.matmul(&w.up_proj, normed, up, n)?;
            kernels.silu_mul_inplace(gate, up)?;
            kernels.matmul(&w.down_proj, gate, delta, n)?;
            kernels.add(x, delta)?;
        }

        // Output: final norm and lm_head, only for the rows whose logits are wanted.
        let rows = logit_rows.len();
        let vocab = config.vocab_size;
        self.logits.resize(rows * vocab, 0.0);
        if rows > 0 {
            let x = &x[logit_rows.start * hidden..logit_rows.end * hidden];
            let normed = &mut normed[..rows * hidden];
            rmsnorm_rows(&kernels, x, model.final_norm()?, eps, normed, hidden)?;
            let lm_head = model.lm_head()?;
            match progress {
                None => kernels.matmul(&lm_head, normed, &mut self.logits, rows)?,
                // Lazy mode: lm_head a chunk of rows (of logit columns) at a time.
                Some(progress) => {
                    for (c, chunk) in model.output_chunks().iter().enumerate() {
                        progress.store(config.n_layers + c, Ordering::Release);
                        if chunk.is_empty() {
                            continue;
                        }
                        let part = lm_head.rows_range(chunk.clone())?;
                        logit_chunk.resize(rows * chunk.len(), 0.0);
                        kernels.matmul(&part, normed, logit_chunk, rows)?;
                        for (logits, part) in self
                            .logits
                            .chunks_exact_mut(vocab)
                            .zip(logit_chunk.chunks_exact(chunk.len()))
                        {
                            logits[chunk.clone()].copy_from_slice(part);
                        }
                    }
                }
            }
        }
        self.position += n;
        Ok(())
    }
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
    }
    Ok(())
}
