//! [`Kernels`]: every kernel, bound to one SIMD path (and optionally BLAS). Each method checks
//! its arguments, chooses a driver (or BLAS), and runs it on the path's instruction set through
//! one [`on_isa!`] dispatch.

use crate::attention::views::check_heads;
use crate::attention::{decode, prefill, KvCacheView, RowsRef, SlotRanges};
#[cfg(any(
    feature = "openblas",
    feature = "blis",
    all(feature = "accelerate", target_os = "macos")
))]
use crate::blas;
use crate::blocks::{BlockMat, BlockType};
use crate::dispatch::{auto_path, blas_backend, on_isa, require, Path, SimdPath};
use crate::error::{check_len, checked_mul, KernelError};
use crate::gemm::{blocks, float, int4, int8};
use crate::gemv;
use crate::isa::traits::{Elementwise, Isa};
use crate::mat::{F32Mat, MatRef};

/// The kernels on one SIMD path. `Kernels::auto()` is what the free functions use; build one with
/// [`Kernels::with_path`] to force a path (tests, benchmarks, `--debug` comparisons).
///
/// Every method validates lengths and returns [`KernelError`] on a mismatch before touching data;
/// work is spread over the current rayon pool (see [`crate::thread_pool`]).
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    path: Path,
    blas: bool,
    int8_activations: bool,
    exact_blocks: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Self::auto()
    }
}

/// Largest batch of int8 rows handled as repeated dot products rather than a GEMM.
const SMALL_BATCH: usize = 16;
/// Smallest batch of ggml block weights in f32 arithmetic (F16 / BF16, or the exact arithmetic)
/// that takes the f32 GEMM; smaller ones stream the weights once through the rows kernel.
const BLOCK_GEMM_MIN_BATCH: usize = 5;

impl Kernels {
    /// The fastest path this CPU supports (or `$TORCHLESS_SIMD`, see [`crate::PATH_ENV`]), with
    /// BLAS for f32 GEMM/GEMV when a BLAS feature is compiled in. Detection runs once.
    pub fn auto() -> Self {
        Self {
            path: auto_path(),
            blas: blas_backend().is_some(),
            int8_activations: false,
            exact_blocks: false,
        }
    }

    /// A specific path, without BLAS; fails if the CPU or build lacks it.
    pub fn with_path(path: SimdPath) -> Result<Self, KernelError> {
        Ok(Self {
            path: require(path)?,
            blas: false,
            int8_activations: false,
            exact_blocks: false,
        })
    }

    /// Turns BLAS for f32 matvec/matmul on or off (on fails without a BLAS feature).
    pub fn with_blas(self, enabled: bool) -> Result<Self, KernelError> {
        if enabled && blas_backend().is_none() {
            return Err(KernelError::BlasUnavailable);
        }
        Ok(Self {
            blas: enabled,
            ..self
        })
    }

    /// Turns the integer GEMM for int8 weights on or off (default off). When on, [`Self::matmul`]
    /// with int8 weights, a batch of 5 or more and whole 64-groups per row quantizes the
    /// activations per 64-group to 7-bit integers (`round(x · 63 / max|x|)`) and multiplies in
    /// integer arithmetic: on AVX2 it runs ~1.7x faster than the exact path, but its results are
    /// not exact (each activation is off by up to half a step, `max|x| / 126`). Smaller batches
    /// (decode, short prompts: bound by memory, not arithmetic) and f32 weights stay exact.
    /// Results are identical on every SIMD path.
    pub fn with_int8_activations(self, enabled: bool) -> Self {
        Self {
            int8_activations: enabled,
            ..self
        }
    }

    /// Chooses the arithmetic of ggml block weights ([`MatRef::Blocks`]); default off:
    ///
    /// - **off (default), as llama.cpp:** the activations are quantized once per product, per 32
    ///   values to Q8_0 for Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 weights and per 256 to Q8_K for
    ///   Q4_K / Q5_K / Q6_K, and each block is an integer dot product scaled in f32. Prefill
    ///   (`matmul`) computes exactly what decode does: a batch is bit-identical to one
    ///   [`matvec`](Self::matvec) per token, on every SIMD path and thread count.
    /// - **on (exact):** the weights are dequantized exactly to f32 and multiplied with the f32
    ///   activations; prefill goes through the f32 GEMM with panels dequantized while packing
    ///   (what the f32 kernels would give on the dequantized matrix).
    ///
    /// F16 and BF16 weights always multiply f32 activations. The arithmetic, its error and the
    /// order of operations are in the crate's `block_input` module docs (IMPLEMENTATION.md).
    pub fn with_exact_blocks(self, enabled: bool) -> Self {
        Self {
            exact_blocks: enabled,
            ..self
        }
    }

