//! PyTorch's zip checkpoint format (`torch.save` since 1.6, as in mamba_ssm's `pytorch_model.bin`),
//! read without running anything it says: a ZIP directory, a restricted pickle, and tensors as
//! byte ranges of the storage entries, checked against the file before anything is read.

mod pickle;
mod reader;
mod zip;

use std::ops::Range;

use crate::DType;
use pickle::{StorageRecord, TensorRecord};
use zip::Archive;

/// Why a `.bin` file cannot be read. Offsets are bytes into the file, or into `data.pkl` for
/// pickle errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed ZIP archive: {0}")]
    Zip(String),

    #[error("truncated: {wanted} bytes needed at byte {at}, {left} left")]
    Truncated { at: usize, wanted: usize, left: usize },

    #[error("data.pkl byte {at}: pickle opcode {name} (0x{code:02x}) is refused: a state dict of tensors never needs it")]
    Opcode { name: &'static str, code: u8, at: usize },

    #[error("data.pkl byte {at}: global `{module}.{name}` is refused: a state dict may only name torch's tensor rebuild functions, torch storage types and collections.OrderedDict")]
    Global { module: String, name: String, at: usize },

    #[error("data.pkl byte {at}: {message}")]
    Pickle { at: usize, message: String },

    #[error("tensor `{tensor}`: {message}")]
    Tensor { tensor: String, message: String },

    #[error("{0}")]
    Format(String),
}

/// The element types torch storages come in, by their legacy class names (`torch.FloatStorage`),
/// which is how `torch.save` names them in persistent ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageKind {
    Float,
    Half,
    BFloat16,
    Double,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
    ComplexFloat,
    ComplexDouble,
}

const STORAGE_KINDS: [(StorageKind, &str, usize, &str); 12] = [
    (StorageKind::Float, "FloatStorage", 4, "float32"),
    (StorageKind::Half, "HalfStorage", 2, "float16"),
    (StorageKind::BFloat16, "BFloat16Storage", 2, "bfloat16"),
    (StorageKind::Double, "DoubleStorage", 8, "float64"),
    (StorageKind::Long, "LongStorage", 8, "int64"),
    (StorageKind::Int, "IntStorage", 4, "int32"),
    (StorageKind::Short, "ShortStorage", 2, "int16"),
    (StorageKind::Char, "CharStorage", 1, "int8"),
    (StorageKind::Byte, "ByteStorage", 1, "uint8"),
    (StorageKind::Bool, "BoolStorage", 1, "bool"),
    (StorageKind::ComplexFloat, "ComplexFloatStorage", 8, "complex64"),
    (StorageKind::ComplexDouble, "ComplexDoubleStorage", 16, "complex128"),
];

impl StorageKind {
    fn from_class_name(name: &str) -> Option<StorageKind> {
        STORAGE_KINDS.iter().find(|k| k.1 == name).map(|k| k.0)
    }

    fn row(self) -> &'static (StorageKind, &'static str, usize, &'static str) {
        STORAGE_KINDS.iter().find(|k| k.0 == self).expect("every kind has a row")
    }

    fn class_name(self) -> &'static str {
        self.row().1
    }

    fn element_size(self) -> usize {
        self.row().2
    }

    /// The dtype weights are read as; other element types are listed but refused when read.
    fn dtype(self) -> Result<DType, &'static str> {
        match self {
            StorageKind::Float => Ok(DType::F32),
            StorageKind::Half => Ok(DType::F16),
            StorageKind::BFloat16 => Ok(DType::BF16),
            other => Err(other.row().3),
        }
    }
}

/// One named tensor of the checkpoint, located in the file.
#[derive(Clone, Debug)]
pub(crate) struct TorchTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The element type, or torch's name for one that weights cannot have (`int64`, ...).
    pub dtype: Result<DType, &'static str>,
    /// The tensor's bytes in the file when it is contiguous, or why it cannot be read in place.
    pub bytes: Result<Range<usize>, String>,
}

