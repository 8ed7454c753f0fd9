//! AVX-512 kernels with VNNI (`vpdpbusd`), selected at run time, for the int4 products: decode
//! rows and the prefill micro-kernel; also the ggml block kernels, the f16 / Q8_0 KV cache rows
//! (16 lanes, `vcvtph2ps`) and the int8 rows of several inputs (the output head of a
//! several-sequence step). Every other kernel of the AVX-512 path is the AVX2 one
//! (these CPUs all have AVX2, FMA and F16C; detection checks it), and so are the int4 panel
//! packer and prefetches.
//!
//! The results are bit-identical to the scalar and AVX2 int4 kernels: the integer sums are exact
//! whatever their order, and every f32 operation after them (conversion, `d · dx`, one FMA per
//! group into its lane, the final reduction) is the one `int4.rs` and `gemm::int4` define.
//!
//! As for AVX2, the [`Avx512`] token is the proof that the CPU has the features, which makes
//! calling the `#[target_feature]` functions sound, and the safe wrappers check every extent the
//! raw loops rely on.

mod amx;
mod blocks;
mod gemm_blocks;
mod gemm_f32;
mod gemm_int;
mod kv_rows;
mod matvec;
mod matvec_float;
mod matvec_many;
mod probe;
mod quantize;

use super::avx2::Avx2;
pub(crate) use amx::Amx;
pub(crate) use gemm_blocks::Avx512Blocks;

/// Proof that the running CPU has AVX-512 F/BW/VL and VNNI, and AVX2, FMA and F16C (it carries
/// the [`Avx2`] token).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(Avx2);

impl Avx512 {
    /// `Some` only when every feature the kernels enable is available.
    pub(crate) fn detect() -> Option<Self> {
        let avx2 = Avx2::detect()?;
        (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni"))
        .then_some(Avx512(avx2))
    }

    /// The AVX2 kernels, which this CPU runs too.
    pub(crate) fn avx2(self) -> Avx2 {
        self.0
    }
}
