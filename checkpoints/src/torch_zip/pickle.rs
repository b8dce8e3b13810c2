//! A pickle interpreter that understands only what a `torch.save`d state dict of tensors needs,
//! and refuses every other opcode and global by name. It executes and imports nothing: globals
//! resolve to a closed set of markers, and every container lives in flat arenas so that a
//! self-referencing or deeply nested pickle can neither loop nor exhaust the stack.

use std::collections::HashMap;
use std::rc::Rc;

use super::zip::Reader;
use super::{Error, StorageKind};

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

/// The only callables a state dict needs. Anything else is refused when its GLOBAL is read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageKind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", storage) => StorageKind::from_class_name(storage).map(Global::Storage),
            _ => None,
        }
    }
}

/// A value on the pickle machine's stack; booleans and floats are never needed, only their
/// presence. Containers are indices into the machine's arenas, so
/// values are cheap to copy and can never own each other.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(usize),
    Tensor(usize),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "string",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Runs `data.pkl` and returns the state dict it builds.
pub(crate) fn load_state_dict(pickle: &[u8]) -> Result<StateDict, Error> {
    let mut machine = Machine {
        reader: Reader::new(pickle, 0, pickle.len()),
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        sequences: Vec::new(),
        dicts: Vec::new(),
        storages: Vec::new(),
        storage_keys: HashMap::new(),
        tensors: Vec::new(),
    };
    let result = machine.run()?;
    machine.state_dict(result)
}

struct Machine<'a> {
    reader: Reader<'a>,
    /// Where the opcode being executed starts, for error messages.
    at: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK; values below the innermost mark are out of reach until it is popped.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Tuples and lists.
    sequences: Vec<Vec<Value>>,
    /// Dicts as key/value pairs in insertion order; a repeated key is resolved when read (last wins).
    dicts: Vec<Vec<(Value, Value)>>,
    storages: Vec<StorageRecord>,
    storage_keys: HashMap<Rc<str>, usize>,
    tensors: Vec<TensorRecord>,
}

