//! `coil score`: per-token negative log-likelihood, and optionally every position's logits.

use std::io::Write;

use anyhow::{bail, Result};
use coil::Session;

use super::args::ScoreArgs;
use super::input::{read_ids, InputSource};
use super::load::load;
use super::logits_file::LogitsWriter;
use super::progress::Progress;

pub fn score(args: ScoreArgs) -> Result<()> {
    let loaded = load(&args.model)?;
    let ids = match (&args.text_file, &args.token_ids) {
        (_, Some(path)) => read_ids(path)?,
        (Some(path), None) => {
            let mut ids = Vec::new();
            InputSource::TextFile(path.clone()).stream_tokens(loaded.tokenizer.as_ref(), |block, _| {
                ids.extend_from_slice(block);
                Ok(())
            })?;
            ids
        }
        (None, None) => bail!("give --text-file or --token-ids"),
    };
    if ids.is_empty() {
        bail!("the input is empty: nothing to score");
    }
    let vocab = loaded.model.vocab_size();
    let mut writer = match &args.logits_out {
        Some(path) => Some(LogitsWriter::create(path, ids.len() as u64, vocab, args.max_logits_bytes)?),
        None => None,
    };

    let mut session = Session::new(loaded.model.clone());
    session.set_piece_len(args.model.piece_len);
    let mut progress = Progress::new("score", Some(ids.len() as u64));
    // nll[t] is the loss of predicting ids[t + 1] from the logits at position t.
    let mut nll = Vec::with_capacity(ids.len().saturating_sub(1));
    let mut failure = None;
    session.score(&ids, |position, row| {
        let t = position as usize;
        if let Some(&next) = ids.get(t + 1) {
            nll.push(negative_log_likelihood(row, next as usize));
        }
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write_row(row) {
                failure.get_or_insert(e);
            }
        }
        if t % 256 == 0 || t + 1 == ids.len() {
            progress.advance((t + 1) as u64 - progress.tokens(), (t + 1) as u64);
        }
    })?;
    progress.finish();
    if let Some(e) = failure {
        return Err(e);
    }
    if let (Some(w), Some(path)) = (writer, &args.logits_out) {
        w.finish()?;
        eprintln!("logits [{}, {vocab}] written to {}", ids.len(), path.display());
    }

    let mean = if nll.is_empty() { f64::NAN } else { nll.iter().sum::<f64>() / nll.len() as f64 };
    eprintln!(
        "scored {} tokens in {:.2} s ({:.0} tok/s): mean NLL {mean:.4} nats, perplexity {:.3}",
        ids.len(),
        progress.elapsed().as_secs_f64(),
        progress.rate(),
        mean.exp()
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        let report = serde_json::json!({
            "model": loaded.source.to_string(),
            "tokens": ids.len(),
            "scored": nll.len(),
            "mean_nll": if mean.is_finite() { Some(mean) } else { None },
            "perplexity": if mean.is_finite() { Some(mean.exp()) } else { None },
            "nll": nll,
        });
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "# position\ttoken\tnll (nats; the token at `position` given all before it)")?;
        for (i, value) in nll.iter().enumerate() {
            writeln!(out, "{}\t{}\t{value:.6}", i + 1, ids[i + 1])?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `-log softmax(logits)[target]`, in f64 over the full logit row (padding columns included,
/// as the reference's cross-entropy does).
fn negative_log_likelihood(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let v = super::negative_log_likelihood(&[3.0; 8], 5);
        assert!((v - 8f64.ln()).abs() < 1e-12);
    }
}
