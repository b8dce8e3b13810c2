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
    /// A checkpoint compiled into the binary, by name (see [`crate::embedded_names`]).
    Embedded(String),
    /// Bytes a program handed over ([`Checkpoint::from_bytes`]).
    Memory,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(dir) => write!(f, "{}", dir.display()),
            Source::Embedded(name) => write!(f, "<embedded {name}>"),
            Source::Memory => f.write_str("<memory>"),
        }
    }
}

/// A loaded checkpoint: config, f32 weights, and the tokenizer when it has one.
pub struct Checkpoint {
    /// Where it was loaded from.
    pub source: Source,
    /// Its `config.json`, validated.
    pub config: Config,
    /// Its weights, widened to f32.
    pub weights: Weights,
    /// Its `tokenizer.json`, when it has one.
    pub tokenizer: Option<Tokenizer>,
    /// What the checkpoint's `training.json` says, when it has one.
    pub training: Option<Training>,
    /// What loading accepted, as HF transformers does, but a user should know: tensors the
    /// model does not use (layers past `num_hidden_layers` among them), a `model_type` that is
    /// not Mamba-2's. The command line prints them on standard error.
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Loads the checkpoint at `source` (a folder, or one compiled in).
    pub fn load(source: &Source) -> Result<Checkpoint, LoadError> {
        match source {
            Source::Dir(dir) => Checkpoint::open_dir(dir),
            Source::Embedded(name) => Checkpoint::embedded(name),
            Source::Memory => Err(LoadError::config("<memory>", "a checkpoint in memory is loaded with Checkpoint::from_bytes")),
        }
    }

    /// Loads a checkpoint folder: `config.json`, the weights (`model.safetensors`, shards, or `pytorch_model.bin`) and `tokenizer.json` when present.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::Io { path: dir.to_owned(), source: not_a_checkpoint_folder(dir) });
        }
        let config_path = dir.join("config.json");
        let config_text = read_text(&config_path)?;
        let config = Config::from_json(&config_text, &config_path)?;
        let store = TensorStore::open_dir(dir)?;
        let weights = Weights::load(&config, &store)?;
        let warnings = load_warnings(&config_text, &config, &store);
        let tokenizer_path = dir.join("tokenizer.json");
        // Absent: no tokenizer. Present but not a readable file (a folder, a broken symlink from a
        // model cache): an error naming it, not a silent "this model has no tokenizer".
        let tokenizer = if std::fs::symlink_metadata(&tokenizer_path).is_ok() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
        // Optional; when there, it must say what it is for (a bad one was silently ignored, and
        // the length it should have given silently became a default).
        let training = dir.join("training.json");
        let training = match std::fs::symlink_metadata(&training) {
            Err(_) => None,
            Ok(_) => {
                let bytes = coil_files::read_limited(&training, coil_files::JSON_LIMIT).map_err(|source| LoadError::Io { path: training.clone(), source })?;
                Some(Training::parse(&bytes).map_err(|message| LoadError::config(&training, message))?)
            }
        };
        Ok(Checkpoint { source: Source::Dir(dir.to_owned()), config, weights, tokenizer, training, warnings })
    }

    /// A checkpoint from bytes in memory (`config.json`, one safetensors file, an optional
    /// `tokenizer.json`): for programs that ship or fetch their own weights.
    pub fn from_bytes(config_json: &[u8], safetensors: Vec<u8>, tokenizer_json: Option<&[u8]>) -> Result<Checkpoint, LoadError> {
        Checkpoint::from_memory(config_json, Bytes::Owned(safetensors), tokenizer_json, Path::new("<memory>"), Source::Memory)
    }

    /// The default checkpoint compiled into the binary.
    pub fn embedded_default() -> Result<Checkpoint, LoadError> {
        Checkpoint::embedded(crate::embedded::DEFAULT)
    }

    /// A checkpoint compiled into the binary, by name.
    pub fn embedded(name: &str) -> Result<Checkpoint, LoadError> {
        // `default` names the default checkpoint (`embedded:default`, as the command line's help says).
        let name = if name == "default" { crate::embedded::DEFAULT } else { name };
        let Some(e) = crate::embedded::FAMILY.iter().find(|e| e.name == name) else {
            return Err(LoadError::config(
                format!("<embedded {name}>"),
                format!("no embedded checkpoint of that name (embedded: {})", crate::embedded_names().join(", ")),
            ));
        };
        let root = PathBuf::from(format!("<embedded {name}>"));
        let mut checkpoint = Checkpoint::from_memory(e.config, Bytes::Static(e.model), Some(e.tokenizer), &root, Source::Embedded(name.to_owned()))?;
        checkpoint.training = e.training.map(|bytes| Training::parse(bytes).map_err(|message| LoadError::config(root.join("training.json"), message))).transpose()?;
        Ok(checkpoint)
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
        let warnings = load_warnings(text, &config, &store);
        let tokenizer = tokenizer_json.map(|t| Tokenizer::from_bytes(t, &root.join("tokenizer.json"))).transpose()?;
        Ok(Checkpoint { source, config, weights, tokenizer, training: None, warnings })
    }
}

