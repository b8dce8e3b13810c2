//! From `--model`, `--threads` and friends to a ready model.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use coil::{Checkpoint, Model, Source, Tokenizer};

use super::args::{ModelArgs, WeightsArg};

/// More worker threads than any machine has cores (100,000 took minutes just to start).
const MAX_THREADS: usize = 4096;

pub struct Loaded {
    pub model: Arc<Model>,
    pub tokenizer: Option<Tokenizer>,
    pub source: Source,
    pub stored_dtype: String,
    /// Whether the weights are held in another dtype than the checkpoint stores (`--weights`).
    pub converted: bool,
    /// From the checkpoint's training.json.
    pub train_length: Option<usize>,
}

/// `--model` values: a folder, or `embedded:NAME` for a checkpoint compiled into the binary.
pub fn source_of(model: Option<&std::path::Path>) -> Source {
    match model {
        None => Source::Embedded(coil::embedded_names()[0].into()),
        Some(path) => match path.to_str().and_then(|p| p.strip_prefix("embedded:")) {
            Some(name) => Source::Embedded(name.to_owned()),
            None => Source::Dir(path.to_owned()),
        },
    }
}

pub fn load(args: &ModelArgs) -> Result<Loaded> {
    if let Some(threads) = args.threads {
        if threads == 0 || threads > MAX_THREADS {
            bail!("--threads must be from 1 to {MAX_THREADS}, not {threads}");
        }
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot start the thread pool")?;
    }
    if args.chunk_size == Some(0) {
        bail!("--chunk-size must be at least 1");
    }
    if args.piece_len == 0 {
        bail!("--piece-len must be at least 1");
    }
    let source = source_of(args.model.as_deref());
    let checkpoint = Checkpoint::load(&source).with_context(|| format!("cannot load the checkpoint {source}"))?;
    for warning in &checkpoint.warnings {
        eprintln!("warning: {source}: {warning}");
    }
    let stored = checkpoint.weights.stored_dtype;
    let as_stored = match stored {
        coil::checkpoint::DType::BF16 => coil::WeightDtype::Bf16,
        coil::checkpoint::DType::F16 => coil::WeightDtype::F16,
        _ => coil::WeightDtype::F32,
    };
    let weight_dtype = match args.weights {
        WeightsArg::F32 => coil::WeightDtype::F32,
        WeightsArg::Bf16 => coil::WeightDtype::Bf16,
        WeightsArg::F16 => coil::WeightDtype::F16,
        WeightsArg::Auto => as_stored,
    };
    let stored_dtype = stored.to_string();
    let tokenizer = match &args.tokenizer {
        Some(path) => Some(Tokenizer::from_file(path).context("--tokenizer")?),
        None => checkpoint.tokenizer,
    };
    let train_length = checkpoint.train_length;
    let checkpoint = Checkpoint { tokenizer: None, ..checkpoint };
    let mut model = Model::from_checkpoint(checkpoint)
        .with_backend(backend(args.device)?)
        .with_weight_dtype(weight_dtype)
        .with_context(|| format!("--weights {weight_dtype}"))?;
    if let Some(chunk) = args.chunk_size {
        model = model.with_chunk_size(chunk);
    }
    let converted = weight_dtype != as_stored;
    Ok(Loaded { model: Arc::new(model), tokenizer, source, stored_dtype, converted, train_length })
}

/// The backend of `device`, opened once per process (a sweep loads several models onto it).
fn backend(device: coil::Device) -> Result<Arc<dyn coil::Backend>> {
    static OPENED: std::sync::Mutex<Vec<(coil::Device, Arc<dyn coil::Backend>)>> = std::sync::Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, backend)) = opened.iter().find(|(d, _)| *d == device) {
        return Ok(backend.clone());
    }
    let backend = coil::open_device(device).with_context(|| format!("--device {device}"))?;
    opened.push((device, backend.clone()));
    Ok(backend)
}

impl Loaded {
    /// The training length recorded in the checkpoint's `training.json` (`train_length`), if any.
    pub fn train_length(&self) -> Option<usize> {
        self.train_length
    }

    /// Logit columns that are real tokens: the tokenizer's size when it is smaller than the
    /// (padded) embedding, else all of them.
    pub fn vocab_limit(&self) -> usize {
        self.model.vocab_limit(self.tokenizer.as_ref().map(|t| t.vocab_size()))
    }
}
