//! Attention: views over a KV cache ([`views`]) and the loops over them, generic over the
//! element-wise kernels and the f32 GEMM tile: one query token ([`decode`]) and blocks of tokens
//! ([`prefill`]).

pub(crate) mod decode;
pub(crate) mod prefill;
pub(crate) mod views;

pub use views::{KvCacheView, KvData, RowsRef, SlotRanges};
