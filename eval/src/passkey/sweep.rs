//! Running a sweep: cells grouped by (arm, length); in each group one streamed state runs the
//! shared filler once and forks at every needle (depths sorted), so n depths cost the shared pass
//! plus n tails instead of n whole prompts ([`run_group`]). With `batch_forks` the tails run
//! together: every stream reads the same filler blocks, so all of them advance in one batched
//! call per piece.

use std::time::Instant;

use super::prompt::{Prompt, Spacing, TokenizedTemplate};
use super::results::{cell_id, CellRecord, ResultsFile, Shard};
use super::{EvalError, Subject, Template};

/// What to sweep, besides the arms.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Needles per length.
    pub depths: usize,
    /// How they spread: evenly over the prompt, or geometric in distance from the question.
    pub spacing: Spacing,
    /// Seed of the keys.
    pub seed: u64,
    /// The prompt template.
    pub template: Template,
    /// Which part of the sweep this process runs.
    pub shard: Shard,
    /// Feed the streams of one length together ([`Subject::feed_all`]): the shared pass and
    /// every fork past its needle read the same filler, so each piece is one batched pass over
    /// the weights. The cells of a length then finish together, at its end.
    pub batch_forks: bool,
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

/// The longest context length a sweep takes: 2^40 tokens (far past what any run could feed;
/// the bound keeps a mistyped length from overflowing the range arithmetic).
pub const MAX_LENGTH: usize = 1 << 40;

