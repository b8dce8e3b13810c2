//! Passkey prompt templates: the "Stuffed Mamba" paper's (for comparability), the Landmark
//! Attention wording it descends from, a RULER niah_single_1-style one, or a user's JSON file.

use std::path::Path;

use coil_checkpoints::files::Fnv1a;
use serde::Deserialize;

use crate::passkey::EvalError;

/// The four parts of a passkey prompt; `{key}` in `needle` is replaced by the key.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Template {
    /// The template's name in results.
    pub name: String,
    /// Text before the filler.
    pub prefix: String,
    /// One filler block, repeated to reach the length.
    pub filler: String,
    /// The needle; `{key}` is replaced by the key.
    pub needle: String,
    /// Text after the filler, which the model answers.
    pub suffix: String,
}

impl Template {
    /// The paper's template (long-context.md, "Passkey retrieval").
    pub fn paper() -> Template {
        Template {
            name: "paper".into(),
            prefix: crate::probes::PASSKEY_PREFIX.into(),
            filler: crate::probes::PASSKEY_FILLER.into(),
            needle: "The passkey is {key}. Remember it. {key} is the passkey.\n".into(),
            suffix: "\nWhat is the pass key? The passkey is".into(),
        }
    }

    /// Landmark Attention's original wording (Mohtashami & Jaggi, 2023).
    pub fn landmark() -> Template {
        Template {
            name: "landmark".into(),
            prefix: "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.\n".into(),
            filler: "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ".into(),
            needle: "The pass key is {key}. Remember it. {key} is the pass key. ".into(),
            suffix: "What is the pass key? The pass key is".into(),
        }
    }

    /// RULER's niah_single_1 style: a number keyed by a word, noise filler.
    pub fn ruler() -> Template {
        Template {
            name: "ruler".into(),
            prefix: "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.\n".into(),
            filler: "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n".into(),
            needle: "One of the special magic numbers for long-context is: {key}.\n".into(),
            suffix: "What is the special magic number for long-context mentioned in the provided text? The special magic number for long-context mentioned in the provided text is".into(),
        }
    }

    /// `paper`, `landmark`, `ruler`, or a JSON file with `prefix`, `filler`, `needle`, `suffix`
    /// (and optionally `name`). A file's template is labelled `NAME#HASH` (its `name`, else the
    /// file's stem, and a hash of its four texts), so results of a file named `paper.json`, or
    /// of a file edited since, are never taken for another template's cells.
    pub fn named(name_or_path: &str) -> Result<Template, EvalError> {
        match name_or_path {
            "paper" => Ok(Template::paper()),
            "landmark" => Ok(Template::landmark()),
            "ruler" => Ok(Template::ruler()),
            path => Template::from_file(Path::new(path)),
        }
    }

    pub fn from_file(path: &Path) -> Result<Template, EvalError> {
        let fail = |message: String| EvalError::Template { path: path.to_owned(), message };
        let text = coil_checkpoints::files::read_text_limited(path, coil_checkpoints::files::JSON_LIMIT)
            .map_err(|e| fail(format!("{e} (built-in templates: paper, landmark, ruler)")))?;
        #[derive(Deserialize)]
        struct File {
            name: Option<String>,
            prefix: String,
            filler: String,
            needle: String,
            suffix: String,
        }
        let file: File = serde_json::from_str(&text).map_err(|e| fail(format!("invalid template JSON: {e}")))?;
        let base = file.name.unwrap_or_else(|| path.file_stem().map_or("custom".into(), |s| s.to_string_lossy().into_owned()));
        let hash = content_hash(&[&file.prefix, &file.filler, &file.needle, &file.suffix]);
        let template = Template {
            name: format!("{base}#{:08x}", hash as u32),
            prefix: file.prefix,
            filler: file.filler,
            needle: file.needle,
            suffix: file.suffix,
        };
        if !template.needle.contains("{key}") {
            return Err(fail("the needle must contain {key}".into()));
        }
        if template.filler.is_empty() {
            return Err(fail("the filler must not be empty".into()));
        }
        Ok(template)
    }

    pub fn needle_for(&self, key: &str) -> String {
        self.needle.replace("{key}", key)
    }
}

/// [`Fnv1a`] over `parts`, each followed by a zero byte.
fn content_hash(parts: &[&str]) -> u64 {
    parts.iter().fold(Fnv1a::default(), |hash, part| hash.write(part.as_bytes()).write(&[0])).finish()
}
