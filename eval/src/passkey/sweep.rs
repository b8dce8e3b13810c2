//! Running a sweep: cells grouped by (arm, length); in each group one streamed state runs the
//! shared filler once and forks at every needle (depths sorted), so n depths cost the shared pass
//! plus n tails instead of n whole prompts.

use std::time::Instant;

use super::prompt::{depth, key, Layout, TokenizedTemplate};
use super::results::{cell_id, CellRecord, ResultsFile, Shard};
use super::{EvalError, Subject, Template};

/// What to sweep, besides the arms.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Needle depths per length, spread evenly over the prompt.
    pub depths: usize,
    /// Seed of the keys.
    pub seed: u64,
    /// The prompt template.
    pub template: Template,
    /// Which part of the sweep this process runs.
    pub shard: Shard,
}

/// Progress after each cell.
#[derive(Clone, Copy, Debug)]
pub struct SweepProgress {
    /// Cells finished, this run and earlier ones.
    pub cells_done: usize,
    /// Cells in this shard.
    pub cells_total: usize,
    /// Tokens the model consumed so far in this run.
    pub tokens: u64,
    /// Seconds since the run started.
    pub seconds: f64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SweepSummary {
    /// Cells run now.
    pub cells_run: usize,
    /// Cells skipped because an earlier run had finished them.
    pub cells_skipped: usize,
    /// Tokens actually consumed (shared passes once, plus each fork's tail and answer).
    pub tokens_processed: u64,
    /// Tokens the same cells would have cost run one prompt at a time.
    pub tokens_unshared: u64,
    /// Seconds the run took.
    pub seconds: f64,
}

impl SweepSummary {
    /// Fraction of model work the state forking saved.
    pub fn saving(&self) -> f64 {
        if self.tokens_unshared == 0 { 0.0 } else { 1.0 - self.tokens_processed as f64 / self.tokens_unshared as f64 }
    }
}

/// `1k,2k,4k`, `512`, `1m`, and geometric ranges `1k..1m` (doubling) or `1k..64k:x4`.
pub fn parse_lengths(text: &str) -> Result<Vec<usize>, EvalError> {
    let bad = |item: &str, why: &str| EvalError::Arguments(format!("--lengths: `{item}` {why}"));
    let number = |item: &str| -> Result<usize, EvalError> {
        let item = item.trim().to_ascii_lowercase();
        let (digits, scale) = match item.strip_suffix('k') {
            Some(d) => (d, 1024),
            None => match item.strip_suffix('m') {
                Some(d) => (d, 1024 * 1024),
                None => (item.as_str(), 1),
            },
        };
        digits.parse::<usize>().ok().and_then(|n| n.checked_mul(scale)).filter(|&n| n > 0).ok_or_else(|| bad(&item, "is not a length like 4096, 4k or 1m"))
    };
    let mut lengths = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once("..") {
            None => lengths.push(number(item)?),
            Some((from, rest)) => {
                let (to, factor) = match rest.split_once(":x") {
                    Some((to, f)) => (to, f.trim().parse::<usize>().map_err(|_| bad(item, "has a bad factor after :x"))?),
                    None => (rest, 2),
                };
                let (mut n, to) = (number(from)?, number(to)?);
                if factor < 2 || n > to {
                    return Err(bad(item, "needs from <= to and a factor of at least 2"));
                }
                while n <= to {
                    lengths.push(n);
                    n *= factor;
                }
            }
        }
    }
    if lengths.is_empty() {
        return Err(EvalError::Arguments("--lengths is empty".into()));
    }
    lengths.sort_unstable();
    lengths.dedup();
    Ok(lengths)
}

