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
            if crate::team::in_team() {
                let chunks = data.chunks_mut(chunk).enumerate().collect();
                run_in_order(chunks, rayon::current_num_threads(), |(i, c)| f(i, c));
                return;
            }
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

/// Least weight elements per parallel chunk: smaller pieces cost more in hand-offs than they
/// save in balance.
const MIN_WORK: usize = 1 << 16;

/// Splits the output rows `y` into chunks (multiples of `align` rows) and runs
/// `f(first_row, chunk)` on each, in parallel; see [`par_segments`].
pub(crate) fn par_rows<F>(y: &mut [f32], align: usize, work_per_row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    par_segments(vec![((), y)], align, work_per_row, |_, r0, c| f(r0, c));
}

/// Runs `f(&context, first_row, chunk)` over every segment's output rows (e.g. the q, k and v
/// projections of one input), cut into chunks of whole `align` rows, as one parallel job.
///
/// The threads take chunks in order from a shared counter, and the chunks shrink as the work
/// runs out (each a `1 / (2 · threads)` share of what is left, at least `MIN_WORK` weight
/// elements): the first ones are long runs through memory, the last ones are small, so the
/// threads finish together (rayon's halving of equal chunks leaves one thread idle for up to a
/// chunk at the end of every product). Where the rows are cut never changes a row's result.
pub(crate) fn par_segments<C, F>(
    mut segments: Vec<(C, &mut [f32])>,
    align: usize,
    work_per_row: usize,
    f: F,
) where
    C: Sync,
    F: Fn(&C, usize, &mut [f32]) + Sync + Send,
{
    let threads = current_num_threads();
    let total: usize = segments.iter().map(|(_, y)| y.len()).sum();
    if threads <= 1 || total.saturating_mul(work_per_row) < 2 * MIN_WORK {
        for (c, y) in &mut segments {
            f(c, 0, y);
        }
        return;
    }
    #[cfg(feature = "parallel")]
    {
        let align = align.max(1);
        let min_rows = MIN_WORK
            .div_ceil(work_per_row.max(1))
            .next_multiple_of(align);
        let mut jobs = Vec::new();
        let mut remaining = total;
        for (c, y) in &mut segments {
            let c: &C = c;
            let (mut r0, mut rest) = (0, &mut **y);
            while !rest.is_empty() {
                let len = (remaining / (2 * threads))
                    .next_multiple_of(align)
                    .max(min_rows)
                    .min(rest.len());
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(len);
                jobs.push((c, r0, chunk));
                (r0, rest, remaining) = (r0 + len, tail, remaining - len);
            }
        }
        run_in_order(jobs, threads, |(c, r0, chunk)| f(c, r0, chunk));
    }
    #[cfg(not(feature = "parallel"))]
    let _ = align;
}

/// Runs `f` once on each of `jobs`, taken in order from a shared counter by `threads` threads:
/// this thread's spinning team if it has one (`team.rs`), rayon tasks otherwise.
#[cfg(feature = "parallel")]
fn run_in_order<J: Send>(jobs: Vec<J>, threads: usize, f: impl Fn(J) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            // Each job is taken once; a poisoned lock only means another job panicked.
            let taken = job.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(j) = taken {
                f(j);
            }
        }
    };
    if !crate::team::run_on_team(&work) {
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| work());
            }
            work();
        });
    }
}
