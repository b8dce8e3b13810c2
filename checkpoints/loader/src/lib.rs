//! Reading Mamba-2 checkpoints: `config.json` in the HF and mamba_ssm dialects, weights from
//! safetensors (memory-mapped, optionally sharded) or PyTorch's zip `pytorch_model.bin` (read by a
//! restricted pickle interpreter that runs nothing) in f32/f16/bf16, name mapping and validation,
//! the tokenizer, and writing the HF dialect back out. Every error names the file, the tensor, and
//! what was expected against what was found.

mod config;
mod embedded;
mod error;
mod export;
mod json;
mod names;
mod panic_guard;
mod source;
mod tensors;
mod tokenizer;
mod torch_zip;
mod weights;

pub use config::{Config, Dialect};
pub use embedded::{embedded_family, embedded_names};
pub use error::LoadError;
pub use export::{convert_to_hf, Exported};
pub use names::Role;
pub use source::{not_a_checkpoint_folder, Checkpoint, Source, Training};
pub use tensors::{DType, TensorStore};
pub use tokenizer::{StreamDecoder, Tokenizer};
pub use torch_zip::Error as TorchZipError;
pub use weights::{LayerWeights, Tensor, Weights};
