//! Coil runs recurrent state-space language models (Mamba-2) over input of any length in constant
//! memory. This facade re-exports the library API: load a [`Checkpoint`], build a [`Model`], and
//! stream tokens through a [`Session`], with [`Mitigation`]s resolved into a [`Plan`].

pub use coil_checkpoints::{convert_to_hf, embedded_names, Checkpoint, Config, Dialect, Exported, LoadError, Source, Tokenizer};
pub use coil_ssm::{
    calibrate, read_thresholds, write_thresholds, Error, HeadStats, IndexSet, LogitRows, Mitigation, Model, Plan, Sampler,
    SamplingConfig, Scope, Session, State, StateShape, Thresholds,
};
