//! Every tensor of a checkpoint, by name, whatever file format holds it: safetensors (single or
//! sharded) or PyTorch's zip `pytorch_model.bin`, memory-mapped and widened to f32 on read.

mod bytes;
mod open;
mod safetensors;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub(crate) use bytes::Bytes;

use crate::{torch_zip, LoadError};

/// The element types weights may be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One tensor as a file format's reader found it.
pub(crate) struct Located {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype, or the format's name for one that weights cannot have.
    pub dtype: Result<DType, String>,
    /// Its bytes in the file, or why they cannot be read in place (a non-contiguous view).
    pub bytes: Result<Range<usize>, String>,
}

struct Entry {
    file: usize,
    located: Located,
}

/// Every tensor of a checkpoint, by name, across its files.
pub struct TensorStore {
    files: Vec<(PathBuf, Bytes)>,
    tensors: HashMap<String, Entry>,
    /// Names read so far, for [`TensorStore::unread`].
    read: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TensorStore {
    /// The weights of a checkpoint folder: `model.safetensors`, the shards of
    /// `model.safetensors.index.json`, `pytorch_model.bin` or the shards of
    /// `pytorch_model.bin.index.json`, the first that exists.
    pub fn open_dir(dir: &Path) -> Result<TensorStore, LoadError> {
        open::open_dir(dir)
    }

    /// A store from one file's bytes in memory. `name` (`model.safetensors`, `pytorch_model.bin`)
    /// chooses the format by its extension and names the file in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<TensorStore, LoadError> {
        TensorStore::from_files(vec![(PathBuf::from(name), Bytes::Owned(bytes))])
    }

    /// Indexes each file (safetensors, or a torch zip when its name ends in `.bin`), checking
    /// every tensor's bytes lie inside it, and refuses a name found in two files.
    pub(crate) fn from_files(files: Vec<(PathBuf, Bytes)>) -> Result<TensorStore, LoadError> {
        let mut tensors: HashMap<String, Entry> = HashMap::new();
        for (file, (path, bytes)) in files.iter().enumerate() {
            let located = if path.extension().is_some_and(|e| e == "bin") {
                torch_zip::read_tensors(bytes)
                    .map_err(|error| LoadError::TorchZip { path: path.clone(), error })?
                    .into_iter()
                    .map(|t| Located { name: t.name, shape: t.shape, dtype: t.dtype.map_err(str::to_owned), bytes: t.bytes })
                    .collect()
            } else {
                safetensors::index(path, bytes)?
            };
            for tensor in located {
                let name = tensor.name.clone();
                if let Some(other) = tensors.insert(name.clone(), Entry { file, located: tensor }) {
                    if other.file != file {
                        let first = &files[other.file].0;
                        return Err(LoadError::config(path, format!("tensor `{name}` also appears in {}", first.display())));
                    }
                }
            }
        }
        Ok(TensorStore { files, tensors, read: Default::default() })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of the tensors no [`TensorStore::read_f32`] has read, sorted: after a model has
    /// loaded, the ones it does not use.
    pub fn unread(&self) -> Vec<&str> {
        let read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.names().into_iter().filter(|n| !read.contains(*n)).collect()
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The file a tensor lives in (or the first file, for a missing one).
    pub fn path_of(&self, name: &str) -> &Path {
        let file = self.tensors.get(name).map_or(0, |e| e.file);
        self.files.get(file).map_or(Path::new("model.safetensors"), |(path, _)| path)
    }

    /// A tensor's shape and dtype, without reading its data.
    pub fn describe(&self, name: &str) -> Result<(Vec<usize>, DType), LoadError> {
        let entry = self.entry(name)?;
        match &entry.located.dtype {
            Ok(dtype) => Ok((entry.located.shape.clone(), *dtype)),
            Err(dtype) => Err(LoadError::DType { path: self.path_of(name).to_owned(), tensor: name.into(), dtype: dtype.clone() }),
        }
    }

    /// Reads a tensor as f32, checking its shape against `expected` and every value for finiteness.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (shape, dtype) = self.describe(name)?;
        self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned());
        let entry = self.entry(name)?;
        let path = || self.path_of(name).to_owned();
        if shape != expected {
            return Err(LoadError::Shape { path: path(), tensor: name.into(), expected: expected.to_vec(), actual: shape });
        }
        let range = entry.located.bytes.clone().map_err(|why| LoadError::Unsupported { path: path(), message: format!("tensor `{name}` {why}") })?;
        // Every reader checked its ranges against the file; a range that still does not fit (or
        // disagrees with the shape) is a reader bug, reported rather than panicking.
        let elements = shape.iter().product::<usize>();
        let raw = self.files[entry.file].1.get(range.clone()).filter(|raw| raw.len() == elements * dtype.size()).ok_or_else(|| {
            LoadError::Unsupported { path: path(), message: format!("tensor `{name}`: bytes {range:?} do not hold {elements} {dtype} values") }
        })?;
        let values: Vec<f32> = match dtype {
            DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(LoadError::NonFinite { path: path(), tensor: name.into(), index, value });
        }
        Ok(values)
    }

    fn entry(&self, name: &str) -> Result<&Entry, LoadError> {
        self.tensors.get(name).ok_or_else(|| LoadError::MissingTensor { path: self.path_of(name).to_owned(), tensor: name.into() })
    }
}
