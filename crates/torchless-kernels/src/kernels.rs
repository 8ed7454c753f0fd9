//! [`Kernels`]: every kernel, bound to one SIMD path (and optionally BLAS).

use crate::attention::{check_heads, KvCacheView, RowsRef, SlotRanges};
use crate::attention_gemm::{attend_block, TokenBlock};
use crate::dispatch::{auto_path, blas_backend, require, Path, SimdPath};
use crate::error::{check_len, checked_mul, KernelError};
use crate::int4::{self, Int4Input};
use crate::mat::{Int4Mat, MatRef};
use crate::{gemm, parallel, qgemm, qgemm4, scalar};
use std::cell::RefCell;
use std::ops::Range;

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
}

impl Default for Kernels {
    fn default() -> Self {
        Self::auto()
    }
}

/// Largest batch of int8 rows handled as repeated dot products rather than a GEMM.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
const SMALL_BATCH: usize = 16;

impl Kernels {
    /// The fastest path this CPU supports (or `$TORCHLESS_SIMD`, see [`crate::PATH_ENV`]), with
    /// BLAS for f32 GEMM/GEMV when a BLAS feature is compiled in. Detection runs once.
    pub fn auto() -> Self {
        Self {
            path: auto_path(),
            blas: blas_backend().is_some(),
            int8_activations: false,
        }
    }

