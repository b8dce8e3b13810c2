//! Per-position loss: the negative log-likelihood of each token, and its mean per bucket of
//! positions (the per-token-loss curve that reveals state collapse past the training length).

/// `-log softmax(logits)[target]`, in f64 over the full logit row (padding columns included,
/// as the reference's cross-entropy does).
pub fn negative_log_likelihood(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

/// Mean loss per bucket of `width` positions (position p falls in bucket p / width).
#[derive(Clone, Debug)]
pub struct Buckets {
    width: u64,
    sums: Vec<f64>,
    counts: Vec<u64>,
    /// The last position added (the last bucket may end there, short of its width).
    last: u64,
}

impl Buckets {
    pub fn new(width: u64) -> Buckets {
        Buckets { width: width.max(1), sums: Vec::new(), counts: Vec::new(), last: 0 }
    }

    pub fn add(&mut self, position: u64, loss: f64) {
        self.last = self.last.max(position);
        let b = (position / self.width) as usize;
        if self.sums.len() <= b {
            self.sums.resize(b + 1, 0.0);
            self.counts.resize(b + 1, 0);
        }
        self.sums[b] += loss;
        self.counts[b] += 1;
    }

    /// `(first position, last position, tokens, mean loss)` per non-empty bucket; the last
    /// bucket ends at the last position added.
    pub fn rows(&self) -> impl Iterator<Item = (u64, u64, u64, f64)> + '_ {
        self.sums.iter().zip(&self.counts).enumerate().filter(|(_, (_, &n))| n > 0).map(move |(b, (&sum, &n))| {
            let first = b as u64 * self.width;
            (first, (first + self.width - 1).min(self.last), n, sum / n as f64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_vocab() {
        assert!((negative_log_likelihood(&[3.0; 8], 5) - 8f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn buckets_average_their_positions() {
        let mut b = Buckets::new(4);
        for p in 1..10 {
            b.add(p, p as f64);
        }
        let rows: Vec<_> = b.rows().collect();
        assert_eq!(rows, vec![(0, 3, 3, 2.0), (4, 7, 4, 5.5), (8, 9, 2, 8.5)], "the last bucket ends at the last position");
    }
}
