//! Coil runs recurrent state-space language models (Mamba-2) over input of any length in constant
//! memory. This facade re-exports the library API: load a [`Checkpoint`], build a [`Model`], and
//! stream tokens through a [`Session`], with [`Mitigation`]s resolved into a [`Plan`].
//!
//! ```
//! use std::sync::Arc;
//! use coil::{Checkpoint, Mitigation, Model, Plan, Sampler, SamplingConfig, Session};
//!
//! let mut checkpoint = Checkpoint::embedded_default()?;
//! let tokenizer = checkpoint.tokenizer.take().expect("the embedded checkpoint has a tokenizer");
//! let model = Arc::new(Model::from_checkpoint(checkpoint)); // Send + Sync: share it freely
//!
//! // A plain session: prefill any length, then generate greedily.
//! let mut session = Session::new(model.clone());
//! session.prefill(&tokenizer.encode("The grass is green. The sky is")?)?;
//! let fork = session.fork(); // the same state, to branch from later
//! let ids = session.generate(&mut Sampler::new(SamplingConfig::default()), 8, tokenizer.vocab_size(), |_| true)?;
//! assert_eq!(ids.len(), 8);
//! assert_eq!(fork.position() + 8, session.position());
//!
//! // The same with a sliding window of 256 tokens (docs/mitigations.md).
//! let plan = Plan::resolve(&model, &Mitigation::parse_list("window:size=256")?, None, ".".as_ref())?;
//! let mut windowed = Session::with_plan(model.clone(), Arc::new(plan));
//! windowed.prefill(&tokenizer.encode(&"Here we go. ".repeat(200))?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The passkey capacity evaluator: templates, sweeps, result files, reports.
pub use coil_eval::passkey;
/// Long-context text probes (the passkey filler, newlines) and per-position loss.
pub use coil_eval::{loss, probes};
pub use coil_checkpoints::{convert_to_hf, DType, embedded_family, embedded_names, Checkpoint, Config, Dialect, Exported, LoadError, Source, Tokenizer};
pub use coil_ssm::{
    calibrate, read_thresholds, write_thresholds, Error, HeadStats, IndexSet, LogitRows, Mitigation, Model, Plan, Sampler,
    SamplingConfig, Scope, Session, State, StateShape, Thresholds,
};
/// Where a model computes, and the op interface the devices implement.
pub use coil_kernels::{Backend, Cpu, Device, Reference, WeightDtype};
/// Why a device could not be opened; the wgpu adapters present (`coil devices`).
pub use coil_gpu::{adapters, cuda_devices, Adapter, AdapterKind, DeviceError};

/// The backend of `device` (`Device::Auto`: CUDA, else a hardware GPU through wgpu, else the
/// CPU). Give it to [`Model::with_backend`]; one backend serves any number of models.
///
/// ```
/// let cpu = coil::open_device(coil::Device::Cpu)?;
/// assert_eq!(cpu.name(), "cpu");
/// # Ok::<(), coil::DeviceError>(())
/// ```
pub fn open_device(device: Device) -> Result<std::sync::Arc<dyn Backend>, DeviceError> {
    coil_gpu::open(device)
}
