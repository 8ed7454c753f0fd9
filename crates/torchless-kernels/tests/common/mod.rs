//! Shared test helpers: a seeded PRNG, the exporter's int8 quantization, tolerance checks.
#![allow(dead_code)]

/// splitmix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// Quantizes like the torchless exporter: flatten, groups of 64, `inv = 127 / max|x|`,
/// `q = round_half_even(x * inv)`. An all-zero group gets `inv = +inf` and `q = 0`.
pub fn quantize(w: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut inv = Vec::new();
    for g in w.chunks(64) {
        let m = g.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
        let s = 127.0f32 / m;
        inv.push(s);
        for &v in g {
            let r = if m == 0.0 {
                0.0
            } else {
                (v * s).round_ties_even()
            };
            q.push(r.clamp(-127.0, 127.0) as i8);
        }
    }
    (q, inv)
}

/// Random weights with a spread of magnitudes across groups (realistic scales differ per group).
pub fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let group_scale = [0.02f32, 0.1, 0.5, 3.0][(i / 64) % 4];
            rng.f32() * group_scale
        })
        .collect()
}

/// The tolerance used for dot-product kernels: error at most `REL * Σ|terms| + ABS`.
pub const REL: f64 = 1e-5;
pub const ABS: f64 = 1e-6;

/// Asserts `got[i] ≈ want[i]` within `REL * scale[i] + ABS`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = REL * s + ABS;
        let err = (f64::from(g) - f64::from(w)).abs();
        assert!(
            err <= tol && g.is_finite() == w.is_finite(),
            "{what}: element {i}: got {g}, want {w}, err {err:e} > tol {tol:e}"
        );
    }
}

/// Asserts element-wise relative closeness: `|g - w| <= rel * |w| + abs`.
pub fn assert_rel(what: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - f64::from(w)).abs();
        let tol = rel * f64::from(w).abs() + abs;
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {w}, err {err:e} > {tol:e}"
        );
    }
}

/// `Kernels::batch_invariant_from`'s promise: from that batch on, each row of `matmul` has the
/// same bits whatever the batch it is computed in. `xs` holds `total` rows; they are computed as
/// one batch, then cut into consecutive batches of every size from the promised one up (a short
/// tail joined to the batch before it), and every row must match.
pub fn assert_rows_batch_invariant(
    what: &str,
    k: &torchless_kernels::Kernels,
    w: &torchless_kernels::MatRef<'_>,
    xs: &[f32],
    total: usize,
) {
    let Some(from) = k.batch_invariant_from(w) else {
        return;
    };
    let (rows, cols) = (w.rows(), w.cols());
    assert!(
        total >= 2 * from,
        "{what}: {total} rows cannot test batches from {from}"
    );
    let mut whole = vec![f32::NAN; total * rows];
    k.matmul(w, xs, &mut whole, total).unwrap();
    for part_rows in cuts(total, from) {
        let (start, end, n) = (part_rows.start, part_rows.end, part_rows.len());
        let mut part = vec![f32::NAN; n * rows];
        k.matmul(w, &xs[start * cols..end * cols], &mut part, n)
            .unwrap();
        assert!(
            same_bits(&part, &whole[start * rows..end * rows]),
            "{what}: rows {start}..{end} as a batch of {n} (from {from}) differ"
        );
    }
}

/// `0..total` cut into consecutive pieces of every size from `from` up, one cutting per size
/// (a tail shorter than `from` joined to the piece before it).
pub fn cuts(total: usize, from: usize) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::new();
    for size in from.max(1)..=total {
        let mut start = 0;
        while start < total {
            let end = if start + size + from > total {
                total
            } else {
                start + size
            };
            pieces.push(start..end);
            start = end;
        }
    }
    pieces
}

/// Equal bit patterns, element by element.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
