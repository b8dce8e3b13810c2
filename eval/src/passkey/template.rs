//! Passkey prompt templates: the "Stuffed Mamba" paper's (for comparability), the Landmark
//! Attention wording it descends from, a RULER niah_single_1-style one, `bindings` (a
//! distractor-dense haystack: every block binds a fresh name to a key), or a user's JSON file.

use std::path::Path;

use coil_files::Fnv1a;
use serde::Deserialize;

use crate::passkey::EvalError;

/// The four parts of a passkey prompt. `{key}` in the needle is the key asked for. Where the
/// filler holds `{name}` or `{key}`, every block binds its own name and key
/// ([`super::names`]); `{name}` in the needle and the suffix is the name the needle binds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Template {
    /// The template's name in results.
    pub name: String,
    /// Text before the filler.
    pub prefix: String,
    /// One filler block, repeated (or drawn anew, with `{name}` / `{key}`) to reach the length.
    pub filler: String,
    /// The needle; `{key}` is replaced by the key.
    pub needle: String,
    /// Text after the filler, which the model answers.
    pub suffix: String,
    /// Decimal digits of every key (the paper's: 5).
    #[serde(default = "paper_digits")]
    pub key_digits: u32,
}

fn paper_digits() -> u32 {
    5
}

/// The most digits a key may have (a u64 holds 19).
pub const MAX_KEY_DIGITS: u32 = 18;

impl Template {
    /// The paper's template (long-context.md, "Passkey retrieval").
    pub fn paper() -> Template {
        Template {
            name: "paper".into(),
            prefix: crate::probes::PASSKEY_PREFIX.into(),
            filler: crate::probes::PASSKEY_FILLER.into(),
            needle: "The passkey is {key}. Remember it. {key} is the passkey.\n".into(),
            suffix: "\nWhat is the pass key? The passkey is".into(),
            key_digits: 5,
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
            key_digits: 5,
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
            key_digits: 5,
        }
    }

    /// Multi-query associative recall in the passkey's grammar: every filler block binds a fresh
    /// name to a two-digit key, the needle is one more such binding, and the question asks for
    /// its name. The state fills with bindings, so what a model recalls is set by its memory
    /// span, not by the length. `checkpoints/training/train_bindings.py` trains the embedded `bindings-n*`
    /// family on it.
    pub fn bindings() -> Template {
        Template {
            name: "bindings".into(),
            prefix: "Each name has a passkey. Remember them all.\n".into(),
            filler: "The passkey of {name} is {key}.\n".into(),
            needle: "The passkey of {name} is {key}.\n".into(),
            suffix: "What is the passkey of {name}? The passkey of {name} is".into(),
            key_digits: 2,
        }
    }

    /// Whether every filler block draws its own name and key.
    pub fn draws_filler(&self) -> bool {
        self.filler.contains("{name}") || self.filler.contains("{key}")
    }

    /// Filler block `block` of a sweep with `seed`.
    pub fn filler_for(&self, seed: u64, block: usize) -> String {
        if !self.draws_filler() {
            return self.filler.clone();
        }
        self.filler.replace("{name}", &super::names::filler_name(seed, block)).replace("{key}", &super::names::filler_key(seed, block, self.key_digits))
    }

    /// `paper`, `landmark`, `ruler`, `bindings`, or a JSON file with `prefix`, `filler`, `needle`,
    /// `suffix` (and optionally `name` and `key_digits`). A file's template is labelled `NAME#HASH` (its `name`, else the
    /// file's stem, and a hash of its four texts), so results of a file named `paper.json`, or
    /// of a file edited since, are never taken for another template's cells.
    pub fn named(name_or_path: &str) -> Result<Template, EvalError> {
        match name_or_path {
            "paper" => Ok(Template::paper()),
            "landmark" => Ok(Template::landmark()),
            "ruler" => Ok(Template::ruler()),
            "bindings" => Ok(Template::bindings()),
            path => Template::from_file(Path::new(path)),
        }
    }

    pub fn from_file(path: &Path) -> Result<Template, EvalError> {
        let fail = |message: String| EvalError::Template { path: path.to_owned(), message };
        let text = coil_files::read_text_limited(path, coil_files::JSON_LIMIT)
            .map_err(|e| fail(format!("{e} (built-in templates: paper, landmark, ruler, bindings)")))?;
        #[derive(Deserialize)]
        struct File {
            name: Option<String>,
            prefix: String,
            filler: String,
            needle: String,
            suffix: String,
            key_digits: Option<u32>,
        }
        let file: File = serde_json::from_str(&text).map_err(|e| fail(format!("invalid template JSON: {e}")))?;
        let base = file.name.unwrap_or_else(|| path.file_stem().map_or("custom".into(), |s| s.to_string_lossy().into_owned()));
        let key_digits = file.key_digits.unwrap_or(5);
        // A file that leaves the digits at the paper's 5 keeps the label it had before they existed.
        let digits = key_digits.to_string();
        let mut parts = vec![&file.prefix, &file.filler, &file.needle, &file.suffix];
        if key_digits != 5 {
            parts.push(&digits);
        }
        let hash = content_hash(&parts);
        let template = Template {
            name: format!("{base}#{:08x}", hash as u32),
            prefix: file.prefix,
            filler: file.filler,
            needle: file.needle,
            suffix: file.suffix,
            key_digits,
        };
        if !(1..=MAX_KEY_DIGITS).contains(&key_digits) {
            return Err(fail(format!("key_digits must be from 1 to {MAX_KEY_DIGITS}, not {key_digits}")));
        }
        if !template.needle.contains("{key}") {
            return Err(fail("the needle must contain {key}".into()));
        }
        if template.filler.is_empty() {
            return Err(fail("the filler must not be empty".into()));
        }
        Ok(template)
    }

    /// The needle binding `name` to `key`.
    pub fn needle_for(&self, name: &str, key: &str) -> String {
        self.needle.replace("{name}", name).replace("{key}", key)
    }

    /// The question asked about `name`.
    pub fn suffix_for(&self, name: &str) -> String {
        self.suffix.replace("{name}", name)
    }
}

/// [`Fnv1a`] over `parts`, each followed by a zero byte.
fn content_hash(parts: &[&String]) -> u64 {
    parts.iter().fold(Fnv1a::default(), |hash, part| hash.write(part.as_bytes()).write(&[0])).finish()
}
