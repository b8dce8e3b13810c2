//! The bytes of one weights file: memory-mapped from disk, or held in memory (the embedded
//! checkpoint, a caller's buffer). Tensors are byte ranges of these.

use std::fs::File;
use std::path::Path;

use crate::LoadError;

/// See the module doc.
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
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file while we read it is outside what any memory-mapped loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Bytes::Mapped(map))
    }
}
