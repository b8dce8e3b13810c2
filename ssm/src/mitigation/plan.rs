//! Mitigations resolved against one model: per-layer, per-head parameters the forward pass uses
//! directly. The plain model is the plan with no mitigation.

use std::path::Path;

use coil_kernels::{softplus, DtStep};

use super::spec::{Mitigation, Thresholds};
use crate::{Error, Model};

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StateNormPlan {
    pub every: u64,
    /// `[H]`; infinite for heads out of scope.
    pub thresholds: Vec<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowPlan {
    pub size: u64,
    pub granularity: u64,
}

impl WindowPlan {
    /// First position the state of the token at `position` holds: `max(0, floor((t-R+1)/Q)*Q)`.
    pub fn start(&self, position: u64) -> u64 {
        (position + 1).saturating_sub(self.size) / self.granularity * self.granularity
    }
}

/// What one layer runs with.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LayerPlan {
    /// `[H]` A after every A transform.
    pub a: Vec<f32>,
    /// `[H]` `ln(lambda)` summed over rri mitigations.
    pub log_decay_offset: Vec<f32>,
    /// beta: B as written into the state is `b_scale * B`.
    pub b_scale: f32,
    /// Applied in order to `softplus(dt_raw + dt_bias)`; starts with the checkpoint's clamp.
    pub dt_steps: Vec<DtStep>,
    pub state_norm: Option<StateNormPlan>,
    pub window: Option<WindowPlan>,
}

/// Mitigations resolved for a model. Cheap to share (`Arc`) between sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub(crate) layers: Vec<LayerPlan>,
    mitigations: Vec<Mitigation>,
}

impl Plan {
    /// The mitigations this plan was resolved from (empty: the plain model).
    pub fn mitigations(&self) -> &[Mitigation] {
        &self.mitigations
    }

    /// `none`, or the specs joined by `;`.
    pub fn describe(&self) -> String {
        if self.mitigations.is_empty() {
            "none".into()
        } else {
            self.mitigations.iter().map(ToString::to_string).collect::<Vec<_>>().join(";")
        }
    }

    /// Whether the plan includes the sliding window (its states carry lagged inputs).
    pub fn has_window(&self) -> bool {
        self.layers.iter().any(|l| l.window.is_some())
    }

    pub(crate) fn window(&self) -> Option<WindowPlan> {
        self.layers.iter().find_map(|l| l.window)
    }

    /// A placeholder with no layers, replaced before use.
    pub(crate) fn empty() -> Plan {
        Plan { layers: Vec::new(), mitigations: Vec::new() }
    }

    /// The plain model: A = -exp(A_log), the checkpoint's dt clamp, nothing else.
    pub fn plain(model: &Model) -> Plan {
        let (low, high) = model.config().time_step_limit;
        let heads = model.config().n_heads;
        let layers = (0..model.config().n_layer)
            .map(|l| LayerPlan {
                a: model.a_log(l).iter().map(|v| -v.exp()).collect(),
                log_decay_offset: vec![0.0; heads],
                b_scale: 1.0,
                dt_steps: vec![DtStep::Clamp { min: vec![low; heads], max: vec![high; heads] }],
                state_norm: None,
                window: None,
            })
            .collect();
        Plan { layers, mitigations: Vec::new() }
    }

