//! A small multiplicative hasher for the vocabulary tables.
//!
//! The merge table is keyed by `(left id, right id)` packed into a `u64` and is
//! probed several times per input character, so SipHash would dominate encoding
//! time. The keys of these tables come from the vocabulary, not from the input
//! (the input only looks them up), so a fast non-keyed hash is safe there.
//! Tables keyed by input text use std's randomly seeded `RandomState` instead.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style hasher (rotate, xor, multiply) with a final avalanche.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl PairHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for PairHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    /// The multiply only carries entropy upwards, while hashbrown picks the
    /// bucket from the low bits: without this final mix (murmur3's fmix64),
    /// keys sharing their first bytes (every `▁...` piece) or their right id
    /// collide.
    #[inline]
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

pub(crate) type PairBuildHasher = BuildHasherDefault<PairHasher>;

/// Builds [`PairHasher`]s starting from a random seed, for tables keyed by
/// input text: the seed (drawn from std's `RandomState`) keeps an adversary
/// from precomputing colliding inputs, at a fraction of SipHash's cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeededBuildHasher(u64);

impl SeededBuildHasher {
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        SeededBuildHasher(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl std::hash::BuildHasher for SeededBuildHasher {
    type Hasher = PairHasher;

    #[inline]
    fn build_hasher(&self) -> PairHasher {
        PairHasher(self.0)
    }
}
