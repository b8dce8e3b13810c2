//! Texts that long-context evaluation streams through a model: the passkey filler of the
//! "Stuffed Mamba" paper (and of Landmark Attention before it), the paper's "newlines" probe, and
//! the `bindings` haystack (a fresh name bound to a key in every sentence).

use coil_ssm::Tokenizer;

/// The paper's passkey template.
pub const PASSKEY_PREFIX: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.\n\n";
pub const PASSKEY_FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

/// A text probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The passkey filler block, repeated.
    Filler,
    /// Newline characters (the paper's 300,000-newline collapse probe).
    Newlines,
    /// The `bindings` template's prefix and filler: every sentence binds a fresh name to a key
    /// (the haystack the `bindings` checkpoints were trained on, which fills a state).
    Bindings,
}

/// Seed of the bindings probe's names and keys (not a passkey sweep's usual seeds, so that
/// calibrating on it does not read the sweep's own haystack).
pub const BINDINGS_PROBE_SEED: u64 = 0x5eed_0b1d;

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Probe, String> {
        match s {
            "filler" => Ok(Probe::Filler),
            "newlines" => Ok(Probe::Newlines),
            "bindings" => Ok(Probe::Bindings),
            other => Err(format!("unknown probe `{other}` (expected filler, newlines or bindings)")),
        }
    }
}

impl Probe {
    /// The probe for a checkpoint trained on `template` (its training.json's): the bindings
    /// haystack for `bindings`, else the paper's filler.
    pub fn for_template(template: Option<&str>) -> Probe {
        if template == Some("bindings") {
            Probe::Bindings
        } else {
            Probe::Filler
        }
    }

    /// Its name, as `--probe` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Probe::Filler => "filler",
            Probe::Newlines => "newlines",
            Probe::Bindings => "bindings",
        }
    }

    /// What it streams, in a few words.
    pub fn describe(&self) -> &'static str {
        match self {
            Probe::Filler => "the passkey filler block, repeated",
            Probe::Newlines => "newline characters",
            Probe::Bindings => "a fresh name bound to a key per sentence, the bindings haystack",
        }
    }

    /// Exactly `tokens` token ids of the probe: the tokenized unit repeated and cut to length.
    /// The unit is tokenized once, so this costs nothing for a million tokens (the bindings
    /// probe tokenizes each of its sentences: about a second per million tokens).
    pub fn tokens(&self, tokenizer: &Tokenizer, tokens: usize) -> Result<Vec<u32>, coil_ssm::LoadError> {
        let (head, unit) = match self {
            Probe::Filler => (tokenizer.encode(PASSKEY_PREFIX)?, tokenizer.encode(PASSKEY_FILLER)?),
            Probe::Newlines => (Vec::new(), tokenizer.encode("\n")?),
            Probe::Bindings => return bindings(tokenizer, tokens),
        };
        let mut ids = head;
        if unit.is_empty() {
            return Ok(ids);
        }
        while ids.len() < tokens {
            ids.extend_from_slice(&unit);
        }
        ids.truncate(tokens);
        Ok(ids)
    }
}

/// The bindings haystack, `tokens` long: the template's prefix, then a fresh binding per sentence.
fn bindings(tokenizer: &Tokenizer, tokens: usize) -> Result<Vec<u32>, coil_ssm::LoadError> {
    let template = crate::passkey::Template::bindings();
    let mut ids = tokenizer.encode(&template.prefix)?;
    let mut block = 0;
    while ids.len() < tokens {
        let sentence = tokenizer.encode(&template.filler_for(BINDINGS_PROBE_SEED, block))?;
        if sentence.is_empty() {
            break;
        }
        ids.extend_from_slice(&sentence);
        block += 1;
    }
    ids.truncate(tokens);
    Ok(ids)
}
