//! Decode products on one instruction set: `y = W x` for every weight type split over the threads
//! in row chunks, several inputs at once, several matrices in one parallel job. Where rows are cut
//! never changes a row's result. ggml block matrices take either arithmetic of `block_input.rs`
//! (`exact` chooses), and their batches (prefill in the default arithmetic) are the same rows
//! kernel over all inputs, so a batch is bit-identical to one product per input.

use crate::block_input::{quantize_into, ActKind, BlockInput};
use crate::blocks::BlockMat;
use crate::int4::Int4Input;
use crate::isa::traits::{BlockMatvec, BlockMicro, Int4Matvec, Isa, Matvec, MatvecMany};
use crate::mat::{Int8Mat, MatRef};
use crate::parallel;

/// `y = W x`; shapes validated by the caller. Rows are split over the current pool in large
/// chunks; an int4 or block input is quantized once.
pub(crate) fn matvec<I: Isa>(isa: I, w: &MatRef<'_>, x: &[f32], y: &mut [f32], exact: bool) {
    let cols = w.cols();
    if let MatRef::Blocks(m) = w {
        blocks(isa, m, x, y, 1, exact);
        return;
    }
    if let MatRef::Int4(m) = w {
        let input = [Int4Input::quantize(x)];
        parallel::par_rows(y, 4, cols / 4, |r0, yc| {
            isa.int4_matvec().rows(m, &input, r0, yc)
        });
        return;
    }
    parallel::par_rows(y, 4, cols, |r0, yc| {
        // In bounds: the chunk's rows lie inside 0..rows by construction.
        if let Ok(sub) = w.rows_range(r0..r0 + yc.len()) {
            rows(isa, &sub, x, yc, exact);
        }
    });
}

/// `y = W x` on this thread.
fn rows<I: Isa>(isa: I, w: &MatRef<'_>, x: &[f32], y: &mut [f32], exact: bool) {
    match w {
        MatRef::F32(m) => isa.matvec().matvec_f32(m, x, y),
        MatRef::Int8(m) => isa.matvec().matvec_i8(m, x, y),
        // Not reached (`matvec` quantizes the input first); kept total for safety.
        MatRef::Int4(m) => isa.int4_matvec().rows(m, &[Int4Input::quantize(x)], 0, y),
        MatRef::Blocks(m) => match block_kind(m, exact) {
            Some(kind) => isa.blocks().rows(m, &[quantize_input(isa, kind, x)], 0, y),
            None => isa.blocks().rows_exact(m, x, 1, 0, y),
        },
    }
}

/// How a block matrix's activations are quantized (`None`: f32, the exact arithmetic or
/// F16 / BF16 weights).
fn block_kind(m: &BlockMat<'_>, exact: bool) -> Option<ActKind> {
    ActKind::of(m.ty()).filter(|_| !exact)
}

/// Quantizes one input with the path's vector quantizer (the block micro-kernel's, where the
/// path has one; bit-identical to `quantize_into`, which the others run).
fn quantize_input<I: Isa>(isa: I, kind: ActKind, x: &[f32]) -> BlockInput {
    BlockInput::quantize_with(kind, x, |x, qs, d| match isa.block_micro() {
        Some(micro) => micro.quantize(kind, x, qs, d),
        None => quantize_into(kind, x, qs, d),
    })
}

/// Quantizes each of the `cols`-long inputs in `xs` (in parallel for a prompt's worth).
fn quantize_inputs<I: Isa>(isa: I, kind: ActKind, xs: &[f32], cols: usize) -> Vec<BlockInput> {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if xs.len() >= 1 << 16 && parallel::current_num_threads() > 1 {
            return xs
                .par_chunks_exact(cols)
                .map(|x| quantize_input(isa, kind, x))
                .collect();
        }
    }
    xs.chunks_exact(cols)
        .map(|x| quantize_input(isa, kind, x))
        .collect()
}

