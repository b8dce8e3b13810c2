//! Diagnostics callbacks: per layer and head readings of the state at regular intervals of a
//! stream, the same numbers `coil stats` writes (docs/mitigations.md explains what they show).

use crate::{Error, HeadStats, Session};

/// The state's diagnostics at one point of a stream, handed to the callback of
/// [`prefill_with_diagnostics`]. Every table is `[layer][head]`.
///
/// ```
/// let loaded = coil::load_default()?;
/// let mut session = loaded.session();
/// let tokens = loaded.encode(&"The grass is green. ".repeat(40))?;
/// let mut last = None;
/// coil::prefill_with_diagnostics(&mut session, &tokens, 64, |d| last = Some(d.clone()))?;
/// let last = last.expect("at least one report");
/// assert_eq!(last.position, tokens.len() as u64);
/// let layers = loaded.model().config().n_layer;
/// assert_eq!(last.head_norms.len(), layers);
/// assert!(last.head_stats[0][0].tokens > 0);
/// # Ok::<(), coil::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Diagnostics {
    /// Tokens consumed since the stream began.
    pub position: u64,
    /// dt and decay statistics of each head over the tokens since the previous report.
    pub head_stats: Vec<Vec<HeadStats>>,
    /// Frobenius norm of each head's `[P, N]` state: growth without bound is state collapse.
    pub head_norms: Vec<Vec<f32>>,
    /// Running sum of `log(alpha)` over the stream: its exponential is how much of the first
    /// token's input each head still holds.
    pub log_retention: Vec<Vec<f64>>,
}

/// Prefills `tokens` in pieces of `interval` tokens and calls `on_report` after each piece with
/// the state's [`Diagnostics`]. Recording costs little, and is switched off again on return.
///
/// The results equal one [`Session::prefill`] of the same tokens up to f32 rounding (piece
/// boundaries change the chunking of the scan, not the arithmetic).
///
/// ```
/// let loaded = coil::load_default()?;
/// let tokens = loaded.encode(&"Here we go again. ".repeat(100))?;
/// let mut session = loaded.session();
/// let mut largest = Vec::new();
/// coil::prefill_with_diagnostics(&mut session, &tokens, 128, |d| {
///     let norm = d.head_norms.iter().flatten().fold(0f32, |a, &b| a.max(b));
///     largest.push((d.position, norm));
/// })?;
/// assert_eq!(largest.len(), tokens.len().div_ceil(128));
/// assert!(session.logits().is_some());
/// # Ok::<(), coil::Error>(())
/// ```
pub fn prefill_with_diagnostics(
    session: &mut Session,
    tokens: &[u32],
    interval: usize,
    mut on_report: impl FnMut(&Diagnostics),
) -> Result<(), Error> {
    if tokens.is_empty() {
        return Err(coil_ssm::Error::EmptyInput.into());
    }
    session.state_mut().record_stats(true);
    let result = (|| {
        for piece in tokens.chunks(interval.max(1)) {
            session.prefill(piece)?;
            let state = session.state_mut();
            let head_stats = state.take_stats().expect("recording was switched on above");
            let report = Diagnostics { position: state.position(), head_stats, head_norms: state.head_norms(), log_retention: state.log_retention() };
            on_report(&report);
        }
        Ok(())
    })();
    session.state_mut().record_stats(false);
    result
}
