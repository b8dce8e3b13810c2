//! Coil runs recurrent state-space language models (Mamba-2) over input of any length in constant
//! memory, and measures how much their fixed-size state holds. This crate is the one dependency
//! an embedder adds: everything below is on this page or one link away.
//!
//! # In five minutes
//!
//! [`load`] a checkpoint onto a [`Device`] (or [`load_default`]: the small model compiled into the
//! crate), open a [`Session`] per stream, [`prefill`](Session::prefill) any length of input and
//! [`generate`](Session::generate) with a [`Sampler`]. Everything that changes lives in the
//! session's [`State`]: fork it to share a prefix, [`save`](State::save) it to resume in another
//! process. [`Mitigation`]s (the same set as the command line's `--mitigate`) are resolved per
//! model into a [`Plan`] that a session applies to every token.
//!
//! ```
//! use coil::{Mitigation, Sampler, SamplingConfig, Scope};
//!
//! let loaded = coil::load_default()?; // or coil::load(&Source::Dir(path), Device::Auto)
//!
//! // Prefill any length (in bounded pieces), then generate greedily.
//! let mut session = loaded.session();
//! session.prefill(&loaded.encode("The grass is green. The sky is")?)?;
//! let fork = session.fork(); // the same state, to branch from later
//! let ids = session.generate(&mut Sampler::new(SamplingConfig::default()), 8, loaded.vocab_limit(), |_| true)?;
//! println!("{}", loaded.decode(&ids)?);
//! assert_eq!(fork.position() + 8, session.position());
//!
//! // The same model with a sliding window of 256 tokens (docs/mitigations.md).
//! let window = Mitigation::Window { size: 256, granularity: 64, scope: Scope::all() };
//! let mut windowed = loaded.session_with(&[window])?;
//! windowed.prefill(&loaded.encode(&"Here we go. ".repeat(200))?)?;
//! # Ok::<(), coil::Error>(())
//! ```
//!
//! # Threads
//!
//! A [`Model`] is immutable and `Send + Sync`: share one through an [`Arc`](std::sync::Arc) and
//! give each thread its own [`Session`]. Sessions never touch each other, and a thread's results
//! are bit for bit those of the same work done alone (`tests/threads.rs` checks it).
//!
//! # Errors
//!
//! Every facade function returns [`Error`]; the internal errors ([`ModelError`], [`LoadError`],
//! [`DeviceError`], [`passkey::EvalError`]) convert into it with `?`.
//!
//! # What is here
//!
//! - Loading: [`load`], [`load_default`], [`load_bytes`], [`Loaded`]; [`Checkpoint`], [`Source`],
//!   [`Config`], [`Tokenizer`] for finer control; [`convert_to_hf`].
//! - Devices: [`Device`], [`open_device`]; [`adapters`] and [`cuda_devices`] list what is present.
//! - Running: [`Model`], [`Session`], [`State`], [`Sampler`], [`LogitRows`].
//! - Mitigations: [`Mitigation`], [`parse_mitigations`], [`Plan`], thresholds.
//! - Diagnostics: [`prefill_with_diagnostics`], [`State::record_stats`].
//! - Evaluation: [`passkey`] (capacity sweeps and reports), [`loss`], [`probes`], [`plot`].
//! - Lower levels, for implementing or inspecting: [`checkpoint`] (weights, tensors), [`backend`]
//!   (the op interface).
//!
//! # Stability
//!
//! The facade follows semantic versioning (CHANGELOG.md states the policy): before 1.0 a release
//! that breaks any item reachable from this crate bumps the minor version (0.1 -> 0.2) and is
//! listed in the changelog; patch releases only add. Error enums and [`Diagnostics`] are
//! `#[non_exhaustive]` so new cases are not breaking. The [`checkpoint`] and [`backend`] modules
//! expose the engine's internals and change more often than the rest.

#![warn(missing_docs)]

mod diagnostics;
mod error;
mod load;

