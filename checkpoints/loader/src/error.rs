use std::path::PathBuf;

/// Why a checkpoint could not be loaded. Each variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: invalid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },

    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    #[error("{}: tensor `{tensor}` is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}", path.display())]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("{}: tensor `{tensor}` has dtype {dtype}, expected F32, F16 or BF16", path.display())]
    DType { path: PathBuf, tensor: String, dtype: String },

    #[error("{}: tensor `{tensor}` holds a non-finite value ({value}) at flat index {index}", path.display())]
    NonFinite { path: PathBuf, tensor: String, index: usize, value: f32 },

    #[error("{}: cannot load tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },

    /// A `pytorch_model.bin` that cannot be read safely (malformed, lying, or asking for code).
    #[error("{}: not a readable PyTorch checkpoint: {}", path.display(), printable(&error.to_string()))]
    TorchZip { path: PathBuf, error: crate::torch_zip::Error },
}

impl LoadError {
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError::Config { path: path.into(), message: message.into() }
    }
}

/// A message quoting names from an untrusted file, made safe to print: control characters (a
/// terminal escape sequence hidden in a tensor name) are escaped and the length is bounded.
fn printable(text: &str) -> String {
    const LIMIT: usize = 2000;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == LIMIT {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