    /// A specific path, without BLAS; fails if the CPU or build lacks it.
    pub fn with_path(path: SimdPath) -> Result<Self, KernelError> {
        Ok(Self {
            path: require(path)?,
            blas: false,
            int8_activations: false,
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
        match self.path {
            Path::Scalar => scalar::dot(a, b),
            #[cfg(feature = "simd")]
            Path::Wide => crate::wide_path::dot(a, b),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::dot(t, a, b),
        }
    }

    /// `out[h] = scale * (q[h] · k)` for the `out.len()` query heads stored one after another in
    /// `q`, each `k.len()` long: the key is read once for all of them.
    fn dots_scaled(&self, q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        match self.path {
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::dots(t, q, k, out),
            _ => {
                for (o, qh) in out.iter_mut().zip(q.chunks_exact(k.len().max(1))) {
                    *o = self.dot_unchecked(qh, k);
                }
            }
        }
        for o in out.iter_mut() {
            *o *= scale;
        }
    }

    /// Prefetches the cache lines of `row` (AVX2 path only; a hint, never a fault).
    #[inline]
    fn prefetch(&self, row: &[f32]) {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let Path::Avx2(t, _) = self.path {
            for line in row.chunks(16) {
                crate::avx2::prefetch(t, line.as_ptr().cast());
            }
        }
        let _ = row;
    }

    fn axpy_unchecked(&self, a: f32, v: &[f32], out: &mut [f32]) {
        match self.path {
            Path::Scalar => scalar::axpy(a, v, out),
            #[cfg(feature = "simd")]
            Path::Wide => crate::wide_path::axpy(a, v, out),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::axpy(t, a, v, out),
        }
    }

    /// `out += Σ_j weights[j] · rows[j]`, as one `axpy` per row in order would compute it.
    fn weighted_rows(&self, rows: &[&[f32]], weights: &[f32], out: &mut [f32]) {
        match self.path {
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::weighted_rows(t, rows, weights, out),
            _ => {
                for (row, &w) in rows.iter().zip(weights) {
                    self.axpy_unchecked(w, row, out);
                }
            }
        }
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
        match self.path {
            Path::Scalar => scalar::softmax(x),
            #[cfg(feature = "simd")]
            Path::Wide => crate::wide_path::softmax(x),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::softmax(t, x),
        }
    }

    /// SwiGLU: `out = silu(gate) * up` with `silu(g) = g / (1 + e^-g)`.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("silu_mul up", gate.len(), up.len())?;
        check_len("silu_mul output", gate.len(), out.len())?;
        match self.path {
            Path::Scalar => scalar::silu_mul(gate, up, out),
            #[cfg(feature = "simd")]
            Path::Wide => crate::wide_path::silu_mul(gate, up, out),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => crate::avx2::silu_mul(t, gate, up, out),
        }
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
    /// scale. Rows are split over the current rayon pool in large chunks.
    pub fn matvec(&self, w: &MatRef<'_>, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        check_len("matvec input", w.cols(), x.len())?;
        check_len("matvec output", w.rows(), y.len())?;
        #[cfg(any(
            feature = "openblas",
            feature = "blis",
            all(feature = "accelerate", target_os = "macos")
        ))]
        if let (true, MatRef::F32(m)) = (self.blas, w) {
            if crate::blas::sgemv(m, x, y) {
                return Ok(());
            }
        }
        let cols = w.cols();
        if let MatRef::Int4(m) = w {
            let input = [Int4Input::quantize(x)];
            parallel::par_rows(y, 4, cols / 4, |r0, yc| self.int4_rows(m, &input, r0, yc));
            return Ok(());
        }
        parallel::par_rows(y, 4, cols, |r0, yc| {
            // In bounds: the chunk's rows lie inside 0..rows by construction.
            if let Ok(sub) = w.rows_range(r0..r0 + yc.len()) {
                self.matvec_serial(&sub, x, yc);
            }
        });
        Ok(())
    }

    /// Rows `r0..` of an int4 product with quantized inputs, written transposed
    /// (`yt[i * inputs.len() + b]`); identical on every path (see `int4`).
    fn int4_rows(&self, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
        match self.path {
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(_, Some(v)) => crate::avx512::matvec_i4_multi(v, w, inputs, r0, yt),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, None) => crate::avx2::matvec_i4_multi(t, w, inputs, r0, yt),
            _ => {
                let n = yt.len() / inputs.len().max(1);
                if let Ok(sub) = w.rows_range(r0..r0 + n) {
                    for (b, input) in inputs.iter().enumerate() {
                        let mut y = vec![0.0; n];
                        int4::matvec(&sub, input, &mut y);
                        for (i, v) in y.into_iter().enumerate() {
                            yt[i * inputs.len() + b] = v;
                        }
                    }
                }
            }
        }
    }

    fn matvec_serial(&self, w: &MatRef<'_>, x: &[f32], y: &mut [f32]) {
        match (self.path, w) {
            // Not reached (`matvec` quantizes the input first); kept total for safety.
            (_, MatRef::Int4(m)) => self.int4_rows(m, &[Int4Input::quantize(x)], 0, y),
            (Path::Scalar, MatRef::F32(m)) => scalar::matvec_f32(m, x, y),
            (Path::Scalar, MatRef::Int8(m)) => scalar::matvec_i8(m, x, y),
            #[cfg(feature = "simd")]
            (Path::Wide, MatRef::F32(m)) => crate::wide_path::matvec_f32(m, x, y),
            #[cfg(feature = "simd")]
            (Path::Wide, MatRef::Int8(m)) => crate::wide_path::matvec_i8(m, x, y),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            (Path::Avx2(t, _), MatRef::F32(m)) => crate::avx2::matvec_f32(t, m, x, y),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            (Path::Avx2(t, _), MatRef::Int8(m)) => crate::avx2::matvec_i8(t, m, x, y),
        }
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
        let (rows, cols) = (w.rows(), w.cols());
        if let MatRef::Int4(m) = w {
            let inputs: Vec<Int4Input> = xs.chunks_exact(cols).map(Int4Input::quantize).collect();
            let mut yt = vec![0.0f32; rows * batch];
            parallel::par_rows(&mut yt, 4 * batch, cols / 4, |e0, chunk| {
                self.int4_rows(m, &inputs, e0 / batch, chunk)
            });
            for (r, row) in yt.chunks_exact(batch).enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    ys[b * rows + r] = v;
                }
            }
            return Ok(());
        }
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let (Path::Avx2(t, _), false, true) = (self.path, self.blas_matvec(w), batch > 1) {
            // How rows are split among threads never changes a row's arithmetic.
            par_rows_transposed(ys, rows, cols, batch, |r0, yt| match w {
                MatRef::F32(m) => crate::avx2::matvec_f32_multi(t, m, xs, batch, r0, yt),
                MatRef::Int8(m) => crate::avx2::matvec_i8_multi(t, m, xs, batch, r0, yt),
                MatRef::Int4(_) => {}
            });
            return Ok(());
        }
        for (x, y) in xs.chunks_exact(cols).zip(ys.chunks_exact_mut(rows)) {
            self.matvec(w, x, y)?;
        }
        Ok(())
    }

    /// Whether [`matvec`](Self::matvec) hands `w` to BLAS.
    #[allow(unused_variables)]
    fn blas_matvec(&self, w: &MatRef<'_>) -> bool {
        #[cfg(any(
            feature = "openblas",
            feature = "blis",
            all(feature = "accelerate", target_os = "macos")
        ))]
        if let (true, MatRef::F32(_)) = (self.blas, w) {
            return true;
        }
        false
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
        if !ws.iter().any(|w| self.blas_matvec(w)) {
            // One parallel job over every matrix's rows (one dispatch instead of one per
            // matrix), an int4 input quantized once; each row's result is the one `matvec`
            // gives, however the rows are cut.
            let input = ws
                .iter()
                .any(|w| matches!(w, MatRef::Int4(_)))
                .then(|| [Int4Input::quantize(x)]);
            let all_int4 = ws.iter().all(|w| matches!(w, MatRef::Int4(_)));
            let work_per_row = if all_int4 { x.len() / 4 } else { x.len() };
            let segments = ws
                .iter()
                .zip(ys.iter_mut())
                .map(|(w, y)| (w, &mut **y))
                .collect();
            parallel::par_segments(segments, 4, work_per_row, |w, r0, c| match (w, &input) {
                (MatRef::Int4(m), Some(input)) => self.int4_rows(m, input, r0, c),
                _ => {
                    // In bounds: the chunk's rows lie inside the matrix by construction.
                    if let Ok(sub) = w.rows_range(r0..r0 + c.len()) {
                        self.matvec_serial(&sub, x, c);
                    }
                }
            });
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

    /// `Y = X Wᵀ` for a batch of tokens (prefill): `xs` is `batch x w.cols()`, `ys` is
    /// `batch x w.rows()`, both row-major. A batch of 1 is a matvec. Otherwise a cache-blocked GEMM:
    /// f32 through BLAS when enabled, else our packed micro-kernels; int8 weight tiles are
    /// dequantized (exactly `q / inv_scale`) into a small packed panel reused across the batch.
    /// int4 weights take int8 activations as in [`matvec`](Self::matvec) (same quantization,
    /// products summed in another f32 order): an integer GEMM from 5 tokens, below that the
    /// decode kernel, bit-identical to [`matvec_batch`](Self::matvec_batch).
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
        #[cfg(any(
            feature = "openblas",
            feature = "blis",
            all(feature = "accelerate", target_os = "macos")
        ))]
        if let (true, MatRef::F32(m)) = (self.blas, w) {
            if crate::blas::sgemm(m, xs, ys, batch) {
                return Ok(());
            }
        }
        if let MatRef::Int4(m) = w {
            // int4 weights always take int8 activations (as in decode): the integer GEMM for a
            // prompt, the decode kernel streaming the weights once for a few tokens.
            if batch < qgemm4::MIN_BATCH {
                return self.matvec_batch(w, xs, ys, batch);
            }
            match self.path {
                #[cfg(all(feature = "simd", target_arch = "x86_64"))]
                Path::Avx2(t, Some(v)) => {
                    qgemm4::qgemm4(qgemm4::Avx512Q4Micro(t, v), m, xs, ys, batch)
                }
                #[cfg(all(feature = "simd", target_arch = "x86_64"))]
                Path::Avx2(t, None) => qgemm4::qgemm4(qgemm4::Avx2Q4Micro(t), m, xs, ys, batch),
                _ => qgemm4::qgemm4(qgemm4::ScalarQ4Micro, m, xs, ys, batch),
            }
            return Ok(());
        }
        if let (true, MatRef::Int8(m)) = (self.int8_activations, w) {
            if batch >= qgemm::MIN_BATCH && qgemm::supports(m) {
                match self.path {
                    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
                    Path::Avx2(t, _) => qgemm::qgemm(qgemm::Avx2QMicro(t), m, xs, ys, batch),
                    _ => qgemm::qgemm(qgemm::ScalarQMicro, m, xs, ys, batch),
                }
                return Ok(());
            }
        }
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let (Path::Avx2(t, _), MatRef::Int8(m)) = (self.path, w) {
            if batch <= SMALL_BATCH && m.is_row_aligned() && m.cols() % crate::mat::GROUP_SIZE == 0
            {
                self.matmul_i8_small(t, m, xs, ys, batch);
                return Ok(());
            }
        }
        match self.path {
            Path::Scalar => gemm::gemm(gemm::ScalarMicro, w, xs, ys, batch),
            #[cfg(feature = "simd")]
            Path::Wide => gemm::gemm(gemm::WideDefault {}, w, xs, ys, batch),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => gemm::gemm(gemm::Avx2Micro(t), w, xs, ys, batch),
        }
        Ok(())
    }

    /// Small int8 batches: the weights are streamed once (as in a matvec) and each row is dotted
    /// with every input; dequantizing whole panels for a GEMM would cost more than it saves.
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    fn matmul_i8_small(
        &self,
        t: crate::avx2::Token,
        w: &crate::mat::Int8Mat<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
    ) {
        par_rows_transposed(ys, w.rows(), w.cols(), batch, |r0, yt| {
            crate::avx2::matmul_i8_small(t, w, xs, batch, r0, yt);
        });
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
        if kv.slot_major() || kv.n_kv_heads() == 1 {
            self.attention_by_slots(q, kv, slots, group, scale, out);
            return Ok(());
        }
        parallel::for_each_chunk_mut(out, group * hd, |kvh, o| {
            let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
            self.heads_in_cache(qg, kv, kvh, slots, scale, o);
        });
        Ok(())
    }

    /// Decode attention for slot-major caches (see [`Kernels::attention`]).
    fn attention_by_slots(
        &self,
        q: &[f32],
        kv: &KvCacheView<'_>,
        slots: &SlotRanges,
        group: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (hd, n_kv) = (kv.head_dim(), kv.n_kv_heads());
        let n_heads = n_kv * group;
        let n = slots.len();
        if n == 0 {
            // Nothing to attend to: a zero output, as the head-major loop gives.
            out.fill(0.0);
            return;
        }
        let blocks = n.div_ceil(SLOT_BLOCK);
        with_scratch(n * n_heads * 2 + blocks * n_heads * hd, |buf| {
            let (scores, rest) = buf.split_at_mut(n * n_heads);
            let (probs, partial) = rest.split_at_mut(n * n_heads);
            // Scores, [slot][head]: each block reads its slots' keys once, sequentially.
            parallel::for_each_chunk_mut(scores, SLOT_BLOCK * n_heads, |b, sc| {
                for (jj, row) in sc.chunks_exact_mut(n_heads).enumerate() {
                    let slot = slots.slot(b * SLOT_BLOCK + jj);
                    let ahead = (b * SLOT_BLOCK + jj + PF_SLOTS < n)
                        .then(|| slots.slot(b * SLOT_BLOCK + jj + PF_SLOTS));
                    for (kvh, r) in row.chunks_exact_mut(group).enumerate() {
                        if let Some(a) = ahead {
                            self.prefetch(kv.key_row(a, kvh));
                        }
                        let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
                        self.dots_scaled(qg, kv.key_row(slot, kvh), scale, r);
                    }
                }
            });
            // Softmax per head: transpose to [head][slot] so each head's scores are contiguous.
            for (j, row) in scores.chunks_exact(n_heads).enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    probs[h * n + j] = v;
                }
            }
            for p in probs.chunks_exact_mut(n) {
                self.softmax(p);
            }
            let probs = &*probs;
            // Weighted values: one partial output per block, then summed in block order. Per KV
            // head and query head, the block's value rows are summed with the output in
            // registers (the same FMAs, in slot order, as one axpy per slot).
            parallel::for_each_chunk_mut(partial, n_heads * hd, |b, part| {
                part.fill(0.0);
                let (start, end) = (b * SLOT_BLOCK, ((b + 1) * SLOT_BLOCK).min(n));
                let mut rows: Vec<&[f32]> = Vec::with_capacity(end - start);
                for kvh in 0..n_kv {
                    rows.clear();
                    rows.extend((start..end).map(|j| kv.value_row(slots.slot(j), kvh)));
                    for g in 0..group {
                        let h = kvh * group + g;
                        self.weighted_rows(
                            &rows,
                            &probs[h * n + start..h * n + end],
                            &mut part[h * hd..(h + 1) * hd],
                        );
                    }
                }
            });
            out.fill(0.0);
            for part in partial.chunks_exact(n_heads * hd) {
                for (o, &v) in out.iter_mut().zip(part) {
                    *o += v;
                }
            }
        });
    }

    /// Many query tokens (prefill), in parallel over (token, KV head) pairs. `qs` and `outs` hold
    /// one row of `n_heads * head_dim` per token; token `t` attends to `slots_for(t)` (its causal /
    /// sliding-window set of cache slots).
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
        let block = token_block(n_tokens);
        let runs: Option<Vec<Range<usize>>> = slots.iter().map(SlotRanges::single_run).collect();
        if let (true, Some(runs)) = (block > 1, runs) {
            // Blocks of tokens, each reading every key and value row once for the whole block.
            parallel::for_each_chunk_mut(outs, block * row, |b, o| {
                let tokens = b * block..b * block + o.len() / row;
                let qs = &qs[tokens.start * row..tokens.end * row];
                for kv_head in 0..kv.n_kv_heads() {
                    let block = TokenBlock {
                        qs,
                        kv,
                        kv_head,
                        group,
                        runs: &runs[tokens.clone()],
                        scale,
                    };
                    self.attend_block(&block, o);
                }
            });
            return Ok(());
        }
        // Tokens already give parallelism: always keep a KV head's query heads together.
        let tasks_per_token = n_heads / group;
        parallel::for_each_chunk_mut(outs, group * hd, |i, o| {
            let (t, kvh) = (i / tasks_per_token, i % tasks_per_token);
            let q = &qs[t * row + kvh * group * hd..t * row + (kvh + 1) * group * hd];
            self.heads_in_cache(q, kv, kvh, &slots[t], scale, o);
        });
        Ok(())
    }

    /// A block of tokens through the micro-kernel of this SIMD path (see `attention_gemm`).
    fn attend_block(&self, block: &TokenBlock<'_>, outs: &mut [f32]) {
        let softmax = |s: &mut [f32]| self.softmax(s);
        match self.path {
            Path::Scalar => attend_block(gemm::ScalarMicro, block, softmax, outs),
            #[cfg(feature = "simd")]
            Path::Wide => attend_block(gemm::WideDefault {}, block, softmax, outs),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(t, _) => attend_block(gemm::Avx2Micro(t), block, softmax, outs),
        }
    }

    /// Query heads `q` (`m` rows of `head_dim`) that all read `kv_head`; shapes were validated by
    /// the caller. Each key/value row is loaded once and used by all `m` heads while in L1.
    fn heads_in_cache(
        &self,
        q: &[f32],
        kv: &KvCacheView<'_>,
        kv_head: usize,
        slots: &SlotRanges,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = kv.head_dim();
        let m = q.len() / hd;
        let n = slots.len();
        with_scratch(m * n, |scores| {
            let mut at = 0;
            for r in slots.iter() {
                if let Ok(keys) = kv.keys(kv_head, r) {
                    for k in keys.iter() {
                        // Heads in chunks so the key is read once per chunk.
                        for (c, qc) in q.chunks(DOT_CHUNK * hd).enumerate() {
                            let mut s = [0.0f32; DOT_CHUNK];
                            let s = &mut s[..qc.len() / hd];
                            self.dots_scaled(qc, k, scale, s);
                            for (g, &v) in s.iter().enumerate() {
                                scores[(c * DOT_CHUNK + g) * n + at] = v;
                            }
                        }
                        at += 1;
                    }
                }
            }
            for s in scores.chunks_exact_mut(n.max(1)) {
                self.softmax(s);
            }
            // Weighted values, per query head with the output in registers across all slots
            // (the same FMAs, in slot order, as one axpy per slot).
            out.fill(0.0);
            let mut rows: Vec<&[f32]> = Vec::with_capacity(n);
            for r in slots.iter() {
                if let Ok(values) = kv.values(kv_head, r) {
                    rows.extend(values.iter());
                }
            }
            for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                self.weighted_rows(&rows, &scores[h * n..(h + 1) * n], o);
            }
        });
    }
}

