//! From a checkpoint's location and a device to a model ready to run, with its tokenizer: the
//! embedder's one-call entry point. Lower-level pieces ([`Checkpoint`], [`open_device`],
//! [`Model::with_backend`]) stay available for anything it does not cover.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::DType;
use crate::passkey::CoilSubject;
use crate::{open_device, Backend, Checkpoint, Device, Error, Mitigation, Model, Plan, Session, Source, Tokenizer, Training, WeightDtype};

/// How a checkpoint becomes a model: what the command line's `--tokenizer`, `--weights` and
/// `--chunk-size` set. The default holds the weights as the checkpoint stores them.
///
/// ```
/// use coil::{Device, LoadOptions, Source, WeightDtype};
///
/// let options = LoadOptions { weights: Some(WeightDtype::Bf16), ..LoadOptions::default() };
/// let loaded = coil::load_with(&Source::Embedded("passkey-n4".into()), Device::Cpu, &options)?;
/// assert_eq!(loaded.model().weight_dtype(), WeightDtype::Bf16);
/// assert!(loaded.converted()); // the checkpoint stores f32
/// # Ok::<(), coil::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A `tokenizer.json` to read and write text with instead of the checkpoint's own (the
    /// released Mamba-2 checkpoints ship none).
    pub tokenizer: Option<PathBuf>,
    /// How weight matrices are held; `None`: as stored (bf16 and f16 stay, anything else is f32).
    pub weights: Option<WeightDtype>,
    /// The SSD chunk length of prefill; `None`: the backend's preferred length.
    pub chunk_size: Option<usize>,
}

/// A model loaded onto a device, with its tokenizer: what [`load`], [`load_default`] and
/// [`load_bytes`] return.
///
/// The model is behind an [`Arc`] because it is immutable and `Send + Sync`: clone the `Arc` into
/// as many threads as you like and give each its own [`Session`].
///
/// ```
/// let loaded = coil::load_default()?;
/// let tokens = loaded.encode("The grass is green. The sky is")?;
/// let mut session = loaded.session();
/// let logits = session.prefill(&tokens)?;
/// assert_eq!(logits.len(), loaded.model().vocab_size());
/// # Ok::<(), coil::Error>(())
/// ```
pub struct Loaded {
    model: Arc<Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    source: Source,
    training: Option<Training>,
    stored_dtype: DType,
    warnings: Vec<String>,
}

/// Loads the checkpoint at `source` (a folder, or one compiled into the binary) onto `device`.
///
/// Each call opens the device; to put several models on one GPU, open it once with
/// [`open_device`] and build each with [`Loaded::from_checkpoint`].
///
/// ```
/// use coil::{Device, Source};
///
/// let name = coil::embedded_names()[0];
/// let embedded = coil::load(&Source::Embedded(name.into()), Device::Cpu)?;
/// assert_eq!(embedded.model().backend_name(), "cpu");
///
/// // A folder with config.json, model.safetensors (or shards, or pytorch_model.bin) and
/// // tokenizer.json; here, the files the embedded default was built from.
/// # let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
/// let from_files = coil::load(&Source::Dir(dir), Device::Cpu)?;
/// assert_eq!(from_files.model().parameter_count(), embedded.model().parameter_count());
/// # Ok::<(), coil::Error>(())
/// ```
pub fn load(source: &Source, device: Device) -> Result<Loaded, Error> {
    load_with(source, device, &LoadOptions::default())
}

/// [`load`] with [`LoadOptions`]: another tokenizer, weights held in another dtype, a chunk size.
pub fn load_with(source: &Source, device: Device, options: &LoadOptions) -> Result<Loaded, Error> {
    Loaded::from_checkpoint_with(Checkpoint::load(source)?, open_device(device)?, options)
}

/// The default checkpoint compiled into the binary, on the CPU: a small Mamba-2 model that needs
/// no files, for examples, tests and trying things out.
///
/// ```
/// let loaded = coil::load_default()?;
/// assert!(loaded.tokenizer().is_ok());
/// # Ok::<(), coil::Error>(())
/// ```
pub fn load_default() -> Result<Loaded, Error> {
    Ok(Loaded::from_checkpoint(Checkpoint::embedded_default()?, open_device(Device::Cpu)?))
}

/// Loads a checkpoint from bytes in memory (`config.json`, one safetensors file, an optional
/// `tokenizer.json`) onto `device`: for programs that ship or fetch their own weights.
///
/// ```
/// use coil::Device;
///
/// # let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
/// // Any Mamba-2 checkpoint in the HF layout; here, the files of the embedded default.
/// let read = |name: &str| std::fs::read(dir.join(name)).expect("the checkpoint's files");
/// let loaded = coil::load_bytes(&read("config.json"), read("model.safetensors"), Some(&read("tokenizer.json")), Device::Cpu)?;
///
/// let embedded = coil::load_default()?;
/// let tokens = embedded.encode("Hello there")?;
/// assert_eq!(loaded.session().prefill(&tokens)?, embedded.session().prefill(&tokens)?);
/// # Ok::<(), coil::Error>(())
/// ```
pub fn load_bytes(config_json: &[u8], safetensors: Vec<u8>, tokenizer_json: Option<&[u8]>, device: Device) -> Result<Loaded, Error> {
    let checkpoint = Checkpoint::from_bytes(config_json, safetensors, tokenizer_json)?;
    Ok(Loaded::from_checkpoint(checkpoint, open_device(device)?))
}

