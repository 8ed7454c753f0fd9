//! The instruction sets, one folder each, and the traits they implement (`traits`, the leaf that
//! drivers and instruction sets both import). Which implementation a path runs is `dispatch`'s
//! choice.

pub(crate) mod scalar;
pub(crate) mod traits;
#[cfg(feature = "simd")]
pub(crate) mod wide;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
pub(crate) mod x86;
