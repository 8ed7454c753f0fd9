//! Choosing the next token from a row of logits: greedy, or sampled with temperature, top-k,
//! top-p, min-p and a repetition penalty, from a seeded generator so runs are reproducible.

use crate::error::ModelError;

/// How to pick each next token. `Default` is greedy with no penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`0`: no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least `p` (`1.0`: off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's (`0.0`: off).
    pub min_p: f32,
    /// Penalty for tokens seen in the last [`repeat_last_n`](Self::repeat_last_n) tokens: positive
    /// logits are divided by it, negative ones multiplied, as in Hugging Face and llama.cpp
    /// (`1.0`: off).
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator; the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks that every parameter is in range.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |name: &str, value: f32, range: &str| {
            Err(ModelError::InvalidOption {
                option: name.to_string(),
                message: format!("{value} is outside {range}"),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "[0, inf)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "(0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "[0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "(0, inf)");
        }
        Ok(())
    }

    /// Whether this picks the argmax (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A small, fast, well-tested generator (xoshiro256**), seeded through SplitMix64.
///
/// Kept in the crate (rather than taken from `rand`) so a seed gives the same tokens across
/// releases and platforms.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform double in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks tokens according to [`SamplingParams`], keeping its generator state between calls.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused buffer of (token, logit or probability) candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler; fails if a parameter is out of range.
    pub fn new(params: SamplingParams) -> Result<Self, ModelError> {
        params.validate()?;
        Ok(Self {
            rng: Rng::new(params.seed),
            params,
            candidates: Vec::new(),
        })
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits`, given the tokens so far (for the repetition penalty).
    ///
    /// `logits` is modified in place by the repetition penalty. Returns an error for an empty row.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, ModelError> {
        if logits.is_empty() {
            return Err(ModelError::InvalidOption {
                option: "logits".into(),
                message: "cannot sample from an empty vocabulary".into(),
            });
        }
        self.apply_repeat_penalty(logits, history);
        if self.params.is_greedy() {
            return Ok(argmax(logits));
        }
        let p = &self.params;
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if candidates.is_empty() {
            return Ok(argmax(logits));
        }
        // Most likely first; ties keep the lower id first so results do not depend on the sort.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, by_logit);
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(by_logit);

        // Softmax at the temperature, in f64 so tiny probabilities do not vanish.
        let max = f64::from(candidates[0].1);
        let temperature = f64::from(p.temperature);
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| ((f64::from(l) - max) / temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);

        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = f64::from(p.min_p) * probs[0];
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, &x) in probs[..keep].iter().enumerate() {
                cumulative += x;
                if cumulative >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = probs[..keep].iter().sum();
        let mut target = self.rng.next_f64() * kept_total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if target < x {
                return Ok(candidates[i].0);
            }
            target -= x;
        }
        Ok(candidates[keep - 1].0)
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repeat_penalty;
        if penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        // Each distinct token is penalized once, however often it appeared.
        let mut seen = std::collections::HashSet::with_capacity(recent.len());
        for &id in recent {
            if !seen.insert(id) {
                continue;
            }
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Index of the largest logit (the lowest index among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

/// Natural-log softmax of one logit row, computed in f64: `log p_i = l_i - logsumexp(l)`.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let lse = logsumexp(logits);
    logits.iter().map(|&l| f64::from(l) - lse).collect()
}

/// `log(sum(exp(l)))` of a logit row, in f64 and stable for large logits.
pub fn logsumexp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &l| m.max(l))
        .into();
    if !f64::is_finite(max) {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    max + sum.ln()
}

/// The `k` most likely tokens with their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let lse = logsumexp(logits);
    let mut indexed: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(indexed.len());
    if k == 0 {
        return Vec::new();
    }
    indexed.select_nth_unstable_by(k - 1, by_logit);
    indexed.truncate(k);
    indexed.sort_unstable_by(by_logit);
    indexed
        .into_iter()
        .map(|(id, l)| (id, f64::from(l) - lse))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(SamplingParams::greedy());
        let mut logits = [0.5, 3.0, -1.0, 3.0];
        assert_eq!(s.sample(&mut logits, &[]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |params: SamplingParams| {
            let mut s = sampler(params);
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(
            run(params.clone()),
            run(SamplingParams { seed: 8, ..params })
        );
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // Logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1.
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            seed: 1,
            ..Default::default()
        });
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &[]).unwrap() as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let expected = (i + 1) as f64 / 10.0;
            let observed = c as f64 / n as f64;
            assert!(
                (observed - expected).abs() < 0.01,
                "token {i}: {observed} vs {expected}"
            );
        }
    }

    #[test]
    fn top_k_top_p_and_min_p_restrict_the_candidates() {
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let draw = |params: SamplingParams| {
            let mut s = sampler(params);
            let mut seen = [false; 4];
            for _ in 0..2000 {
                seen[s.sample(&mut logits.clone(), &[]).unwrap() as usize] = true;
            }
            seen
        };
        let base = SamplingParams {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        assert_eq!(
            draw(SamplingParams {
                top_k: 2,
                ..base.clone()
            }),
            [false, false, true, true]
        );
        // 0.4 + 0.3 = 0.7 reaches top_p 0.65: two tokens.
        assert_eq!(
            draw(SamplingParams {
                top_p: 0.65,
                ..base.clone()
            }),
            [false, false, true, true]
        );
        // min_p 0.6: keep p >= 0.24, i.e. 0.3 and 0.4.
        assert_eq!(
            draw(SamplingParams {
                min_p: 0.6,
                ..base.clone()
            }),
            [false, false, true, true]
        );
        assert_eq!(draw(base), [true, true, true, true]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = sampler(SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        });
        let mut logits = [4.0, -1.0, 3.0];
        // Token 0 was seen twice: penalized once. 4/2 = 2 < 3, so greedy now picks token 2.
        assert_eq!(s.sample(&mut logits, &[0, 1, 0]).unwrap(), 2);
        assert_eq!(logits, [2.0, -2.0, 3.0]);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for params in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(params).is_err());
        }
    }

    #[test]
    fn log_softmax_and_top_logprobs() {
        let logits = [1000.0f32, 1000.0, 0.0];
        let lp = log_softmax(&logits);
        assert!((lp[0] - 0.5f64.ln()).abs() < 1e-12);
        let top = top_logprobs(&logits, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        assert!((top[1].1 - 0.5f64.ln()).abs() < 1e-12);
    }
}
