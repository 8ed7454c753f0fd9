//! f32 GEMM/GEMV through the system BLAS (cblas interface), behind the `openblas`, `blis` and
//! `accelerate` (macOS) features. FFI calls are the only `unsafe` here besides the SIMD code.

use crate::mat::F32Mat;
use cblas_sys::{cblas_sgemm, cblas_sgemv, CblasNoTrans, CblasRowMajor, CblasTrans};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};

// The `-src` crates only emit the link flags; naming them keeps them linked.
#[cfg(all(feature = "accelerate", target_os = "macos"))]
use accelerate_src as _;
#[cfg(feature = "blis")]
use blis_src as _;
#[cfg(feature = "openblas")]
use openblas_src as _;

#[cfg(feature = "openblas")]
extern "C" {
    fn openblas_set_num_threads(n: c_int);
}

#[cfg(all(feature = "blis", not(feature = "openblas")))]
extern "C" {
    fn bli_thread_set_num_threads(n: i64);
}

/// Pins BLIS to one thread even when `BLIS_NUM_THREADS`/`OMP_NUM_THREADS` ask for more.
fn blis_single_threaded() {
    #[cfg(all(feature = "blis", not(feature = "openblas")))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: plain setter exported by libblis; 1 is always a valid count.
        ONCE.call_once(|| unsafe { bli_thread_set_num_threads(1) });
    }
}

/// True when the linked BLAS is BLIS: its own threading is not used (see [`sgemm`]).
const IS_BLIS: bool = cfg!(all(feature = "blis", not(feature = "openblas")));

/// Makes OpenBLAS use as many threads as the current rayon pool (it would otherwise use every
/// CPU), so `pool.install` controls BLAS calls too. BLIS stays single-threaded: multi-threaded
/// sgemm in BLIS 0.9 (Debian 12's libblis4-openmp) reads freed memory inside its worker threads
/// (valgrind: "Invalid read of size 4" for e.g. a 7x300 by 300x33 product, a segfault in some
/// runs), so [`sgemm`] splits the batch across rayon threads instead.
fn sync_threads() {
    static LAST: AtomicUsize = AtomicUsize::new(0);
    let n = crate::parallel::current_num_threads().max(1);
    if LAST.swap(n, Ordering::Relaxed) == n {
        return;
    }
    let _n = c_int::try_from(n).unwrap_or(c_int::MAX);
    #[cfg(feature = "openblas")]
    // SAFETY: plain setter exported by libopenblas; any positive count is valid.
    unsafe {
        openblas_set_num_threads(_n)
    };
}

fn dims(v: &[usize]) -> Option<Vec<c_int>> {
    v.iter().map(|&d| c_int::try_from(d).ok()).collect()
}

/// `y = x Wᵀ` (`x`: `batch x k`, `y`: `batch x n`), lengths already validated. Returns `false`
/// (doing nothing) when a dimension does not fit the cblas `int` or is zero; the caller then uses
/// its own kernels.
pub(crate) fn sgemm(w: &F32Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) -> bool {
    let (n, k) = (w.rows(), w.cols());
    if n == 0 || k == 0 || batch == 0 {
        return false;
    }
    if dims(&[batch, n, k]).is_none() {
        return false;
    }
    assert!(x.len() == batch * k && y.len() == batch * n && w.data().len() == n * k);
    if IS_BLIS {
        blis_single_threaded();
        let rows_per_task = batch.div_ceil(crate::parallel::current_num_threads().max(1));
        crate::parallel::for_each_chunk_mut(y, rows_per_task * n, |i, y_rows| {
            let first = i * rows_per_task;
            let rows = y_rows.len() / n;
            sgemm_call(w, &x[first * k..(first + rows) * k], y_rows, rows);
        });
    } else {
        sync_threads();
        sgemm_call(w, x, y, batch);
    }
    true
}

/// One cblas_sgemm call: `y = x Wᵀ` for `batch` rows, lengths validated by the caller.
fn sgemm_call(w: &F32Mat<'_>, x: &[f32], y: &mut [f32], batch: usize) {
    let (n, k) = (w.rows(), w.cols());
    let Some(d) = dims(&[batch, n, k]) else {
        return;
    };
    assert!(batch > 0 && x.len() == batch * k && y.len() == batch * n && w.data().len() == n * k);
    // SAFETY: row-major A = x (batch x k, lda = k), B = Wᵀ read from W (n x k, ldb = k),
    // C = y (batch x n, ldc = n); all extents asserted above and every dimension is >= 1.
    unsafe {
        cblas_sgemm(
            CblasRowMajor,
            CblasNoTrans,
            CblasTrans,
            d[0],
            d[1],
            d[2],
            1.0,
            x.as_ptr(),
            d[2],
            w.data().as_ptr(),
            d[2],
            0.0,
            y.as_mut_ptr(),
            d[1],
        );
    }
}

/// `y = W x`, same contract as [`sgemm`].
pub(crate) fn sgemv(w: &F32Mat<'_>, x: &[f32], y: &mut [f32]) -> bool {
    let (n, k) = (w.rows(), w.cols());
    if n == 0 || k == 0 {
        return false;
    }
    let Some(d) = dims(&[n, k]) else {
        return false;
    };
    assert!(x.len() == k && y.len() == n && w.data().len() == n * k);
    sync_threads();
    // SAFETY: row-major W (n x k, lda = k), x of k values, y of n values (asserted above),
    // unit strides, every dimension >= 1.
    unsafe {
        cblas_sgemv(
            CblasRowMajor,
            CblasNoTrans,
            d[0],
            d[1],
            1.0,
            w.data().as_ptr(),
            d[1],
            x.as_ptr(),
            1,
            0.0,
            y.as_mut_ptr(),
            1,
        );
    }
    true
}
