//! Input of any length, read and tokenized in bounded blocks so memory does not grow with it.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use coil::Tokenizer;

use super::progress::Progress;

/// What a token-id file holds, for the messages about one that does not.
const IDS_FORMAT: &str = "token ids are non-negative integers below 2^32 in ASCII digits, separated by whitespace or commas";

/// Bytes of text tokenized at a time: small enough that the tokenizer's per-token bookkeeping
/// stays a few MB whatever the input length.
const TEXT_BLOCK: usize = 8 * 1024;

/// `-`, the usual name of standard input.
fn is_stdin(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// Where input tokens come from.
#[derive(Clone, Debug)]
pub enum InputSource {
    Text(String),
    TextFile(PathBuf),
    Stdin,
    /// Integers separated by whitespace or commas.
    TokenIds(PathBuf),
}

impl InputSource {
    /// Size in bytes when known up front (for the progress bar).
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            InputSource::Text(t) => Some(t.len() as u64),
            InputSource::TextFile(p) | InputSource::TokenIds(p) if !is_stdin(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            _ => None,
        }
    }

    fn name(&self) -> String {
        match self {
            InputSource::Text(_) => "--prompt".into(),
            InputSource::TextFile(p) | InputSource::TokenIds(p) if !is_stdin(p) => p.display().to_string(),
            _ => "<stdin>".into(),
        }
    }

    fn open(&self) -> Result<Box<dyn Read>> {
        Ok(match self {
            InputSource::Text(t) => Box::new(io::Cursor::new(t.clone().into_bytes())),
            InputSource::TextFile(p) | InputSource::TokenIds(p) if !is_stdin(p) => {
                Box::new(File::open(p).with_context(|| format!("cannot open {}", p.display()))?)
            }
            _ => Box::new(io::stdin().lock()),
        })
    }

    /// Reads the whole input as token ids, handing them to `sink` a block at a time together
    /// with the bytes read so far. Returns the number of tokens.
    pub fn stream_tokens(
        &self,
        tokenizer: Option<&Tokenizer>,
        mut sink: impl FnMut(&[u32], u64) -> Result<()>,
    ) -> Result<u64> {
        let name = self.name();
        let is_ids = matches!(self, InputSource::TokenIds(_));
        let mut blocks = Blocks::new(self.open()?, &name, is_ids);
        let mut total = 0u64;
        let tokenizer = match (is_ids, tokenizer) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => bail!("{}, or pass token ids with --token-ids FILE", super::NO_TOKENIZER),
        };
        while let Some(block) = if is_ids { blocks.next_ids_block()? } else { blocks.next_text_block()? } {
            let ids = match tokenizer {
                Some(t) => t.encode(&block)?,
                None => parse_ids(&block, blocks.offset - block.len() as u64, &name)?,
            };
            total += ids.len() as u64;
            if !ids.is_empty() {
                sink(&ids, blocks.offset)?;
            }
        }
        Ok(total)
    }

    /// [`InputSource::stream_tokens`] handed on in pieces of `piece_len` tokens (the last may be
    /// shorter), so every forward pass but the last has one length (one buffer size, full-width
    /// GEMMs) however the blocks fall; `progress` advances as blocks are read. A piece is handed
    /// on before the next is read, so what came before a bad token is done when it fails.
    /// Returns the number of tokens.
    pub fn stream_pieces(
        &self,
        tokenizer: Option<&Tokenizer>,
        piece_len: usize,
        progress: &mut Progress,
        mut feed: impl FnMut(&[u32]) -> Result<()>,
    ) -> Result<u64> {
        // Grown as tokens arrive (not sized from piece_len, which may be far longer than the input).
        let mut pending: Vec<u32> = Vec::new();
        let total = self.stream_tokens(tokenizer, |ids, bytes_done| {
            pending.extend_from_slice(ids);
            let whole = pending.len() / piece_len * piece_len;
            for piece in pending[..whole].chunks(piece_len) {
                feed(piece)?;
            }
            pending.drain(..whole);
            progress.advance(ids.len() as u64, bytes_done);
            Ok(())
        })?;
        if !pending.is_empty() {
            feed(&pending)?;
        }
        Ok(total)
    }
}

/// Splits a byte stream into UTF-8 blocks at places where tokenizing the blocks one by one gives
/// the same tokens as tokenizing the whole (see `text_split`).
struct Blocks<'a> {
    reader: Box<dyn Read>,
    name: &'a str,
    buffer: Vec<u8>,
    /// Bytes handed out so far.
    offset: u64,
    eof: bool,
    /// A token-id file rather than text (for the messages).
    ids: bool,
}

