//! `--logits-out`: one f32 tensor `logits [T, V]` in safetensors, streamed row by row, so a long
//! input's logits never sit in memory together. Written beside its final name and renamed into
//! place when complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coil::files::Partial;

pub struct LogitsWriter {
    file: BufWriter<File>,
    /// The temporary file (removed if dropped unfinished: an error on the way).
    partial: Partial,
    path: PathBuf,
    rows_left: u64,
    width: usize,
}

impl LogitsWriter {
    /// Refuses before anything is computed when the file would pass `max_bytes`.
    pub fn create(path: &Path, rows: u64, width: usize, max_bytes: u64) -> Result<LogitsWriter> {
        let bytes = rows.checked_mul(width as u64).and_then(|n| n.checked_mul(4));
        match bytes {
            Some(b) if b <= max_bytes => {}
            _ => bail!(
                "--logits-out would write {rows} x {width} f32 logits ({} bytes), above the limit of {max_bytes}; raise it with --max-logits-bytes",
                bytes.map_or("over 2^64".into(), |b| b.to_string()),
            ),
        }
        let total = rows * width as u64 * 4;
        let header = coil::files::safetensors_header(&serde_json::json!({
            "__metadata__": { "format": "pt", "producer": "coil score" },
            "logits": { "dtype": "F32", "shape": [rows, width], "data_offsets": [0, total] },
        }));
        let partial = Partial::new(path).with_context(|| format!("cannot write {}", path.display()))?;
        let file = File::create(partial.temporary()).with_context(|| format!("cannot create {}", partial.temporary().display()))?;
        let mut file = BufWriter::new(file);
        file.write_all(&header)?;
        Ok(LogitsWriter { file, partial, path: path.to_owned(), rows_left: rows, width })
    }

    pub fn write_row(&mut self, row: &[f32]) -> Result<()> {
        assert_eq!(row.len(), self.width);
        assert!(self.rows_left > 0, "more rows than announced");
        self.rows_left -= 1;
        for v in row {
            self.file.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.rows_left != 0 {
            bail!("internal error: {} logit rows missing", self.rows_left);
        }
        self.file.flush()?;
        self.partial.finish().with_context(|| format!("cannot write {}", self.path.display()))
    }
}
