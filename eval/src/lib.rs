//! Evaluations over Coil models: the passkey template and the text probes of long-context
//! evaluation, and per-position loss. The passkey capacity sweep builds on these.

pub mod loss;
pub mod passkey;
pub mod plot;
pub mod probes;