pub use diagnostics::{prefill_with_diagnostics, Diagnostics};
pub use error::Error;
pub use load::{load, load_bytes, load_default, load_with, LoadOptions, Loaded};

// ---- Running a model -------------------------------------------------------------------------

/// A Mamba-2 language model on one backend: immutable, `Send + Sync`, shared by any number of
/// sessions and threads through an [`Arc`](std::sync::Arc).
///
/// ```
/// use std::sync::Arc;
/// use coil::{Checkpoint, Model, Session};
///
/// let model = Arc::new(Model::from_checkpoint(Checkpoint::embedded_default()?));
/// let config = model.config();
/// println!("{} layers, d_model {}, {} parameters", config.n_layer, config.d_model, model.parameter_count());
/// // The low-level forward pass: the state moves on, the logits of the last token come back.
/// let mut state = model.new_state();
/// let logits = model.forward(&mut state, &[1, 2, 3], coil::LogitRows::Last)?;
/// assert_eq!(logits.len(), model.vocab_size());
/// assert_eq!(state.position(), 3);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Model;

/// One stream through a shared [`Model`]: prefill, step, generate, score, fork, restore.
///
/// ```
/// use coil::{Sampler, SamplingConfig};
///
/// let loaded = coil::load_default()?;
/// let mut session = loaded.session();
/// let prompt = loaded.encode("There is an important info hidden inside a lot of irrelevant text.")?;
/// let logits = session.prefill(&prompt)?; // any length; memory stays bounded
/// assert_eq!(logits.len(), loaded.model().vocab_size());
///
/// let snapshot = session.state().clone();
/// let next = session.step(42)?.to_vec(); // one token through the recurrent step
/// session.restore(&snapshot)?; // back to just after the prompt
/// assert_eq!(session.step(42)?, &next[..]);
///
/// // Sample, stopping early from the callback.
/// let mut sampler = Sampler::new(SamplingConfig { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 7 });
/// let ids = session.generate(&mut sampler, 16, loaded.vocab_limit(), |token| token != 0)?;
/// assert!(ids.len() <= 16);
///
/// // Per-position logits, streamed one piece at a time.
/// let mut positions = Vec::new();
/// loaded.session().score(&prompt, |position, _logits| positions.push(position))?;
/// assert_eq!(positions.len(), prompt.len());
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Session;

/// Everything that changes as a stream runs: the f32 conv and ssm state of every layer, the
/// position, and the window mitigation's history. Clone it to fork, [`State::restore`] to go back,
/// [`State::save`] and [`Model::load_state`] to carry it to another process
/// (the file names its model: another model's state of the same shape is refused).
///
/// ```
/// use coil::{Session, State};
///
/// let loaded = coil::load_default()?;
/// let mut session = loaded.session();
/// session.prefill(&loaded.encode(&"A long shared prefix. ".repeat(50))?)?;
///
/// let path = std::env::temp_dir().join(format!("coil-doc-state-{}.state", std::process::id()));
/// session.state().save(&path)?;
/// let state = loaded.model().load_state(&path)?;
/// assert_eq!(&state, session.state());
///
/// let mut resumed = Session::with_state(loaded.model().clone(), state)?;
/// let tail = loaded.encode(" And then")?;
/// assert_eq!(resumed.prefill(&tail)?, session.prefill(&tail)?);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::State;

/// The sizes of a model's [`State`]: what [`State::load`] checks a file against.
///
/// ```
/// let loaded = coil::load_default()?;
/// let shape = loaded.model().state_shape();
/// assert_eq!(shape, loaded.session().state().shape());
/// assert_eq!(shape.layers, loaded.model().config().n_layer);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::StateShape;

/// dt and decay statistics of one head, from [`State::take_stats`] or [`Diagnostics`].
///
/// ```
/// let loaded = coil::load_default()?;
/// let mut session = loaded.session();
/// session.state_mut().record_stats(true);
/// session.prefill(&loaded.encode("Some text to look at.")?)?;
/// let stats = session.state_mut().take_stats().expect("recording is on");
/// let head: &coil::HeadStats = &stats[0][0];
/// assert!(head.dt_min <= head.dt_max);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::HeadStats;