    /// Resolves `mitigations`, in order, for `model`. `calibration` supplies the tokens of
    /// `state-norm:calibrate=T` (the first T are used); `base_dir` resolves relative threshold
    /// files.
    pub fn resolve(model: &Model, mitigations: &[Mitigation], calibration: Option<&[u32]>, base_dir: &Path) -> Result<Plan, Error> {
        let config = model.config();
        let (n_layer, heads) = (config.n_layer, config.n_heads);
        let invalid = |m: &Mitigation, message: String| Error::Mitigation { spec: m.to_string(), message };
        let mut plan = Plan::plain(model);
        let (low, high) = config.time_step_limit;
        let mut dt_clamped = vec![vec![false; heads]; n_layer];

        for (index, m) in mitigations.iter().enumerate() {
            let scope = m.scope();
            if let Some(max) = scope.layers.max().filter(|&l| l >= n_layer) {
                return Err(invalid(m, format!("layer {max} does not exist (the model has {n_layer})")));
            }
            if let Some(max) = scope.heads.max().filter(|&h| h >= heads) {
                return Err(invalid(m, format!("head {max} does not exist (the model has {heads} per layer)")));
            }
            let in_scope = |l: usize, h: usize| scope.contains(l, h);
            match m {
                Mitigation::DtScale { factor, .. } => {
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        layer.dt_steps.push(DtStep::Scale((0..heads).map(|h| if in_scope(l, h) { *factor } else { 1.0 }).collect()));
                    }
                }
                Mitigation::DtClamp { min, max, .. } => {
                    let (lo, hi) = (min.unwrap_or(low), max.unwrap_or(high));
                    if lo > hi {
                        return Err(invalid(m, format!("min {lo} is above max {hi} (a bound not given keeps the checkpoint's)")));
                    }
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        let scoped: Vec<bool> = (0..heads).map(|h| in_scope(l, h)).collect();
                        layer.dt_steps.push(DtStep::Clamp {
                            min: scoped.iter().map(|&s| if s { lo } else { 0.0 }).collect(),
                            max: scoped.iter().map(|&s| if s { hi } else { f32::INFINITY }).collect(),
                        });
                        for (h, &s) in scoped.iter().enumerate() {
                            dt_clamped[l][h] |= s;
                        }
                    }
                }
                Mitigation::AScale { factor, .. } => {
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        for (h, a) in layer.a.iter_mut().enumerate() {
                            if in_scope(l, h) {
                                *a *= factor;
                            }
                        }
                    }
                }
                Mitigation::DecayClip { low: p_low, high: p_high, .. } => {
                    // r = -A * softplus(dt_bias): each head's log-decay per token at rest.
                    let rate = |l: usize, h: usize, a: f32| -a * softplus(model.dt_bias(l)[h]);
                    let mut rates: Vec<f64> = Vec::new();
                    for (l, layer) in plan.layers.iter().enumerate() {
                        rates.extend((0..heads).filter(|&h| in_scope(l, h)).map(|h| rate(l, h, layer.a[h]) as f64));
                    }
                    let (lo, hi) = (percentile(&mut rates, *p_low as f64), percentile(&mut rates, *p_high as f64));
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        for h in (0..heads).filter(|&h| in_scope(l, h)) {
                            let r = rate(l, h, layer.a[h]) as f64;
                            if r > 0.0 {
                                layer.a[h] = (layer.a[h] as f64 * r.clamp(lo, hi) / r) as f32;
                            }
                        }
                    }
                }
                Mitigation::Rri { lambda, beta, .. } => {
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        for (h, offset) in layer.log_decay_offset.iter_mut().enumerate() {
                            if in_scope(l, h) {
                                *offset += lambda.ln();
                            }
                        }
                        if scope.layers.contains(l) {
                            layer.b_scale *= beta;
                        }
                    }
                }
                Mitigation::StateNorm { thresholds, every, .. } => {
                    if plan.layers.iter().any(|l| l.state_norm.is_some()) {
                        return Err(invalid(m, "state-norm can appear only once".into()));
                    }
                    if plan.layers.iter().any(|l| l.window.is_some()) {
                        return Err(invalid(m, "state-norm cannot be combined with window".into()));
                    }
                    let taus = match thresholds {
                        Thresholds::Values(values) => values.clone(),
                        Thresholds::File(path) => read_thresholds(&base_dir.join(path))?,
                        Thresholds::Calibrate { tokens, factor } => {
                            let Some(text) = calibration else {
                                return Err(invalid(m, "calibration needs calibration tokens (the CLI uses the passkey filler)".into()));
                            };
                            if text.len() < *tokens {
                                return Err(invalid(m, format!("calibration text has {} tokens, {tokens} asked for", text.len())));
                            }
                            let before = Plan::resolve(model, &mitigations[..index], None, base_dir)?;
                            calibrate(model, &before, &text[..*tokens], *factor)?
                        }
                    };
                    if taus.len() != n_layer || taus.iter().any(|t| t.len() != heads) {
                        return Err(invalid(m, format!("thresholds must be {n_layer} layers of {heads} heads")));
                    }
                    if taus.iter().flatten().any(|t| t.is_nan() || *t <= 0.0) {
                        return Err(invalid(m, "thresholds must be positive".into()));
                    }
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        let thresholds = (0..heads).map(|h| if in_scope(l, h) { taus[l][h] } else { f32::INFINITY }).collect();
                        layer.state_norm = Some(StateNormPlan { every: *every, thresholds });
                    }
                }
                Mitigation::Window { size, granularity, .. } => {
                    if plan.layers.iter().any(|l| l.window.is_some()) {
                        return Err(invalid(m, "window can appear only once".into()));
                    }
                    if plan.layers.iter().any(|l| l.state_norm.is_some()) {
                        return Err(invalid(m, "window cannot be combined with state-norm".into()));
                    }
                    for (l, layer) in plan.layers.iter_mut().enumerate() {
                        if scope.layers.contains(l) {
                            layer.window = Some(WindowPlan { size: *size, granularity: *granularity });
                        }
                    }
                }
            }
        }
        // A dt-clamp replaces the checkpoint's clamp on the heads it covers.
        for (layer, clamped) in plan.layers.iter_mut().zip(&dt_clamped) {
            if let DtStep::Clamp { min, max } = &mut layer.dt_steps[0] {
                for (h, &c) in clamped.iter().enumerate() {
                    if c {
                        (min[h], max[h]) = (0.0, f32::INFINITY);
                    }
                }
            }
        }
        plan.mitigations = mitigations.to_vec();
        Ok(plan)
    }
}

