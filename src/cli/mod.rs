//! The `coil` command line: arguments in, a validated plan, then library calls.

pub mod args;
pub mod calibrate;
mod convert;
mod devices;
mod input;
mod inspect;
mod load;
mod logits_file;
pub mod passkey;
mod plan;
mod progress;
mod run;
mod score;
pub mod stats;

pub use convert::convert;
pub use devices::devices;
pub use inspect::inspect;
pub use run::run;
pub use score::score;
