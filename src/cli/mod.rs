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
    for &(flag, output) in outputs {
        let Some(output) = output else { continue };
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
