//! What the pickle's calls mean: `_rebuild_tensor_v2` and friends, storages by persistent id,
//! and the final check that the result is a flat dict from names to tensors. Nothing is called:
//! each allowed global is interpreted here by its arguments alone.

use std::collections::HashMap;
use std::rc::Rc;

use super::machine::Machine;
use super::values::{Global, Value};
use super::{Error, StateDict, StorageRecord, TensorRecord};

/// More dimensions than any weight has; torch itself allows more, but a state dict never needs them.
const MAX_DIMENSIONS: usize = 64;

impl Machine<'_> {
    pub(super) fn call(&mut self, callable: Value, args: Value) -> Result<Value, Error> {
        let Value::Global(global) = callable else {
            return Err(self.error(format!("REDUCE calls a {}, not a known function", callable.kind())));
        };
        let args = self.sequence(&args, "REDUCE's arguments")?;
        // Every allowed call takes at most 7 arguments; check before copying them.
        if args.len() > 7 {
            return Err(self.error(format!("a call with {} arguments", args.len())));
        }
        let args = args.to_vec();
        match global {
            Global::OrderedDict if args.is_empty() => {
                self.dicts.push(Vec::new());
                Ok(Value::Dict(self.dicts.len() - 1))
            }
            Global::OrderedDict => Err(self.error("collections.OrderedDict called with arguments")),
            Global::RebuildParameter => match args.first() {
                Some(tensor @ Value::Tensor(_)) if args.len() == 3 => Ok(tensor.clone()),
                _ => Err(self.error("torch._utils._rebuild_parameter needs (tensor, requires_grad, hooks)")),
            },
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                let [Value::Storage(storage), offset, shape, stride, ..] = args.as_slice() else {
                    return Err(self.error("torch._utils._rebuild_tensor_v2 needs (storage, offset, size, stride, ...)"));
                };
                if !(6..=7).contains(&args.len()) {
                    return Err(self.error(format!("torch._utils._rebuild_tensor_v2 with {} arguments, expected 6 or 7", args.len())));
                }
                let offset = self.non_negative(offset, "a tensor's storage offset")?;
                let shape = self.dimensions(shape, "size")?;
                let stride = self.dimensions(stride, "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.error(format!("a tensor with {} sizes but {} strides", shape.len(), stride.len())));
                }
                self.tensors.push(TensorRecord { storage: *storage, offset, shape, stride });
                Ok(Value::Tensor(self.tensors.len() - 1))
            }
            Global::Storage(kind) => Err(self.error(format!("torch.{} called directly; storages come only from persistent ids", kind.class_name()))),
        }
    }

    /// A size or stride tuple. One memoised tuple can be passed to any number of calls, so its
    /// length is bounded before it is copied: a small pickle cannot make each call copy a huge one.
    fn dimensions(&self, value: &Value, what: &str) -> Result<Vec<u64>, Error> {
        let items = self.sequence(value, &format!("a tensor's {what}"))?;
        if items.len() > MAX_DIMENSIONS {
            return Err(self.error(format!("a tensor {what} with {} dimensions (at most {MAX_DIMENSIONS} are read)", items.len())));
        }
        items.iter().map(|v| self.non_negative(v, &format!("a tensor's {what}"))).collect()
    }

    /// `('storage', torch.<Kind>Storage, key, location, numel)`: a storage in `data/<key>`.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Result<usize, Error> {
        let fields = self.sequence(&pid, "a persistent id")?;
        let [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), numel] = fields else {
            return Err(self.error("a persistent id that is not ('storage', torch.<Type>Storage, key, location, numel)"));
        };
        if &**tag != "storage" {
            return Err(self.error(format!("a persistent id of type `{tag}`, expected `storage`")));
        }
        let (kind, key) = (*kind, key.clone());
        let numel = self.non_negative(numel, "a storage's element count")?;
        if let Some(&id) = self.storage_keys.get(&key) {
            let known = &self.storages[id];
            if known.kind != kind || known.numel != numel {
                return Err(self.error(format!(
                    "storage `{key}` is declared twice, as {} x {} and as {} x {}",
                    known.numel, known.kind.class_name(), numel, kind.class_name()
                )));
            }
            return Ok(id);
        }
        self.storages.push(StorageRecord { key: key.to_string(), kind, numel });
        self.storage_keys.insert(key, self.storages.len() - 1);
        Ok(self.storages.len() - 1)
    }

    /// The pickle's result must be a dict (or OrderedDict) from names to tensors.
    pub(super) fn state_dict(self, result: Value) -> Result<StateDict, Error> {
        let Value::Dict(dict) = result else {
            return Err(Error::Format(format!("the pickle holds a {}, expected a state dict (a dict of tensors)", result.kind())));
        };
        let mut position: HashMap<Rc<str>, usize> = HashMap::new();
        let mut tensors: Vec<(String, TensorRecord)> = Vec::new();
        for (key, value) in &self.dicts[dict] {
            let Value::Str(name) = key else {
                return Err(Error::Format(format!("a state dict key is a {}, expected a string", key.kind())));
            };
            let Value::Tensor(tensor) = value else {
                return Err(Error::Format(format!("entry `{name}` is a {}, not a tensor: expected a flat state dict", value.kind())));
            };
            let record = self.tensors[*tensor].clone();
            match position.get(name) {
                Some(&i) => tensors[i].1 = record,
                None => {
                    position.insert(name.clone(), tensors.len());
                    tensors.push((name.to_string(), record));
                }
            }
        }
        Ok(StateDict { tensors, storages: self.storages })
    }
}
