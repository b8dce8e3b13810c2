//! The default checkpoint, compiled into the binary so every command works without `--model`.
//! Its files live in `checkpoints/default/`; see the model card there.

pub(crate) const CONFIG: &[u8] = include_bytes!("../default/config.json");
pub(crate) const MODEL: &[u8] = include_bytes!("../default/model.safetensors");
pub(crate) const TOKENIZER: &[u8] = include_bytes!("../default/tokenizer.json");