/// Most tokens whose attention one task computes together (see `attention_gemm`).
const TOKEN_BLOCK: usize = 12;

/// Tokens per block in batched attention: up to `TOKEN_BLOCK`, but small enough to leave about
/// four blocks per thread; 1 means one task per (token, KV head) instead.
fn token_block(n_tokens: usize) -> usize {
    (n_tokens / (4 * parallel::current_num_threads())).clamp(1, TOKEN_BLOCK)
}

/// Slots prefetched ahead in slot-major attention (the hardware prefetcher alone reaches only
/// ~60% of the read bandwidth on these 4 KiB-per-slot streams).
const PF_SLOTS: usize = 4;

/// Query heads scored together against one key in the head-major loop.
const DOT_CHUNK: usize = 8;

/// Slots per block in slot-major decode attention: fixed (not per thread) so the summation order,
/// and so the result, does not depend on the thread count.
const SLOT_BLOCK: usize = 256;

/// Runs `f` with a zeroed-on-growth scratch buffer of `len` floats: a per-thread buffer reused
/// across calls, or a fresh one if this thread's buffer is already in use (re-entrant call).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

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

/// Products of `batch` inputs computed transposed, row-major over the `rows` weight rows, so
/// threads split weight rows: `f(r0, yt)` fills `yt[i * batch + b]` for rows `r0..`, in chunks of
/// whole rows; the result is then scattered into `ys` (`batch x rows`).
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn par_rows_transposed<F>(ys: &mut [f32], rows: usize, cols: usize, batch: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let mut yt = vec![0.0f32; rows * batch];
    parallel::par_rows(&mut yt, 4 * batch, cols, |e0, chunk| f(e0 / batch, chunk));
    for (r, row) in yt.chunks_exact(batch).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            ys[b * rows + r] = v;
        }
    }
}