/// Which positions' logits [`Model::forward`] returns.
///
/// ```
/// use coil::LogitRows;
///
/// let loaded = coil::load_default()?;
/// let model = loaded.model();
/// let all = model.forward(&mut model.new_state(), &[5, 6, 7], LogitRows::All)?;
/// assert_eq!(all.len(), 3 * model.vocab_size());
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::LogitRows;

/// A seeded token sampler: greedy, or temperature with top-k and top-p.
///
/// ```
/// use coil::{Sampler, SamplingConfig};
///
/// let logits = [0.1, 2.0, 0.3];
/// assert_eq!(Sampler::new(SamplingConfig::default()).sample(&logits, 3), 1); // greedy
/// let warm = SamplingConfig { temperature: 1.0, seed: 3, ..SamplingConfig::default() };
/// // The same seed and logits give the same tokens.
/// assert_eq!(Sampler::new(warm.clone()).sample(&logits, 3), Sampler::new(warm).sample(&logits, 3));
/// ```
#[doc(inline)]
pub use coil_ssm::Sampler;

/// How a [`Sampler`] picks tokens; the default is greedy.
///
/// ```
/// let config = coil::SamplingConfig { temperature: 0.7, top_p: 0.9, ..Default::default() };
/// assert_eq!(config.top_k, 0);
/// ```
#[doc(inline)]
pub use coil_ssm::SamplingConfig;

/// Why running a model failed; one case of [`Error`].
///
/// ```
/// use coil::ModelError;
///
/// let loaded = coil::load_default()?;
/// let vocab = loaded.model().vocab_size() as u32;
/// let err = loaded.session().prefill(&[vocab]).unwrap_err();
/// assert!(matches!(err, ModelError::TokenOutOfRange { .. }));
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Error as ModelError;

// ---- Mitigations -----------------------------------------------------------------------------

/// One training-free state-collapse mitigation, typed; the same set as `--mitigate` (its
/// `Display` and `FromStr` are the command-line spec).
///
/// ```
/// use coil::{IndexSet, Mitigation, Scope};
///
/// let rri = Mitigation::Rri { lambda: 0.999, beta: 0.75, scope: Scope::all() };
/// let parsed: Mitigation = rri.to_string().parse()?;
/// assert_eq!(parsed, rri);
///
/// // Only layers 0 and 1, every head.
/// let scope = Scope { layers: IndexSet::of(vec![0..=1]), heads: IndexSet::all() };
/// let clamp = Mitigation::DtClamp { min: None, max: Some(0.1), scope };
/// let loaded = coil::load_default()?;
/// loaded.session_with(&[clamp, rri])?.prefill(&[1, 2, 3])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Mitigation;

/// Mitigations resolved for one model, applied by every forward path alike. Build one with
/// [`Loaded::plan`] or [`Plan::resolve`], share it between sessions through an `Arc`.
///
/// ```
/// use std::sync::Arc;
/// use coil::{Plan, Session};
///
/// let loaded = coil::load_default()?;
/// let mitigations = coil::parse_mitigations("dt-scale:0.5;rri:lambda=0.999,beta=0.75")?;
/// let plan = Plan::resolve(loaded.model(), &mitigations, None, ".".as_ref())?;
/// assert_eq!(plan.mitigations().len(), 2);
/// println!("{}", plan.describe()); // the specs, as `--mitigate` takes them
/// let mut session = Session::with_plan(loaded.model().clone(), Arc::new(plan));
/// session.prefill(&[1, 2, 3])?;
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Plan;

/// Which layers and heads a [`Mitigation`] touches.
///
/// ```
/// let scope = coil::Scope { heads: coil::IndexSet::of(vec![2..=3]), ..coil::Scope::all() };
/// assert!(scope.contains(5, 2) && !scope.contains(5, 4));
/// ```
#[doc(inline)]
pub use coil_ssm::Scope;

