//! Result files: one JSON line per finished cell, appended and synced as each cell finishes, so
//! a killed sweep loses nothing that finished; resuming skips finished cells and repairs a torn
//! last line. Each shard writes its own file; the report reads them all.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EvalError, Spacing};

/// One finished cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub model: String,
    pub n_s: usize,
    pub mitigation: String,
    pub template: String,
    pub seed: u64,
    /// Requested length.
    pub length: usize,
    /// Exact prompt length in tokens.
    pub tokens: usize,
    /// Filler tokens between the needle's end and the question (absent in results of versions
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_after_needle: Option<usize>,
    pub depth: f64,
    pub depth_index: usize,
    pub depths: usize,
    /// How the needles spread (absent: even, the only spacing before it was recorded).
    #[serde(default, skip_serializing_if = "Spacing::is_even")]
    pub spacing: Spacing,
    pub needle_block: usize,
    pub key: String,
    pub prediction: String,
    pub correct: bool,
    /// Wall time of this cell's fork (needle, remaining filler, question, answer) plus the shared
    /// pass from the previous needle up to this one: a group's cells add up to its wall time.
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_length: Option<usize>,
}

impl CellRecord {
    /// What identifies a cell across runs, resumes and shards.
    pub fn id(&self) -> String {
        cell_id(&self.model, &self.mitigation, &self.template, self.seed, self.length, self.depths, self.spacing, self.depth_index)
    }
}

#[allow(clippy::too_many_arguments)] // the fields that name a cell, each a plain value
pub(crate) fn cell_id(model: &str, mitigation: &str, template: &str, seed: u64, length: usize, depths: usize, spacing: Spacing, depth_index: usize) -> String {
    // Even spacing adds nothing, so ids of results written before spacing existed still match.
    let spacing = if spacing.is_even() { "" } else { "\u{1f}log" };
    format!("{model}\u{1f}{mitigation}\u{1f}{template}\u{1f}{seed}\u{1f}{length}\u{1f}{depths}{spacing}\u{1f}{depth_index}")
}

/// Shard `index` of `count` (a cluster job array's task), as `I/N` with 0 <= I < N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard's index, from 0.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
}