/// The most needle depths per length a sweep takes.
pub const MAX_DEPTHS: usize = 10_000;

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
        let n = digits.parse::<usize>().ok().and_then(|n| n.checked_mul(scale)).filter(|&n| n > 0);
        let n = n.ok_or_else(|| bad(&item, "is not a length like 4096, 4k or 1m"))?;
        if n > MAX_LENGTH {
            return Err(bad(&item, &format!("is longer than the longest length a sweep takes ({MAX_LENGTH} tokens, 2^40)")));
        }
        Ok(n)
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
                // Every length is at most MAX_LENGTH (checked above), so the product cannot
                // overflow before it passes `to`; `checked_mul` keeps that true for any factor.
                while n <= to {
                    lengths.push(n);
                    match n.checked_mul(factor) {
                        Some(next) => n = next,
                        None => break,
                    }
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
    results.check_setup(&config.template.name, config.seed, config.depths, config.spacing)?;
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
    let templates = tokenize_templates(subjects, config)?;

    for (s, length) in groups {
        let subject = &subjects[s];
        let id = |i: usize| cell_id(subject.model_name(), subject.mitigation(), &config.template.name, config.seed, length, config.depths, config.spacing, i);
        let pending: Vec<usize> = (0..config.depths).filter(|&i| !results.is_done(&id(i))).collect();
        summary.cells_skipped += config.depths - pending.len();
        cells_done += config.depths - pending.len();
        if pending.is_empty() {
            continue;
        }
        let template = &templates[s];
        let group = run_group(subject, template, config, length, &pending, &mut |record, tokens| {
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

/// Checks a sweep before it starts: the depths, and that every length takes a prompt of the
/// template in every subject's tokens. What [`run_sweep`] checks first; a caller that wants to
/// refuse before creating its results file calls it itself.
pub fn check_sweep<S: Subject>(subjects: &[S], config: &SweepConfig) -> Result<(), EvalError> {
    tokenize_templates(subjects, config).map(drop)
}

/// The template in each subject's tokens (subjects sharing a tokenizer still tokenize it once
/// each: it is cheap next to a sweep), every length checked.
fn tokenize_templates<S: Subject>(subjects: &[S], config: &SweepConfig) -> Result<Vec<TokenizedTemplate>, EvalError> {
    if !(1..=MAX_DEPTHS).contains(&config.depths) {
        return Err(EvalError::Arguments(format!("--depths must be from 1 to {MAX_DEPTHS}, not {}", config.depths)));
    }
    let longest = config.lengths.iter().copied().max().unwrap_or(0);
    subjects
        .iter()
        .map(|subject| {
            let template = TokenizedTemplate::new(&config.template, config.seed, longest, |t| subject.encode(t))?;
            for &length in &config.lengths {
                template.prompts(length, config.depths, config.spacing, |t| subject.encode(t))?;
            }
            Ok(template)
        })
        .collect()
}

struct GroupCost {
    shared_tokens: u64,
    unshared_tokens: u64,
}

/// The pending cells of a group, needles in order of position.
fn cells_of<S: Subject>(subject: &S, template: &TokenizedTemplate, config: &SweepConfig, length: usize, pending: &[usize]) -> Result<Vec<Prompt>, EvalError> {
    let mut cells: Vec<Prompt> =
        template.prompts(length, config.depths, config.spacing, |t| subject.encode(t))?.into_iter().filter(|p| pending.contains(&p.depth_index)).collect();
    cells.sort_by_key(|c| (c.needle_block, c.depth_index));
    Ok(cells)
}

/// Asks the question of a stream that has read a cell's whole prompt up to the suffix, and
/// makes the cell's record (`seconds` so far, plus the answer's time). Returns it with the
/// number of tokens generated.
fn answer_cell<S: Subject>(subject: &S, config: &SweepConfig, length: usize, cell: &Prompt, stream: &mut S::State, seconds: f64) -> Result<(CellRecord, u64), EvalError> {
    let started = Instant::now();
    // As many new tokens as the key takes after a space, at least the paper's 5.
    let answer_tokens = subject.encode(&format!(" {}", cell.key))?.len().max(5);
    let answer = subject.answer(stream, &cell.suffix, answer_tokens)?;
    let prediction = subject.decode(&answer)?;
    let record = CellRecord {
        model: subject.model_name().into(),
        n_s: subject.state_elements(),
        mitigation: subject.mitigation().into(),
        template: config.template.name.clone(),
        seed: config.seed,
        length,
        tokens: cell.tokens,
        tokens_after_needle: Some(cell.tokens_after_needle),
        depth: cell.depth,
        depth_index: cell.depth_index,
        depths: config.depths,
        spacing: config.spacing,
        needle_block: cell.needle_block,
        correct: prediction.contains(cell.key.as_str()),
        key: cell.key.clone(),
        prediction,
        seconds: seconds + started.elapsed().as_secs_f64(),
        train_length: subject.train_length(),
    };
    Ok((record, answer.len() as u64))
}

/// One (arm, length): the shared pass, forked at each pending depth's needle (depths in order
/// of position). One after another (`batch_forks` off), each fork runs its tail and answers
/// before the shared pass goes on. In step (on), the shared pass and every fork made so far read
/// each filler piece together ([`Subject::feed_all`]): a fork has read exactly the filler the
/// shared pass read since its needle, so when the filler ends every fork has read its tail, and
/// all answer then. Time is charged so that a group's cells add up to its wall time: the shared
/// pass's to the next cell it forks, a piece read in step evenly to its streams.
fn run_group<S: Subject, F: FnMut(CellRecord, u64) -> Result<(), EvalError>>(
    subject: &S,
    template: &TokenizedTemplate,
    config: &SweepConfig,
    length: usize,
    pending: &[usize],
    finished: &mut F,
) -> Result<GroupCost, EvalError> {
    let cells = cells_of(subject, template, config, length, pending)?;
    let started = Instant::now();
    let mut shared = subject.start()?;
    subject.feed(&mut shared, &template.prefix)?;
    let mut shared_seconds = started.elapsed().as_secs_f64();
    let mut shared_tokens = template.prefix.len() as u64;
    let mut unshared_tokens = 0u64;
    // In step: (the cell, its stream, seconds charged to it, tokens it read after forking).
    let mut forks: Vec<(&Prompt, S::State, f64, u64)> = Vec::new();
    let mut blocks_fed = 0;

    // Feeds blocks `from..to` to the shared pass (while it is needed) and the forks in step.
    let advance = |shared: Option<&mut S::State>, forks: &mut Vec<(&Prompt, S::State, f64, u64)>, shared_seconds: &mut f64, from: usize, to: usize| -> Result<u64, EvalError> {
        let started = Instant::now();
        let with_shared = shared.is_some();
        let mut streams: Vec<&mut S::State> = shared.into_iter().chain(forks.iter_mut().map(|f| &mut f.1)).collect();
        let tokens = feed_filler(subject, &mut streams, template, from, to)?;
        let share = started.elapsed().as_secs_f64() / streams.len().max(1) as f64;
        for fork in forks.iter_mut() {
            fork.2 += share;
            fork.3 += tokens;
        }
        if with_shared {
            *shared_seconds += share;
        }
        Ok(tokens)
    };
    // Answers a fork that has read its whole prompt but the question.
    let mut answer = |cell: &Prompt, mut stream: S::State, seconds: f64, tokens: u64, unshared: &mut u64| -> Result<(), EvalError> {
        let (record, generated) = answer_cell(subject, config, length, cell, &mut stream, seconds)?;
        *unshared += record.tokens as u64 + generated;
        finished(record, tokens + cell.suffix.len() as u64 + generated)
    };
    for cell in &cells {
        shared_tokens += advance(Some(&mut shared), &mut forks, &mut shared_seconds, blocks_fed, cell.needle_block)?;
        blocks_fed = cell.needle_block;
        let fork_started = Instant::now();
        let mut fork = subject.fork(&shared);
        subject.feed(&mut fork, &cell.needle)?;
        let mut tokens = cell.needle.len() as u64;
        if config.batch_forks {
            forks.push((cell, fork, std::mem::take(&mut shared_seconds) + fork_started.elapsed().as_secs_f64(), tokens));
        } else {
            tokens += feed_filler(subject, &mut [&mut fork], template, cell.needle_block, cell.filler_blocks)?;
            let seconds = std::mem::take(&mut shared_seconds) + fork_started.elapsed().as_secs_f64();
            answer(cell, fork, seconds, tokens, &mut unshared_tokens)?;
        }
    }
    drop(shared);
    // Every depth of a length has the same filler: the forks in step read its rest together.
    let blocks = cells.first().map_or(0, |c| c.filler_blocks);
    advance(None, &mut forks, &mut shared_seconds, blocks_fed, blocks)?;
    for (cell, stream, seconds, tokens) in forks {
        answer(cell, stream, seconds, tokens, &mut unshared_tokens)?;
    }
    Ok(GroupCost { shared_tokens, unshared_tokens })
}

/// Feeds filler blocks `from..to` to every stream together, in pieces of whole blocks of about
/// 4096 tokens across the streams: constant memory at any length. Returns the tokens per stream.
fn feed_filler<S: Subject>(subject: &S, streams: &mut [&mut S::State], template: &TokenizedTemplate, from: usize, to: usize) -> Result<u64, EvalError> {
    if streams.is_empty() || from >= to {
        return Ok(0);
    }
    let budget = (4096 / streams.len()).max(1);
    let mut piece = Vec::with_capacity(budget + template.block_len(from));
    let mut block = from;
    while block < to {
        // Whole blocks up to the budget, at least one.
        let mut end = block + 1;
        while end < to && template.filler_len(block, end + 1) <= budget {
            end += 1;
        }
        piece.clear();
        template.filler(block, end, &mut piece, |t| subject.encode(t))?;
        if streams.len() == 1 {
            subject.feed(streams[0], &piece)?;
        } else {
            subject.feed_all(streams, &piece)?;
        }
        block = end;
    }
    Ok(template.filler_len(from, to) as u64)
}
