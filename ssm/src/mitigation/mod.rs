//! Training-free state-collapse mitigations ("Stuffed Mamba") and the dt/A transforms, typed
//! (`Mitigation`, parsed from `--mitigate` specs) and resolved per model into a `Plan` that every
//! forward path applies identically. docs/mitigations.md is the specification.

mod plan;
mod spec;

pub use plan::{calibrate, read_thresholds, write_thresholds, Plan};
pub(crate) use plan::{LayerPlan, WindowPlan};
pub use spec::{IndexSet, Mitigation, Scope, Thresholds, MAX_CALIBRATION_TOKENS};