impl Shard {
    /// The whole sweep in one shard.
    pub fn whole() -> Shard {
        Shard { index: 0, count: 1 }
    }

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Shard, EvalError> {
        let bad = || EvalError::Arguments(format!("--shard `{text}`: expected I/N with 0 <= I < N"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The results file this shard writes.
    pub fn file_name(&self) -> String {
        if self.count == 1 {
            "results.jsonl".into()
        } else {
            format!("results-shard-{}-of-{}.jsonl", self.index, self.count)
        }
    }
}

/// The result file a sweep appends to.
pub struct ResultsFile {
    path: PathBuf,
    file: File,
    done: HashSet<String>,
    /// The `(template, seed, depths)` of the cells it holds.
    setups: HashSet<(String, u64, usize, Spacing)>,
}

impl ResultsFile {
    /// Opens `dir/<shard file>`. Without `resume`, an existing non-empty file is an error (so no
    /// run silently mixes with an earlier one); with it, finished cells are loaded and a torn last
    /// line (a write the kill interrupted) is cut off. The file stays locked while this value
    /// lives: another run opening it meanwhile is refused.
    pub fn open(dir: &Path, shard: Shard, resume: bool) -> Result<ResultsFile, EvalError> {
        let path = dir.join(shard.file_name());
        let fail = |message: String| EvalError::Results { path: path.clone(), message };
        std::fs::create_dir_all(dir).map_err(|e| EvalError::Results { path: dir.to_owned(), message: e.to_string() })?;
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(fail("not a regular file".into()));
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(|e| fail(e.to_string()))?;
        // Held while the sweep runs: a second run into the same file would compute every cell the
        // first one does. (A file system without locks is not a reason to refuse the run.)
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            return Err(fail(
                "another run is writing it now: wait for that run, or give this one another --out or --shard".into(),
            ));
        }
        let (mut done, mut setups) = (HashSet::new(), HashSet::new());
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
        if !bytes.is_empty() && !resume {
            return Err(fail("holds results of an earlier run: pass --resume to continue it, or choose another --out".into()));
        }
        let (records, good_len, unterminated) = parse_lines(&bytes, &path)?;
        done.extend(records.iter().map(CellRecord::id));
        setups.extend(records.iter().map(|r| (r.template.clone(), r.seed, r.depths, r.spacing)));
        if good_len < bytes.len() {
            file.set_len(good_len as u64).map_err(|e| fail(format!("cannot cut the torn last line: {e}")))?;
        }
        if unterminated {
            // A whole record whose newline the kill cut off: finished, so the next one starts a line.
            file.write_all(b"\n").map_err(|e| fail(e.to_string()))?;
        }
        Ok(ResultsFile { path, file, done, setups })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the cell `id` has a result already.
    pub fn is_done(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    /// An error if the file holds cells of another template, seed or needle grid than
    /// `(template, seed, depths, spacing)`: resuming into it would pool two sweeps into one report.
    pub fn check_setup(&self, template: &str, seed: u64, depths: usize, spacing: Spacing) -> Result<(), EvalError> {
        match self.setups.iter().find(|&s| s != &(template.to_owned(), seed, depths, spacing)) {
            None => Ok(()),
            Some((other_template, other_seed, other_depths, other_spacing)) => Err(EvalError::Results {
                path: self.path.clone(),
                message: format!(
                    "holds a sweep with template `{other_template}`, seed {other_seed}, {other_depths} depths spaced {}; this one has \
                     template `{template}`, seed {seed}, {depths} depths spaced {}: resume with the same, or choose another --out",
                    other_spacing.name(),
                    spacing.name()
                ),
            }),
        }
    }

    /// Cells with a result.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends one cell as a line and syncs it to disk before returning.
    pub fn append(&mut self, record: &CellRecord) -> Result<(), EvalError> {
        let mut line = serde_json::to_string(record).expect("a record serialises");
        line.push('\n');
        let fail = |e: std::io::Error| EvalError::Results { path: self.path.clone(), message: e.to_string() };
        self.file.write_all(line.as_bytes()).map_err(fail)?;
        self.file.sync_data().map_err(fail)?;
        self.done.insert(record.id());
        Ok(())
    }
}

/// Parses JSON lines; returns the records and the byte length of the complete, valid prefix. Only
/// an unfinished last line (no newline: a write a kill interrupted) is dropped; any other line
/// that is not a record, invalid UTF-8 included, means the file is not ours (or was damaged)
/// and is an error, so nothing in it is skipped or cut silently.
/// The records of a results file, the length of its bytes that hold them, and whether its last
/// record lacks the newline that ends it. An unfinished last line that is the start of a
/// record (a write a kill cut short) is left out of both; anything else that is not a record
/// is an error.
fn parse_lines(bytes: &[u8], path: &Path) -> Result<(Vec<CellRecord>, usize, bool), EvalError> {
    let mut records = Vec::new();
    let mut offset = 0;
    let mut good_len = 0;
    let fail = |message: String| EvalError::Results { path: path.to_owned(), message };
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        offset += line.len();
        let record = std::str::from_utf8(line).ok().map(str::trim).map(|text| match text {
            "" => Ok(None),
            text => serde_json::from_str::<CellRecord>(text).map(Some),
        });
        let finished = line.ends_with(b"\n");
        match record {
            Some(Ok(record)) => {
                records.extend(record);
                good_len = offset;
                if !finished {
                    return Ok((records, good_len, true));
                }
            }
            // Every record starts with this; a torn one is a prefix of a record.
            _ if !finished && (line.starts_with(RECORD_START) || RECORD_START.starts_with(line)) && line.len() <= MAX_RECORD_BYTES => break,
            _ if !finished => {
                let what = if line.starts_with(RECORD_START) { "is longer than any record" } else { "is not the start of a passkey result" };
                return Err(fail(format!(
                    "its last line ({} bytes, unfinished) {what}; is this a results file of `coil passkey`?",
                    line.len()
                )));
            }
            _ => return Err(fail(format!("line {} is not a passkey result; is this a results file of `coil passkey`?", i + 1))),
        }
    }
    Ok((records, good_len, false))
}

/// How every line of a results file starts (`CellRecord`'s first field).
const RECORD_START: &[u8] = b"{\"model\":";

/// Far more than one record's line takes; a longer unfinished line is not a torn record.
const MAX_RECORD_BYTES: usize = 1 << 20;

/// The bytes of a results file, refusing anything but a regular file (a device or pipe would be
/// read without end).
fn read_file(path: &Path) -> Result<Vec<u8>, EvalError> {
    let fail = |message: String| EvalError::Results { path: path.to_owned(), message };
    if !std::fs::metadata(path).map_err(|e| fail(e.to_string()))?.is_file() {
        return Err(fail("not a regular file".into()));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

/// Every record in `results*.jsonl` of each directory (shards merged), a torn last line skipped,
/// each cell once (the last copy wins).
pub fn read_results(dirs: &[PathBuf]) -> Result<Vec<CellRecord>, EvalError> {
    let mut files = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir).map_err(|e| EvalError::Results { path: dir.clone(), message: e.to_string() })?;
        let before = files.len();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("results") && name.ends_with(".jsonl") {
                files.push(entry.path());
            }
        }
        // Every folder named must hold results: one without is a wrong path, not an empty sweep.
        if files.len() == before {
            return Err(EvalError::Results { path: dir.clone(), message: "no results*.jsonl here".into() });
        }
    }
    files.sort();
    // A cell found twice (a folder given twice, a shard copied) counts once; found twice with
    // different answers, the folders hold different runs, and merging them would pick one.
    let mut by_id: std::collections::BTreeMap<String, (CellRecord, PathBuf)> = std::collections::BTreeMap::new();
    let files_read = files.clone();
    for path in files {
        let bytes = read_file(&path)?;
        for record in parse_lines(&bytes, &path)?.0 {
            match by_id.get(&record.id()) {
                Some((seen, first)) if (&seen.key, &seen.prediction, seen.correct) != (&record.key, &record.prediction, record.correct) => {
                    return Err(EvalError::Results {
                        path,
                        message: format!(
                            "the cell (model {}, mitigation {}, length {}, depth {} of {}) has another answer in {}: \
                             these are results of different runs",
                            record.model,
                            record.mitigation,
                            record.length,
                            record.depth_index + 1,
                            record.depths,
                            first.display()
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    by_id.insert(record.id(), (record, path.clone()));
                }
            }
        }
    }
    if by_id.is_empty() {
        let names: Vec<String> = files_read.iter().map(|p| p.display().to_string()).collect();
        return Err(EvalError::Results {
            path: dirs.first().cloned().unwrap_or_default(),
            message: format!("the results files hold no finished cell ({}): nothing to report", names.join(", ")),
        });
    }
    Ok(by_id.into_values().map(|(record, _)| record).collect())
}
