//! Run-time selection of the SIMD path, detected once, and the one place that maps a path to the
//! kernels it runs: the table of `Isa` implementations and the [`on_isa!`] macro.

use crate::error::KernelError;
use crate::isa::scalar::Scalar;
use crate::isa::traits::{Isa, NoKernel};
#[cfg(feature = "simd")]
use crate::isa::wide::{Wide, WideTile};
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
use crate::isa::x86::{Amx, Avx2, Avx512, Avx512Blocks};
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
    /// AVX2 + FMA, plus AVX-512 (F/BW/VL) with VNNI for the int4 and ggml block products and
    /// the f16 / Q8_0 KV cache rows, x86_64 only, chosen when the CPU has all of them. The other
    /// kernels are the AVX2 ones.
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

/// A path together with the proof that it may run (the tokens of its instruction sets).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path {
    Scalar,
    #[cfg(feature = "simd")]
    Wide,
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    Avx2(Avx2),
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    Avx512(Avx512),
}

impl Path {
    pub(crate) fn new(p: SimdPath) -> Option<Path> {
        match p {
            SimdPath::Scalar => Some(Path::Scalar),
            #[cfg(feature = "simd")]
            SimdPath::Wide => Some(Path::Wide),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            SimdPath::Avx2Fma => avx2_token().map(Path::Avx2),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            SimdPath::Avx512Vnni => avx512_token().map(Path::Avx512),
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
            Path::Avx2(_) => SimdPath::Avx2Fma,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Path::Avx512(_) => SimdPath::Avx512Vnni,
        }
    }
}

/// Evaluates `$body` with `$isa` bound to the instruction set of `$path` (a value implementing
/// [`Isa`]), monomorphized once per path: the one `match` on a path in the crate. One dispatch per
/// call: kernels inside `$body` are called statically.
macro_rules! on_isa {
    ($path:expr, |$isa:ident| $body:expr) => {
        match $path {
            $crate::dispatch::Path::Scalar => {
                let $isa = $crate::isa::scalar::Scalar;
                $body
            }
            #[cfg(feature = "simd")]
            $crate::dispatch::Path::Wide => {
                let $isa = $crate::isa::wide::Wide;
                $body
            }
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            $crate::dispatch::Path::Avx2($isa) => $body,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            $crate::dispatch::Path::Avx512($isa) => $body,
        }
    };
}
pub(crate) use on_isa;

/// Sum of `x` with the path's 512-bit read loop, `None` on paths without one (the
/// read-bandwidth probe tries it beside the element-wise `sum`).
pub(crate) fn wide_sum(path: Path, x: &[f32]) -> Option<f32> {
    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    if let Path::Avx512(t) = path {
        return Some(t.sum_zmm(x));
    }
    let _ = (path, x);
    None
}

// The table: which implementation each path runs for each family of kernels (a family another
// instruction set implements is made from the path's token by the `From` impls below).

/// Plain Rust for everything.
impl Isa for Scalar {
    type Elementwise = Scalar;
    type Matvec = Scalar;
    type Int4Matvec = Scalar;
    type MatvecMany = NoKernel;
    type Micro = Scalar;
    type QMicro = Scalar;
    type Q4Micro = Scalar;
    type Blocks = Scalar;
    type BlockMicro = NoKernel;
    type KvRows = Scalar;

    fn matvec_many(self) -> Option<NoKernel> {
        None
    }

    fn block_micro(self) -> Option<NoKernel> {
        None
    }
}

/// `wide` vectors for the f32 work; the integer kernels and the ggml block rows are the scalar
/// ones.
#[cfg(feature = "simd")]
impl Isa for Wide {
    type Elementwise = Wide;
    type Matvec = Wide;
    type Int4Matvec = Scalar;
    type MatvecMany = NoKernel;
    type Micro = WideTile;
    type QMicro = Scalar;
    type Q4Micro = Scalar;
    type Blocks = Scalar;
    type BlockMicro = NoKernel;
    type KvRows = Scalar;

    fn matvec_many(self) -> Option<NoKernel> {
        None
    }

    fn block_micro(self) -> Option<NoKernel> {
        None
    }
}

/// AVX2 + FMA for everything.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl Isa for Avx2 {
    type Elementwise = Avx2;
    type Matvec = Avx2;
    type Int4Matvec = Avx2;
    type MatvecMany = Avx2;
    type Micro = Avx2;
    type QMicro = Avx2;
    type Q4Micro = Avx2;
    type Blocks = Avx2;
    type BlockMicro = NoKernel;
    type KvRows = Avx2;

    fn matvec_many(self) -> Option<Avx2> {
        Some(self)
    }

    fn block_micro(self) -> Option<NoKernel> {
        None
    }
}

/// The AVX2 path with the AVX-512 VNNI int4 and ggml block kernels.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl Isa for Avx512 {
    type Elementwise = Avx2;
    type Matvec = Avx512;
    type Int4Matvec = Avx512;
    type MatvecMany = Avx512;
    type Micro = Avx512;
    type QMicro = Avx2;
    type Q4Micro = Avx512;
    type Blocks = Avx512;
    type BlockMicro = Avx512Blocks;
    type KvRows = Avx512;

    fn matvec_many(self) -> Option<Avx512> {
        Some(self)
    }

    fn block_micro(self) -> Option<Avx512Blocks> {
        Some(match amx_token(self) {
            Some(amx) => Avx512Blocks::Amx(amx),
            None => Avx512Blocks::Vnni(self),
        })
    }
}

/// The scalar kernels run wherever the `wide` ones do.
#[cfg(feature = "simd")]
impl From<Wide> for Scalar {
    fn from(_: Wide) -> Scalar {
        Scalar
    }
}

#[cfg(feature = "simd")]
impl From<Wide> for WideTile {
    fn from(_: Wide) -> WideTile {
        WideTile {}
    }
}

/// A CPU with the AVX-512 features has the AVX2 ones (`Avx512::detect` checks both).
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
impl From<Avx512> for Avx2 {
    fn from(t: Avx512) -> Avx2 {
        t.avx2()
    }
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn avx2_token() -> Option<Avx2> {
    static TOKEN: OnceLock<Option<Avx2>> = OnceLock::new();
    *TOKEN.get_or_init(Avx2::detect)
}

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn avx512_token() -> Option<Avx512> {
    static TOKEN: OnceLock<Option<Avx512>> = OnceLock::new();
    *TOKEN.get_or_init(Avx512::detect)
}

/// AMX for the ggml block prefill, only when `$TORCHLESS_AMX` is `1` / `on` and the CPU has it
/// and the OS grants it. Off by default: measured slower than the VNNI tile so far (see
/// IMPLEMENTATION.md); the results are the same bits either way.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
fn amx_token(avx512: Avx512) -> Option<Amx> {
    static TOKEN: OnceLock<Option<Amx>> = OnceLock::new();
    *TOKEN.get_or_init(|| {
        let on = std::env::var(AMX_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("on"));
        if on {
            Amx::detect(avx512)
        } else {
            None
        }
    })
}

/// Environment variable that turns the (experimental) AMX block-prefill tile on (`1` or `on`).
// Read only where the AMX tile is compiled (x86_64 with `simd`).
#[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(dead_code))]
pub const AMX_ENV: &str = "TORCHLESS_AMX";

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
