//! Tensors from safetensors files: memory-mapped, single or sharded, widened to f32 on read.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::json::parse_lenient;
use crate::LoadError;

/// The element types weights may be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The bytes of one file: mapped from disk, or held in memory (the embedded checkpoint, or a
/// caller's buffer).
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
            Bytes::Static(s) => s,
        }
    }
}

impl Bytes {
    pub(crate) fn map_file(path: &Path) -> Result<Bytes, LoadError> {
        let io = |source| LoadError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file while we read it is outside what any memory-mapped loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Bytes::Mapped(map))
    }
}

struct Shard {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    metadata: Metadata,
}

/// Every tensor of a checkpoint, by name, across its shards.
pub struct TensorStore {
    shards: Vec<Shard>,
    location: HashMap<String, usize>,
}

impl TensorStore {
    /// `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<TensorStore, LoadError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return TensorStore::from_files(vec![(single.clone(), Bytes::map_file(&single)?)]);
        }
        if !index.is_file() {
            return Err(LoadError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (nor a model.safetensors.index.json beside it)",
                ),
            });
        }
        let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io { path: index.clone(), source })?;
        let value = parse_lenient(&text).map_err(|e| LoadError::Json { path: index.clone(), message: e.to_string() })?;
        let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(LoadError::config(&index, "`weight_map` is missing or not an object"));
        };
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(LoadError::config(&index, format!("`weight_map.{tensor}` must be a file name")));
            };
            let plain = Path::new(file).components().all(|c| matches!(c, Component::Normal(_)));
            if !plain || file.is_empty() {
                return Err(LoadError::config(&index, format!("shard `{file}` must be a plain file name in the same folder")));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_owned());
            }
        }
        let shards = files
            .iter()
            .map(|f| {
                let path = dir.join(f);
                Bytes::map_file(&path).map(|b| (path, b))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = TensorStore::from_files(shards)?;
        for (tensor, file) in map {
            let found = store.location.get(tensor).map(|&i| &store.shards[i].path);
            if found.is_none_or(|p| !p.ends_with(file.as_str().unwrap_or_default())) {
                return Err(LoadError::MissingTensor { path: dir.join(file.as_str().unwrap_or_default()), tensor: tensor.clone() });
            }
        }
        Ok(store)
    }

    /// Parses and validates each file's header (offsets inside the file, sizes matching dtype and
    /// shape, no overlap), and indexes every tensor name.
    pub(crate) fn from_files(files: Vec<(PathBuf, Bytes)>) -> Result<TensorStore, LoadError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut location = HashMap::new();
        for (i, (path, bytes)) in files.into_iter().enumerate() {
            let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
                .map_err(|e| LoadError::Safetensors { path: path.clone(), message: e.to_string() })?;
            for name in metadata.tensors().keys() {
                if let Some(other) = location.insert(name.clone(), i) {
                    let first: &Shard = &shards[other];
                    return Err(LoadError::config(&path, format!("tensor `{name}` also appears in {}", first.path.display())));
                }
            }
            shards.push(Shard { path, bytes, data_start: 8 + header_len, metadata });
        }
        Ok(TensorStore { shards, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.location.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The file a tensor lives in (or the first file, for a missing one).
    pub fn path_of(&self, name: &str) -> &Path {
        let shard = self.location.get(name).copied().unwrap_or(0);
        self.shards.get(shard).map_or(Path::new("model.safetensors"), |s| &s.path)
    }

    /// A tensor's shape and dtype, without reading its data.
    pub fn describe(&self, name: &str) -> Result<(Vec<usize>, DType), LoadError> {
        let shard = self.shard(name)?;
        let info = shard.metadata.info(name).expect("indexed tensor has metadata");
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(LoadError::DType { path: shard.path.clone(), tensor: name.into(), dtype: format!("{other:?}") })
            }
        };
        Ok((info.shape.clone(), dtype))
    }

    /// Reads a tensor as f32, checking its shape against `expected` and every value for finiteness.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (shape, dtype) = self.describe(name)?;
        let shard = self.shard(name)?;
        if shape != expected {
            return Err(LoadError::Shape { path: shard.path.clone(), tensor: name.into(), expected: expected.to_vec(), actual: shape });
        }
        let info = shard.metadata.info(name).expect("indexed tensor has metadata");
        let (begin, end) = info.data_offsets;
        let raw = &shard.bytes[shard.data_start + begin..shard.data_start + end];
        let values: Vec<f32> = match dtype {
            DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(LoadError::NonFinite { path: shard.path.clone(), tensor: name.into(), index, value });
        }
        Ok(values)
    }

    fn shard(&self, name: &str) -> Result<&Shard, LoadError> {
        self.location
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| LoadError::MissingTensor { path: self.path_of(name).to_owned(), tensor: name.into() })
    }
}