impl Loaded {
    /// A model from a checkpoint loaded earlier, on a backend opened earlier (one backend serves
    /// any number of models).
    ///
    /// ```
    /// use coil::{Checkpoint, Device, Loaded};
    ///
    /// let cpu = coil::open_device(Device::Cpu)?;
    /// let first = Loaded::from_checkpoint(Checkpoint::embedded_default()?, cpu.clone());
    /// let second = Loaded::from_checkpoint(Checkpoint::embedded_default()?, cpu);
    /// assert_eq!(first.model().parameter_count(), second.model().parameter_count());
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn from_checkpoint(checkpoint: Checkpoint, backend: Arc<dyn Backend>) -> Loaded {
        // Without a tokenizer file or a conversion nothing can fail: a checkpoint's own dtype
        // holds every value it stores.
        Loaded::from_checkpoint_with(checkpoint, backend, &LoadOptions::default()).expect("the default options convert nothing")
    }

    /// [`Loaded::from_checkpoint`] with [`LoadOptions`]; fails on a tokenizer file that does not
    /// read, or weights that the dtype asked for cannot hold (f16 past ±65504, named).
    pub fn from_checkpoint_with(checkpoint: Checkpoint, backend: Arc<dyn Backend>, options: &LoadOptions) -> Result<Loaded, Error> {
        let tokenizer = match &options.tokenizer {
            Some(path) => Some(Tokenizer::from_file(path)?),
            None => checkpoint.tokenizer,
        };
        let (training, source, warnings) = (checkpoint.training.clone(), checkpoint.source.clone(), checkpoint.warnings.clone());
        let stored_dtype = checkpoint.weights.stored_dtype;
        let checkpoint = Checkpoint { tokenizer: None, ..checkpoint };
        let mut model = Model::from_checkpoint(checkpoint).with_backend(backend).with_weight_dtype(options.weights.unwrap_or(held_as(stored_dtype)))?;
        if let Some(chunk) = options.chunk_size {
            model = model.with_chunk_size(chunk);
        }
        Ok(Loaded { model: Arc::new(model), tokenizer: tokenizer.map(Arc::new), source, training, stored_dtype, warnings })
    }

    /// The dtype the checkpoint stores its projection weights in.
    pub fn stored_dtype(&self) -> DType {
        self.stored_dtype
    }

    /// Whether the weights are held in another dtype than the checkpoint stores
    /// ([`LoadOptions::weights`]): such a model is another subject in a sweep's results.
    pub fn converted(&self) -> bool {
        self.model.weight_dtype() != held_as(self.stored_dtype)
    }

