//! The Mamba-2 language model: an immutable, thread-shareable [`Model`]; a [`State`] holding
//! everything that changes (f32 conv and ssm state per layer); and a streaming [`Session`] that
//! prefills input of any length in bounded pieces, steps token by token and samples.

mod error;
mod mitigation;
mod mixer;
mod model;
mod random;
mod sampling;
mod session;
mod state;

pub use coil_checkpoints::{Checkpoint, Config, Dialect, LoadError, Source, Tokenizer};
pub use coil_kernels::{Backend, Cpu, Reference, Traffic, WeightDtype};
pub use error::Error;
pub use mitigation::{calibrate, read_thresholds, write_thresholds, IndexSet, Mitigation, Plan, Scope, Thresholds, MAX_CALIBRATION_TOKENS};
pub use model::{LogitRows, Model, TokensRun};
pub use random::random_weights;
pub use sampling::{Sampler, SamplingConfig};
pub use session::{Session, DEFAULT_PIECE_LEN};
pub use state::{HeadStats, State, StateShape};
