//! `coil score`: per-token negative log-likelihood, and optionally every position's logits.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coil::Session;
use coil::loss::{negative_log_likelihood, Buckets};

use super::args::ScoreArgs;
use super::input::InputSource;
use super::load::load;
use super::logits_file::LogitsWriter;
use super::progress::Progress;

pub fn score(args: ScoreArgs) -> Result<()> {
    let outputs = [
        ("--logits-out", args.logits_out.as_deref()),
        ("--csv", args.csv.as_deref()),
        ("--plot", args.plot.as_deref()),
        ("--device-stats", args.device_stats.as_deref()),
    ];
    let mut inputs = super::read_files(args.model.model.as_deref(), args.model.load.tokenizer.as_deref(), &args.mitigation.specs);
    inputs.extend(args.text_file.iter().chain(&args.token_ids).cloned());
    super::check_outputs(inputs, &outputs)?;
    if let Some(plot) = &args.plot {
        coil::plot::check_svg(plot)?;
    }
    if args.bucket == Some(0) {
        bail!("--bucket must be at least 1 position");
    }
    let loaded = load(&args.model)?;
    let input = match (&args.text_file, &args.token_ids) {
        (_, Some(path)) => InputSource::TokenIds(path.clone()),
        (Some(path), None) => InputSource::TextFile(path.clone()),
        (None, None) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            bail!("nothing to score: give --text-file FILE or --token-ids FILE, or pipe the text in (`... | coil score`)")
        }
        (None, None) => InputSource::Stdin,
    };
    if args.per_token && args.bucket.is_some() && args.csv.is_none() {
        bail!("--per-token and --bucket would both write to standard output: give --csv FILE for the buckets");
    }
    let plan = super::plan::resolve(&loaded, &args.mitigation)?;
    let mut session = Session::with_plan(loaded.model().clone(), plan);
    session.set_piece_len(args.model.load.piece_len);
    let vocab = loaded.model().vocab_size();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Standard output holds one thing: the JSON object, the per-token table, the buckets' CSV or
    // the summary. Per-token losses stream out as they are computed, so memory stays flat
    // however long the input.
    let per_token = match (args.json, args.per_token) {
        (true, _) => PerToken::Json,
        (false, true) => PerToken::Table,
        (false, false) => PerToken::None,
    };
    // Written before the first loss (nothing is written for an input that fails at once).
    let header = match per_token {
        PerToken::Json => format!("{{\"model\":{},\"mitigation\":{},\"nll\":[", json(&loaded.source().to_string()), json(&session.plan().describe())),
        PerToken::Table => "# position\ttoken\tnll (nats; the token at `position` given all before it)\n".into(),
        PerToken::None => String::new(),
    };
    let mut scorer = Scorer { session, header, buckets: args.bucket.map(Buckets::new), per_token, sum: 0.0, scored: 0, tokens: 0, logits: None };

    let fed = (|| -> Result<Progress> {
        Ok(match &args.logits_out {
            // The logits file's header holds the row count: read the input first (as many tokens as
            // --max-logits-bytes allows), then score it.
            Some(path) => {
                let row_bytes = vocab as u64 * 4;
                let max_rows = args.max_logits_bytes / row_bytes;
                if max_rows == 0 {
                    bail!(
                        "--max-logits-bytes {} is less than one row of logits ({vocab} f32 values, {row_bytes} bytes): --logits-out could write nothing",
                        args.max_logits_bytes
                    );
                }
                let mut ids = Vec::new();
                input.stream_tokens(loaded.tokenizer_if_any(), |block, _| {
                    ids.extend_from_slice(block);
                    if ids.len() as u64 > max_rows {
                        bail!(
                            "--logits-out would write more than {max_rows} rows of {vocab} f32 logits, above the limit of {} bytes; raise it with --max-logits-bytes",
                            args.max_logits_bytes
                        );
                    }
                    Ok(())
                })?;
                if ids.is_empty() {
                    bail!("the input is empty: nothing to score");
                }
                scorer.logits = Some(LogitsWriter::create(path, ids.len() as u64, vocab, args.max_logits_bytes)?);
                let mut progress = Progress::new("score", Some(ids.len() as u64));
                for piece in ids.chunks(args.model.load.piece_len) {
                    scorer.score(piece, &mut out)?;
                    progress.advance(piece.len() as u64, scorer.tokens);
                }
                if let Some(writer) = scorer.logits.take() {
                    writer.finish()?;
                    eprintln!("logits [{}, {vocab}] written to {}", ids.len(), path.display());
                }
                progress
            }
            // Scored as the pieces arrive.
            None => {
                let mut progress = Progress::new("score", input.len_hint());
                input.stream_pieces(loaded.tokenizer_if_any(), args.model.load.piece_len, &mut progress, |piece| scorer.score(piece, &mut out))?;
                progress
            }
        })
    })();
    let progress = match fed {
        Ok(progress) => progress,
        Err(e) => {
            // Standard output stays one JSON object: the losses so far, then the error.
            if matches!(per_token, PerToken::Json) && scorer.tokens > 0 {
                let _ = writeln!(out, "],\"error\":{}}}", json(&format!("{e:#}")));
            }
            return Err(e);
        }
    };
    progress.finish();
    if scorer.tokens == 0 {
        bail!("the input is empty: nothing to score");
    }

    let mean = if scorer.scored == 0 { f64::NAN } else { scorer.sum / scorer.scored as f64 };
    let seconds = progress.elapsed().as_secs_f64();
    let stdout_taken = [&args.logits_out, &args.csv].into_iter().flatten().any(|p| is_stdout(p));
    let summary_on_stdout = !args.json && !args.per_token && (args.bucket.is_none() || args.csv.is_some()) && !stdout_taken;
    if scorer.scored == 0 {
        eprintln!("one token: no next-token prediction to score (the NLL needs at least two tokens)");
    } else if summary_on_stdout {
        writeln!(
            out,
            "mean NLL {mean:.4} nats over {} predicted tokens ({} in all), perplexity {:.3}",
            scorer.scored,
            scorer.tokens,
            mean.exp()
        )?;
        eprintln!("scored {} tokens in {seconds:.2} s ({:.0} tok/s)", scorer.tokens, scorer.tokens as f64 / seconds.max(1e-9));
    } else {
        eprintln!(
            "scored {} tokens in {seconds:.2} s ({:.0} tok/s): mean NLL {mean:.4} nats, perplexity {:.3}",
            scorer.tokens,
            scorer.tokens as f64 / seconds.max(1e-9),
            mean.exp()
        );
    }
    if let PerToken::Json = per_token {
        let finite = |v: f64| if v.is_finite() { Some(v) } else { None };
        write!(
            out,
            "],\"tokens\":{},\"scored\":{},\"mean_nll\":{},\"perplexity\":{}",
            scorer.tokens,
            scorer.scored,
            json(&finite(mean)),
            json(&finite(mean.exp()))
        )?;
        // Standard output holds one JSON object: the buckets, unless --csv takes them, go in it.
        if let (Some(buckets), None) = (&scorer.buckets, &args.csv) {
            let rows: Vec<_> = buckets
                .rows()
                .map(|(first, last, tokens, mean)| serde_json::json!({ "first_position": first, "last_position": last, "tokens": tokens, "mean_nll": finite(mean) }))
                .collect();
            write!(out, ",\"buckets\":{}", json(&rows))?;
        }
        writeln!(out, "}}")?;
    }
    if let (Some(buckets), Some(path)) = (&scorer.buckets, &args.plot) {
        let curve: Vec<(u64, f32)> = buckets.rows().map(|(first, _, _, mean)| (first, mean as f32)).collect();
        let title = format!("mean loss per {} positions ({}, mitigation {})", args.bucket.unwrap_or(1), loaded.source(), scorer.session.plan().describe());
        coil::plot::lines(path, &title, "position (tokens)", "NLL (nats)", &[("loss".to_owned(), curve)], None)?;
        eprintln!("loss curve written to {}", path.display());
    }
    if let Some(buckets) = &scorer.buckets {
        let mut text = String::from("first_position,last_position,tokens,mean_nll\n");
        for (first, last, n, mean) in buckets.rows() {
            text += &format!("{first},{last},{n},{mean:.6}\n");
        }
        match &args.csv {
            Some(path) => {
                coil::files::write_atomically(path, |temporary| std::fs::write(temporary, &text))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("per-bucket loss written to {}", path.display());
            }
            None if args.json => {} // in the JSON object above
            None => out.write_all(text.as_bytes())?,
        }
    }
    out.flush()?;
    super::write_device_stats(args.device_stats.as_deref(), &[loaded.model()])
}

