//! Where a checkpoint comes from, and loading all of it at once.

use std::path::{Path, PathBuf};

use crate::tensors::Bytes;
use crate::{Config, LoadError, TensorStore, Tokenizer, Weights};

/// A checkpoint's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A folder with `config.json`, `model.safetensors` (or shards, or `pytorch_model.bin`) and maybe
    /// `tokenizer.json`.
    Dir(PathBuf),
    /// The small checkpoint compiled into the binary (`checkpoints/default/`).
    EmbeddedDefault,
    /// Bytes a program handed over ([`Checkpoint::from_bytes`]).
    Memory,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(dir) => write!(f, "{}", dir.display()),
            Source::EmbeddedDefault => f.write_str("<embedded default>"),
            Source::Memory => f.write_str("<memory>"),
        }
    }
}

/// A loaded checkpoint: config, f32 weights, and the tokenizer when it has one.
pub struct Checkpoint {
    pub source: Source,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Option<Tokenizer>,
}

impl Checkpoint {
    pub fn load(source: &Source) -> Result<Checkpoint, LoadError> {
        match source {
            Source::Dir(dir) => Checkpoint::open_dir(dir),
            Source::EmbeddedDefault => Checkpoint::embedded_default(),
            Source::Memory => Err(LoadError::config("<memory>", "a checkpoint in memory is loaded with Checkpoint::from_bytes")),
        }
    }

    pub fn open_dir(dir: &Path) -> Result<Checkpoint, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"),
            });
        }
        let config_path = dir.join("config.json");
        let config_text = read_text(&config_path)?;
        let config = Config::from_json(&config_text, &config_path)?;
        let store = TensorStore::open_dir(dir)?;
        let weights = Weights::load(&config, &store)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
        Ok(Checkpoint { source: Source::Dir(dir.to_owned()), config, weights, tokenizer })
    }

    /// A checkpoint from bytes in memory (`config.json`, one safetensors file, an optional
    /// `tokenizer.json`): for programs that ship or fetch their own weights.
    pub fn from_bytes(config_json: &[u8], safetensors: Vec<u8>, tokenizer_json: Option<&[u8]>) -> Result<Checkpoint, LoadError> {
        Checkpoint::from_memory(config_json, Bytes::Owned(safetensors), tokenizer_json, Path::new("<memory>"), Source::Memory)
    }

    /// The small checkpoint compiled into the binary.
    pub fn embedded_default() -> Result<Checkpoint, LoadError> {
        Checkpoint::from_memory(
            crate::embedded::CONFIG,
            Bytes::Static(crate::embedded::MODEL),
            Some(crate::embedded::TOKENIZER),
            Path::new("<embedded default>"),
            Source::EmbeddedDefault,
        )
    }

    fn from_memory(
        config_json: &[u8],
        model: Bytes,
        tokenizer_json: Option<&[u8]>,
        root: &Path,
        source: Source,
    ) -> Result<Checkpoint, LoadError> {
        let config_path = root.join("config.json");
        let text = std::str::from_utf8(config_json)
            .map_err(|e| LoadError::Json { path: config_path.clone(), message: format!("not UTF-8: {e}") })?;
        let config = Config::from_json(text, &config_path)?;
        let store = TensorStore::from_files(vec![(root.join("model.safetensors"), model)])?;
        let weights = Weights::load(&config, &store)?;
        let tokenizer = tokenizer_json.map(|t| Tokenizer::from_bytes(t, &root.join("tokenizer.json"))).transpose()?;
        Ok(Checkpoint { source, config, weights, tokenizer })
    }
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    String::from_utf8(bytes).map_err(|e| LoadError::Json { path: path.to_owned(), message: format!("not UTF-8: {e}") })
}
