//! Run-time selection of the SIMD path, detected once.

use crate::error::KernelError;
use std::sync::OnceLock;

/// The implementations a kernel can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdPath {
    /// Plain Rust (the only path without the `simd` feature).
    Scalar,
    /// Portable `wide::f32x8` (SSE2 halves on baseline x86-64, NEON halves on aarch64).
    Wide,
    /// Hand-written AVX2 + FMA intrinsics, x86_64 only, chosen when the CPU has both.
    Avx2Fma,
    /// AVX2 + FMA, plus AVX-512 (F/BW/VL) with VNNI for the int4 products, x86_64 only, chosen
    /// when the CPU has all of them. The other kernels are the AVX2 ones.
    Avx512Vnni,
}

impl SimdPath {
    /// Every path, slowest first.
    pub const ALL: [SimdPath; 4] = [
        SimdPath::Scalar,
        SimdPath::Wide,
        SimdPath::Avx2Fma,
        SimdPath::Avx512Vnni,
    ];

    /// A short name for logs, e.g. `"avx512+vnni"`, `"avx2+fma"`, `"wide(sse2)"`, `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Scalar => "scalar",
            SimdPath::Wide => wide_name(),
            SimdPath::Avx2Fma => "avx2+fma",
            SimdPath::Avx512Vnni => "avx512+vnni",
        }
    }

    /// Whether this path is compiled in and the running CPU supports it.
    pub fn is_supported(self) -> bool {
        Path::new(self).is_some()
    }

    /// The supported paths, slowest first (for tests and benchmarks that compare them).
    pub fn supported() -> Vec<SimdPath> {
        Self::ALL.into_iter().filter(|p| p.is_supported()).collect()
    }

    /// The fastest supported path.
    pub fn best() -> SimdPath {
        Self::ALL
            .into_iter()
            .rev()
            .find(|p| p.is_supported())
            .unwrap_or(SimdPath::Scalar)
    }

    /// Parses a [`SimdPath::name`] or one of `scalar`, `wide`, `avx2`, `avx512`.
    pub fn parse(s: &str) -> Option<SimdPath> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdPath::Scalar),
            "wide" => Some(SimdPath::Wide),
            "avx2" | "avx2+fma" | "avx2fma" => Some(SimdPath::Avx2Fma),
            "avx512" | "avx512+vnni" | "avx512vnni" => Some(SimdPath::Avx512Vnni),
            other if other.starts_with("wide(") => Some(SimdPath::Wide),
            _ => None,
        }
    }
}

fn wide_name() -> &'static str {
    if cfg!(target_feature = "avx") {
        "wide(avx)"
    } else if cfg!(target_arch = "x86_64") || cfg!(target_arch = "x86") {
        "wide(sse2)"
    } else if cfg!(target_arch = "aarch64") {
        "wide(neon)"
    } else {
        "wide(portable)"
    }
}

/// A path together with the proof that it may run: the AVX2 token, and the AVX-512 one when the
/// int4 products take the AVX-512 VNNI kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path {
    Scalar,
    #[cfg(feature = "simd")]
    Wide,
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    Avx2(crate::avx2::Token, Option<crate::avx512::Token>),
}

impl Path {
    pub(crate) fn new(p: SimdPath) -> Option<Path> {
        match p {
            SimdPath::Scalar => Some(Path::Scalar),
            #[cfg(feature = "simd")]
            SimdPath::Wide => Some(Path::Wide),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            SimdPath::Avx2Fma => avx2_token().map(|t| Path::Avx2(t, None)),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            SimdPath::Avx512Vnni => avx2_token()
                .zip(avx512_token())
                .map(|(t, v)| Path::Avx2(t, Some(v))),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    pub(crate) fn simd_path(self) -> SimdPath {
        match self {
            Path::Scalar => SimdPath::Scalar,
            #[cfg(feature = "simd")]
            Path::Wide => SimdPath::Wide,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(_, None) => SimdPath::Avx2Fma,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx2(_, Some(_)) => SimdPath::Avx512Vnni,
        }
    }
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn avx2_token() -> Option<crate::avx2::Token> {
    static TOKEN: OnceLock<Option<crate::avx2::Token>> = OnceLock::new();
    *TOKEN.get_or_init(crate::avx2::Token::detect)
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn avx512_token() -> Option<crate::avx512::Token> {
    static TOKEN: OnceLock<Option<crate::avx512::Token>> = OnceLock::new();
    *TOKEN.get_or_init(crate::avx512::Token::detect)
}

/// Environment variable that overrides the automatic choice (`scalar`, `wide`, `avx2`, `avx512`); an
/// unsupported or unknown value is ignored.
pub const PATH_ENV: &str = "TORCHLESS_SIMD";

/// The path [`crate::Kernels::auto`] uses: `$TORCHLESS_SIMD` if set and supported, else the best.
pub(crate) fn auto_path() -> Path {
    static AUTO: OnceLock<SimdPath> = OnceLock::new();
    let p = *AUTO.get_or_init(|| {
        std::env::var(PATH_ENV)
            .ok()
            .and_then(|v| SimdPath::parse(&v))
            .filter(|p| p.is_supported())
            .unwrap_or_else(SimdPath::best)
    });
    Path::new(p).unwrap_or(Path::Scalar)
}

/// The automatically chosen SIMD path's name, for `--debug` output: `"avx512+vnni"`,
/// `"avx2+fma"`, `"wide(sse2)"`, `"wide(neon)"` or `"scalar"`.
pub fn cpu_path() -> &'static str {
    auto_path().simd_path().name()
}

/// The BLAS library f32 GEMM/GEMV go through by default, if one is compiled in: `"openblas"`,
/// `"blis"` or `"accelerate"` (when several features are on, the first of these).
pub fn blas_backend() -> Option<&'static str> {
    if cfg!(feature = "openblas") {
        Some("openblas")
    } else if cfg!(feature = "blis") {
        Some("blis")
    } else if cfg!(all(feature = "accelerate", target_os = "macos")) {
        Some("accelerate")
    } else {
        None
    }
}

pub(crate) fn require(p: SimdPath) -> Result<Path, KernelError> {
    Path::new(p).ok_or(KernelError::UnsupportedPath(p.name()))
}
