//! From `--model`, `--threads` and friends to a ready model.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use coil::{Checkpoint, LoadOptions, Loaded, Source, WeightDtype};

use super::args::{ModelArgs, WeightsArg};

/// More worker threads than any machine has cores (100,000 took minutes just to start).
const MAX_THREADS: usize = 4096;

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

/// The checkpoint `args` name, on the device they name.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let backend = coil::open_device(args.load.device).with_context(|| format!("--device {}", args.load.device))?;
    load_on(args, backend)
}

/// [`load`] onto a device already open (a sweep puts every checkpoint on one).
pub fn load_on(args: &ModelArgs, backend: Arc<dyn coil::Backend>) -> Result<Loaded> {
    if let Some(threads) = args.load.threads {
        if threads == 0 || threads > MAX_THREADS {
            bail!("--threads must be from 1 to {MAX_THREADS}, not {threads}");
        }
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot start the thread pool")?;
    }
    if args.load.chunk_size == Some(0) {
        bail!("--chunk-size must be at least 1");
    }
    if args.load.piece_len == 0 {
        bail!("--piece-len must be at least 1");
    }
    let source = source_of(args.model.as_deref());
    let checkpoint = Checkpoint::load(&source).with_context(|| format!("cannot load the checkpoint {source}"))?;
    for warning in &checkpoint.warnings {
        eprintln!("warning: {source}: {warning}");
    }
    let weights = match args.load.weights {
        WeightsArg::Auto => None,
        WeightsArg::F32 => Some(WeightDtype::F32),
        WeightsArg::Bf16 => Some(WeightDtype::Bf16),
        WeightsArg::F16 => Some(WeightDtype::F16),
    };
    let options = LoadOptions { tokenizer: args.load.tokenizer.clone(), weights, chunk_size: args.load.chunk_size };
    let what = match (&args.load.tokenizer, weights) {
        (Some(_), Some(w)) => format!("--tokenizer or --weights {w}"),
        (Some(_), None) => "--tokenizer".to_owned(),
        (None, Some(w)) => format!("--weights {w}"),
        (None, None) => format!("cannot load the checkpoint {source}"),
    };
    Loaded::from_checkpoint_with(checkpoint, backend, &options).with_context(|| what)
}
