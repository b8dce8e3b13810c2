//! From `--model`, `--threads` and friends to a ready model.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use coil::{Checkpoint, Model, Source, Tokenizer};

use super::args::ModelArgs;

pub struct Loaded {
    pub model: Arc<Model>,
    pub tokenizer: Option<Tokenizer>,
    pub source: Source,
    pub stored_dtype: String,
}

pub fn load(args: &ModelArgs) -> Result<Loaded> {
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("cannot start the thread pool")?;
    }
    if args.chunk_size == Some(0) {
        bail!("--chunk-size must be at least 1");
    }
    if args.piece_len == 0 {
        bail!("--piece-len must be at least 1");
    }
    let source = match &args.model {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::EmbeddedDefault,
    };
    let checkpoint = Checkpoint::load(&source).with_context(|| format!("cannot load the checkpoint {source}"))?;
    let stored_dtype = checkpoint.weights.stored_dtype.to_string();
    let tokenizer = checkpoint.tokenizer;
    let checkpoint = Checkpoint { tokenizer: None, ..checkpoint };
    let mut model = Model::from_checkpoint(checkpoint);
    if let Some(chunk) = args.chunk_size {
        model = model.with_chunk_size(chunk);
    }
    Ok(Loaded { model: Arc::new(model), tokenizer, source, stored_dtype })
}

impl Loaded {
    /// The training length recorded in the checkpoint's `training.json` (`train_length`), if any.
    pub fn train_length(&self) -> Option<usize> {
        let coil::Source::Dir(dir) = &self.source else { return None };
        let text = std::fs::read_to_string(dir.join("training.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.get("train_length")?.as_u64().map(|n| n as usize)
    }

    /// Logit columns that are real tokens: the tokenizer's size when it is smaller than the
    /// (padded) embedding, else all of them.
    pub fn vocab_limit(&self) -> usize {
        let vocab = self.model.vocab_size();
        let declared = self.model.config().vocab_size_unpadded;
        match &self.tokenizer {
            Some(t) => t.vocab_size().min(vocab).min(declared).max(1),
            None => declared.min(vocab),
        }
    }
}
