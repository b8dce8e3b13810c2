//! `coil calibrate`: per-head state norms after a calibration text, as state-norm thresholds.

use anyhow::{Context, Result};
use coil::{calibrate, write_thresholds};

use super::args::CalibrateArgs;
use super::input::InputSource;
use super::load::load;

pub fn run(args: CalibrateArgs) -> Result<()> {
    let mut inputs = super::read_files(args.model.model.as_deref(), args.model.load.tokenizer.as_deref(), &args.mitigation.specs);
    inputs.extend(args.text_file.iter().cloned());
    super::check_outputs(inputs, &[("--out", Some(&args.out))])?;
    let loaded = load(&args.model)?;
    if !(args.factor > 0.0 && args.factor.is_finite()) {
        anyhow::bail!("--factor must be a positive number, got {}", args.factor);
    }
    let length = args.length.or_else(|| loaded.train_length()).unwrap_or(8192);
    check_length(if args.length.is_some() { "--length" } else { "the checkpoint's training length (training.json)" }, length)?;
    let tokens = calibration_tokens(&loaded, args.text_file.as_ref(), length)?;
    let plan = super::plan::resolve(&loaded, &args.mitigation)?;
    let started = std::time::Instant::now();
    let thresholds = calibrate(loaded.model(), &plan, &tokens, args.factor)?;
    // A factor so small (or large) that a threshold rounds to 0 or infinity: state-norm refuses
    // such a file, so refuse to write it.
    if let Some((l, h)) = thresholds.iter().enumerate().find_map(|(l, t)| t.iter().position(|&v| !(v > 0.0 && v.is_finite())).map(|h| (l, h))) {
        anyhow::bail!(
            "--factor {} makes layer {l} head {h}'s threshold {} (its state norm times the factor); state-norm needs positive finite thresholds",
            args.factor,
            thresholds[l][h]
        );
    }
    let provenance = serde_json::json!({
        "model": loaded.source().to_string(),
        "tokens": tokens.len(),
        "text": args.text_file.as_ref().map_or_else(|| format!("the {} probe", loaded.probe().name()), |p| p.display().to_string()),
        "factor": args.factor,
        "mitigation": plan.describe(),
    });
    write_thresholds(&args.out, &thresholds, provenance)?;
    eprintln!(
        "calibrated {} layers x {} heads on {} tokens in {:.2} s; thresholds written to {}",
        thresholds.len(),
        thresholds.first().map_or(0, Vec::len),
        tokens.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Refuses a token count of 0 or past [`coil::MAX_CALIBRATION_TOKENS`], naming where it
/// came from.
pub fn check_length(source: &str, length: usize) -> Result<()> {
    let most = coil::MAX_CALIBRATION_TOKENS;
    if length == 0 {
        anyhow::bail!("{source} is 0: give at least 1 token to stream");
    }
    if length > most {
        anyhow::bail!("{source} asks for {length} tokens, which are held in memory here: at most {most} (2^26)");
    }
    Ok(())
}

/// The first `length` tokens of a text file, or of the checkpoint's probe (the haystack it was
/// trained on, else the passkey filler).
pub fn calibration_tokens(loaded: &coil::Loaded, text: Option<&std::path::PathBuf>, length: usize) -> Result<Vec<u32>> {
    let tokenizer = loaded.tokenizer_if_any().with_context(|| format!("calibration text needs a tokenizer: {}", super::NO_TOKENIZER))?;
    let tokens = match text {
        None => loaded.probe().tokens(tokenizer, length)?,
        Some(path) => {
            let mut ids = Vec::with_capacity(length.min(1 << 20));
            InputSource::TextFile(path.clone()).stream_tokens(Some(tokenizer), |block, _| {
                let room = length - ids.len().min(length);
                ids.extend_from_slice(&block[..block.len().min(room)]);
                Ok(())
            })?;
            ids
        }
    };
    match text {
        Some(path) if tokens.is_empty() => anyhow::bail!("{}: the text is empty (no tokens)", path.display()),
        // A text shorter than asked for ends early: say so, since the numbers then describe fewer tokens.
        Some(path) if tokens.len() < length => {
            eprintln!("warning: {} holds {} tokens, fewer than the {length} asked for: streaming all {}", path.display(), tokens.len(), tokens.len())
        }
        _ => {}
    }
    Ok(tokens)
}