/// A set of layer or head indices: all of them, or inclusive ranges.
///
/// ```
/// let set = coil::IndexSet::of(vec![0..=1, 4..=4]);
/// assert!(set.contains(4) && !set.contains(2));
/// assert!(coil::IndexSet::all().is_all());
/// ```
#[doc(inline)]
pub use coil_ssm::IndexSet;

/// Where the state-norm mitigation's thresholds come from.
///
/// ```
/// use coil::{Mitigation, Scope, Thresholds};
///
/// let loaded = coil::load_default()?;
/// let heads = loaded.model().config().n_heads;
/// let layers = loaded.model().config().n_layer;
/// let thresholds = Thresholds::Values(vec![vec![10.0; heads]; layers]);
/// let clamp = Mitigation::StateNorm { thresholds, every: 1, scope: Scope::all() };
/// loaded.session_with(&[clamp])?.prefill(&[1, 2, 3])?;
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::Thresholds;

/// Each head's state norm after `tokens` under `plan`, times `factor`: thresholds for the
/// state-norm mitigation (`coil calibrate`).
///
/// ```
/// let loaded = coil::load_default()?;
/// let plan = loaded.plan(&[])?;
/// let tokens = loaded.encode(&"Calibration text. ".repeat(20))?;
/// let thresholds = coil::calibrate(loaded.model(), &plan, &tokens, 1.5)?;
/// assert_eq!(thresholds.len(), loaded.model().config().n_layer);
///
/// let path = std::env::temp_dir().join(format!("coil-doc-thresholds-{}.json", std::process::id()));
/// coil::write_thresholds(&path, &thresholds, coil::serde_json::json!({"note": "doc test"}))?;
/// assert_eq!(coil::read_thresholds(&path)?, thresholds);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::{calibrate, MAX_CALIBRATION_TOKENS};

/// Reads a thresholds file (`{"thresholds": [[tau per head] per layer]}`); see [`calibrate`].
///
/// ```
/// let path = std::env::temp_dir().join(format!("coil-doc-read-thresholds-{}.json", std::process::id()));
/// std::fs::write(&path, r#"{"thresholds": [[1.0, 2.0]]}"#).unwrap();
/// assert_eq!(coil::read_thresholds(&path)?, vec![vec![1.0, 2.0]]);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::read_thresholds;

/// Writes a thresholds file with provenance; see [`calibrate`] for a round trip.
///
/// ```
/// let path = std::env::temp_dir().join(format!("coil-doc-write-thresholds-{}.json", std::process::id()));
/// coil::write_thresholds(&path, &[vec![3.0]], coil::serde_json::json!({"source": "by hand"}))?;
/// assert_eq!(coil::read_thresholds(&path)?, vec![vec![3.0]]);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::write_thresholds;

/// The JSON library of [`write_thresholds`]' provenance argument, re-exported so that its version
/// always matches the one Coil uses: a public dependency, covered by the semver policy.
///
/// ```
/// let provenance = coil::serde_json::json!({"calibrated_on": "filler", "tokens": 8192});
/// assert_eq!(provenance["tokens"], 8192);
/// ```
#[doc(no_inline)]
pub use serde_json;

/// Parses `--mitigate` specs (`a;b;c`, applied in that order; `none` or empty is the plain model)
/// into typed [`Mitigation`]s. docs/mitigations.md lists every spec.
///
/// ```
/// use coil::Mitigation;
///
/// let list = coil::parse_mitigations("window:size=512;dt-clamp:max=0.1")?;
/// assert!(matches!(list[0], Mitigation::Window { size: 512, .. }));
/// assert!(coil::parse_mitigations("none")?.is_empty());
/// assert!(coil::parse_mitigations("no-such-thing").is_err());
/// # Ok::<(), coil::Error>(())
/// ```
pub fn parse_mitigations(specs: &str) -> Result<Vec<Mitigation>, Error> {
    Mitigation::parse_list(specs).map_err(|message| ModelError::Mitigation { spec: specs.to_owned(), message }.into())
}

