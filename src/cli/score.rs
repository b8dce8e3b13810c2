//! `coil score`: per-token negative log-likelihood, and optionally every position's logits.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coil::Session;
use coil_eval::loss::{negative_log_likelihood, Buckets};

use super::args::ScoreArgs;
use super::input::{read_ids, InputSource};
use super::load::load;
use super::logits_file::LogitsWriter;
use super::progress::Progress;

pub fn score(args: ScoreArgs) -> Result<()> {
    let outputs = [("--logits-out", args.logits_out.as_deref()), ("--csv", args.csv.as_deref()), ("--plot", args.plot.as_deref())];
    let mut inputs = super::read_files(args.model.model.as_deref(), &args.mitigation.specs);
    inputs.extend(args.text_file.iter().chain(&args.token_ids).cloned());
    super::check_outputs(inputs, &outputs)?;
    if let Some(plot) = &args.plot {
        coil_eval::plot::check_svg(plot)?;
    }
    if args.bucket == Some(0) {
        bail!("--bucket must be at least 1 position");
    }
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

    let plan = super::plan::resolve(&loaded, &args.mitigation)?;
    let mut session = Session::with_plan(loaded.model.clone(), plan);
    session.set_piece_len(args.model.piece_len);
    let mut buckets = args.bucket.map(Buckets::new);
    let mut progress = Progress::new("score", Some(ids.len() as u64));
    // nll[t] is the loss of predicting ids[t + 1] from the logits at position t.
    let mut nll = Vec::with_capacity(ids.len().saturating_sub(1));
    let mut failure = None;
    session.score(&ids, |position, row| {
        let t = position as usize;
        if let Some(&next) = ids.get(t + 1) {
            let loss = negative_log_likelihood(row, next as usize);
            nll.push(loss);
            if let Some(b) = buckets.as_mut() {
                b.add(position + 1, loss);
            }
        }
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write_row(row) {
                failure.get_or_insert(e);
            }
        }
        if t.is_multiple_of(256) || t + 1 == ids.len() {
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
    if nll.is_empty() {
        eprintln!("one token: no next-token prediction to score (the NLL needs at least two tokens)");
    } else {
        eprintln!(
            "scored {} tokens in {:.2} s ({:.0} tok/s): mean NLL {mean:.4} nats, perplexity {:.3}",
            ids.len(),
            progress.elapsed().as_secs_f64(),
            progress.rate(),
            mean.exp()
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let (Some(buckets), Some(path)) = (&buckets, &args.plot) {
        let curve: Vec<(u64, f32)> = buckets.rows().map(|(first, _, _, mean)| (first, mean as f32)).collect();
        let title = format!("mean loss per {} positions ({}, mitigation {})", args.bucket.unwrap_or(1), loaded.source, session.plan().describe());
        coil_eval::plot::lines(path, &title, "position (tokens)", "NLL (nats)", &[("loss".to_owned(), curve)], None)?;
        eprintln!("loss curve written to {}", path.display());
    }
    if let Some(buckets) = &buckets {
        let mut text = String::from("first_position,last_position,tokens,mean_nll\n");
        for (first, last, n, mean) in buckets.rows() {
            text += &format!("{first},{last},{n},{mean:.6}\n");
        }
        match &args.csv {
            Some(path) => {
                coil_checkpoints::files::write_atomically(path, |temporary| std::fs::write(temporary, &text))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("per-bucket loss written to {}", path.display());
            }
            None => out.write_all(text.as_bytes())?,
        }
        // The buckets replace the per-token table (which --json still gives).
        if !args.json {
            out.flush()?;
            return Ok(());
        }
    }
    if args.json {
        let report = serde_json::json!({
            "model": loaded.source.to_string(),
            "mitigation": session.plan().describe(),
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

