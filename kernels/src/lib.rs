//! Every numeric op Coil's Mamba-2 model needs, behind one [`Backend`] interface.
//! The model (`coil-ssm`) calls these ops and never knows which device runs them; this crate holds
//! a naive [`Reference`] backend, kept as the oracle for tests, and the fast [`Cpu`] backend.

mod backend;
mod buffer;
pub mod conformance;
mod device;
mod engine;
mod matrix;
pub mod cpu;
mod host;
pub mod reference;
mod shape;

pub use backend::{Backend, Traffic};
pub use buffer::{Buffer, DeviceArray, DeviceView, View, ViewMut};
pub use engine::{split_widths, DtStep, Engine, HostEngine, RecurrenceViews, ScanViews};
pub use device::Device;
pub use host::HostArray;
pub use matrix::{bf16_to_f32, f32_to_bf16, Matrix, Values, WeightDtype};
pub use cpu::Cpu;
pub use reference::Reference;
pub use shape::{DtLimit, Recurrence, ScanInputs, SsmShape};

/// `x * sigmoid(x)`, the activation after the causal conv and on the gate.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softplus with torch's rule: arguments above 20 are returned unchanged (`F.softplus`, beta 1,
/// threshold 20), so `dt` matches the reference bit for bit where it saturates.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}