/// Reads the directory, runs `data.pkl`, and locates every tensor of the state dict in `file`.
pub(crate) fn read_tensors(file: &[u8]) -> Result<Vec<TorchTensor>, Error> {
    if file.first() == Some(&0x80) {
        return Err(Error::Format(
            "this is the legacy (pre-1.6) torch.save format, a bare pickle; load and re-save it with torch >= 1.6".into(),
        ));
    }
    let archive = Archive::parse(file)?;
    let prefix = archive_prefix(&archive)?;
    if let Some(order) = archive.stored(&format!("{prefix}/byteorder"))? {
        if &file[order.clone()] != b"little" {
            let found = String::from_utf8_lossy(&file[order]).into_owned();
            return Err(Error::Format(format!("byte order `{found}`: only little-endian checkpoints are read")));
        }
    }
    let pickle = archive.stored(&format!("{prefix}/data.pkl"))?.expect("the prefix was found from data.pkl");
    let state = pickle::load_state_dict(&file[pickle])?;

    // Each storage's entry must hold exactly the elements its persistent id declares.
    let mut storages = Vec::with_capacity(state.storages.len());
    for storage in &state.storages {
        storages.push(locate_storage(&archive, &prefix, storage)?);
    }
    state.tensors.into_iter().map(|(name, record)| locate_tensor(name, &record, &state.storages, &storages)).collect()
}

/// `torch.save(obj, "dir/name.bin")` puts everything under `name/` (older versions: `archive/`).
fn archive_prefix(archive: &Archive) -> Result<String, Error> {
    let mut prefixes: Vec<&str> = archive
        .names()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .collect();
    prefixes.sort_unstable();
    match prefixes.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(Error::Format("no `<name>/data.pkl` entry: a ZIP archive, but not one written by torch.save".into())),
        many => Err(Error::Format(format!("several `data.pkl` entries ({}): ambiguous", many.join("/data.pkl, ")))),
    }
}

fn locate_storage(archive: &Archive, prefix: &str, storage: &StorageRecord) -> Result<Range<usize>, Error> {
    let entry = format!("{prefix}/data/{}", storage.key);
    let range = archive.stored(&entry)?.ok_or_else(|| Error::Format(format!("storage `{}` has no entry `{entry}`", storage.key)))?;
    let element = storage.kind.element_size();
    let claimed = usize::try_from(storage.numel).ok().and_then(|n| n.checked_mul(element));
    if claimed != Some(range.len()) {
        return Err(Error::Format(format!(
            "storage `{}` declares {} {} elements ({} bytes) but its entry `{entry}` holds {} bytes",
            storage.key,
            storage.numel,
            storage.kind.row().3,
            claimed.map_or("too many".to_owned(), |b| b.to_string()),
            range.len()
        )));
    }
    Ok(range)
}

/// Checks a tensor's view against its storage and turns it into a byte range of the file.
fn locate_tensor(name: String, record: &TensorRecord, storages: &[StorageRecord], ranges: &[Range<usize>]) -> Result<TorchTensor, Error> {
    let fail = |message: String| Error::Tensor { tensor: name.clone(), message };
    let storage = &storages[record.storage];
    let range = &ranges[record.storage];
    let shape = record
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| fail(format!("size {:?} does not fit in memory addresses", record.shape)))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n.checked_mul(storage.kind.element_size()).is_some())
        .ok_or_else(|| fail(format!("size {:?} has more elements than memory can address", record.shape)))?;
    // The last element the view touches: offset + sum((size - 1) * stride), in storage elements.
    let extent = if numel == 0 {
        Some(record.offset)
    } else {
        record.shape.iter().zip(&record.stride).try_fold(record.offset, |end, (&size, &stride)| {
            (size - 1).checked_mul(stride).and_then(|step| end.checked_add(step))
        }).and_then(|last| last.checked_add(1))
    };
    if extent.is_none_or(|end| end > storage.numel) {
        return Err(fail(format!(
            "offset {} with size {:?} and stride {:?} reaches past the end of storage `{}` ({} elements)",
            record.offset, record.shape, record.stride, storage.key, storage.numel
        )));
    }
    let element = storage.kind.element_size();
    let bytes = if is_contiguous(&record.shape, &record.stride) {
        // In range of the storage (checked above), so these cannot overflow.
        let start = range.start + record.offset as usize * element;
        Ok(start..start + numel * element)
    } else {
        Err(format!("is not contiguous (size {:?}, stride {:?}); only contiguous tensors are read", record.shape, record.stride))
    };
    Ok(TorchTensor { name, shape, dtype: storage.kind.dtype(), bytes })
}

/// Row-major contiguity as torch defines it: dimensions of size 1 may have any stride.
fn is_contiguous(shape: &[u64], stride: &[u64]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected: u64 = 1;
    for (&size, &stride) in shape.iter().zip(stride).rev() {
        if size != 1 && stride != expected {
            return false;
        }
        expected = expected.saturating_mul(size);
    }
    true
}

#[cfg(test)]
mod tests;