    /// What loading accepted but a user should know (tensors the model does not use, a
    /// `model_type` that is not Mamba-2's), as HF transformers warns about them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The tokenizer when there is one (see [`Loaded::tokenizer`] for an error saying how to give one).
    pub fn tokenizer_if_any(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// The model, to share between threads and sessions.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// let model = loaded.model().clone(); // an Arc: cheap, and Send + Sync
    /// std::thread::spawn(move || coil::Session::new(model).prefill(&[1, 2, 3]).map(|l| l.len()))
    ///     .join()
    ///     .unwrap()?;
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The checkpoint's tokenizer; [`Error::NoTokenizer`] when it has no `tokenizer.json`.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// let tokenizer = loaded.tokenizer()?;
    /// let ids = tokenizer.encode("state space")?;
    /// assert_eq!(tokenizer.decode(&ids)?, "state space");
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn tokenizer(&self) -> Result<&Arc<Tokenizer>, Error> {
        self.tokenizer.as_ref().ok_or_else(|| Error::NoTokenizer { checkpoint: self.source.clone() })
    }

    /// The same model reading and writing text with `tokenizer` instead of the checkpoint's own
    /// (or instead of none: the released Mamba-2 checkpoints ship no tokenizer and use
    /// GPT-NeoX-20B's). Ids past the model's vocabulary are refused when text is fed.
    ///
    /// ```
    /// use coil::{Device, Source, Tokenizer};
    ///
    /// # let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
    /// let other = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    /// let loaded = coil::load_default()?.with_tokenizer(other);
    /// assert!(loaded.tokenizer()?.path().ends_with("passkey-n16/tokenizer.json"));
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn with_tokenizer(self, tokenizer: Tokenizer) -> Loaded {
        Loaded { tokenizer: Some(Arc::new(tokenizer)), ..self }
    }

    /// [`Loaded::with_tokenizer`] with the `tokenizer.json` at `path`, wherever it is: a
    /// checkpoint folder may be read-only (a model hub's cache) and hold none.
    ///
    /// ```
    /// use coil::{Device, Source};
    ///
    /// # let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/checkpoints/models/passkey-n16"));
    /// let loaded = coil::load_default()?.with_tokenizer_file(&dir.join("tokenizer.json"))?;
    /// let ids = loaded.encode("The grass is green.")?;
    /// assert_eq!(loaded.session().prefill(&ids)?.len(), loaded.model().vocab_size());
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn with_tokenizer_file(self, path: &Path) -> Result<Loaded, Error> {
        Ok(self.with_tokenizer(Tokenizer::from_file(path)?))
    }

    /// Where the checkpoint came from.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// assert!(matches!(loaded.source(), coil::Source::Embedded(_)));
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The length the checkpoint was trained at (`train_length` in its `training.json`), if known.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// if let Some(length) = loaded.train_length() {
    ///     assert!(length > 0);
    /// }
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn train_length(&self) -> Option<usize> {
        self.training.as_ref().map(|t| t.train_length)
    }

    /// The mitigation the checkpoint's makers measured best past its training length
    /// (`best_mitigation` in its `training.json`), for a checkpoint made to show state collapse.
    pub fn best_mitigation(&self) -> Option<&str> {
        self.training.as_ref().and_then(|t| t.best_mitigation.as_deref())
    }

    /// The text that shows this checkpoint's state at work: the haystack it was trained on
    /// (`bindings`, from its training.json), else the paper's passkey filler.
    pub fn probe(&self) -> crate::probes::Probe {
        crate::probes::Probe::for_template(self.training.as_ref().and_then(|t| t.template.as_deref()))
    }

    /// Logit columns that are real tokens: the tokenizer's size when it is smaller than the
    /// (padded) embedding. Pass it to [`Session::generate`] and [`crate::Sampler::sample`] so
    /// padding rows are never sampled.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// assert!(loaded.vocab_limit() <= loaded.model().vocab_size());
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn vocab_limit(&self) -> usize {
        self.model.vocab_limit(self.tokenizer.as_ref().map(|t| t.vocab_size()))
    }

    /// Text to token ids with the checkpoint's tokenizer.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// assert!(!loaded.encode("Hello")?.is_empty());
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self.tokenizer()?.encode(text)?)
    }

    /// Token ids to text with the checkpoint's tokenizer.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// let ids = loaded.encode("Hello world")?;
    /// assert_eq!(loaded.decode(&ids)?, "Hello world");
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        Ok(self.tokenizer()?.decode(ids)?)
    }

    /// A session of the plain model from the empty state.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// let session = loaded.session();
    /// assert_eq!(session.position(), 0);
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn session(&self) -> Session {
        Session::new(self.model.clone())
    }

    /// Resolves `mitigations` (applied in order) for this model. Relative threshold files are
    /// read from the current directory; `state-norm` thresholds calibrated on text need
    /// [`Plan::resolve`] and its calibration tokens.
    ///
    /// ```
    /// use coil::Mitigation;
    ///
    /// let loaded = coil::load_default()?;
    /// let plan = loaded.plan(&coil::parse_mitigations("rri:lambda=0.999,beta=0.75")?)?;
    /// assert_eq!(plan.mitigations().len(), 1);
    /// assert!(matches!(plan.mitigations()[0], Mitigation::Rri { .. }));
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn plan(&self, mitigations: &[Mitigation]) -> Result<Arc<Plan>, Error> {
        Ok(Arc::new(Plan::resolve(&self.model, mitigations, None, Path::new("."))?))
    }

    /// A session with `mitigations` applied, from the empty state.
    ///
    /// ```
    /// use coil::{Mitigation, Scope};
    ///
    /// let loaded = coil::load_default()?;
    /// let window = Mitigation::Window { size: 256, granularity: 64, scope: Scope::all() };
    /// let mut session = loaded.session_with(&[window])?;
    /// session.prefill(&loaded.encode(&"Here we go. ".repeat(100))?)?;
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn session_with(&self, mitigations: &[Mitigation]) -> Result<Session, Error> {
        Ok(Session::with_plan(self.model.clone(), self.plan(mitigations)?))
    }

    /// One arm of a passkey sweep ([`crate::passkey::run_sweep`]): this model under `plan`,
    /// named `name` in the results.
    ///
    /// ```
    /// let loaded = coil::load_default()?;
    /// let subject = loaded.passkey_subject("default", loaded.plan(&[])?)?;
    /// assert_eq!(subject.mitigation, "none");
    /// # Ok::<(), coil::Error>(())
    /// ```
    pub fn passkey_subject(&self, name: &str, plan: Arc<Plan>) -> Result<CoilSubject, Error> {
        Ok(CoilSubject {
            model: self.model.clone(),
            mitigation: plan.describe(),
            plan,
            tokenizer: self.tokenizer()?.clone(),
            name: name.to_owned(),
            train_length: self.train_length(),
            piece_len: coil_ssm::DEFAULT_PIECE_LEN,
        })
    }
}

/// How weights stored in `stored` are held by default: bf16 and f16 stay, anything else is f32.
fn held_as(stored: DType) -> WeightDtype {
    match stored {
        DType::BF16 => WeightDtype::Bf16,
        DType::F16 => WeightDtype::F16,
        _ => WeightDtype::F32,
    }
}