/// `ys[b] = W xs[b]` for a block matrix and `batch` inputs (decode, a batch of sequences, or a
/// prompt in the default arithmetic), rows split over the threads, each row's blocks read from
/// memory once per tile of rows for all inputs; shapes validated by the caller.
pub(crate) fn blocks<I: Isa>(
    isa: I,
    m: &BlockMat<'_>,
    xs: &[f32],
    ys: &mut [f32],
    batch: usize,
    exact: bool,
) {
    let (rows, cols) = (m.rows(), m.cols());
    if rows == 0 || batch == 0 {
        return;
    }
    if cols == 0 {
        ys.fill(0.0);
        return;
    }
    let work = cols;
    match block_kind(m, exact) {
        Some(kind) => {
            let inputs = quantize_inputs(isa, kind, xs, cols);
            let f = |r0: usize, yt: &mut [f32]| isa.blocks().rows(m, &inputs, r0, yt);
            if batch == 1 {
                parallel::par_rows(ys, 4, work, f);
            } else {
                par_rows_transposed(ys, rows, work, batch, f);
            }
        }
        None => {
            let f = |r0: usize, yt: &mut [f32]| isa.blocks().rows_exact(m, xs, batch, r0, yt);
            if batch == 1 {
                parallel::par_rows(ys, 4, work, f);
            } else {
                par_rows_transposed(ys, rows, work, batch, f);
            }
        }
    }
}

/// The products of `Kernels::matvec_batch` that read the weights once for all `batch` inputs:
/// int4 and blocks always, f32 and int8 when the path has multi-input kernels and BLAS does not
/// take `w`. Returns `false`, without computing, for the others (one matvec per input).
pub(crate) fn batch<I: Isa>(
    isa: I,
    w: &MatRef<'_>,
    xs: &[f32],
    ys: &mut [f32],
    batch: usize,
    blas: bool,
    exact: bool,
) -> bool {
    let (rows, cols) = (w.rows(), w.cols());
    if let MatRef::Blocks(m) = w {
        blocks(isa, m, xs, ys, batch, exact);
        return true;
    }
    if let MatRef::Int4(m) = w {
        let inputs = quantize_int4_batch(xs, cols, batch);
        par_rows_transposed(ys, rows, cols / 4, batch, |r0, yt| {
            isa.int4_matvec().rows(m, &inputs, r0, yt)
        });
        return true;
    }
    if let (Some(many), false, true) = (isa.matvec_many(), blas, batch > 1) {
        par_rows_transposed(ys, rows, cols, batch, |r0, yt| match w {
            MatRef::F32(m) => many.matvec_f32(m, xs, batch, r0, yt),
            MatRef::Int8(m) => many.matvec_i8(m, xs, batch, r0, yt),
            MatRef::Int4(_) | MatRef::Blocks(_) => {}
        });
        return true;
    }
    false
}

/// The `batch` inputs of `xs` (`cols` long each) quantized for the int4 kernels, with the
/// transposed codes of several-input products in batches that use them. The inputs are
/// quantized on the pool's threads: one after another they were a few % of a 4-sequence step,
/// with the other threads waiting.
fn quantize_int4_batch(xs: &[f32], cols: usize, batch: usize) -> Vec<Int4Input> {
    let quantize = if batch >= crate::int4::TRANSPOSED_MIN_BATCH {
        Int4Input::quantize_for_batch
    } else {
        Int4Input::quantize
    };
    let mut inputs: Vec<Option<Int4Input>> = (0..batch).map(|_| None).collect();
    parallel::for_each_chunk_mut(&mut inputs, 1, |b, slot| {
        slot[0] = Some(quantize(&xs[b * cols..(b + 1) * cols]));
    });
    inputs.into_iter().flatten().collect()
}

