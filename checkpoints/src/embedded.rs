//! Checkpoints compiled into the binary, so every command works without `--model` and a sweep
//! without `--model` covers a family of state sizes. Their files live in `checkpoints/<name>/`,
//! each with a model card.

/// One embedded checkpoint's files.
pub(crate) struct Embedded {
    pub name: &'static str,
    pub config: &'static [u8],
    pub model: &'static [u8],
    pub tokenizer: &'static [u8],
    pub training: Option<&'static [u8]>,
}

macro_rules! embed {
    ($name:literal) => {
        Embedded {
            name: $name,
            config: include_bytes!(concat!("../", $name, "/config.json")),
            model: include_bytes!(concat!("../", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../", $name, "/tokenizer.json")),
            training: None,
        }
    };
    ($name:literal, trained) => {
        Embedded {
            name: $name,
            config: include_bytes!(concat!("../", $name, "/config.json")),
            model: include_bytes!(concat!("../", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../", $name, "/tokenizer.json")),
            training: Some(include_bytes!(concat!("../", $name, "/training.json"))),
        }
    };
}

/// The checkpoint commands use without `--model`.
pub(crate) const DEFAULT: &str = "default";

pub(crate) const FAMILY: &[Embedded] = &[embed!("default")];

/// Names of the embedded checkpoints, default first.
pub fn embedded_names() -> Vec<&'static str> {
    FAMILY.iter().map(|e| e.name).collect()
}