/// Runs every unfinished cell of this shard, appending each to `results` as it finishes.
pub fn run_sweep<S: Subject>(
    subjects: &[S],
    config: &SweepConfig,
    results: &mut ResultsFile,
    mut progress: impl FnMut(SweepProgress),
) -> Result<SweepSummary, EvalError> {
    if config.depths == 0 {
        return Err(EvalError::Arguments("--depths must be at least 1".into()));
    }
    let started = Instant::now();
    let mut summary = SweepSummary::default();
    // Groups in a fixed order; group g belongs to shard g % N, so shards share nothing.
    let groups: Vec<(usize, usize)> = (0..subjects.len())
        .flat_map(|s| config.lengths.iter().map(move |&l| (s, l)))
        .enumerate()
        .filter(|(g, _)| g % config.shard.count == config.shard.index)
        .map(|(_, group)| group)
        .collect();
    let cells_total = groups.len() * config.depths;
    let mut cells_done = 0;
    let mut templates: Vec<Option<TokenizedTemplate>> = (0..subjects.len()).map(|_| None).collect();

    for (s, length) in groups {
        let subject = &subjects[s];
        let id = |i: usize| cell_id(subject.model_name(), subject.mitigation(), &config.template.name, config.seed, length, config.depths, i);
        let pending: Vec<usize> = (0..config.depths).filter(|&i| !results.is_done(&id(i))).collect();
        summary.cells_skipped += config.depths - pending.len();
        cells_done += config.depths - pending.len();
        if pending.is_empty() {
            continue;
        }
        if templates[s].is_none() {
            templates[s] = Some(TokenizedTemplate::new(&config.template, |t| subject.encode(t))?);
        }
        let template = templates[s].as_ref().expect("just tokenized");
        let group = run_group(subject, template, config, length, &pending, |record, tokens| {
            results.append(&record)?;
            summary.tokens_processed += tokens;
            summary.cells_run += 1;
            cells_done += 1;
            progress(SweepProgress { cells_done, cells_total, tokens: summary.tokens_processed, seconds: started.elapsed().as_secs_f64() });
            Ok(())
        })?;
        summary.tokens_processed += group.shared_tokens;
        summary.tokens_unshared += group.unshared_tokens;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

struct GroupCost {
    shared_tokens: u64,
    unshared_tokens: u64,
}

/// One (arm, length): the shared pass with a fork at each pending depth's needle.
fn run_group<S: Subject>(
    subject: &S,
    template: &TokenizedTemplate,
    config: &SweepConfig,
    length: usize,
    pending: &[usize],
    mut finished: impl FnMut(CellRecord, u64) -> Result<(), EvalError>,
) -> Result<GroupCost, EvalError> {
    // Each depth's layout, key and needle, needles in order of position.
    let mut cells: Vec<(usize, Layout, String, Vec<u32>)> = pending
        .iter()
        .map(|&i| {
            let layout = template.layout(length, depth(i, config.depths))?;
            let key = key(config.seed, length, i);
            let needle = subject.encode(&config.template.needle_for(&key))?;
            Ok((i, layout, key, needle))
        })
        .collect::<Result<_, EvalError>>()?;
    cells.sort_by_key(|c| (c.1.needle_block, c.0));

    // The shared pass's time is charged to the cell whose needle it ran up to, so a group's
    // cells add up to its wall time.
    let mut shared_started = Instant::now();
    let mut shared = subject.start()?;
    subject.feed(&mut shared, &template.prefix)?;
    let mut shared_tokens = template.prefix.len() as u64;
    let mut blocks_fed = 0;
    let mut unshared_tokens = 0u64;

    for (i, layout, key, needle) in &cells {
        shared_tokens += feed_blocks(subject, &mut shared, &template.block, layout.needle_block - blocks_fed)?;
        blocks_fed = layout.needle_block;
        let shared_seconds = shared_started.elapsed().as_secs_f64();

        let cell_started = Instant::now();
        let mut fork = subject.fork(&shared);
        subject.feed(&mut fork, needle)?;
        let tail_blocks = layout.blocks - layout.needle_block - 1;
        let mut tokens = needle.len() as u64 + feed_blocks(subject, &mut fork, &template.block, tail_blocks)?;
        // As many new tokens as the key takes after a space, at least the paper's 5.
        let answer_tokens = subject.encode(&format!(" {key}"))?.len().max(5);
        let answer = subject.answer(&mut fork, &template.suffix, answer_tokens)?;
        tokens += (template.suffix.len() + answer.len()) as u64;
        let prediction = subject.decode(&answer)?;
        let prompt_tokens = template.prompt_tokens(*layout, needle.len());
        unshared_tokens += (prompt_tokens + answer.len()) as u64;
        let record = CellRecord {
            model: subject.model_name().into(),
            n_s: subject.state_elements(),
            mitigation: subject.mitigation().into(),
            template: config.template.name.clone(),
            seed: config.seed,
            length,
            tokens: prompt_tokens,
            depth: depth(*i, config.depths),
            depth_index: *i,
            depths: config.depths,
            needle_block: layout.needle_block,
            correct: prediction.contains(key.as_str()),
            key: key.clone(),
            prediction,
            seconds: cell_started.elapsed().as_secs_f64() + shared_seconds,
            train_length: subject.train_length(),
        };
        finished(record, tokens)?;
        shared_started = Instant::now();
    }
    Ok(GroupCost { shared_tokens, unshared_tokens })
}

/// Feeds `count` filler blocks in pieces of a few thousand tokens: constant memory at any length.
fn feed_blocks<S: Subject>(subject: &S, state: &mut S::State, block: &[u32], count: usize) -> Result<u64, EvalError> {
    let per_piece = (4096 / block.len()).max(1);
    let piece: Vec<u32> = block.iter().copied().cycle().take(block.len() * per_piece.min(count.max(1))).collect();
    let mut left = count;
    while left > 0 {
        let n = left.min(per_piece);
        subject.feed(state, &piece[..n * block.len()])?;
        left -= n;
    }
    Ok((count * block.len()) as u64)
}
