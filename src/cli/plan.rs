//! `--mitigate` specs to a resolved plan for the loaded model.

use std::sync::Arc;

use anyhow::{Context, Result};
use coil::{Mitigation, Plan, Thresholds};

use super::args::MitigationArgs;
use coil::Loaded;

/// The `--mitigate` value that stands for the checkpoint's own best mitigation.
pub const BEST: &str = "best";

pub fn resolve(loaded: &Loaded, args: &MitigationArgs) -> Result<Arc<Plan>> {
    let mut mitigations = Vec::new();
    for spec in &args.specs {
        let spec = match spec.trim() {
            BEST => loaded.best_mitigation().with_context(|| {
                format!("--mitigate best: {} names no best mitigation (`best_mitigation` in its training.json)", loaded.source())
            })?,
            spec => spec,
        };
        mitigations.extend(Mitigation::parse_list(spec).map_err(anyhow::Error::msg).context("bad --mitigate")?);
    }
    // state-norm:calibrate=T runs the checkpoint's probe text; tokenize it only when asked for.
    let calibration_length = mitigations
        .iter()
        .filter_map(|m| match m {
            Mitigation::StateNorm { thresholds: Thresholds::Calibrate { tokens, .. }, .. } => Some(*tokens),
            _ => None,
        })
        .max();
    let calibration = match calibration_length {
        Some(tokens) => {
            let tokenizer = loaded
                .tokenizer_if_any()
                .with_context(|| format!("state-norm:calibrate streams the `{}` probe, which needs a tokenizer ({}), or give thresholds=FILE instead", loaded.probe().name(), super::NO_TOKENIZER))?;
            Some(loaded.probe().tokens(tokenizer, tokens)?)
        }
        None => None,
    };
    let here = std::env::current_dir().context("cannot read the working directory")?;
    Ok(Arc::new(Plan::resolve(loaded.model(), &mitigations, calibration.as_deref(), &here)?))
}
