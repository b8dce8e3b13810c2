//! The passkey-retrieval capacity evaluator (long-context.md, "Passkey retrieval"): prompts built
//! in the model's own tokens, sweeps over lengths x depths x mitigations x checkpoints that fork
//! one streamed state at every needle, resumable and shardable result files, and the report.

mod model;
mod names;
mod prompt;
mod report;
mod results;
mod sweep;
mod template;

pub use model::{CoilSubject, Subject};
pub use names::{filler_key, filler_name, needle_name, NAMES, SYLLABLES};
pub use prompt::{depth, key, key_of, Prompt, Spacing, TokenizedTemplate};
pub use report::{distance_bin, fit_capacity, format_state_size, memory_span, write_report, AccuracyRow, ArmFits, CapacityFit, CapacityRow, DistanceRow, Report};
pub use results::{read_results, CellRecord, ResultsFile, Shard};
pub use sweep::{check_sweep, parse_lengths, run_sweep, SweepConfig, SweepProgress, SweepSummary, MAX_DEPTHS, MAX_LENGTH};
pub use template::{Template, MAX_KEY_DIGITS};

use std::path::PathBuf;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] coil_ssm::Error),

    #[error(transparent)]
    Load(#[from] coil_ssm::LoadError),

    #[error("{}: {message}", path.display())]
    Template { path: PathBuf, message: String },

    #[error("{0}")]
    Prompt(String),

    #[error("{}: {message}", path.display())]
    Results { path: PathBuf, message: String },

    #[error("{0}")]
    Arguments(String),

    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}