// ---- Checkpoints -----------------------------------------------------------------------------

/// A loaded checkpoint: config, f32 weights, tokenizer. [`load`] does this and more in one call;
/// use it directly to change the config or weights before building a [`Model`].
///
/// ```
/// use coil::{Checkpoint, Model};
///
/// let mut checkpoint = Checkpoint::embedded_default()?;
/// let tokenizer = checkpoint.tokenizer.take().expect("the embedded checkpoint has a tokenizer");
/// let model = Model::from_checkpoint(checkpoint).with_chunk_size(64);
/// assert!(tokenizer.vocab_size() <= model.vocab_size());
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Checkpoint;

/// Where a checkpoint comes from: a folder, or one compiled into the crate.
///
/// ```
/// let source = coil::Source::Embedded(coil::embedded_names()[0].into());
/// let checkpoint = coil::Checkpoint::load(&source)?;
/// assert_eq!(checkpoint.source, source);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Source;

/// What a checkpoint's `training.json` tells Coil: its training length, and for a checkpoint made
/// to collapse, the mitigation measured best on it.
///
/// ```
/// let training = coil::Training::parse(br#"{"train_length": 64, "best_mitigation": "window:size=64"}"#).unwrap();
/// assert_eq!((training.train_length, training.best_mitigation.as_deref()), (64, Some("window:size=64")));
/// assert!(coil::Training::parse(br#"{"train_length": 0}"#).is_err());
/// ```
#[doc(inline)]
pub use coil_checkpoints::Training;

/// A checkpoint's `config.json`, in either dialect (HF or mamba_ssm), with derived sizes.
///
/// ```
/// let loaded = coil::load_default()?;
/// let config: &coil::Config = loaded.model().config();
/// assert_eq!(config.n_heads * config.head_dim, config.d_inner());
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Config;

/// The two `config.json` dialects Coil reads.
///
/// ```
/// let checkpoint = coil::Checkpoint::embedded_default()?;
/// println!("read as {:?}", checkpoint.config.dialect);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Dialect;

/// A checkpoint's tokenizer (`tokenizer.json`).
///
/// ```
/// let loaded = coil::load_default()?;
/// let tokenizer = loaded.tokenizer()?;
/// let ids = tokenizer.encode("Hello, state.")?;
/// assert_eq!(tokenizer.decode(&ids)?, "Hello, state.");
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Tokenizer;

/// Decodes tokens one at a time into text that is safe to print as it comes (it holds back
/// incomplete UTF-8 sequences).
///
/// ```
/// let loaded = coil::load_default()?;
/// let tokenizer = loaded.tokenizer()?;
/// let mut decoder = tokenizer.stream_decoder();
/// let mut text = String::new();
/// for id in tokenizer.encode("Streaming, one token at a time.")? {
///     text += &decoder.push(id)?;
/// }
/// assert_eq!(text, "Streaming, one token at a time.");
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::StreamDecoder;

/// Why loading a checkpoint or a tokenizer failed (it names the file, the tensor, and what was
/// expected against what was found); one case of [`Error`].
///
/// ```
/// let err = coil::Checkpoint::load(&coil::Source::Dir("/no/such/folder".into())).err().unwrap();
/// assert!(err.to_string().contains("/no/such/folder"));
/// ```
#[doc(inline)]
pub use coil_checkpoints::LoadError;

/// Names of the checkpoints compiled into the crate, the default first.
///
/// ```
/// for name in coil::embedded_names() {
///     coil::load(&coil::Source::Embedded(name.into()), coil::Device::Cpu)?;
/// }
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::embedded_names;

/// The embedded family trained on a passkey template (checkpoints differing only in state size),
/// smallest state first: what a capacity sweep without `--model` covers.
///
/// ```
/// let paper = coil::embedded_family("paper");
/// assert_eq!(paper, ["passkey-n4", "passkey-n8", "passkey-n16", "passkey-n32"]);
/// assert_eq!(coil::embedded_family("ruler"), paper, "the paper's variants share its family");
/// ```
#[doc(inline)]
pub use coil_checkpoints::embedded_family;

