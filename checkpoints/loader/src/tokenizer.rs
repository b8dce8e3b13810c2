//! The tokenizer, from a HF `tokenizer.json`.

use std::path::{Path, PathBuf};

use crate::panic_guard::catch_quietly;
use crate::LoadError;

/// Text to token ids and back.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, LoadError> {
        let bytes = coil_files::read_limited(path, coil_files::TOKENIZER_LIMIT).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
        Tokenizer::from_bytes(&bytes, path)
    }

    /// `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Tokenizer, LoadError> {
        let fail = |message: String| LoadError::Tokenizer { path: path.to_owned(), message };
        // tokenizers 0.22 panics instead of failing on some malformed files (found by fuzzing:
        // `expect("Helper")` on a syntax error inside `decoder`, `expect("Precompiled")` on a bad
        // Precompiled normalizer). Check the syntax first for a clear message, then contain the rest.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        let inner = catch_quietly(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|panic| fail(format!("the tokenizers crate rejected it ({panic})")))?
            .map_err(|e| fail(explain(bytes, &e.to_string())))?;
        Ok(Tokenizer { inner, path: path.to_owned() })
    }

    /// Entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The file it was read from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`, without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LoadError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LoadError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LoadError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LoadError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// Id of a token string such as `<|endoftext|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// An incremental decoder for generated tokens: it yields text as soon as it is complete
    /// UTF-8, so multi-byte characters split over tokens print correctly.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, ids: Vec::new(), emitted: 0 }
    }
}

/// See [`Tokenizer::stream_decoder`].
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder<'_> {
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<String, LoadError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        // An incomplete UTF-8 sequence decodes to U+FFFD at the end; wait for the next token.
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let Some(new) = text.get(self.emitted..).map(str::to_owned) else {
            return Ok(String::new());
        };
        self.emitted = text.len();
        // Keep the window short: restart from the last few tokens once text is flushed.
        if self.ids.len() > 64 {
            let keep = self.ids.split_off(self.ids.len() - 8);
            self.emitted = self.tokenizer.decode(&keep)?.len();
            self.ids = keep;
        }
        Ok(new)
    }
}

/// The tokenizers crate's error, with the part of the file it is about: serde's "did not match
/// any variant of untagged enum ModelUntagged" names no field a user wrote.
fn explain(bytes: &[u8], error: &str) -> String {
    const MODELS: &str = "BPE, WordPiece, WordLevel or Unigram";
    let what = if error.contains("ModelUntagged") {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        match value.get("model") {
            None => "it has no `model` section".to_owned(),
            Some(model) => match model.get("type").and_then(|t| t.as_str()) {
                Some(kind) if !["BPE", "WordPiece", "WordLevel", "Unigram"].contains(&kind) => format!("`model.type` is `{kind}`, not {MODELS}"),
                Some(kind) => format!("its `model` section is not a valid {kind} model (a field is missing or of the wrong kind)"),
                None => format!("its `model` section matches none of {MODELS} (and names no `type`)"),
            },
        }
    } else {
        return format!("not a tokenizer.json the tokenizers library reads: {error}");
    };
    format!("not a tokenizer.json the tokenizers library reads: {what} ({error})")
}
