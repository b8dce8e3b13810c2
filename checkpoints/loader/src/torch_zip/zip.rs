//! The ZIP container of `torch.save` (since PyTorch 1.6): the central directory, ZIP64 when
//! large, read from the end of the file, and each entry located through its local header.
//! Every offset and size is checked against the file before it is used; nothing is decompressed.

use std::collections::HashMap;
use std::ops::Range;

use super::reader::Reader;
use super::Error;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const METHOD_STORED: u16 = 0;

/// One entry of the archive: where its bytes lie, if they can be read in place.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The compression method; only 0 (stored) is readable in place.
    method: u16,
    /// The entry's bytes within the file (compressed bytes when `method` is not 0).
    data: Range<usize>,
}

/// The directory of a ZIP archive held in memory (usually a memory map).
#[derive(Debug)]
pub(crate) struct Archive {
    entries: HashMap<String, Entry>,
}

impl Archive {
    /// Reads and checks the central directory and every local header.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Archive, Error> {
        let directory = find_directory(bytes)?;
        let mut entries = HashMap::new();
        let mut cursor = Reader::new(bytes, directory.offset, directory.offset + directory.size);
        let mut seen: u64 = 0;
        while cursor.remaining() > 0 {
            let (name, entry) = read_central_entry(bytes, &mut cursor, directory.offset)?;
            if entries.insert(name.clone(), entry).is_some() {
                return Err(Error::Zip(format!("entry `{name}` appears twice in the central directory")));
            }
            seen += 1;
        }
        if seen != directory.entries {
            return Err(Error::Zip(format!(
                "the end-of-directory record announces {} entries, the central directory holds {seen}",
                directory.entries
            )));
        }
        Ok(Archive { entries })
    }

    /// Names of all entries, in no particular order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The byte range of a stored entry, `None` when there is no such entry.
    pub(crate) fn stored(&self, name: &str) -> Result<Option<Range<usize>>, Error> {
        match self.entries.get(name) {
            None => Ok(None),
            Some(entry) if entry.method == METHOD_STORED => Ok(Some(entry.data.clone())),
            // torch.save writes every entry stored (so storages can be mapped); a compressed
            // one means the archive was repacked by another tool.
            Some(entry) => Err(Error::Zip(format!(
                "entry `{name}` is compressed (method {}); only stored entries are read, as torch.save writes them",
                entry.method
            ))),
        }
    }
}

/// Where the central directory is, from the end-of-directory record (or its ZIP64 form).
struct Directory {
    offset: usize,
    size: usize,
    entries: u64,
}

fn find_directory(bytes: &[u8]) -> Result<Directory, Error> {
    if bytes.len() < 22 {
        return Err(Error::Zip(format!("{} bytes is too short for a ZIP archive", bytes.len())));
    }
    // The record is 22 bytes plus a comment of at most 65535; take the last signature whose
    // comment length reaches exactly to the end of the file.
    let earliest = bytes.len().saturating_sub(22 + 0xffff);
    let end = (earliest..=bytes.len() - 22)
        .rev()
        .find(|&at| {
            let mut r = Reader::new(bytes, at, bytes.len());
            r.u32().ok() == Some(END_OF_DIRECTORY) && {
                r.skip(16).is_ok() && r.u16().is_ok_and(|comment| at + 22 + comment as usize == bytes.len())
            }
        })
        .ok_or_else(|| Error::Zip("no end-of-central-directory record (truncated, or not a ZIP archive)".into()))?;
    let mut r = Reader::new(bytes, end + 4, bytes.len());
    let disk = r.u16()?;
    let directory_disk = r.u16()?;
    let _entries_on_disk = r.u16()?;
    let entries = r.u16()?;
    let size = r.u32()?;
    let offset = r.u32()?;
    if disk != 0 || directory_disk != 0 {
        return Err(Error::Zip("multi-disk archives are not supported".into()));
    }
    let mut directory = Directory { offset: offset as usize, size: size as usize, entries: entries as u64 };
    // torch writes the ZIP64 records always; other writers only when a field overflows.
    if end >= 20 && Reader::new(bytes, end - 20, end).u32().ok() == Some(ZIP64_LOCATOR) {
        let mut locator = Reader::new(bytes, end - 16, end);
        let _disk = locator.u32()?;
        let record = to_usize(locator.u64()?, "ZIP64 end-of-directory offset")?;
        let mut r = Reader::new(bytes, record, end - 20);
        if r.u32()? != ZIP64_END_OF_DIRECTORY {
            return Err(Error::Zip(format!("no ZIP64 end-of-directory record at byte {record}")));
        }
        r.skip(4 + 8 + 2 + 2)?; // disk numbers' preamble: size, versions, this disk
        let directory_disk = r.u32()?;
        let _entries_on_disk = r.u64()?;
        let entries = r.u64()?;
        let size = to_usize(r.u64()?, "central directory size")?;
        let offset = to_usize(r.u64()?, "central directory offset")?;
        if directory_disk != 0 {
            return Err(Error::Zip("multi-disk archives are not supported".into()));
        }
        directory = Directory { offset, size, entries };
        if offset.checked_add(size).is_none_or(|stop| stop > record) {
            return Err(Error::Zip(format!(
                "the central directory (bytes {offset}+{size}) overlaps the ZIP64 record at {record}"
            )));
        }
    } else if offset as u64 + size as u64 > end as u64 {
        return Err(Error::Zip(format!(
            "the central directory (bytes {offset}+{size}) runs past its end record at {end}"
        )));
    }
    Ok(directory)
}

