//! Files in and out: small inputs read with a size limit (a `config.json` that is really
//! `/dev/zero` must fail, not fill memory), and outputs written beside their final name and
//! renamed into place, so a failed or killed write never leaves a torn file under that name.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The most a JSON input (a config, a shard index, a template, thresholds) may hold: far above
/// any real one.
pub const JSON_LIMIT: u64 = 64 << 20;

/// The most a `tokenizer.json` may hold (the largest vocabularies' are tens of MB).
pub const TOKENIZER_LIMIT: u64 = 1 << 30;

/// Reads all of `path`, refusing more than `limit` bytes (with an `InvalidData` error that says
/// so) instead of reading on: devices and pipes work, but end there.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MB, more than a file of this kind ever holds", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

/// An output being written under a temporary name beside its final one (`.NAME.partial-PID`),
/// renamed into place by [`Partial::finish`]. Dropped unfinished (an error, a panic), the
/// temporary file is removed. A process killed outright cannot remove it, so creating one first
/// removes what earlier writers of the same output left when they are no longer running.
#[derive(Debug)]
pub struct Partial {
    temporary: PathBuf,
    path: PathBuf,
    finished: bool,
}

impl Partial {
    /// The temporary name for `path` (nothing is created yet).
    pub fn new(path: &Path) -> Partial {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{name}.partial-");
        remove_stale(path, &prefix);
        let temporary = path.with_file_name(format!("{prefix}{}", std::process::id()));
        Partial { temporary, path: path.to_owned(), finished: false }
    }

    /// Where to write: the temporary file.
    pub fn temporary(&self) -> &Path {
        &self.temporary
    }

    /// Syncs the written file and renames it over the final name.
    pub fn finish(mut self) -> std::io::Result<()> {
        std::fs::File::open(&self.temporary)?.sync_all()?;
        std::fs::rename(&self.temporary, &self.path)?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `path` through a [`Partial`]: `write` fills the temporary file, which then replaces
/// `path`; on any error nothing is left behind and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let partial = Partial::new(path);
    write(partial.temporary())?;
    partial.finish()
}

/// Removes the `{prefix}{pid}` files beside `path` whose process is gone (Linux: no
/// `/proc/{pid}`). Elsewhere, and for a running process (another writer, or a reused PID), they
/// are left alone.
fn remove_stale(path: &Path, prefix: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let path = dir.join("config.json");
        std::fs::write(&path, vec![b' '; 1001]).unwrap();
        assert_eq!(read_limited(&path, 1001).unwrap().len(), 1001);
        let error = read_limited(&path, 1000).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(read_limited(dir, 1000).is_err(), "a folder is not a file");
        if cfg!(target_os = "linux") {
            // A device that never ends.
            assert!(read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string().contains("larger than 1 MB"));
        }
    }

    #[test]
    #[cfg(unix)]
    fn an_unfinished_write_leaves_nothing_and_a_dead_writers_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let path = dir.join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let failed = write_atomically(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "the output is untouched");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1, "no temporary file is left");

        // What a killed writer leaves (a PID above Linux's maximum, 2^22, is never running), and
        // what a running one is writing (this test's own parent process stands in for it).
        let dead = dir.join(".out.bin.partial-4294967");
        let running = dir.join(format!(".out.bin.partial-{}", std::os::unix::process::parent_id()));
        let other = dir.join(".other.bin.partial-4294967");
        for file in [&dead, &running, &other] {
            std::fs::write(file, b"x").unwrap();
        }
        write_atomically(&path, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "a dead writer's temporary file is removed");
        }
        assert!(running.exists() && other.exists(), "a running writer's file and other outputs' are left alone");
    }
}
