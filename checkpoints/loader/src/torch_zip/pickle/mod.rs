//! A pickle interpreter that understands only what a `torch.save`d state dict of tensors needs,
//! and refuses every other opcode and global by name. It executes and imports nothing: globals
//! resolve to a closed set of markers, and every container lives in flat arenas so that a
//! self-referencing or deeply nested pickle can neither loop nor exhaust the stack.

mod machine;
mod torch;
mod values;

use super::{Error, StorageKind};
use machine::Machine;

/// A storage as its persistent id declares it: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRecord {
    /// The name of its entry under `data/` in the archive.
    pub key: String,
    pub kind: StorageKind,
    /// Elements, as the persistent id claims (checked against the entry later).
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` as called in the pickle,
/// in elements of the storage; validated against the storage once the tensor's name is known.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRecord {
    pub storage: usize,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// What `data.pkl` holds: tensor names with their rebuild calls, and the storages they view.
#[derive(Debug, Default)]
pub(crate) struct StateDict {
    pub tensors: Vec<(String, TensorRecord)>,
    pub storages: Vec<StorageRecord>,
}

/// Runs `data.pkl` and returns the state dict it builds.
pub(crate) fn load_state_dict(pickle: &[u8]) -> Result<StateDict, Error> {
    let mut machine = Machine::new(pickle);
    let result = machine.run()?;
    machine.state_dict(result)
}