/// Writes a checkpoint folder (either dialect, safetensors or `pytorch_model.bin`) out in the HF
/// layout: `config.json`, one `model.safetensors`, and the tokenizer.
///
/// ```
/// # let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
/// let out = std::env::temp_dir().join(format!("coil-doc-convert-{}", std::process::id()));
/// let exported = coil::convert_to_hf(dir, &out)?;
/// assert!(exported.model.is_file() && exported.tokenizer.is_some());
/// coil::load(&coil::Source::Dir(out.clone()), coil::Device::Cpu)?;
/// # std::fs::remove_dir_all(&out).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::convert_to_hf;

/// What [`convert_to_hf`] wrote.
///
/// ```
/// # let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
/// let out = std::env::temp_dir().join(format!("coil-doc-exported-{}", std::process::id()));
/// let exported: coil::Exported = coil::convert_to_hf(dir, &out)?;
/// assert!(exported.tensors > 0);
/// # std::fs::remove_dir_all(&out).ok();
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_checkpoints::Exported;

/// Lower-level checkpoint types: the weights a [`Checkpoint`] holds and the tensor store they are
/// read from, for programs that build or edit models by hand ([`Model::new`]).
///
/// ```
/// use coil::checkpoint::Weights;
///
/// let checkpoint = coil::Checkpoint::embedded_default()?;
/// let weights: &Weights = &checkpoint.weights;
/// assert_eq!(weights.layers.len(), checkpoint.config.n_layer);
/// # Ok::<(), coil::Error>(())
/// ```
pub mod checkpoint {
    #[doc(inline)]
    pub use coil_checkpoints::{DType, LayerWeights, Tensor, TensorStore, TorchZipError, Weights};
}

// ---- Devices ---------------------------------------------------------------------------------

/// Where a model computes: `Auto` (CUDA, else a hardware GPU through wgpu, else the CPU), `Cpu`,
/// `Cuda(n)`, `Wgpu(n)`. Parses from and prints as the command line's `--device` values.
///
/// ```
/// use coil::Device;
///
/// let device: Device = "cuda:1".parse()?;
/// assert_eq!(device, Device::Cuda(1));
/// assert_eq!(Device::Wgpu(None).to_string(), "wgpu");
/// # Ok::<(), String>(())
/// ```
#[doc(inline)]
pub use coil_kernels::Device;

/// The op interface a device implements. [`open_device`] returns one; [`Model::with_backend`]
/// runs a model on it. [`backend`] has the types its methods take, to implement one.
///
/// ```
/// use std::sync::Arc;
/// use coil::{Backend, Checkpoint, Model};
///
/// let backend: Arc<dyn Backend> = Arc::new(coil::backend::Reference); // the naive oracle
/// let model = Model::from_checkpoint(Checkpoint::embedded_default()?).with_backend(backend);
/// assert_eq!(model.backend_name(), "reference");
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_kernels::Backend;

/// The op interface's argument types and the CPU and reference backends, for implementing a
/// [`Backend`] or calling ops directly.
///
/// ```
/// use coil::backend::{Backend, Cpu, Matrix};
///
/// let weight = Matrix::new(vec![1.0, 0.0, 0.0, 2.0], 2, 2); // [out, in]
/// let mut out = [0.0; 2];
/// Cpu.linear(&[3.0, 4.0], &weight, None, &mut out);
/// assert_eq!(out, [3.0, 8.0]);
/// ```
pub mod backend {
    #[doc(inline)]
    pub use coil_kernels::{Backend, Cpu, DtLimit, Matrix, Recurrence, Reference, ScanInputs, SsmShape, Traffic, Values};
}

