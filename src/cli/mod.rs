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

/// Checks a command's output files before any work starts: none may name one of its input files
/// (writing the results would replace the input), none may be an existing folder, and each one's
/// folder must exist. Without this the mistake surfaced only after the whole run, or not at all.
pub(crate) fn check_outputs(inputs: &[Option<&std::path::Path>], outputs: &[(&str, Option<&std::path::Path>)]) -> anyhow::Result<()> {
    use anyhow::bail;
    let inputs: Vec<std::path::PathBuf> = inputs.iter().flatten().filter_map(|p| p.canonicalize().ok()).collect();
    // Where an output lands (it may not exist yet): its folder resolved, then its name.
    let resolved = |p: &std::path::Path| {
        p.canonicalize().ok().or_else(|| {
            let parent = p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    let mut seen: Vec<(&str, std::path::PathBuf)> = Vec::new();
    for &(flag, output) in outputs {
        let Some(output) = output else { continue };
        if let Some(at) = resolved(output) {
            if let Some((other, _)) = seen.iter().find(|(_, p)| *p == at) {
                bail!("{other} and {flag} both name {}: one would overwrite the other", output.display());
            }
            seen.push((flag, at));
        }
        if output.is_dir() {
            bail!("{flag} {}: is a folder, not a file", output.display());
        }
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!("{flag} {}: the folder {} does not exist", output.display(), parent.display());
        }
        if output.canonicalize().is_ok_and(|o| inputs.contains(&o)) {
            bail!("{flag} {}: is also an input of this command; writing it would replace the input", output.display());
        }
    }
    Ok(())
}
