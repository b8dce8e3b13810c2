//! The pickle machine: a stack with MARK frames, a memo, and arenas for tuples, lists and dicts,
//! driven one opcode at a time. Only the opcodes `torch.save` (protocol 2, plus protocol 4's
//! framing and short forms) emits for a state dict are implemented; any other is refused by name.

use std::collections::HashMap;
use std::rc::Rc;

use crate::torch_zip::reader::Reader;
use super::values::{opcode_name, Global, Value};
use super::{Error, StorageRecord, TensorRecord};

/// The interpreter's whole state; dropped (arenas and all) when `data.pkl` has been read.
pub(super) struct Machine<'a> {
    pub(super) reader: Reader<'a>,
    /// Where the opcode being executed starts, for error messages.
    pub(super) at: usize,
    pub(super) stack: Vec<Value>,
    /// Stack heights at each MARK; values below the innermost mark are out of reach until it is popped.
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    /// Tuples and lists.
    pub(super) sequences: Vec<Vec<Value>>,
    /// Dicts as key/value pairs in insertion order; a repeated key is resolved when read (last wins).
    pub(super) dicts: Vec<Vec<(Value, Value)>>,
    pub(super) storages: Vec<StorageRecord>,
    pub(super) storage_keys: HashMap<Rc<str>, usize>,
    pub(super) tensors: Vec<TensorRecord>,
}

impl<'a> Machine<'a> {
    pub(super) fn new(pickle: &'a [u8]) -> Machine<'a> {
        Machine {
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
        }
    }
    pub(super) fn run(&mut self) -> Result<Value, Error> {
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

    pub(super) fn error(&self, message: impl Into<String>) -> Error {
        Error::Pickle { at: self.at, message: message.into() }
    }

    pub(super) fn arg<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let at = self.at;
        self.reader.array::<N>().map_err(|_| Error::Pickle { at, message: "the pickle ends inside an opcode's argument".into() })
    }

    pub(super) fn arg_u8(&mut self) -> Result<u8, Error> {
        Ok(self.arg::<1>()?[0])
    }

    /// The stack height below which values belong to an enclosing MARK.
    pub(super) fn frame_floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn pop(&mut self) -> Result<Value, Error> {
        if self.stack.len() <= self.frame_floor() {
            return Err(self.error("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.error("stack underflow"))
    }

    pub(super) fn top(&self) -> Result<&Value, Error> {
        if self.stack.len() <= self.frame_floor() {
            return Err(self.error("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.error("stack underflow"))
    }

    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>, Error> {
        let mark = self.marks.pop().ok_or_else(|| self.error("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn push_sequence(&mut self, items: Vec<Value>, tuple: bool) {
        self.sequences.push(items);
        let id = self.sequences.len() - 1;
        self.stack.push(if tuple { Value::Tuple(id) } else { Value::List(id) });
    }

    pub(super) fn push_dict(&mut self, pairs: Vec<(Value, Value)>) {
        self.dicts.push(pairs);
        self.stack.push(Value::Dict(self.dicts.len() - 1));
    }

    pub(super) fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, Error> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error("an odd number of values for a dict's keys and values"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    pub(super) fn top_list(&self) -> Result<usize, Error> {
        match self.top()? {
            Value::List(id) => Ok(*id),
            other => Err(self.error(format!("APPEND to a {}, not a list", other.kind()))),
        }
    }

    pub(super) fn top_dict(&self) -> Result<usize, Error> {
        match self.top()? {
            Value::Dict(id) => Ok(*id),
            other => Err(self.error(format!("SETITEM on a {}, not a dict", other.kind()))),
        }
    }

    pub(super) fn memo_put(&mut self, index: u32) -> Result<(), Error> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, index: u32) -> Result<(), Error> {
        let value = self.memo.get(&index).cloned().ok_or_else(|| self.error(format!("memo entry {index} read before it was written")))?;
        self.stack.push(value);
        Ok(())
    }

    /// LONG1/LONG4: a little-endian two's-complement integer; sizes and offsets fit in 64 bits.
    pub(super) fn long(&mut self, len: usize) -> Result<Value, Error> {
        if len > 8 {
            return Err(self.error(format!("a {len}-byte integer: wider than 64 bits")));
        }
        let at = self.at;
        let bytes = self.reader.bytes(len).map_err(|_| Error::Pickle { at, message: "the pickle ends inside an integer".into() })?;
        let mut buffer = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
        buffer[..len].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buffer)))
    }

    pub(super) fn string(&mut self, len: u64) -> Result<(), Error> {
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
    pub(super) fn line(&mut self) -> Result<String, Error> {
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

    pub(super) fn global(&self, module: &str, name: &str) -> Result<Global, Error> {
        Global::resolve(module, name).ok_or_else(|| Error::Global { module: module.into(), name: name.into(), at: self.at })
    }

    pub(super) fn sequence(&self, value: &Value, what: &str) -> Result<&[Value], Error> {
        match value {
            Value::Tuple(id) | Value::List(id) => Ok(&self.sequences[*id]),
            other => Err(self.error(format!("{what} must be a tuple, found a {}", other.kind()))),
        }
    }

    pub(super) fn non_negative(&self, value: &Value, what: &str) -> Result<u64, Error> {
        match value {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            Value::Int(n) => Err(self.error(format!("{what} is negative ({n})"))),
            other => Err(self.error(format!("{what} must be an integer, found a {}", other.kind()))),
        }
    }
}
