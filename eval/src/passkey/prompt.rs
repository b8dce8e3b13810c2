//! A passkey prompt in tokens, and where its needle goes.
//!
//! Parts are tokenized separately and concatenated, so the filler is the same token sequence in
//! every prompt of a sweep (what lets a sweep fork one state at each needle). A prompt of a length
//! L is `prefix + filler[0..j) + needle + filler[j..m) + suffix`: `m` filler blocks, the needle
//! before block `j = floor(depth * m)`. `m` is the paper's rule (the blocks that fit beside the
//! prefix and suffix, one of them replaced by the needle), capped so that no prompt of the length
//! passes L whatever its needle and question; it is the same for every depth of a length. A
//! prompt then holds at most L tokens, and within about a block of it, recorded exactly.
//!
//! Where the needles go is the [`Spacing`]: evenly over the prompt (the paper's depths), or at
//! distances from the question spaced geometrically, so every octave of distance gets as many
//! cells at 1M tokens as at 1K (what memory span and collapse on recent needles are read from).

use super::names::{digits_of, needle_name, splitmix};
use super::{EvalError, Template};

/// A template tokenized once for a model and a sweep's seed.
#[derive(Clone, Debug)]
pub struct TokenizedTemplate {
    template: Template,
    seed: u64,
    pub prefix: Vec<u32>,
    filler: Filler,
}

#[derive(Clone, Debug)]
enum Filler {
    /// One block, repeated.
    Repeated(Vec<u32>),
    /// Blocks drawn per index; `ends[i]` = tokens in blocks `0..i`, as far as the sweep needs.
    Drawn { ends: Vec<u64> },
}

/// How a length's needles spread over its prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// Depth `(i + 0.5) / n` for needle `i` of `n`: as many needles in every stretch of the prompt.
    #[default]
    Even,
    /// The needle's distance from the question (in filler blocks) geometric from one block to the
    /// whole filler: as many needles at 1-2 blocks from the question as at 1K-2K blocks.
    Log,
}

impl Spacing {
    /// Whether this is the default (left out of result lines and cell ids, which predate it).
    pub fn is_even(&self) -> bool {
        *self == Spacing::Even
    }

    /// `even` or `log`, as `--spacing` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Even => "even",
            Spacing::Log => "log",
        }
    }

    /// The filler block that needle `i` of `n` goes before, in a prompt of `blocks` filler
    /// blocks (0 ..= blocks, nondecreasing in `i`).
    pub fn needle_block(self, i: usize, n: usize, blocks: usize) -> usize {
        match self {
            Spacing::Even => ((depth(i, n) * blocks as f64) as usize).min(blocks),
            Spacing::Log => {
                // Blocks between needle and question: blocks^t, t from near 1 (the first needle,
                // the deepest in the past) down to near 0 (the last, one block back).
                let t = 1.0 - depth(i, n);
                let after = (blocks as f64).powf(t).round() as usize;
                blocks - after.clamp(blocks.min(1), blocks)
            }
        }
    }
}

impl std::str::FromStr for Spacing {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "even" => Ok(Spacing::Even),
            "log" => Ok(Spacing::Log),
            other => Err(EvalError::Arguments(format!("unknown needle spacing `{other}`: even or log"))),
        }
    }
}

/// One prompt of a length: its needle, question and layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// The depth's index among the length's depths.
    pub depth_index: usize,
    /// The key the needle binds and the answer must hold.
    pub key: String,
    /// The needle, in tokens.
    pub needle: Vec<u32>,
    /// The question, in tokens.
    pub suffix: Vec<u32>,
    /// Filler blocks in the prompt (the same for every depth of a length).
    pub filler_blocks: usize,
    /// Filler blocks before the needle.
    pub needle_block: usize,
    /// Where the needle sits: `needle_block / filler_blocks` for log spacing, the nominal
    /// `(i + 0.5) / n` for even spacing (the paper's depth, which the block rounds down).
    pub depth: f64,
    /// The whole prompt's length in tokens.
    pub tokens: usize,
    /// Filler tokens between the needle's end and the question.
    pub tokens_after_needle: usize,
}

impl TokenizedTemplate {
    /// Tokenizes `template`; with a drawn filler, measures its blocks up to `longest` tokens.
    pub fn new(
        template: &Template,
        seed: u64,
        longest: usize,
        encode: impl Fn(&str) -> Result<Vec<u32>, EvalError>,
    ) -> Result<TokenizedTemplate, EvalError> {
        let filler = if template.draws_filler() {
            let mut ends = vec![0u64];
            while *ends.last().expect("starts with 0") < longest as u64 {
                let tokens = encode(&template.filler_for(seed, ends.len() - 1))?.len();
                if tokens == 0 {
                    return Err(EvalError::Prompt("a filler block tokenizes to nothing".into()));
                }
                ends.push(ends.last().expect("not empty") + tokens as u64);
            }
            Filler::Drawn { ends }
        } else {
            let block = encode(&template.filler)?;
            if block.is_empty() {
                return Err(EvalError::Prompt("the filler block tokenizes to nothing".into()));
            }
            Filler::Repeated(block)
        };
        Ok(TokenizedTemplate { template: template.clone(), seed, prefix: encode(&template.prefix)?, filler })
    }

