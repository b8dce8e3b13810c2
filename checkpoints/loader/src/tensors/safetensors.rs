//! The index of one safetensors file: its JSON header parsed and validated by the `safetensors`
//! crate, each tensor turned into a byte range checked against the file.

use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use super::{DType, Located};
use crate::LoadError;

pub(super) fn index(path: &Path, bytes: &[u8]) -> Result<Vec<Located>, LoadError> {
    let invalid = |message: String| LoadError::Safetensors { path: path.to_owned(), message };
    check_layout(bytes).map_err(invalid)?;
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
    let data_start = 8usize.checked_add(header_len).ok_or_else(|| invalid("header length overflows".into()))?;
    let mut located = Vec::new();
    for (name, info) in metadata.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::BF16),
            Dtype::F64 => Ok(DType::F64),
            other => Err(format!("{other:?}")),
        };
        // read_metadata already checked that offsets tile the data exactly; check again here so
        // that no slice of the file can ever be out of bounds.
        let (begin, end) = info.data_offsets;
        let range = data_start.checked_add(begin).zip(data_start.checked_add(end));
        let Some((start, stop)) = range.filter(|&(start, stop)| start <= stop && stop <= bytes.len()) else {
            return Err(invalid(format!("tensor `{name}` lies outside the file")));
        };
        located.push(Located { name, shape: info.shape.clone(), dtype, bytes: Ok(start..stop) });
    }
    Ok(located)
}

/// What the `safetensors` crate says without naming the tensor (offsets past the end, a gap
/// where a tensor was taken out of the header) or does not say at all (a name given twice, of
/// which JSON keeps the last): checked first, naming the tensors. Anything else is left to it.
fn check_layout(bytes: &[u8]) -> Result<(), String> {
    let Some(header_len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return Ok(()); // too short for a header: the crate says so
    };
    let Some(header) = usize::try_from(header_len).ok().and_then(|n| bytes.get(8..8usize.checked_add(n)?)) else {
        return Ok(());
    };
    let Ok(Entries(entries)) = serde_json::from_slice::<Entries>(header) else { return Ok(()) };
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = entries.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(format!("the header names `{name}` twice"));
    }
    let data = (bytes.len() - 8 - header.len()) as u64;
    let mut tensors: Vec<(&str, u64, u64)> = entries
        .iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(name, info)| {
            let offsets = info.get("data_offsets")?.as_array()?;
            Some((name.as_str(), offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?))
        })
        .collect();
    tensors.sort_by_key(|&(name, begin, end)| (begin, end, name));
    let mut covered = 0u64;
    for (i, &(name, begin, end)) in tensors.iter().enumerate() {
        if end > data {
            return Err(format!("tensor `{name}`: data_offsets [{begin}, {end}] end past the data, which holds {data} bytes (a truncated file?)"));
        }
        if begin > covered {
            return Err(match i {
                0 => format!("bytes [0, {begin}) of the data belong to no tensor: the first, `{name}`, starts at {begin} (a tensor missing from the header?)"),
                _ => format!(
                    "bytes [{covered}, {begin}) of the data belong to no tensor: between `{}` and `{name}` (a tensor missing from the header?)",
                    tensors[i - 1].0
                ),
            });
        }
        if begin < covered {
            return Err(format!("tensor `{name}` (data_offsets [{begin}, {end}]) overlaps `{}`, which ends at {covered}", tensors[i - 1].0));
        }
        covered = end;
    }
    if covered < data && !tensors.is_empty() {
        let last = tensors[tensors.len() - 1].0;
        return Err(format!("bytes [{covered}, {data}) of the data belong to no tensor: after the last, `{last}` (a tensor missing from the header?)"));
    }
    Ok(())
}

/// A JSON object's entries in file order, repeated names kept.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}