    /// Whether ggml block weights use the exact arithmetic (see [`Self::with_exact_blocks`]).
    pub fn uses_exact_blocks(&self) -> bool {
        self.exact_blocks
    }

    /// Whether int8 GEMMs quantize their activations (see [`Self::with_int8_activations`]).
    pub fn uses_int8_activations(&self) -> bool {
        self.int8_activations
    }

    /// The SIMD path in use.
    pub fn simd_path(&self) -> SimdPath {
        self.path.simd_path()
    }

    /// Whether f32 matvec/matmul go through BLAS.
    pub fn uses_blas(&self) -> bool {
        self.blas
    }

    // -----------------------------------------------------------------------------------------
    // Reductions and element-wise ops.

    /// `Σ a[i] b[i]`.
    pub fn dot(&self, a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
        check_len("dot rhs", a.len(), b.len())?;
        Ok(self.dot_unchecked(a, b))
    }

    fn dot_unchecked(&self, a: &[f32], b: &[f32]) -> f32 {
        on_isa!(self.path, |isa| isa.elementwise().dot(a, b))
    }

    fn axpy_unchecked(&self, a: f32, v: &[f32], out: &mut [f32]) {
        on_isa!(self.path, |isa| isa.elementwise().axpy(a, v, out))
    }

    /// RMSNorm with Hugging Face semantics, in f32: `out = weight * (x * rsqrt(mean(x²) + eps))`.
    pub fn rmsnorm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("rmsnorm weight", x.len(), weight.len())?;
        check_len("rmsnorm output", x.len(), out.len())?;
        let r = self.rms_factor(x, eps);
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = w * (v * r);
        }
        Ok(())
    }

    /// [`Kernels::rmsnorm`] in place.
    pub fn rmsnorm_inplace(
        &self,
        x: &mut [f32],
        weight: &[f32],
        eps: f32,
    ) -> Result<(), KernelError> {
        check_len("rmsnorm weight", x.len(), weight.len())?;
        let r = self.rms_factor(x, eps);
        for (v, &w) in x.iter_mut().zip(weight) {
            *v = w * (*v * r);
        }
        Ok(())
    }

    fn rms_factor(&self, x: &[f32], eps: f32) -> f32 {
        let ss = self.dot_unchecked(x, x);
        1.0 / (ss / x.len().max(1) as f32 + eps).sqrt()
    }

    /// In-place numerically stable softmax (`exp(x - max) / Σ`). An all `-inf` input gives NaN, as
    /// in PyTorch; `-inf` entries give exactly 0.
    pub fn softmax(&self, x: &mut [f32]) {
        if x.is_empty() {
            return;
        }
        on_isa!(self.path, |isa| isa.elementwise().softmax(x))
    }

    /// SwiGLU: `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("silu_mul up", gate.len(), up.len())?;
        check_len("silu_mul output", gate.len(), out.len())?;
        on_isa!(self.path, |isa| isa.elementwise().silu_mul(gate, up, out));
        Ok(())
    }

    /// SwiGLU in place: `gate = silu(gate) * up`.
    pub fn silu_mul_inplace(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        check_len("silu_mul up", gate.len(), up.len())?;
        // Chunked through a stack buffer so the out-of-place kernels can be reused.
        let mut tmp = [0.0f32; 256];
        for (g, u) in gate.chunks_mut(256).zip(up.chunks(256)) {
            let t = &mut tmp[..g.len()];
            self.silu_mul(g, u, t)?;
            g.copy_from_slice(t);
        }
        Ok(())
    }

    /// Residual add: `y += x`. (Memory-bound; the compiler vectorizes it on every path.)
    pub fn add(&self, y: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
        check_len("add rhs", y.len(), x.len())?;
        for (a, &b) in y.iter_mut().zip(x) {
            *a += b;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Matrix products.

    /// `y = W x` (decode): `x.len() == w.cols()`, `y.len() == w.rows()`. int8 weights are
    /// dequantized on the fly: per 64-group, `Σ q·x` in f32 then one division by the group's inverse
    /// scale; ggml blocks take the arithmetic [`Self::with_exact_blocks`] chooses. Rows are split
    /// over the current rayon pool in large chunks.
    pub fn matvec(&self, w: &MatRef<'_>, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        check_len("matvec input", w.cols(), x.len())?;
        check_len("matvec output", w.rows(), y.len())?;
        if let Some(m) = self.blas_f32(w) {
            if blas::sgemv(&m, x, y) {
                return Ok(());
            }
        }
        let exact = self.exact_blocks;
        on_isa!(self.path, |isa| gemv::matvec(isa, w, x, y, exact));
        Ok(())
    }

    /// `ys[b] = W xs[b]` for a few unrelated inputs at once (one decode step of `batch` sequences,
    /// `xs` and `ys` row-major): every output row is bit-identical to [`matvec`](Self::matvec) of
    /// its input, so batching sequences never changes what any of them generates, and the weights
    /// are streamed from memory once for all inputs (decode is bound by that read).
    pub fn matvec_batch(
        &self,
        w: &MatRef<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
    ) -> Result<(), KernelError> {
        check_batch_shapes(
            ["matvec_batch input", "matvec_batch output"],
            w,
            xs,
            ys,
            batch,
        )?;
        let (blas, exact) = (self.blas_f32(w).is_some(), self.exact_blocks);
        if on_isa!(self.path, |isa| gemv::batch(
            isa, w, xs, ys, batch, blas, exact
        )) {
            return Ok(());
        }
        let (rows, cols) = (w.rows(), w.cols());
        for (x, y) in xs.chunks_exact(cols).zip(ys.chunks_exact_mut(rows)) {
            self.matvec(w, x, y)?;
        }
        Ok(())
    }

    /// `ys[i] = ws[i] xs` for several matrices sharing one batch of unrelated inputs (q/k/v or
    /// gate/up of a several-sequence decode step; `xs` is `batch x cols`, `ys[i]` is
    /// `batch x ws[i].rows()`): results bit-identical to [`matvec_batch`](Self::matvec_batch) of
    /// each matrix. int4 matrices run as one parallel job with the inputs quantized once.
    pub fn matvec_batch_many(
        &self,
        ws: &[MatRef<'_>],
        xs: &[f32],
        ys: &mut [&mut [f32]],
        batch: usize,
    ) -> Result<(), KernelError> {
        check_many_shapes(
            [
                "matvec_batch_many outputs",
                "matvec_batch_many input",
                "matvec_batch_many output",
            ],
            ws,
            xs,
            ys,
            batch,
        )?;
        if on_isa!(self.path, |isa| gemv::batch_many(isa, ws, xs, ys, batch)) {
            return Ok(());
        }
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            self.matvec_batch(w, xs, y, batch)?;
        }
        Ok(())
    }

    /// The f32 matrix BLAS takes, when BLAS is on and `w` is f32.
    fn blas_f32<'a>(&self, w: &MatRef<'a>) -> Option<F32Mat<'a>> {
        match (self.blas, w) {
            (true, MatRef::F32(m)) => Some(*m),
            _ => None,
        }
    }

    /// Several matvecs sharing one input (e.g. q/k/v or gate/up projections), run as one parallel
    /// job: `ys[i] = ws[i] x`.
    pub fn matvec_many(
        &self,
        ws: &[MatRef<'_>],
        x: &[f32],
        ys: &mut [&mut [f32]],
    ) -> Result<(), KernelError> {
        check_len("matvec_many outputs", ws.len(), ys.len())?;
        for (w, y) in ws.iter().zip(ys.iter()) {
            check_len("matvec input", w.cols(), x.len())?;
            check_len("matvec output", w.rows(), y.len())?;
        }
        if !ws.iter().any(|w| self.blas_f32(w).is_some()) {
            let exact = self.exact_blocks;
            on_isa!(self.path, |isa| gemv::many(isa, ws, x, ys, exact));
            return Ok(());
        }
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            if rayon::current_num_threads() > 1 {
                // Nested: each matvec splits its own rows; rayon balances across both levels.
                ws.par_iter()
                    .zip(ys.par_iter_mut())
                    .try_for_each(|(w, y)| self.matvec(w, x, y))?;
                return Ok(());
            }
        }
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            self.matvec(w, x, y)?;
        }
        Ok(())
    }

    /// `ys[i] = X ws[i]ᵀ` for several matrices sharing one batch of inputs (q/k/v or gate/up of
    /// a prompt chunk; `xs` is `batch x cols`, `ys[i]` is `batch x ws[i].rows()`): each result
    /// bit-identical to [`matmul`](Self::matmul) of its matrix. ggml matrices of one quantized
    /// type that take the integer GEMM quantize the inputs once for all of them.
    pub fn matmul_many(
        &self,
        ws: &[MatRef<'_>],
        xs: &[f32],
        ys: &mut [&mut [f32]],
        batch: usize,
    ) -> Result<(), KernelError> {
        check_many_shapes(
            [
                "matmul_many outputs",
                "matmul_many input",
                "matmul_many output",
            ],
            ws,
            xs,
            ys,
            batch,
        )?;
        // Matrices of each quantized block type the integer GEMM takes, gathered by type.
        let mut by_type: Vec<(BlockType, Vec<BlockProduct<'_, '_>>)> = Vec::new();
        let mut rest: Vec<(&MatRef<'_>, &mut [f32])> = Vec::new();
        let tile = on_isa!(self.path, |isa| isa.block_micro().is_some());
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            match w {
                MatRef::Blocks(m)
                    if tile
                        && batch >= blocks::MIN_BATCH
                        && m.ty().is_quantized()
                        && !self.exact_blocks
                        && blocks::supports(m.ty()) =>
                {
                    match by_type.iter_mut().find(|(ty, _)| *ty == m.ty()) {
                        Some((_, group)) => group.push((m, &mut **y)),
                        None => by_type.push((m.ty(), vec![(m, &mut **y)])),
                    }
                }
                _ => rest.push((w, &mut **y)),
            }
        }
        for (_, group) in &mut by_type {
            on_isa!(self.path, |isa| if let Some(micro) = isa.block_micro() {
                blocks::qgemm_blocks_many(micro, group, xs, batch)
            });
        }
        for (w, y) in rest {
            self.matmul(w, xs, y, batch)?;
        }
        Ok(())
    }

    /// The smallest batch from which [`matmul`](Self::matmul) computes each row of `Y` with the
    /// same arithmetic whatever the batch (so a row's bits do not depend on which other rows
    /// share its call, or how many), or `None` when no such batch is known (BLAS). ggml
    /// quantized blocks in the default arithmetic: 1, every batch being one matvec per row,
    /// bit for bit.
    pub fn batch_invariant_from(&self, w: &MatRef<'_>) -> Option<usize> {
        if self.blas_f32(w).is_some() {
            return None;
        }
        Some(match w {
            MatRef::Blocks(m) if m.ty().is_quantized() && !self.exact_blocks => 1,
            MatRef::Blocks(_) => BLOCK_GEMM_MIN_BATCH,
            MatRef::Int4(_) => int4::MIN_BATCH,
            MatRef::Int8(m) if self.int8_activations && int8::supports(m) => int8::MIN_BATCH,
            // The small-batch dot products where the path has them, then the f32 GEMM.
            MatRef::Int8(m) if m.is_row_aligned() => SMALL_BATCH + 1,
            MatRef::Int8(_) | MatRef::F32(_) => 2,
        })
    }

    /// The smallest number of tokens from which [`attention_batch`](Self::attention_batch)
    /// computes each token's output with the same arithmetic whatever the call (over an
    /// unwrapped cache): one token takes the decode loop, whose sums run in another order.
    pub fn attention_batch_invariant_from(&self) -> usize {
        2
    }

    /// `Y = X Wᵀ` for a batch of tokens (prefill): `xs` is `batch x w.cols()`, `ys` is
    /// `batch x w.rows()`, both row-major. A batch of 1 is a matvec. Otherwise a cache-blocked GEMM:
    /// f32 through BLAS when enabled, else our packed micro-kernels; int8 weight tiles are
    /// dequantized (exactly `q / inv_scale`) into a small packed panel reused across the batch.
    /// int4 weights take int8 activations as in [`matvec`](Self::matvec) (same quantization,
    /// products summed in another f32 order): an integer GEMM from 5 tokens, below that the
    /// decode kernel, bit-identical to [`matvec_batch`](Self::matvec_batch). ggml block weights
    /// (see [`Self::with_exact_blocks`]): in the default arithmetic an integer GEMM from 8 tokens
    /// on paths with its tile (AVX-512 VNNI), else the decode kernel over the whole batch, both
    /// bit-identical to one matvec per token; in the exact arithmetic the f32 GEMM from 5 tokens.
    pub fn matmul(
        &self,
        w: &MatRef<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
    ) -> Result<(), KernelError> {
        check_batch_shapes(["matmul input", "matmul output"], w, xs, ys, batch)?;
        if batch == 1 {
            return self.matvec(w, xs, ys);
        }
        if let MatRef::Blocks(m) = w {
            let quantized = m.ty().is_quantized() && !self.exact_blocks;
            if quantized && batch >= blocks::MIN_BATCH && blocks::supports(m.ty()) {
                // Decode's arithmetic, bit for bit, where the path has the integer tile.
                let done = on_isa!(self.path, |isa| match isa.block_micro() {
                    Some(micro) => {
                        blocks::qgemm_blocks(micro, m, xs, ys, batch);
                        true
                    }
                    None => false,
                });
                if done {
                    return Ok(());
                }
            }
            if quantized || batch < BLOCK_GEMM_MIN_BATCH {
                return self.matvec_batch(w, xs, ys, batch);
            }
            on_isa!(self.path, |isa| float::gemm(isa.micro(), w, xs, ys, batch));
            return Ok(());
        }
        if let Some(m) = self.blas_f32(w) {
            if blas::sgemm(&m, xs, ys, batch) {
                return Ok(());
            }
        }
        if let MatRef::Int4(m) = w {
            // int4 weights always take int8 activations (as in decode): the integer GEMM for a
            // prompt, the decode kernel streaming the weights once for a few tokens.
            if batch < int4::MIN_BATCH {
                return self.matvec_batch(w, xs, ys, batch);
            }
            on_isa!(self.path, |isa| int4::qgemm4(
                isa.q4micro(),
                m,
                xs,
                ys,
                batch
            ));
            return Ok(());
        }
        if let (true, MatRef::Int8(m)) = (self.int8_activations, w) {
            if batch >= int8::MIN_BATCH && int8::supports(m) {
                on_isa!(self.path, |isa| int8::qgemm(isa.qmicro(), m, xs, ys, batch));
                return Ok(());
            }
        }
        on_isa!(self.path, |isa| match (isa.matvec_many(), w) {
            (Some(many), MatRef::Int8(m)) if batch <= SMALL_BATCH && m.is_row_aligned() => {
                gemv::matmul_i8_small(many, m, xs, ys, batch)
            }
            _ => float::gemm(isa.micro(), w, xs, ys, batch),
        });
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Attention.

    /// `scores[i] = scale * (q · keys[i])`.
    pub fn attention_scores(
        &self,
        q: &[f32],
        keys: &RowsRef<'_>,
        scale: f32,
        scores: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("attention query", keys.dim(), q.len())?;
        check_len("attention scores", keys.len(), scores.len())?;
        for (s, k) in scores.iter_mut().zip(keys.iter()) {
            *s = self.dot_unchecked(q, k) * scale;
        }
        Ok(())
    }

    /// `out = Σ_i probs[i] * values[i]` (overwrites `out`).
    pub fn attention_values(
        &self,
        probs: &[f32],
        values: &RowsRef<'_>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("attention probabilities", values.len(), probs.len())?;
        check_len("attention output", values.dim(), out.len())?;
        out.fill(0.0);
        for (&p, v) in probs.iter().zip(values.iter()) {
            self.axpy_unchecked(p, v, out);
        }
        Ok(())
    }

    /// One head over key/value segments (e.g. the two halves of a wrapped ring buffer):
    /// scores, softmax, weighted sum. `scores` is scratch of the total key count.
    pub fn attention_head(
        &self,
        q: &[f32],
        keys: &[RowsRef<'_>],
        values: &[RowsRef<'_>],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("attention value segments", keys.len(), values.len())?;
        let total: usize = keys.iter().map(RowsRef::len).sum();
        check_len("attention scores", total, scores.len())?;
        for (k, v) in keys.iter().zip(values) {
            check_len("attention values per segment", k.len(), v.len())?;
        }
        let mut at = 0;
        for k in keys {
            self.attention_scores(q, k, scale, &mut scores[at..at + k.len()])?;
            at += k.len();
        }
        self.softmax(scores);
        check_len("attention output", q.len(), out.len())?;
        out.fill(0.0);
        let mut at = 0;
        for v in values {
            check_len("attention value dim", out.len(), v.dim())?;
            for (&p, row) in scores[at..at + v.len()].iter().zip(v.iter()) {
                self.axpy_unchecked(p, row, out);
            }
            at += v.len();
        }
        Ok(())
    }

    /// All heads of one query token (decode). `q` and `out` hold `n_heads * head_dim` values;
    /// query head `h` reads KV head `h / (n_heads / n_kv_heads)` (grouped-query attention) over
    /// `slots`.
    ///
    /// Every cached key and value row is read from memory once per call (not once per query
    /// head), in the cache's memory order: for a slot-major cache (`[slot][kv_head][dim]`, or a
    /// single KV head) the slots are split into fixed blocks of 256 processed in parallel (scores,
    /// then one softmax per head, then per-block partial sums added in block order); for a
    /// head-major cache the KV heads run in parallel. Either way the result does not depend on the
    /// thread count. Scratch buffers are per-thread and reused across calls.
    pub fn attention(
        &self,
        q: &[f32],
        kv: &KvCacheView<'_>,
        slots: &SlotRanges,
        n_heads: usize,
        scale: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let hd = kv.head_dim();
        let group = check_heads(kv, n_heads, q.len(), out.len(), &[slots])?;
        check_len("attention query", n_heads * hd, q.len())?;
        on_isa!(self.path, |isa| decode::attention(
            isa, q, kv, slots, group, scale, out
        ));
        Ok(())
    }

    /// Many query tokens (prefill). `qs` and `outs` hold one row of `n_heads * head_dim` per
    /// token; token `t` attends to `slots_for(t)` (its causal / sliding-window set of cache
    /// slots). From [`attention_batch_invariant_from`](Self::attention_batch_invariant_from)
    /// tokens on, over an unwrapped cache (each token's slots one run), blocks of tokens on the
    /// GEMM micro-kernel, and each token's output has the same bits whatever the other tokens of
    /// the call; a single token (decode) or a wrapped cache: in parallel over (token, KV head)
    /// pairs.
    pub fn attention_batch<F>(
        &self,
        qs: &[f32],
        kv: &KvCacheView<'_>,
        n_heads: usize,
        scale: f32,
        slots_for: F,
        outs: &mut [f32],
    ) -> Result<(), KernelError>
    where
        F: Fn(usize) -> SlotRanges,
    {
        let hd = kv.head_dim();
        let row = n_heads * hd;
        if row == 0 || !qs.len().is_multiple_of(row) {
            return Err(KernelError::Shape(format!(
                "{} query values are not whole rows of {n_heads} heads x {hd}",
                qs.len()
            )));
        }
        let n_tokens = qs.len() / row;
        let slots: Vec<SlotRanges> = (0..n_tokens).map(slots_for).collect();
        let refs: Vec<&SlotRanges> = slots.iter().collect();
        let group = check_heads(kv, n_heads, qs.len(), outs.len(), &refs)?;
        on_isa!(self.path, |isa| prefill::attention_batch(
            isa, qs, kv, n_heads, scale, &slots, group, outs
        ));
        Ok(())
    }
}

/// The shapes of `ys[i] = X ws[i]ᵀ` for `batch` rows of one input: one output per matrix, each
/// as [`check_batch_shapes`] checks it; `names` label the output count, the input and an output.
fn check_many_shapes(
    [outputs, input, output]: [&'static str; 3],
    ws: &[MatRef<'_>],
    xs: &[f32],
    ys: &[&mut [f32]],
    batch: usize,
) -> Result<(), KernelError> {
    check_len(outputs, ws.len(), ys.len())?;
    for (w, y) in ws.iter().zip(ys) {
        check_batch_shapes([input, output], w, xs, y, batch)?;
    }
    Ok(())
}

/// One product of [`Kernels::matmul_many`]'s integer block GEMM: a matrix and its output.
type BlockProduct<'w, 'y> = (&'w BlockMat<'w>, &'y mut [f32]);

/// The shapes of `Y = X Wᵀ` for `batch` rows: `xs` is `batch x w.cols()`, `ys` `batch x w.rows()`;
/// `names` label the input and the output in errors.
fn check_batch_shapes(
    [input, output]: [&'static str; 2],
    w: &MatRef<'_>,
    xs: &[f32],
    ys: &[f32],
    batch: usize,
) -> Result<(), KernelError> {
    check_len(input, checked_mul(input, batch, w.cols())?, xs.len())?;
    check_len(output, checked_mul(output, batch, w.rows())?, ys.len())
}

/// Without a BLAS library `Kernels::blas` is always false, so nothing reaches these.
#[cfg(not(any(
    feature = "openblas",
    feature = "blis",
    all(feature = "accelerate", target_os = "macos")
)))]
mod blas {
    use crate::mat::F32Mat;

    pub(super) fn sgemv(_: &F32Mat<'_>, _: &[f32], _: &mut [f32]) -> bool {
        false
    }

    pub(super) fn sgemm(_: &F32Mat<'_>, _: &[f32], _: &mut [f32], _: usize) -> bool {
        false
    }
}
