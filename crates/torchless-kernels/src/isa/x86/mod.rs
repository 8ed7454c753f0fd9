//! The x86-64 instruction sets, detected at run time: AVX2 + FMA, and AVX-512 VNNI, which adds its
//! int4 kernels to the AVX2 ones.

pub(crate) mod avx2;
pub(crate) mod avx512;

pub(crate) use avx2::Avx2;
pub(crate) use avx512::{Amx, Avx512, Avx512Blocks};