/// Whether `path` is this process's standard output (`/dev/stdout`, `/proc/self/fd/1`, or the
/// file or pipe stdout is): a file written there must not get the summary mixed in.
fn is_stdout(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        id(path).is_some() && id(path) == id(std::path::Path::new("/dev/stdout"))
    }
    #[cfg(not(unix))]
    {
        path.as_os_str() == "/dev/stdout"
    }
}

/// Where each position's loss goes as it is computed.
#[derive(Clone, Copy)]
enum PerToken {
    /// `position<TAB>token<TAB>nll` lines.
    Table,
    /// Values of the JSON object's `nll` array.
    Json,
    /// Nowhere (the buckets sum them).
    None,
}

/// Scores a stream piece by piece: the loss of each token given everything before it, where the
/// first token of a piece is predicted by the previous piece's last logits.
struct Scorer {
    session: Session,
    /// What precedes the first loss on standard output.
    header: String,
    buckets: Option<Buckets>,
    per_token: PerToken,
    sum: f64,
    scored: u64,
    /// Tokens consumed so far.
    tokens: u64,
    logits: Option<LogitsWriter>,
}

impl Scorer {
    fn score(&mut self, piece: &[u32], out: &mut impl Write) -> Result<()> {
        let mut losses = Vec::with_capacity(piece.len());
        // The first token, predicted by the logits at the previous piece's last position (an id
        // out of range is the session's to report, with its position, below).
        if let (Some(previous), Some(&first)) = (self.session.logits(), piece.first()) {
            if (first as usize) < previous.len() {
                losses.push(negative_log_likelihood(previous, first as usize));
            }
        }
        let mut failure = None;
        let logits = &mut self.logits;
        self.session.score(piece, |position, row| {
            let i = (position - self.tokens) as usize;
            if let Some(&next) = piece.get(i + 1) {
                losses.push(negative_log_likelihood(row, next as usize));
            }
            if let Some(w) = logits.as_mut() {
                if let Err(e) = w.write_row(row) {
                    failure.get_or_insert(e);
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if self.tokens == 0 {
            out.write_all(self.header.as_bytes())?;
        }
        // `losses[j]` is the loss of the token at position `first + j`.
        let first = if self.tokens == 0 { 1 } else { self.tokens };
        for (j, &loss) in losses.iter().enumerate() {
            let position = first + j as u64;
            if let Some(b) = self.buckets.as_mut() {
                b.add(position, loss);
            }
            match self.per_token {
                PerToken::Table => writeln!(out, "{position}\t{}\t{loss:.6}", piece[(position - self.tokens) as usize])?,
                PerToken::Json => {
                    if self.scored + j as u64 > 0 {
                        out.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *out, &loss)?;
                }
                PerToken::None => {}
            }
        }
        self.sum += losses.iter().sum::<f64>();
        self.scored += losses.len() as u64;
        self.tokens += piece.len() as u64;
        Ok(())
    }
}

/// One JSON value as text (NaN and infinities as `null`, as serde_json writes them).
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain values serialise")
}