    /// Tokens in filler blocks `0..blocks`.
    fn filler_tokens(&self, blocks: usize) -> u64 {
        match &self.filler {
            Filler::Repeated(block) => (blocks * block.len()) as u64,
            Filler::Drawn { ends } => ends[blocks],
        }
    }

    /// The most blocks whose tokens, with `fixed` more, fit in `length` (None when not even 0).
    fn blocks_within(&self, length: usize, fixed: usize) -> Option<usize> {
        let room = length.checked_sub(fixed)? as u64;
        Some(match &self.filler {
            Filler::Repeated(block) => (room / block.len() as u64) as usize,
            // ends is increasing and reaches past the longest length asked for.
            Filler::Drawn { ends } => ends.partition_point(|&e| e <= room) - 1,
        })
    }

    /// Every depth's prompt of a length, in depth order, `depths` needles spread by `spacing`.
    pub fn prompts(&self, length: usize, depths: usize, spacing: Spacing, encode: impl Fn(&str) -> Result<Vec<u32>, EvalError>) -> Result<Vec<Prompt>, EvalError> {
        let mut parts = Vec::with_capacity(depths);
        for i in 0..depths {
            let key = key_of(self.seed, length, i, self.template.key_digits);
            let name = needle_name(self.seed, i);
            parts.push((key.clone(), encode(&self.template.needle_for(&name, &key))?, encode(&self.template.suffix_for(&name))?));
        }
        let longest_suffix = parts.iter().map(|p| p.2.len()).max().unwrap_or(0);
        let longest_question = parts.iter().map(|p| p.1.len() + p.2.len()).max().unwrap_or(0);
        let fixed = self.prefix.len() + longest_question;
        let too_short = || {
            EvalError::Prompt(format!(
                "length {length} is too short for the template: its prefix, needle and question alone take {fixed} tokens, and a prompt needs a filler block besides"
            ))
        };
        // The paper's count: the blocks that fit beside prefix and suffix, one replaced by the needle.
        let paper = self.blocks_within(length, self.prefix.len() + longest_suffix).filter(|&b| b >= 1).ok_or_else(too_short)? - 1;
        let filler_blocks = paper.min(self.blocks_within(length, fixed).ok_or_else(too_short)?);
        let filler = self.filler_tokens(filler_blocks) as usize;
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(i, (key, needle, suffix))| {
                let needle_block = spacing.needle_block(i, depths, filler_blocks);
                let depth = match spacing {
                    Spacing::Even => depth(i, depths),
                    Spacing::Log => needle_block as f64 / filler_blocks.max(1) as f64,
                };
                Prompt {
                    depth,
                    depth_index: i,
                    tokens: self.prefix.len() + filler + needle.len() + suffix.len(),
                    tokens_after_needle: filler - self.filler_tokens(needle_block) as usize,
                    key,
                    needle,
                    suffix,
                    filler_blocks,
                    needle_block,
                }
            })
            .collect())
    }

    /// Appends filler blocks `from..to` to `out`.
    pub fn filler(&self, from: usize, to: usize, out: &mut Vec<u32>, encode: impl Fn(&str) -> Result<Vec<u32>, EvalError>) -> Result<(), EvalError> {
        match &self.filler {
            Filler::Repeated(block) => (from..to).for_each(|_| out.extend_from_slice(block)),
            Filler::Drawn { .. } => {
                for i in from..to {
                    out.extend(encode(&self.template.filler_for(self.seed, i))?);
                }
            }
        }
        Ok(())
    }

    /// Tokens in filler blocks `from..to`.
    pub fn filler_len(&self, from: usize, to: usize) -> usize {
        (self.filler_tokens(to) - self.filler_tokens(from)) as usize
    }

    /// Tokens of filler block `block`.
    pub fn block_len(&self, block: usize) -> usize {
        self.filler_len(block, block + 1)
    }

    /// The whole prompt (for tests and small lengths; sweeps stream instead).
    pub fn materialise(&self, prompt: &Prompt, encode: impl Fn(&str) -> Result<Vec<u32>, EvalError>) -> Result<Vec<u32>, EvalError> {
        let mut ids = self.prefix.clone();
        self.filler(0, prompt.needle_block, &mut ids, &encode)?;
        ids.extend_from_slice(&prompt.needle);
        self.filler(prompt.needle_block, prompt.filler_blocks, &mut ids, &encode)?;
        ids.extend_from_slice(&prompt.suffix);
        Ok(ids)
    }
}

/// Depth of sample `i` of `n`: `(i + 0.5) / n`.
pub fn depth(i: usize, n: usize) -> f64 {
    (i as f64 + 0.5) / n as f64
}

/// A five-digit key, deterministic in (seed, length, depth index).
pub fn key(seed: u64, length: usize, depth_index: usize) -> String {
    key_of(seed, length, depth_index, 5)
}

/// The needle's key of `digits` digits, deterministic in (seed, length, depth index): SplitMix64
/// of the three (the five-digit keys are those of every earlier version).
pub fn key_of(seed: u64, length: usize, depth_index: usize, digits: u32) -> String {
    let z = seed ^ (length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (depth_index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    // SplitMix64's finaliser without its increment: the keys of earlier versions.
    digits_of(splitmix(z.wrapping_sub(0x9E37_79B9_7F4A_7C15)), digits)
}
