//! Checkpoints compiled into the binary, so every command works without `--model` and a sweep
//! without `--model` covers a family of state sizes. Their files live in `checkpoints/<name>/`,
//! each with a model card.

use std::path::Path;

use crate::{Config, Training};

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
            config: include_bytes!(concat!("../../models/", $name, "/config.json")),
            model: include_bytes!(concat!("../../models/", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../../models/", $name, "/tokenizer.json")),
            training: None,
        }
    };
    ($name:literal, trained) => {
        Embedded {
            name: $name,
            config: include_bytes!(concat!("../../models/", $name, "/config.json")),
            model: include_bytes!(concat!("../../models/", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("../../models/", $name, "/tokenizer.json")),
            training: Some(include_bytes!(concat!("../../models/", $name, "/training.json"))),
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

/// The embedded checkpoints trained on the passkey template `template` (their training.json's
/// `template`; `paper` where it names none), smallest state first: what a sweep without `--model`
/// covers. The paper's variants (`landmark`, `ruler`) and template files get the `paper` family.
pub fn embedded_family(template: &str) -> Vec<&'static str> {
    let wanted = if template == "bindings" { "bindings" } else { "paper" };
    // Embedded files are checked by the tests that load every one; here an unreadable one is
    // simply not part of a family.
    let trained_on = |e: &Embedded| e.training.and_then(|bytes| Training::parse(bytes).ok()).map(|t| t.template.unwrap_or_else(|| "paper".into()));
    let state_size = |e: &Embedded| {
        let text = std::str::from_utf8(e.config).ok();
        text.and_then(|t| Config::from_json(t, Path::new("config.json")).ok()).map_or(0, |c| c.d_state)
    };
    let mut family: Vec<&Embedded> = FAMILY.iter().filter(|e| trained_on(e).as_deref() == Some(wanted)).collect();
    family.sort_by_key(|e| (state_size(e), e.name));
    family.into_iter().map(|e| e.name).collect()
}
