//! A small, fast, seedable generator of approximately normal values (no cryptographic or
//! statistical ambitions: weights for benchmarks).

/// SplitMix64 step: turns any seed into well-mixed 64 bits.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Lanes of the generator: independent xorshift128 streams stepped together, which the compiler
/// turns into SIMD (only xors and shifts).
const LANES: usize = 8;

/// Eight interleaved xorshift128 streams (Marsaglia 2003).
#[derive(Debug, Clone)]
pub struct Rng {
    x: [u32; LANES],
    y: [u32; LANES],
    z: [u32; LANES],
    w: [u32; LANES],
}

/// Mean and standard deviation of the sum of four uniform bytes (Irwin-Hall, n = 4, on 1021
/// levels: fine-grained enough for weights).
const SUM_MEAN: f32 = 4.0 * 127.5;
const SUM_STD: f32 = 147.800_54;

impl Rng {
    /// The stream for one chunk of one tensor: the same inputs always give the same values.
    pub fn for_stream(seed: u64, tensor: u64, chunk: u64) -> Self {
        let mut x = splitmix64(splitmix64(splitmix64(seed) ^ tensor) ^ chunk.rotate_left(32));
        let mut rng = Self {
            x: [0; LANES],
            y: [0; LANES],
            z: [0; LANES],
            w: [0; LANES],
        };
        for lane in 0..LANES {
            x = splitmix64(x);
            let (a, b) = (x as u32, (x >> 32) as u32);
            x = splitmix64(x);
            let (c, d) = (x as u32, (x >> 32) as u32);
            // xorshift must not start from all zeros.
            rng.x[lane] = a | 1;
            rng.y[lane] = b;
            rng.z[lane] = c;
            rng.w[lane] = d;
        }
        rng
    }

    /// One step of every lane: 32 random bits each.
    #[inline(always)]
    fn step(&mut self) -> [u32; LANES] {
        for i in 0..LANES {
            let t = self.x[i] ^ (self.x[i] << 11);
            self.x[i] = self.y[i];
            self.y[i] = self.z[i];
            self.z[i] = self.w[i];
            self.w[i] ^= (self.w[i] >> 19) ^ t ^ (t >> 8);
        }
        self.w
    }

    /// Fills `out` with `mean + std * z`, z approximately standard normal (sum of the four bytes
    /// of a 32-bit draw, bounded at about ±3.5).
    #[inline]
    pub fn fill_normal(&mut self, out: &mut [f32], mean: f32, std: f32) {
        let scale = std / SUM_STD;
        let offset = mean - SUM_MEAN * scale;
        let value = |r: u32| {
            let pairs = (r & 0x00FF_00FF) + ((r >> 8) & 0x00FF_00FF);
            let sum = (pairs & 0xFFFF) + (pairs >> 16);
            sum as f32 * scale + offset
        };
        let mut chunks = out.chunks_exact_mut(LANES);
        for c in &mut chunks {
            let r = self.step();
            for (o, &r) in c.iter_mut().zip(&r) {
                *o = value(r);
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let r = self.step();
            for (o, &r) in rest.iter_mut().zip(&r) {
                *o = value(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_values_have_the_requested_moments_and_are_reproducible() {
        let mut values = vec![0.0f32; 1 << 16];
        Rng::for_stream(7, 3, 1).fill_normal(&mut values, 1.0, 0.02);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((mean - 1.0).abs() < 1e-3, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "std {}", var.sqrt());
        let mut again = vec![0.0f32; 1 << 16];
        Rng::for_stream(7, 3, 1).fill_normal(&mut again, 1.0, 0.02);
        assert_eq!(values, again);
        Rng::for_stream(8, 3, 1).fill_normal(&mut again, 1.0, 0.02);
        assert_ne!(values, again);
    }
}
