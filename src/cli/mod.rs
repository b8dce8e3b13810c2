//! The `coil` command line: arguments in, a validated plan, then library calls.

pub mod args;
pub mod calibrate;
mod convert;
mod devices;
mod input;
mod inspect;
mod load;
mod logits_file;
pub mod passkey;
mod plan;
mod progress;
mod run;
mod score;
pub mod stats;

pub use convert::convert;
pub use devices::devices;
pub use inspect::inspect;
pub use run::run;
pub use score::score;

/// The files a command reads besides its text: the checkpoint's own files (config, tokenizer,
/// training.json, the weights and their shards and index: `model*` and `pytorch_model*`; not
/// whatever else the folder holds, such as states saved there) and the thresholds files its
/// mitigations name. Outputs must not replace them either.
/// How to give a model without a tokenizer.json one, for the errors of commands that need text.
pub(crate) const NO_TOKENIZER: &str = "the checkpoint has no tokenizer.json; give one with --tokenizer FILE \
     (the released Mamba-2 checkpoints use GPT-NeoX-20B's tokenizer.json)";

pub(crate) fn read_files(model: Option<&std::path::Path>, tokenizer: Option<&std::path::Path>, mitigations: &[String]) -> Vec<std::path::PathBuf> {
    let checkpoint_file = |name: &str| {
        ["config.json", "tokenizer.json", "training.json"].contains(&name) || name.starts_with("model") || name.starts_with("pytorch_model")
    };
    let mut files: Vec<std::path::PathBuf> = model
        .filter(|m| m.is_dir())
        .and_then(|m| std::fs::read_dir(m).ok())
        .map(|entries| entries.flatten().filter(|e| e.file_name().to_str().is_some_and(checkpoint_file)).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.extend(tokenizer.map(std::path::Path::to_path_buf));
    // A spec that does not parse is reported when the plan is resolved; it names no file here.
    for mitigation in mitigations.iter().filter_map(|spec| coil::Mitigation::parse_list(spec).ok()).flatten() {
        if let coil::Mitigation::StateNorm { thresholds: coil::Thresholds::File(path), .. } = mitigation {
            files.push(path);
        }
    }
    files
}

/// Checks a command's output files before any work starts: none may land on one of its input
/// files (`inputs`; writing the results would replace the input), two may not land on one file,
/// none may be an existing folder, and each one's folder must exist (links followed, a dangling
/// one to the file it would create). Without this the mistake surfaced only after the whole run,
/// or not at all.
/// `--device-stats FILE`: the traffic of the backend `models` ran on and the tokens they ran, as
/// one JSON object (written atomically; nothing without the flag).
pub(crate) fn write_device_stats(path: Option<&std::path::Path>, models: &[&coil::Model]) -> anyhow::Result<()> {
    use anyhow::Context;
    let (Some(path), Some(first)) = (path, models.first()) else {
        return Ok(());
    };
    let traffic = first.device_traffic();
    let tokens = models.iter().map(|m| m.tokens_run()).fold((0, 0), |(p, d), t| (p + t.prefill, d + t.decode));
    let stats = serde_json::json!({
        "device": first.backend_name(),
        "launches": traffic.launches,
        "syncs": traffic.syncs,
        "bytes_up": traffic.bytes_up,
        "bytes_down": traffic.bytes_down,
        "load_bytes_up": traffic.load_bytes_up,
        "prefill_tokens": tokens.0,
        "decode_tokens": tokens.1,
    });
    coil::files::write_atomically(path, |temporary| std::fs::write(temporary, format!("{stats}\n")))
        .with_context(|| format!("--device-stats {}", path.display()))
}

pub(crate) fn check_outputs(inputs: Vec<std::path::PathBuf>, outputs: &[(&str, Option<&std::path::Path>)]) -> anyhow::Result<()> {
    use anyhow::bail;
    use std::path::{Path, PathBuf};
    let inputs: Vec<PathBuf> = inputs.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, output) in outputs {
        let Some(output) = output else { continue };
        // Where the bytes land: links followed (a dangling one names the file it creates).
        let target = coil::files::resolve_output(output).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", output.display()))?;
        if target.is_dir() {
            bail!("{flag} {}: is a folder, not a file", output.display());
        }
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Ok(folder) = parent.canonicalize() else {
            bail!("{flag} {}: the folder {} does not exist", output.display(), parent.display());
        };
        let Some(name) = target.file_name() else { bail!("{flag} {}: names no file", output.display()) };
        if name.len() > 255 {
            bail!("{flag} {}: the name is longer than the 255 bytes a file name may have", output.display());
        }
        let at = folder.join(name);
        if inputs.contains(&at) {
            bail!("{flag} {}: is also an input of this command; writing it would replace the input", output.display());
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == at) {
            bail!("{other} and {flag} both name {}: one would overwrite the other", output.display());
        }
        seen.push((flag, at));
    }
    Ok(())
}
