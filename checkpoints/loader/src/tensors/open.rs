//! Finding a checkpoint folder's weights: one file, or the shards an index lists, in either
//! format (safetensors first, then PyTorch's `pytorch_model.bin`).

use std::path::{Component, Path};

use super::{Bytes, TensorStore};
use crate::json::parse_lenient;
use crate::LoadError;

/// Single file and shard index of each format, in order of preference.
const LAYOUTS: [(&str, &str); 2] =
    [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")];

pub(super) fn open_dir(dir: &Path) -> Result<TensorStore, LoadError> {
    // Present at all (a link to nowhere, a device, a pipe): taken, and refused by name when it is
    // not a file to read.
    let present = |path: &Path| std::fs::symlink_metadata(path).is_ok();
    for (single, index) in LAYOUTS {
        let single = dir.join(single);
        if present(&single) {
            return TensorStore::from_files(vec![(single.clone(), Bytes::map_file(&single)?)]);
        }
        let index = dir.join(index);
        if present(&index) {
            return open_shards(dir, &index);
        }
    }
    Err(LoadError::Io {
        path: dir.join(LAYOUTS[0].0),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file (nor model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json beside it)",
        ),
    })
}

/// The shards of an index's `weight_map`, each a plain file name in `dir`, and every tensor the
/// map names found in the shard it names.
fn open_shards(dir: &Path, index: &Path) -> Result<TensorStore, LoadError> {
    let text = coil_files::read_text_limited(index, coil_files::JSON_LIMIT).map_err(|source| LoadError::Io { path: index.to_owned(), source })?;
    let value = parse_lenient(&text).map_err(|e| LoadError::Json { path: index.to_owned(), message: e.to_string() })?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(LoadError::config(index, "`weight_map` is missing or not an object"));
    };
    let mut files: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(LoadError::config(index, format!("`weight_map.{tensor}` must be a file name")));
        };
        let plain = Path::new(file).components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(LoadError::config(index, format!("shard `{file}` must be a plain file name in the same folder")));
        }
        if !files.contains(&file) {
            files.push(file);
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
        let file = file.as_str().unwrap_or_default();
        let found = store.tensors.get(tensor).map(|e| &store.files[e.file].0);
        if found.is_none_or(|p| !p.ends_with(file)) {
            return Err(LoadError::MissingTensor { path: dir.join(file), tensor: tensor.clone() });
        }
    }
    Ok(store)
}
