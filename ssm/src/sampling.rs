//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, seeded.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. The default is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Seed of the random generator: the same seed and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// A seeded sampler; the same seed and logits give the same tokens.
pub struct Sampler {
    config: SamplingConfig,
    rng: SmallRng,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler whose random generator starts from `config.seed`.
    pub fn new(config: SamplingConfig) -> Sampler {
        let rng = SmallRng::seed_from_u64(config.seed);
        Sampler { config, rng, candidates: Vec::new() }
    }

    /// Picks a token among the first `vocab_limit` logits (the rest are padding rows).
    pub fn sample(&mut self, logits: &[f32], vocab_limit: usize) -> u32 {
        let logits = &logits[..vocab_limit.clamp(1, logits.len())];
        if self.config.temperature <= 0.0 || self.config.top_k == 1 {
            return argmax(logits);
        }
        let inverse_temperature = 1.0 / self.config.temperature;
        if !inverse_temperature.is_finite() {
            return argmax(logits); // a temperature so small that 1/T overflows: greedy
        }
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        self.candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        if self.config.top_k > 0 {
            self.candidates.truncate(self.config.top_k);
        }
        // Softmax over the survivors of (logit / T), from the largest logit: the difference is
        // taken before the scaling, so a tiny T sends the others to exp(-inf) = 0 instead of
        // overflowing every scaled logit to ±inf (and inf - inf to NaN).
        let max = self.candidates[0].0;
        let mut total = 0.0f32;
        for candidate in &mut self.candidates {
            candidate.0 = ((candidate.0 - max) * inverse_temperature).exp();
            total += candidate.0;
        }
        if self.config.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = self
                .candidates
                .iter()
                .position(|c| {
                    cumulative += c.0 / total;
                    cumulative >= self.config.top_p
                })
                .map_or(self.candidates.len(), |i| i + 1);
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| c.0).sum();
        }
        let mut target = self.rng.random::<f32>() * total;
        for &(weight, token) in &self.candidates {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        self.candidates.last().map_or(0, |c| c.1)
    }
}

/// The index of the largest logit, the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum_within_limit() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 9.0], 3), 1);
    }

    #[test]
    fn top_k_one_tiny_top_p_and_tiny_temperatures_are_greedy() {
        // Logits past f32::MAX once scaled by 1/1e-38: the softmax must not see inf - inf.
        let logits = [5.0, 20.0, 10.0, -7.0];
        for config in [
            SamplingConfig { temperature: 1.0, top_k: 1, ..Default::default() },
            SamplingConfig { temperature: 1.0, top_p: 1e-6, ..Default::default() },
            SamplingConfig { temperature: 1e-38, ..Default::default() },
            SamplingConfig { temperature: 1e-45, ..Default::default() },
        ] {
            let mut s = Sampler::new(config);
            assert!((0..50).all(|_| s.sample(&logits, 4) == 1));
        }
    }

    #[test]
    fn sampling_is_seeded_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let config = SamplingConfig { temperature: 1.0, seed: 7, ..Default::default() };
        let draw = |config: &SamplingConfig| {
            let mut s = Sampler::new(config.clone());
            (0..4000).map(|_| s.sample(&logits, 2)).collect::<Vec<_>>()
        };
        let (first, second) = (draw(&config), draw(&config));
        assert_eq!(first, second);
        let ones = first.iter().filter(|&&t| t == 1).count() as f32 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        let top_k2 = SamplingConfig { top_k: 2, ..config.clone() };
        assert!(draw(&top_k2).contains(&0));
    }
}