/// What HF transformers would warn about when loading this checkpoint into `Mamba2ForCausalLM`.
fn load_warnings(config_text: &str, config: &Config, store: &TensorStore) -> Vec<String> {
    let mut warnings = Vec::new();
    let model_type = crate::json::parse_lenient(config_text).ok().and_then(|v| v.get("model_type").and_then(|t| t.as_str()).map(str::to_owned));
    if let Some(kind) = model_type.filter(|k| k != "mamba2") {
        warnings.push(format!("config.json says model_type `{kind}`, not `mamba2`: read as a Mamba-2 config anyway, as HF transformers does"));
    }
    let unread = store.unread();
    let layer_of = crate::names::layer_of;
    let extra_layers: std::collections::BTreeSet<usize> = unread.iter().filter_map(|n| layer_of(n)).filter(|&i| i >= config.n_layer).collect();
    if let (Some(first), Some(last)) = (extra_layers.first(), extra_layers.last()) {
        warnings.push(format!(
            "the weights hold layers {first}..={last}, past the {} config.json names (num_hidden_layers / n_layer): they are not used, so this is not the model that was saved",
            config.n_layer
        ));
    }
    let others: Vec<&str> = unread.into_iter().filter(|n| layer_of(n).is_none_or(|i| i < config.n_layer)).collect();
    if !others.is_empty() {
        let shown: Vec<String> = others.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = if others.len() > 5 { format!(" and {} more", others.len() - 5) } else { String::new() };
        warnings.push(format!("{} tensor(s) in the weights are not used by a Mamba-2 model: {}{more}", others.len(), shown.join(", ")));
    }
    warnings
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let bytes = coil_files::read_limited(path, coil_files::JSON_LIMIT).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    String::from_utf8(bytes).map_err(|e| LoadError::Json { path: path.to_owned(), message: format!("not UTF-8: {e}") })
}

/// What Coil reads from a checkpoint's optional `training.json` (the training scripts write much
/// more: the recipe, the loss history, versions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Training {
    /// The length in tokens the checkpoint was trained at: where the report's "within the
    /// training length" and `stats`' reference position come from.
    pub train_length: usize,
    /// The mitigation its makers measured best past that length (a `--mitigate` spec), for a
    /// checkpoint made to show state collapse; `--mitigate best` runs it.
    pub best_mitigation: Option<String>,
    /// The passkey template it was trained to answer (`bindings`), when it names one: the
    /// text its state statistics and calibration stream by default.
    pub template: Option<String>,
}

impl Training {
    /// Reads `train_length` (a positive integer) and the optional `best_mitigation` and
    /// `template` (strings).
    pub fn parse(bytes: &[u8]) -> Result<Training, String> {
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e}); it must hold a positive `train_length`"))?;
        let train_length = json
            .get("train_length")
            .and_then(|n| n.as_u64())
            .filter(|&n| n > 0)
            .ok_or("`train_length` must be a positive integer")?;
        let best_mitigation = match json.get("best_mitigation") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(spec)) if !spec.trim().is_empty() => Some(spec.clone()),
            Some(_) => return Err("`best_mitigation` must be a mitigation spec such as \"window:size=64\"".into()),
        };
        let template = match json.get("template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) => Some(name.clone()),
            Some(_) => return Err("`template` must be the name of a passkey template".into()),
        };
        Ok(Training { train_length: train_length as usize, best_mitigation, template })
    }
}

/// Why `path` is not a checkpoint folder: missing, or something else than a folder (a model
/// file given for its folder, say).
pub fn not_a_checkpoint_folder(path: &Path) -> std::io::Error {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a file, not a checkpoint folder (give the folder holding config.json and the weights)",
        ),
        Ok(_) => std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a checkpoint folder (not a directory)"),
        Err(_) => std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"),
    }
}
