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

/// Reads all of `path`, a regular file (a device could be read without end, and opening a pipe
/// waits for a writer), refusing more than `limit` bytes with an `InvalidData` error that says so.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let kind = std::fs::metadata(path)?;
    if kind.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a file"));
    }
    if !kind.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = std::fs::File::open(path)?;
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
/// removes what earlier writers of the same output left: a file is stale when its PID is not
/// running here and no process holds the lock each writer keeps on its file (so a writer in
/// another PID namespace, or on another host sharing the folder, keeps its file).
///
/// A symlink is written through (the file it names is replaced; the link stays a link); a
/// device or pipe (`/dev/null`, a FIFO) is written directly, since it cannot be replaced.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    /// `None` for a device or pipe, written in place.
    temporary: Option<(PathBuf, std::fs::File)>,
    finished: bool,
}

impl Partial {
    /// Creates the temporary file for `path` (nothing for a device or pipe).
    pub fn new(path: &Path) -> std::io::Result<Partial> {
        let path = resolve_output(path)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a file")),
            Ok(m) if !m.is_file() => return Ok(Partial { path, temporary: None, finished: false }),
            _ => {}
        }
        let prefix = partial_prefix(&path);
        remove_stale(&path, &prefix);
        let temporary = path.with_file_name(format!("{prefix}{}", std::process::id()));
        let file = std::fs::File::create(&temporary)?;
        // Held until the file is renamed or removed: what tells other writers it is alive. A
        // file system without locks still gets the PID check.
        let _ = file.try_lock();
        Ok(Partial { path, temporary: Some((temporary, file)), finished: false })
    }

    /// Where to write: the temporary file (the output itself for a device or pipe).
    pub fn temporary(&self) -> &Path {
        self.temporary.as_ref().map_or(&self.path, |(t, _)| t)
    }

    /// Syncs the written file and renames it over the final name.
    pub fn finish(mut self) -> std::io::Result<()> {
        if let Some((temporary, _)) = &self.temporary {
            // A replaced file keeps its permissions (the new one would get the umask's).
            if let Ok(old) = std::fs::metadata(&self.path) {
                let _ = std::fs::set_permissions(temporary, old.permissions());
            }
            std::fs::File::open(temporary)?.sync_all()?;
            std::fs::rename(temporary, &self.path)?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let (Some((temporary, _)), false) = (&self.temporary, self.finished) {
            let _ = std::fs::remove_file(temporary);
        }
    }
}

/// Where writing `path` lands: its symlinks followed (a relative one from its link's folder),
/// the last one possibly dangling (the file it names is then created).
pub fn resolve_output(path: &Path) -> std::io::Result<PathBuf> {
    // A pipe or device reached through links (`/dev/stdout` -> `/proc/self/fd/1` -> `pipe:[N]`,
    // a name no folder holds) is written through the name given.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Ok(path.to_owned());
    }
    let mut path = path.to_owned();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(folder) if target.is_relative() => folder.join(target),
                    _ => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// The start of a safetensors file: the header's length (u64, little-endian), then `header` as
/// JSON, keys sorted (serde_json's maps are ordered; the workspace leaves `preserve_order` off, so
/// one header always gives the same bytes), padded with spaces so the data after it starts 8-byte
/// aligned, as safetensors does.
pub fn safetensors_header(header: &serde_json::Value) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).expect("a JSON value serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes
}

/// Writes `path` through a [`Partial`]: `write` fills the temporary file, which then replaces
/// `path`; on any error nothing is left behind and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let partial = Partial::new(path)?;
    write(partial.temporary())?;
    partial.finish()
}

/// `.NAME.partial-`, with NAME shortened (and a hash of it added) where the temporary name
/// would pass the 255 bytes a file name may have.
fn partial_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{}.partial-", shorten_name(&name, 200))
}

/// `name` when it has at most `limit` bytes; else its first `limit - 40` bytes (cut at a
/// character) and `~` and a [`Fnv1a`] hash of the whole name, so long names stay apart.
pub fn shorten_name(name: &str, limit: usize) -> String {
    if name.len() <= limit {
        return name.to_owned();
    }
    let mut cut = limit.saturating_sub(40);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &name[..cut], Fnv1a::of(name.as_bytes()))
}

