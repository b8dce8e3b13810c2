use std::path::PathBuf;

use coil_checkpoints::LoadError;

/// What can go wrong running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),

    #[error("token id {token} at position {position} is out of range: the model has {vocab} embedding rows")]
    TokenOutOfRange { token: u32, position: u64, vocab: usize },

    #[error("the input is empty: at least one token is needed")]
    EmptyInput,

    #[error("a batch got {states} states and {tokens} token sequences: one per state is needed")]
    BatchMismatch { states: usize, tokens: usize },

    #[error("session {index} of the batch runs another model or plan than the first: a batch shares both")]
    BatchMixed { index: usize },

    #[error("a batch needs sequences of one length: the first has {first} tokens, sequence {index} has {len}")]
    BatchLengths { first: usize, index: usize, len: usize },

    #[error("the state does not fit this model: {message}")]
    StateMismatch { message: String },

    #[error("{}: {message}", path.display())]
    StateFile { path: PathBuf, message: String },

    #[error(
        "the state overflowed at token {position}: layer {layer} holds a non-finite value \
         (the recurrence diverged; a state-collapse mitigation or a dt clamp may help)"
    )]
    StateOverflow { layer: usize, position: u64 },

    #[error("mitigation `{spec}`: {message}")]
    Mitigation { spec: String, message: String },

    #[error("{}: thresholds: {message}", path.display())]
    Thresholds { path: PathBuf, message: String },

    #[error("weight matrix `{matrix}` has values beyond the range of {dtype} (±65504): hold the weights as bf16 or f32")]
    WeightRange { dtype: coil_kernels::WeightDtype, matrix: String },

    #[error("{message}")]
    Device { message: String },

    #[error("the model produced non-finite logits at token {position}")]
    NonFiniteLogits { position: u64 },

    #[error("the state is at token {position}: {tokens} more would pass the last position a state counts (2^64 - 1)")]
    PositionOverflow { position: u64, tokens: usize },
}
