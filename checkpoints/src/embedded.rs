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
            config: include_bytes!(concat!("../models/", $name, "/config.json")),
            model: include_bytes!(concat!("../models/", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../models/", $name, "/tokenizer.json")),
            training: None,
        }
    };
    ($name:literal, trained) => {
        Embedded {
            name: $name,
            config: include_bytes!(concat!("../models/", $name, "/config.json")),
            model: include_bytes!(concat!("../models/", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../models/", $name, "/tokenizer.json")),
            training: Some(include_bytes!(concat!("../models/", $name, "/training.json"))),
        }
    };
}

/// The checkpoint commands use without `--model`.
pub(crate) const DEFAULT: &str = "passkey-n16";

/// Every embedded checkpoint: the passkey family (trained by `checkpoints/training/train_passkey.py`,
/// differing only in state size), and `random`, the random-weight checkpoint the HF fixtures
/// check bit for bit (`checkpoints/models/default/`).
pub(crate) const FAMILY: &[Embedded] = &[
    embed!("passkey-n16", trained),
    embed!("passkey-n4", trained),
    embed!("passkey-n8", trained),
    embed!("passkey-n32", trained),
    Embedded { name: "random", ..embed!("default") },
];

/// Names of the embedded checkpoints, the default first.
pub fn embedded_names() -> Vec<&'static str> {
    FAMILY.iter().map(|e| e.name).collect()
}

/// The embedded passkey family, smallest state first: what a sweep without `--model` covers.
pub fn embedded_family() -> Vec<&'static str> {
    let mut family: Vec<&'static str> = FAMILY.iter().map(|e| e.name).filter(|n| n.starts_with("passkey-")).collect();
    family.sort_by_key(|n| n.trim_start_matches("passkey-n").parse::<usize>().unwrap_or(usize::MAX));
    family
}