/// numpy's default ("linear") percentile.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let position = p / 100.0 * (values.len() - 1) as f64;
    let (below, fraction) = (position.floor() as usize, position.fract());
    let above = (below + 1).min(values.len() - 1);
    values[below] + (values[above] - values[below]) * fraction
}

/// Per-head state norms after `tokens` from the empty state, times `factor`.
pub fn calibrate(model: &Model, plan: &Plan, tokens: &[u32], factor: f32) -> Result<Vec<Vec<f32>>, Error> {
    let mut state = model.new_state_for(plan);
    for piece in tokens.chunks(crate::session::DEFAULT_PIECE_LEN) {
        model.forward_with(plan, &mut state, piece, crate::LogitRows::None)?;
    }
    Ok(state.head_norms().into_iter().map(|layer| layer.into_iter().map(|n| n * factor).collect()).collect())
}

/// `{"thresholds": [[tau per head] per layer]}`.
pub fn read_thresholds(path: &Path) -> Result<Vec<Vec<f32>>, Error> {
    let fail = |message: String| Error::Thresholds { path: path.to_owned(), message };
    let text = coil_files::read_text_limited(path, coil_files::JSON_LIMIT).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let layers = value.get("thresholds").and_then(|t| t.as_array()).ok_or_else(|| fail("`thresholds` must be a list of lists".into()))?;
    layers
        .iter()
        .map(|layer| {
            layer
                .as_array()
                .ok_or_else(|| fail("each layer's thresholds must be a list".into()))?
                .iter()
                .map(|v| v.as_f64().map(|v| v as f32).ok_or_else(|| fail(format!("`{v}` is not a number"))))
                .collect()
        })
        .collect()
}

/// Writes thresholds in the format [`read_thresholds`] reads.
pub fn write_thresholds(path: &Path, thresholds: &[Vec<f32>], provenance: serde_json::Value) -> Result<(), Error> {
    let json = serde_json::json!({ "thresholds": thresholds, "provenance": provenance });
    let text = serde_json::to_string_pretty(&json).expect("serialisable");
    coil_files::write_atomically(path, |temporary| std::fs::write(temporary, &text)).map_err(|e| Error::Thresholds { path: path.to_owned(), message: e.to_string() })
}
