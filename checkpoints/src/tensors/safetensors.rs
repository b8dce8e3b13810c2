//! The index of one safetensors file: its JSON header parsed and validated by the `safetensors`
//! crate, each tensor turned into a byte range checked against the file.

use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use super::{DType, Located};
use crate::LoadError;

pub(super) fn index(path: &Path, bytes: &[u8]) -> Result<Vec<Located>, LoadError> {
    let invalid = |message: String| LoadError::Safetensors { path: path.to_owned(), message };
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