impl Machine<'_> {
    fn run(&mut self) -> Result<Value, Error> {
        loop {
            self.at = self.reader.position;
            let Ok(code) = self.reader.u8() else {
                return Err(self.error("the pickle ends without a STOP opcode"));
            };
            match code {
                0x80 => {
                    // PROTO: torch.save writes 2; 3 to 5 only add opcodes, refused below if unknown.
                    let protocol = self.arg_u8()?;
                    if protocol > 5 {
                        return Err(self.error(format!("unknown pickle protocol {protocol}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint for buffered readers; the data is all in memory.
                    self.arg::<8>()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'1' => {
                    self.pop_mark()?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let value = self.arg_u8()?;
                    self.stack.push(Value::Int(value.into()));
                }
                b'M' => {
                    let value = u16::from_le_bytes(self.arg()?);
                    self.stack.push(Value::Int(value.into()));
                }
                b'J' => {
                    let value = i32::from_le_bytes(self.arg()?);
                    self.stack.push(Value::Int(value.into()));
                }
                0x8a => {
                    let len = self.arg_u8()? as usize;
                    let value = self.long(len)?;
                    self.stack.push(value);
                }
                0x8b => {
                    let len = u32::from_le_bytes(self.arg()?) as usize;
                    let value = self.long(len)?;
                    self.stack.push(value);
                }
                b'G' => {
                    self.arg::<8>()?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let len = u32::from_le_bytes(self.arg()?) as u64;
                    self.string(len)?;
                }
                0x8c => {
                    let len = self.arg_u8()? as u64;
                    self.string(len)?;
                }
                0x8d => {
                    let len = u64::from_le_bytes(self.arg()?);
                    self.string(len)?;
                }
                b')' => self.push_sequence(Vec::new(), true),
                b']' => self.push_sequence(Vec::new(), false),
                b'}' => self.push_dict(Vec::new()),
                0x85..=0x87 => {
                    let len = (code - 0x84) as usize;
                    let height = self.frame_floor();
                    if self.stack.len() - height < len {
                        return Err(self.error("TUPLE1/2/3 with too few values on the stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - len);
                    self.push_sequence(items, true);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_sequence(items, true);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_sequence(items, false);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_dict(pairs);
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top_list()?;
                    self.sequences[list].push(item);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top_list()?;
                    self.sequences[list].extend(items);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top_dict()?;
                    self.dicts[dict].push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.top_dict()?;
                    self.dicts[dict].extend(pairs);
                }
                b'q' => {
                    let index = self.arg_u8()?.into();
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.arg()?);
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len()).map_err(|_| self.error("memo overflow"))?;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = self.arg_u8()?.into();
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.arg()?);
                    self.memo_get(index)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = self.global(&module, &name)?;
                    self.stack.push(Value::Global(global));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.error("STACK_GLOBAL needs two strings"));
                    };
                    let global = self.global(&module, &name)?;
                    self.stack.push(Value::Global(global));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.stack.push(result);
                }
                b'b' => {
                    // BUILD: sets attributes from a state. An OrderedDict state dict carries its
                    // `_metadata` (module versions) this way; it is not needed, so it is dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        let kind = self.top()?.kind();
                        return Err(self.error(format!("BUILD on a {kind}: only a dict's attributes may be set")));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.stack.push(Value::Storage(storage));
                }
                other => {
                    return Err(Error::Opcode { name: opcode_name(other), code: other, at: self.at });
                }
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Pickle { at: self.at, message: message.into() }
    }

    fn arg<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let at = self.at;
        self.reader.array::<N>().map_err(|_| Error::Pickle { at, message: "the pickle ends inside an opcode's argument".into() })
    }

    fn arg_u8(&mut self) -> Result<u8, Error> {
        Ok(self.arg::<1>()?[0])
    }

    /// The stack height below which values belong to an enclosing MARK.
    fn frame_floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, Error> {
        if self.stack.len() <= self.frame_floor() {
            return Err(self.error("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.error("stack underflow"))
    }

    fn top(&self) -> Result<&Value, Error> {
        if self.stack.len() <= self.frame_floor() {
            return Err(self.error("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.error("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, Error> {
        let mark = self.marks.pop().ok_or_else(|| self.error("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn push_sequence(&mut self, items: Vec<Value>, tuple: bool) {
        self.sequences.push(items);
        let id = self.sequences.len() - 1;
        self.stack.push(if tuple { Value::Tuple(id) } else { Value::List(id) });
    }

    fn push_dict(&mut self, pairs: Vec<(Value, Value)>) {
        self.dicts.push(pairs);
        self.stack.push(Value::Dict(self.dicts.len() - 1));
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, Error> {
        if items.len() % 2 != 0 {
            return Err(self.error("an odd number of values for a dict's keys and values"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    fn top_list(&self) -> Result<usize, Error> {
        match self.top()? {
            Value::List(id) => Ok(*id),
            other => Err(self.error(format!("APPEND to a {}, not a list", other.kind()))),
        }
    }

    fn top_dict(&self) -> Result<usize, Error> {
        match self.top()? {
            Value::Dict(id) => Ok(*id),
            other => Err(self.error(format!("SETITEM on a {}, not a dict", other.kind()))),
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<(), Error> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), Error> {
        let value = self.memo.get(&index).cloned().ok_or_else(|| self.error(format!("memo entry {index} read before it was written")))?;
        self.stack.push(value);
        Ok(())
    }

    /// LONG1/LONG4: a little-endian two's-complement integer; sizes and offsets fit in 64 bits.
    fn long(&mut self, len: usize) -> Result<Value, Error> {
        if len > 8 {
            return Err(self.error(format!("a {len}-byte integer: wider than 64 bits")));
        }
        let at = self.at;
        let bytes = self.reader.bytes(len).map_err(|_| Error::Pickle { at, message: "the pickle ends inside an integer".into() })?;
        let mut buffer = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
        buffer[..len].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buffer)))
    }

    fn string(&mut self, len: u64) -> Result<(), Error> {
        let at = self.at;
        let left = self.reader.remaining();
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| self.reader.bytes(len).ok())
            .ok_or_else(|| Error::Pickle { at, message: format!("a string of {len} bytes, but only {left} are left") })?;
        let text = std::str::from_utf8(bytes).map_err(|_| self.error("a string that is not UTF-8"))?;
        self.stack.push(Value::Str(Rc::from(text)));
        Ok(())
    }

    /// A newline-terminated argument of GLOBAL.
    fn line(&mut self) -> Result<String, Error> {
        let mut line = Vec::new();
        loop {
            match self.reader.u8() {
                Ok(b'\n') => break,
                Ok(byte) => line.push(byte),
                Err(_) => return Err(self.error("GLOBAL's name is not terminated")),
            }
        }
        String::from_utf8(line).map_err(|_| self.error("GLOBAL's name is not UTF-8"))
    }

    fn global(&self, module: &str, name: &str) -> Result<Global, Error> {
        Global::resolve(module, name).ok_or_else(|| Error::Global { module: module.into(), name: name.into(), at: self.at })
    }

    fn sequence(&self, value: &Value, what: &str) -> Result<&[Value], Error> {
        match value {
            Value::Tuple(id) | Value::List(id) => Ok(&self.sequences[*id]),
            other => Err(self.error(format!("{what} must be a tuple, found a {}", other.kind()))),
        }
    }

    fn non_negative(&self, value: &Value, what: &str) -> Result<u64, Error> {
        match value {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            Value::Int(n) => Err(self.error(format!("{what} is negative ({n})"))),
            other => Err(self.error(format!("{what} must be an integer, found a {}", other.kind()))),
        }
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value, Error> {
        let Value::Global(global) = callable else {
            return Err(self.error(format!("REDUCE calls a {}, not a known function", callable.kind())));
        };
        let args = self.sequence(&args, "REDUCE's arguments")?.to_vec();
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
                let shape = self.sequence(shape, "a tensor's size")?.iter().map(|v| self.non_negative(v, "a tensor's size")).collect::<Result<Vec<_>, _>>()?;
                let stride = self.sequence(stride, "a tensor's stride")?.iter().map(|v| self.non_negative(v, "a tensor's stride")).collect::<Result<Vec<_>, _>>()?;
                if shape.len() != stride.len() {
                    return Err(self.error(format!("a tensor with {} sizes but {} strides", shape.len(), stride.len())));
                }
                self.tensors.push(TensorRecord { storage: *storage, offset, shape, stride });
                Ok(Value::Tensor(self.tensors.len() - 1))
            }
            Global::Storage(kind) => Err(self.error(format!("torch.{} called directly; storages come only from persistent ids", kind.class_name()))),
        }
    }

    /// `('storage', torch.<Kind>Storage, key, location, numel)`: a storage in `data/<key>`.
    fn persistent_load(&mut self, pid: Value) -> Result<usize, Error> {
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
    fn state_dict(self, result: Value) -> Result<StateDict, Error> {
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

/// Pickle's name for an opcode, so a refusal says what was found.
fn opcode_name(code: u8) -> &'static str {
    match code {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8e => "BINBYTES8",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        _ => "unknown",
    }
}