/// FNV-1a, 64-bit: a hash stable across builds and platforms (the standard library's hasher
/// promises neither), for what is written down: template labels, model fingerprints, names.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> u64 {
        Fnv1a::default().write(bytes).finish()
    }

    /// Hashes `bytes` on.
    pub fn write(mut self, bytes: &[u8]) -> Fnv1a {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// Removes the `{prefix}{pid}` files beside `path` whose process is gone (Linux: no
/// `/proc/{pid}`) and whose lock nobody holds. Elsewhere nothing is removed.
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
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || pid.len() > 10 {
            continue;
        }
        if pid == std::process::id().to_string() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Only a regular file (opening a FIFO for writing would wait for a reader).
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if std::fs::OpenOptions::new().write(true).open(entry.path()).is_ok_and(|f| f.try_lock().is_ok()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_headers_are_read_back_by_safetensors_and_align_the_data() {
        for name in ["x", "a_longer_tensor_name"] {
            let data: Vec<u8> = [1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut bytes = safetensors_header(&serde_json::json!({
                "__metadata__": { "b": "2", "a": "1" },
                name: { "dtype": "F32", "shape": [3], "data_offsets": [0, 12] },
            }));
            assert_eq!(bytes.len() % 8, 0, "{name}: the data starts 8-byte aligned");
            assert!(String::from_utf8_lossy(&bytes[8..]).starts_with(r#"{"__metadata__":{"a":"1","b":"2"}"#), "keys sorted");
            bytes.extend_from_slice(&data);
            let read = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(read.tensor(name).unwrap().data(), &data[..]);
        }
    }

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
            assert!(read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string().contains("not a regular file"));
        }
    }

    #[test]
    fn fnv1a_gives_the_published_values_and_long_names_stay_apart() {
        // Labels and fingerprints already written down depend on these staying put.
        assert_eq!(Fnv1a::of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv1a::of(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv1a::of(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(Fnv1a::default().write(b"foo").write(b"bar").finish(), Fnv1a::of(b"foobar"));
        assert_eq!(shorten_name("short", 100), "short");
        let (a, b) = ("é".repeat(80) + "a", "é".repeat(80) + "b");
        let (short_a, short_b) = (shorten_name(&a, 100), shorten_name(&b, 100));
        assert!(short_a.len() <= 100 && short_a.starts_with("éé"), "{short_a}");
        assert_ne!(short_a, short_b, "names that differ past the cut stay apart");
    }

    #[test]
    #[cfg(unix)]
    fn links_are_written_through_pipes_in_place_and_long_names_fit() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        // A link: the file it names gets the bytes, the link stays a link.
        let target = dir.join("target.txt");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A pipe is written, not replaced by a regular file (a pipe of its own, not /dev/null: a
        // regression must not break the machine the tests run on).
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomically(&fifo, |tmp| std::fs::write(tmp, b"through")).unwrap();
        assert_eq!(reader.join().unwrap(), b"through");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A name of 250 bytes: its temporary name must stay under 255.
        let long = dir.join("x".repeat(250));
        write_atomically(&long, |tmp| std::fs::write(tmp, b"long")).unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"long");
        assert!(write_atomically(dir, |tmp| std::fs::write(tmp, b"")).is_err(), "a folder is not replaced");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_locked_partial_file_is_kept_whatever_its_pid() {
        // A writer in another PID namespace (or on another host) names its file by a PID that is
        // not running here; its lock shows it is alive.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let live = dir.path().join(".out.bin.partial-4294968");
        let held = std::fs::File::create(&live).unwrap();
        held.try_lock().unwrap();
        write_atomically(&path, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert!(live.exists(), "a locked partial file was removed");
        drop(held);
        write_atomically(&path, |tmp| std::fs::write(tmp, b"newer")).unwrap();
        assert!(!live.exists(), "an unlocked one of a dead PID stays");
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
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&path, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "a replaced file keeps its mode");
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "a dead writer's temporary file is removed");
        }
        assert!(running.exists() && other.exists(), "a running writer's file and other outputs' are left alone");
    }
}