/// What a model's backend launched and moved between host and device ([`Model::device_traffic`]),
/// and the tokens the model ran ([`Model::tokens_run`]): what `--device-stats` writes.
///
/// ```
/// use coil::{Checkpoint, LogitRows, Model};
///
/// let model = Model::from_checkpoint(Checkpoint::embedded_default()?);
/// let mut state = model.new_state();
/// model.forward(&mut state, &[5, 6, 7], LogitRows::Last)?;
/// model.step(&mut state, 8)?;
/// assert_eq!((model.tokens_run().prefill, model.tokens_run().decode), (3, 1));
/// assert_eq!(model.device_traffic(), coil::Traffic::default()); // the CPU moves nothing
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_ssm::TokensRun;

#[doc(inline)]
pub use coil_kernels::Traffic;

/// How a model holds its weight matrices: f32, bf16 or f16 (the 16-bit types take half the
/// memory and half the bytes decode reads per token; products still accumulate in f32). See
/// [`Model::with_weight_dtype`].
///
/// ```
/// use coil::{Checkpoint, Model, WeightDtype};
///
/// let model = Model::from_checkpoint(Checkpoint::embedded_default()?);
/// let f32_bytes = model.weight_bytes();
/// let model = model.with_weight_dtype(WeightDtype::Bf16)?;
/// assert_eq!(model.weight_dtype(), WeightDtype::Bf16);
/// assert_eq!(model.weight_bytes() * 2, f32_bytes);
/// # Ok::<(), coil::Error>(())
/// ```
#[doc(inline)]
pub use coil_kernels::WeightDtype;

/// The backend of `device` (`Device::Auto`: CUDA, else a hardware GPU through wgpu, else the
/// CPU). Give it to [`Model::with_backend`] or [`Loaded::from_checkpoint`]; one backend serves
/// any number of models. A missing device is an error naming what was found, never a panic.
///
/// ```
/// let cpu = coil::open_device(coil::Device::Cpu)?;
/// assert_eq!(cpu.name(), "cpu");
/// # Ok::<(), coil::Error>(())
/// ```
pub fn open_device(device: Device) -> Result<std::sync::Arc<dyn Backend>, DeviceError> {
    coil_gpu::open(device)
}

/// Why a device could not be opened; one case of [`Error`].
///
/// ```
/// match coil::open_device(coil::Device::Cuda(99)) {
///     Ok(backend) => println!("opened {}", backend.name()),
///     Err(err) => println!("no such device: {err}"), // names what was found
/// }
/// ```
#[doc(inline)]
pub use coil_gpu::DeviceError;

/// The GPU adapters wgpu reaches (`coil devices` prints them).
///
/// ```
/// for adapter in coil::adapters() {
///     println!("{} {} ({:?}, hardware: {})", adapter.index, adapter.name, adapter.kind, adapter.is_hardware());
/// }
/// ```
#[doc(inline)]
pub use coil_gpu::adapters;

/// How many CUDA devices the driver reports, or why there is no CUDA.
///
/// ```
/// match coil::cuda_devices() {
///     Ok(n) => println!("{n} CUDA devices"),
///     Err(why) => println!("no CUDA: {why}"),
/// }
/// ```
#[doc(inline)]
pub use coil_gpu::cuda_devices;

/// One wgpu adapter, from [`adapters`].
///
/// ```
/// let hardware: Vec<coil::Adapter> = coil::adapters().into_iter().filter(|a| a.is_hardware()).collect();
/// println!("{} hardware adapters", hardware.len());
/// ```
#[doc(inline)]
pub use coil_gpu::Adapter;

/// What kind of device a wgpu [`Adapter`] is.
///
/// ```
/// for adapter in coil::adapters() {
///     let kind: coil::AdapterKind = adapter.kind;
///     println!("{kind:?}");
/// }
/// ```
#[doc(inline)]
pub use coil_gpu::AdapterKind;

// ---- Evaluation ------------------------------------------------------------------------------

