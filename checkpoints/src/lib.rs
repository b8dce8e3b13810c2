//! Reading Mamba-2 checkpoints: `config.json` in the HF and mamba_ssm dialects, safetensors weights
//! (memory-mapped, optionally sharded) in f32/f16/bf16, name mapping and validation, and the
//! tokenizer. Every error names the file, the tensor, and what was expected against what was found.

mod config;
mod embedded;
mod error;
mod json;
mod source;
mod tensors;
mod tokenizer;
mod weights;

pub use config::{Config, Dialect};
pub use error::LoadError;
pub use source::{Checkpoint, Source};
pub use tensors::{DType, TensorStore};
pub use tokenizer::{StreamDecoder, Tokenizer};
pub use weights::{LayerWeights, Tensor, Weights};
