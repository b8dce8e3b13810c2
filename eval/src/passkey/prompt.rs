//! A passkey prompt in tokens, and where its needle goes.
//!
//! Parts are tokenized separately and concatenated, so the shared filler is the same token
//! sequence in every prompt of a length (what lets a sweep fork one state at each needle).
//! `blocks = (length - prefix - suffix) / block`; the needle replaces filler block
//! `floor(depth * (blocks - 1))`; the prompt then has `prefix + (blocks - 1) * block + needle +
//! suffix` tokens: within one block of the requested length, recorded exactly.

use crate::passkey::{EvalError, Template};

/// A template tokenized once for a model.
#[derive(Clone, Debug)]
pub struct TokenizedTemplate {
    pub prefix: Vec<u32>,
    pub block: Vec<u32>,
    pub suffix: Vec<u32>,
}

/// Where the needle of one prompt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Filler blocks the prompt would hold without the needle.
    pub blocks: usize,
    /// Index of the block the needle replaces.
    pub needle_block: usize,
}

impl TokenizedTemplate {
    pub fn new(template: &Template, encode: impl Fn(&str) -> Result<Vec<u32>, EvalError>) -> Result<TokenizedTemplate, EvalError> {
        let tokenized = TokenizedTemplate { prefix: encode(&template.prefix)?, block: encode(&template.filler)?, suffix: encode(&template.suffix)? };
        if tokenized.block.is_empty() {
            return Err(EvalError::Prompt("the filler block tokenizes to nothing".into()));
        }
        Ok(tokenized)
    }

    /// Filler blocks for a requested length: at least one, so there is a block to replace.
    pub fn blocks_for(&self, length: usize) -> Result<usize, EvalError> {
        let fixed = self.prefix.len() + self.suffix.len();
        let blocks = length.saturating_sub(fixed) / self.block.len();
        if blocks == 0 {
            return Err(EvalError::Prompt(format!(
                "length {length} is too short for the template: prefix and suffix alone take {fixed} tokens and a filler block {}",
                self.block.len()
            )));
        }
        Ok(blocks)
    }

    /// The paper's placement: block `floor(depth * (blocks - 1))`.
    pub fn layout(&self, length: usize, depth: f64) -> Result<Layout, EvalError> {
        let blocks = self.blocks_for(length)?;
        let needle_block = ((depth.clamp(0.0, 1.0) * (blocks - 1) as f64) as usize).min(blocks - 1);
        Ok(Layout { blocks, needle_block })
    }

    /// Exact prompt length with a needle of `needle_tokens` tokens.
    pub fn prompt_tokens(&self, layout: Layout, needle_tokens: usize) -> usize {
        self.prefix.len() + (layout.blocks - 1) * self.block.len() + needle_tokens + self.suffix.len()
    }

    /// The whole prompt (for tests and small lengths; sweeps stream instead).
    pub fn materialise(&self, layout: Layout, needle: &[u32]) -> Vec<u32> {
        let mut ids = self.prefix.clone();
        for i in 0..layout.blocks {
            if i == layout.needle_block {
                ids.extend_from_slice(needle);
            } else {
                ids.extend_from_slice(&self.block);
            }
        }
        ids.extend_from_slice(&self.suffix);
        ids
    }
}

/// Depth of sample `i` of `n`: `(i + 0.5) / n`.
pub fn depth(i: usize, n: usize) -> f64 {
    (i as f64 + 0.5) / n as f64
}

/// A five-digit key, deterministic in (seed, length, depth index): SplitMix64 of the three.
pub fn key(seed: u64, length: usize, depth_index: usize) -> String {
    let mut z = seed ^ (length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (depth_index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("{:05}", z % 100_000)
}