/// The passkey capacity evaluator: prompt templates, sweeps over lengths x depths x mitigations
/// x checkpoints that fork one streamed state at every needle, resumable result files, capacity
/// fits and reports (`coil passkey` is this module behind a command line).
///
/// ```
/// use coil::passkey::{read_results, run_sweep, write_report, ResultsFile, Shard, Spacing, SweepConfig, Template};
///
/// let loaded = coil::load_default()?;
/// let arms = vec![
///     loaded.passkey_subject("default", loaded.plan(&[])?)?,
///     loaded.passkey_subject("default", loaded.plan(&coil::parse_mitigations("rri:lambda=0.999,beta=0.75")?)?)?,
/// ];
/// let config = SweepConfig { lengths: vec![256], depths: 2, spacing: Spacing::Even, seed: 0, template: Template::paper(), shard: Shard::whole(), batch_forks: false };
/// let out = std::env::temp_dir().join(format!("coil-doc-passkey-{}", std::process::id()));
/// let mut results = ResultsFile::open(&out, Shard::whole(), false)?;
/// let summary = run_sweep(&arms, &config, &mut results, |_progress| {})?;
/// assert_eq!(summary.cells_run, 4);
/// let report = write_report(&read_results(&[out.clone()])?, 0.95, &out)?;
/// println!("{}", report.markdown(&[]));
/// # std::fs::remove_dir_all(&out).ok();
/// # Ok::<(), coil::Error>(())
/// ```
pub mod passkey {
    #[doc(inline)]
    pub use coil_eval::passkey::*;
}

/// Per-position loss over long inputs, bucketed by position (`coil score`).
///
/// ```
/// use coil::loss::{negative_log_likelihood, Buckets};
///
/// let loaded = coil::load_default()?;
/// let tokens = loaded.encode(&"The grass is green. ".repeat(30))?;
/// let mut buckets = Buckets::new(32);
/// let mut session = loaded.session();
/// session.score(&tokens[..tokens.len() - 1], |position, logits| {
///     buckets.add(position, negative_log_likelihood(logits, tokens[position as usize + 1] as usize));
/// })?;
/// for (first, last, count, mean) in buckets.rows() {
///     println!("{first}-{last}: {count} tokens, {mean:.3} nats");
/// }
/// # Ok::<(), coil::Error>(())
/// ```
pub mod loss {
    #[doc(inline)]
    pub use coil_eval::loss::*;
}

/// Long-context text probes: the passkey filler, newlines, and other inputs for diagnostics and
/// calibration.
///
/// ```
/// use coil::probes::Probe;
///
/// let loaded = coil::load_default()?;
/// let newlines = Probe::Newlines.tokens(loaded.tokenizer()?, 1000)?;
/// assert_eq!(newlines.len(), 1000);
/// let filler: Probe = "filler".parse()?;
/// assert_eq!(filler.tokens(loaded.tokenizer()?, 500)?.len(), 500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod probes {
    #[doc(inline)]
    pub use coil_eval::probes::*;
}

/// SVG plots of sweep results and diagnostics (no fonts or image libraries needed).
///
/// ```
/// let path = std::env::temp_dir().join(format!("coil-doc-plot-{}.svg", std::process::id()));
/// let curve: Vec<(u64, f32)> = (0..10).map(|i| (i * 100, (i as f32).sqrt())).collect();
/// coil::plot::lines(&path, "state norm", "position (tokens)", "norm", &[("head 0".into(), curve)], None)?;
/// assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), coil::plot::PlotError>(())
/// ```
pub mod plot {
    #[doc(inline)]
    pub use coil_eval::plot::*;
}

/// How Coil reads and writes files, for programs that write beside it: size-limited reads, and
/// outputs written beside their name and renamed into place (a killed writer leaves the old file
/// or the new one, never half of one; its temporary is swept by the next write).
///
/// ```
/// let path = std::env::temp_dir().join(format!("coil-doc-atomic-{}.txt", std::process::id()));
/// coil::files::write_atomically(&path, |temporary| std::fs::write(temporary, "whole"))?;
/// assert_eq!(std::fs::read_to_string(&path)?, "whole");
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), std::io::Error>(())
/// ```
pub mod files {
    #[doc(inline)]
    pub use coil_files::*;
}