impl<'a> Blocks<'a> {
    fn new(reader: Box<dyn Read>, name: &'a str, ids: bool) -> Self {
        Blocks { reader, name, buffer: Vec::new(), offset: 0, eof: false, ids }
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        while !self.eof && self.buffer.len() < TEXT_BLOCK {
            match self.reader.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.name)),
            }
        }
        Ok(())
    }

    /// The valid UTF-8 prefix of the buffer, or an error naming the first invalid byte.
    fn valid_prefix(&self) -> Result<&str> {
        match std::str::from_utf8(&self.buffer) {
            Ok(text) => Ok(text),
            // An incomplete sequence at the very end of an unfinished buffer is fine.
            Err(e) if e.error_len().is_none() && !self.eof => {
                Ok(std::str::from_utf8(&self.buffer[..e.valid_up_to()]).expect("prefix is valid"))
            }
            Err(e) => bail!(
                "{}: invalid UTF-8 at byte {} ({})",
                self.name,
                self.offset + e.valid_up_to() as u64,
                if self.ids {
                    IDS_FORMAT
                } else {
                    "text input must be UTF-8; pass token ids with --token-ids instead"
                }
            ),
        }
    }

    fn take(&mut self, split: usize) -> String {
        let rest = self.buffer.split_off(split);
        let block = std::mem::replace(&mut self.buffer, rest);
        self.offset += block.len() as u64;
        String::from_utf8(block).expect("split on a validated char boundary")
    }

    fn next_text_block(&mut self) -> Result<Option<String>> {
        self.fill()?;
        let text = self.valid_prefix()?;
        if text.is_empty() && self.eof {
            return Ok(None);
        }
        let split = if self.eof { text.len() } else { text_split(text) };
        Ok(Some(self.take(split)))
    }

    fn next_ids_block(&mut self) -> Result<Option<String>> {
        self.fill()?;
        let text = self.valid_prefix()?;
        if text.is_empty() && self.eof {
            return Ok(None);
        }
        let split = if self.eof {
            text.len()
        } else {
            match text.rfind(|c: char| c.is_whitespace() || c == ',') {
                Some(i) => i + 1,
                // A block's worth without a separator is no token id (cutting it would make two
                // ids of one run of digits, `000…05` becoming `0 5`).
                None => bail!(
                    "{}: from byte {} on, {} KB or more without a separator, which is no token id ({IDS_FORMAT})",
                    self.name,
                    self.offset,
                    TEXT_BLOCK / 1024
                ),
            }
        };
        Ok(Some(self.take(split)))
    }
}

/// The last position in `text` where a single space stands between two non-space characters:
/// pre-tokenizers (GPT-2 byte-level, Metaspace) never join tokens across it, so cutting just
/// before the space preserves tokenization. Falls back to the end of the text.
fn text_split(text: &str) -> usize {
    let bytes = text.as_bytes();
    (1..bytes.len().saturating_sub(1))
        .rev()
        .find(|&i| bytes[i] == b' ' && !bytes[i - 1].is_ascii_whitespace() && !bytes[i + 1].is_ascii_whitespace())
        .filter(|&i| i > 0)
        .unwrap_or(text.len())
}

/// Parses integers separated by whitespace or commas; `start` is the block's byte offset.
pub fn parse_ids(text: &str, start: u64, name: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut position = 0usize;
    for field in text.split(|c: char| c.is_whitespace() || c == ',') {
        if !field.is_empty() {
            // Digits only: `parse` would take a leading `+` too.
            match field.parse::<u32>().ok().filter(|_| field.bytes().all(|b| b.is_ascii_digit())) {
                Some(id) => ids.push(id),
                None => bail!(
                    "{name}: `{}{}` at byte {} is not a token id ({IDS_FORMAT})",
                    // Control characters escaped: the message goes to a terminal.
                    field.chars().take(40).collect::<String>().escape_debug(),
                    if field.chars().nth(40).is_some() { "…" } else { "" },
                    start + position as u64
                ),
            }
        }
        position += field.len() + 1;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_before_a_single_space_between_words() {
        assert_eq!(text_split("hello brave new world"), 15);
        assert_eq!(text_split("a  b"), 4, "no single space between words: keep all");
    }

    #[test]
    fn ids_parse_with_commas_and_newlines_and_report_bad_fields() {
        assert_eq!(parse_ids("1, 2,3\n4\t5", 0, "f").unwrap(), vec![1, 2, 3, 4, 5]);
        let err = parse_ids("1 2 x3", 100, "f").unwrap_err().to_string();
        assert!(err.contains("`x3` at byte 104"), "{err}");
        assert!(parse_ids("-1", 0, "f").is_err());
        assert!(parse_ids("1 +5", 0, "f").unwrap_err().to_string().contains("`+5` at byte 2"));
        assert!(parse_ids("4294967296", 0, "f").is_err());
    }
}