/// `ys[i][b] = ws[i] xs[b]` for int4 matrices sharing their `batch` inputs (q/k/v, gate/up of a
/// several-sequence decode step): the inputs quantized once, every matrix's rows in one parallel
/// job, each result as from [`batch`]. Returns `false`, without computing, unless every matrix is
/// int4 and `batch > 1`; shapes validated by the caller.
pub(crate) fn batch_many<I: Isa>(
    isa: I,
    ws: &[MatRef<'_>],
    xs: &[f32],
    ys: &mut [&mut [f32]],
    batch: usize,
) -> bool {
    let int4: Vec<_> = ws
        .iter()
        .filter_map(|w| match w {
            MatRef::Int4(m) => Some(m),
            _ => None,
        })
        .collect();
    if batch <= 1 || int4.len() != ws.len() || ws.is_empty() {
        return false;
    }
    let cols = ws[0].cols();
    let inputs = quantize_int4_batch(xs, cols, batch);
    let mut yts: Vec<Vec<f32>> = int4.iter().map(|m| vec![0.0; m.rows() * batch]).collect();
    let segments = int4
        .iter()
        .zip(yts.iter_mut())
        .map(|(m, yt)| (*m, yt.as_mut_slice()))
        .collect();
    parallel::par_segments(segments, 4 * batch, cols / 4, |m, e0, chunk| {
        isa.int4_matvec().rows(m, &inputs, e0 / batch, chunk)
    });
    for (yt, y) in yts.iter().zip(ys.iter_mut()) {
        scatter_transposed(yt, y, batch);
    }
    true
}

/// `ys[i] = ws[i] x` as one parallel job over every matrix's rows (one dispatch instead of one
/// per matrix), an int4 input, and a block input of each kind needed, quantized once; shapes
/// validated by the caller.
pub(crate) fn many<I: Isa>(
    isa: I,
    ws: &[MatRef<'_>],
    x: &[f32],
    ys: &mut [&mut [f32]],
    exact: bool,
) {
    let input = ws
        .iter()
        .any(|w| matches!(w, MatRef::Int4(_)))
        .then(|| [Int4Input::quantize(x)]);
    let block_input = |kind: ActKind| {
        ws.iter()
            .any(|w| matches!(w, MatRef::Blocks(m) if block_kind(m, exact) == Some(kind)))
            .then(|| [quantize_input(isa, kind, x)])
    };
    let (q8_0, q8_k) = (block_input(ActKind::Q8_0), block_input(ActKind::Q8K));
    let all_int4 = ws.iter().all(|w| matches!(w, MatRef::Int4(_)));
    let work_per_row = if all_int4 { x.len() / 4 } else { x.len() };
    let segments = ws
        .iter()
        .zip(ys.iter_mut())
        .map(|(w, y)| (w, &mut **y))
        .collect();
    parallel::par_segments(segments, 4, work_per_row, |w, r0, c| match (w, &input) {
        (MatRef::Int4(m), Some(input)) => isa.int4_matvec().rows(m, input, r0, c),
        (MatRef::Blocks(m), _) => match (block_kind(m, exact), &q8_0, &q8_k) {
            (Some(ActKind::Q8_0), Some(q), _) | (Some(ActKind::Q8K), _, Some(q)) => {
                isa.blocks().rows(m, q, r0, c)
            }
            _ => isa.blocks().rows_exact(m, x, 1, r0, c),
        },
        _ => {
            // In bounds: the chunk's rows lie inside the matrix by construction.
            if let Ok(sub) = w.rows_range(r0..r0 + c.len()) {
                rows(isa, &sub, x, c, exact);
            }
        }
    });
}

/// Small int8 batches (`Y = X Wᵀ`, row-aligned groups): the weights are streamed once (as in a
/// matvec) and each row is dotted with every input; dequantizing whole panels for a GEMM would
/// cost more than it saves.
pub(crate) fn matmul_i8_small<M: MatvecMany>(
    many: M,
    w: &Int8Mat<'_>,
    xs: &[f32],
    ys: &mut [f32],
    batch: usize,
) {
    par_rows_transposed(ys, w.rows(), w.cols(), batch, |r0, yt| {
        many.matmul_i8_small(w, xs, batch, r0, yt)
    });
}

/// Products of `batch` inputs computed transposed, row-major over the `rows` weight rows, so
/// threads split weight rows: `f(r0, yt)` fills `yt[i * batch + b]` for rows `r0..`, in chunks of
/// whole rows (`work_per_row` weight elements each); the result is then scattered into `ys`
/// (`batch x rows`).
fn par_rows_transposed<F>(ys: &mut [f32], rows: usize, work_per_row: usize, batch: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let mut yt = vec![0.0f32; rows * batch];
    parallel::par_rows(&mut yt, 4 * batch, work_per_row, |e0, chunk| {
        f(e0 / batch, chunk)
    });
    scatter_transposed(&yt, ys, batch);
}

/// `ys[b * rows + r] = yt[r * batch + b]`: transposed results back to one row per input.
fn scatter_transposed(yt: &[f32], ys: &mut [f32], batch: usize) {
    let rows = yt.len() / batch.max(1);
    for (r, row) in yt.chunks_exact(batch).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            ys[b * rows + r] = v;
        }
    }
}
