//! The crate's error type.

/// Errors returned by the kernels. They are all caller mistakes (shapes, lengths, options that were
/// not compiled in); a kernel never fails on well-formed inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A slice does not have the length the shapes imply.
    #[error("{what}: expected length {expected}, got {got}")]
    Length {
        /// Which argument was wrong.
        what: &'static str,
        /// The length the shapes require.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// Shapes that cannot work together (or overflow `usize`).
    #[error("invalid shape: {0}")]
    Shape(String),
    /// The requested SIMD path is not available on this CPU or in this build.
    #[error("SIMD path `{0}` is not supported on this CPU or in this build")]
    UnsupportedPath(&'static str),
    /// BLAS was requested but no BLAS feature is compiled in for this target.
    #[error("no BLAS backend compiled in (features: openblas, blis, accelerate on macOS)")]
    BlasUnavailable,
    /// The rayon thread pool could not be built.
    #[error("thread pool: {0}")]
    ThreadPool(String),
}

/// Returns `Err(KernelError::Length)` unless `got == expected`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// `a * b`, or a shape error naming `what` on overflow.
pub(crate) fn checked_mul(what: &str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b)
        .ok_or_else(|| KernelError::Shape(format!("{what}: {a} x {b} overflows usize")))
}