/// One central-directory record, and the entry its local header leads to.
fn read_central_entry(bytes: &[u8], r: &mut Reader, directory_start: usize) -> Result<(String, Entry), Error> {
    let at = r.position;
    if r.u32()? != CENTRAL_HEADER {
        return Err(Error::Zip(format!("bad central directory record signature at byte {at}")));
    }
    r.skip(4)?; // versions
    let flags = r.u16()?;
    let method = r.u16()?;
    r.skip(8)?; // time, date, crc
    let mut compressed = r.u32()? as u64;
    let mut uncompressed = r.u32()? as u64;
    let name_len = r.u16()? as usize;
    let extra_len = r.u16()? as usize;
    let comment_len = r.u16()? as usize;
    let disk = r.u16()?;
    r.skip(6)?; // attributes
    let mut local = r.u32()? as u64;
    let name_bytes = r.bytes(name_len)?;
    let name = String::from_utf8_lossy(name_bytes).into_owned();
    let extra = r.bytes(extra_len)?;
    r.skip(comment_len)?;
    if flags & 1 != 0 {
        return Err(Error::Zip(format!("entry `{name}` is encrypted")));
    }
    if disk != 0 && disk != 0xffff {
        return Err(Error::Zip("multi-disk archives are not supported".into()));
    }
    // ZIP64: the 32-bit fields that hold 0xFFFFFFFF are given, in this order, in the extra field.
    let mut fields = ExtraFields::new(extra, ZIP64_EXTRA_ID);
    if uncompressed == 0xffff_ffff {
        uncompressed = fields.next_u64(&name)?;
    }
    if compressed == 0xffff_ffff {
        compressed = fields.next_u64(&name)?;
    }
    if local == 0xffff_ffff {
        local = fields.next_u64(&name)?;
    }
    if method == METHOD_STORED && compressed != uncompressed {
        return Err(Error::Zip(format!(
            "stored entry `{name}` claims {compressed} bytes on disk but {uncompressed} uncompressed"
        )));
    }

    // The local header repeats the name; its extra field (torch pads storages to 64-byte
    // alignment there) decides where the data starts. Its sizes may be 0 (data descriptor), so
    // the central directory's are the ones used.
    let local = to_usize(local, "local header offset")?;
    let mut header = Reader::new(bytes, local, directory_start);
    if header.u32().ok() != Some(LOCAL_HEADER) {
        return Err(Error::Zip(format!("entry `{name}`: no local header at byte {local}")));
    }
    header.skip(4)?;
    let local_method = header.u16()?;
    header.skip(16)?;
    let local_name_len = header.u16()? as usize;
    let local_extra_len = header.u16()? as usize;
    if header.bytes(local_name_len)? != name_bytes || local_method != method {
        return Err(Error::Zip(format!("entry `{name}`: the local header at byte {local} disagrees with the central directory")));
    }
    header.skip(local_extra_len)?;
    let start = header.position;
    let size = to_usize(compressed, "entry size")?;
    let data = start..start.checked_add(size).filter(|&stop| stop <= directory_start).ok_or_else(|| {
        Error::Zip(format!(
            "entry `{name}` claims {size} bytes at byte {start}, past the start of the central directory at {directory_start}"
        ))
    })?;
    Ok((name, Entry { method, data }))
}

/// The values of one extra-field block (e.g. ZIP64's), read in order.
struct ExtraFields<'a> {
    data: &'a [u8],
}

impl<'a> ExtraFields<'a> {
    fn new(extra: &'a [u8], id: u16) -> ExtraFields<'a> {
        let mut r = Reader::new(extra, 0, extra.len());
        while let (Ok(block), Ok(len)) = (r.u16(), r.u16()) {
            match r.bytes(len as usize) {
                Ok(data) if block == id => return ExtraFields { data },
                Ok(_) => {}
                Err(_) => break,
            }
        }
        ExtraFields { data: &[] }
    }

    fn next_u64(&mut self, name: &str) -> Result<u64, Error> {
        let Some((value, rest)) = self.data.split_first_chunk::<8>() else {
            return Err(Error::Zip(format!("entry `{name}` lacks the ZIP64 field its header calls for")));
        };
        self.data = rest;
        Ok(u64::from_le_bytes(*value))
    }
}

fn to_usize(value: u64, what: &str) -> Result<usize, Error> {
    usize::try_from(value).map_err(|_| Error::Zip(format!("{what} {value} does not fit in memory addresses")))
}
