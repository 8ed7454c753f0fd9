//! Thread control. Kernels run inside whatever rayon pool is current (`pool.install(|| ...)`), so
//! callers choose the thread count per phase (e.g. prefill vs decode) without global state.

#[cfg(feature = "parallel")]
use crate::error::KernelError;

/// Threads the kernels will use when called from here: the current rayon pool's size, or 1 when
/// built without the `parallel` feature.
pub fn current_num_threads() -> usize {
    #[cfg(feature = "parallel")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "parallel"))]
    {
        1
    }
}

/// A rayon pool with `n` threads (`n == 0`: rayon's default, one per logical CPU). Run kernels in it
/// with `pool.install(|| ...)`.
#[cfg(feature = "parallel")]
pub fn thread_pool(n: usize) -> Result<rayon::ThreadPool, KernelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("torchless-{i}"))
        .build()
        .map_err(|e| KernelError::ThreadPool(e.to_string()))
}

/// Calls `f(index, chunk)` for every `chunk`-sized piece of `data` (the last may be shorter), in
/// parallel when the `parallel` feature is on: e.g. one call per attention head over a
/// `n_heads * head_dim` output. `chunk == 0` is treated as 1.
pub fn for_each_chunk_mut<T, F>(data: &mut [T], chunk: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let chunk = chunk.max(1);
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 && data.len() > chunk {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    for (i, c) in data.chunks_mut(chunk).enumerate() {
        f(i, c);
    }
}

/// Splits the output rows `y` into a few large chunks (multiples of `align` rows) and runs
/// `f(first_row, chunk)` on each, in parallel. Chunks are big (≥ `MIN_WORK` weight elements and
/// about four per thread so rayon can rebalance), so the threads never share output cache lines
/// except at the few chunk borders, and nothing is allocated.
pub(crate) fn par_rows<F>(y: &mut [f32], align: usize, work_per_row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        const MIN_WORK: usize = 1 << 16;
        let rows = y.len();
        let threads = rayon::current_num_threads();
        if threads > 1 && rows.saturating_mul(work_per_row) >= 2 * MIN_WORK {
            let min_rows = MIN_WORK.div_ceil(work_per_row.max(1));
            let chunk = rows
                .div_ceil(4 * threads)
                .max(min_rows)
                .div_ceil(align)
                .saturating_mul(align);
            y.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i * chunk, c));
            return;
        }
    }
    let _ = (align, work_per_row);
    f(0, y);
}
