//! The facade's one error type: every fallible facade function returns it, and each internal
//! error converts into it with `?`, so an embedder's code needs no other error type.

use crate::passkey::EvalError;
use crate::{DeviceError, LoadError, ModelError, Source};

/// Anything that can go wrong in Coil, from loading a checkpoint to running a sweep.
///
/// The variants wrap the error of the layer that failed; each names the file, tensor, token or
/// mitigation at fault in its message. `?` converts every Coil error into it.
///
/// ```
/// use coil::{Error, ModelError};
///
/// let loaded = coil::load_default()?;
/// let mut session = loaded.session();
/// // Prefill needs at least one token: the error says so.
/// match session.prefill(&[]).map_err(Error::from) {
///     Err(Error::Model(ModelError::EmptyInput)) => {}
///     other => panic!("expected EmptyInput, got {other:?}"),
/// }
/// // A missing checkpoint folder is a load error naming the folder.
/// let missing = coil::load(&coil::Source::Dir("/no/such/checkpoint".into()), coil::Device::Cpu);
/// assert!(matches!(missing, Err(Error::Load(_))));
/// # Ok::<(), coil::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Running the model: bad tokens, a state that does not fit, an invalid mitigation.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// Reading a checkpoint or a tokenizer, or encoding and decoding text.
    #[error(transparent)]
    Load(#[from] LoadError),

    /// Opening a device that is missing or failed to start.
    #[error(transparent)]
    Device(#[from] DeviceError),

    /// The passkey evaluator: templates, prompts, result files, reports.
    #[error(transparent)]
    Eval(#[from] EvalError),

    /// Text was asked of a checkpoint that has no `tokenizer.json`.
    #[error(
        "the checkpoint {checkpoint} has no tokenizer.json: give one with `Loaded::with_tokenizer_file` (the released \
         Mamba-2 checkpoints use GPT-NeoX-20B's), or pass token ids instead of text"
    )]
    NoTokenizer {
        /// Where the checkpoint came from.
        checkpoint: Source,
    },
}
