//! Texts that long-context evaluation streams through a model: the passkey filler of the
//! "Stuffed Mamba" paper (and of Landmark Attention before it), and the paper's "newlines" probe.

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
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Probe, String> {
        match s {
            "filler" => Ok(Probe::Filler),
            "newlines" => Ok(Probe::Newlines),
            other => Err(format!("unknown probe `{other}` (expected filler or newlines)")),
        }
    }
}

impl Probe {
    /// Exactly `tokens` token ids of the probe: the tokenized unit repeated and cut to length.
    /// The unit is tokenized once, so this costs nothing for a million tokens.
    pub fn tokens(&self, tokenizer: &Tokenizer, tokens: usize) -> Result<Vec<u32>, coil_ssm::LoadError> {
        let (head, unit) = match self {
            Probe::Filler => (tokenizer.encode(PASSKEY_PREFIX)?, tokenizer.encode(PASSKEY_FILLER)?),
            Probe::Newlines => (Vec::new(), tokenizer.encode("\n")?),
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
