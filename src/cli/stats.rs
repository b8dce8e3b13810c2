//! `coil stats`: per layer/head state diagnostics of a long run, streamed to CSV, with collapse
//! flags and a plot of the heads whose state grew most (long-context.md, "Diagnostics").

use std::io::Write;

use anyhow::{bail, Context, Result};
use coil::Session;
use coil::probes::Probe;

use super::args::StatsArgs;
use super::load::load;
use super::progress::Progress;

const HEADER: &str = "position,layer,head,norm,rms,mean,variance,max_abs,log_retention_first_token,mean_dt,min_dt,max_dt,mean_decay,norm_ratio_to_reference,collapsed";

/// One head's norm over the run, for the plot.
struct Trace {
    layer: usize,
    head: usize,
    norms: Vec<(u64, f32)>,
    reference: Option<f32>,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let mut inputs = super::read_files(args.model.model.as_deref(), args.model.load.tokenizer.as_deref(), &args.mitigation.specs);
    inputs.extend(args.text_file.iter().cloned());
    super::check_outputs(inputs, &[("--out", Some(&args.out)), ("--plot", args.plot.as_deref())])?;
    if let Some(plot) = &args.plot {
        coil::plot::check_svg(plot)?;
    }
    let loaded = load(&args.model)?;
    if args.every == 0 || args.length == 0 {
        bail!("--every and --length must be at least 1");
    }
    if args.text_file.is_none() && args.probe.is_none() {
        let probe = loaded.probe();
        eprintln!("note: no --text-file or --probe: streaming the `{}` probe ({})", probe.name(), probe.describe());
    }
    super::calibrate::check_length("--length", args.length)?;
    if !(args.collapse_factor > 0.0 && args.collapse_factor.is_finite()) {
        bail!("--collapse-factor must be a positive number, not {}", args.collapse_factor);
    }
    let tokenizer = loaded.tokenizer_if_any().with_context(|| format!("stats streams text, which needs a tokenizer: {}", super::NO_TOKENIZER))?;
    let tokens = match (&args.text_file, &args.probe) {
        (Some(path), _) => super::calibrate::calibration_tokens(&loaded, Some(path), args.length)?,
        (None, probe) => {
            let probe: Probe = match probe {
                Some(name) => name.parse().map_err(anyhow::Error::msg)?,
                None => loaded.probe(),
            };
            probe.tokens(tokenizer, args.length)?
        }
    };
    // A head's norm is compared with its norm at this position, which the stream must reach.
    if let Some(r) = args.reference_length.filter(|&r| r == 0 || r >= tokens.len()) {
        bail!("--reference-length {r} must be from 1 to one less than the {} tokens streamed: no head could be compared", tokens.len());
    }
    let reference_length = args
        .reference_length
        .unwrap_or_else(|| loaded.train_length().unwrap_or(8192).min(tokens.len() / 2))
        .max(1) as u64;
    let plan = super::plan::resolve(&loaded, &args.mitigation)?;
    let mut session = Session::with_plan(loaded.model().clone(), plan);
    session.state_mut().record_stats(true);

    // Written beside its name and renamed at the end: a killed run leaves the previous CSV whole.
    let partial = coil::files::Partial::new(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    let file = std::fs::File::create(partial.temporary()).with_context(|| format!("cannot create {}", partial.temporary().display()))?;
    let mut csv = std::io::BufWriter::new(file);
    writeln!(csv, "{HEADER}")?;
    let config = loaded.model().config();
    let (layers, heads) = (config.n_layer, config.n_heads);
    let mut traces: Vec<Trace> = (0..layers * heads)
        .map(|i| Trace { layer: i / heads, head: i % heads, norms: Vec::new(), reference: None })
        .collect();
    let mut progress = Progress::new("stats", Some(tokens.len() as u64));
    let head_len = config.head_dim * config.d_state;

    for piece in tokens.chunks(args.every) {
        session.prefill(piece)?;
        let position = session.position();
        let state = session.state_mut();
        let dt_stats = state.take_stats().expect("recording was switched on");
        let retention = state.log_retention();
        for (trace, i) in traces.iter_mut().zip(0..) {
            let (l, h) = (i / heads, i % heads);
            let values = &state.ssm_layer(l)[h * head_len..(h + 1) * head_len];
            let moments = Moments::of(values);
            if trace.reference.is_none() && position >= reference_length {
                trace.reference = Some(moments.norm);
            }
            let ratio = trace.reference.map(|r| moments.norm / r.max(f32::MIN_POSITIVE));
            let collapsed = ratio.is_some_and(|r| r > args.collapse_factor);
            let s = dt_stats[l][h];
            let count = s.tokens.max(1) as f64;
            writeln!(
                csv,
                "{position},{l},{h},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{},{}",
                moments.norm,
                moments.rms,
                moments.mean,
                moments.variance,
                moments.max_abs,
                retention[l][h],
                s.dt_sum / count,
                s.dt_min,
                s.dt_max,
                s.decay_sum / count,
                ratio.map_or(String::new(), |r| format!("{r:.4}")),
                collapsed as u8
            )?;
            trace.norms.push((position, moments.norm));
        }
        csv.flush()?;
        progress.advance(piece.len() as u64, position);
    }
    progress.finish();
    drop(csv);
    partial.finish().with_context(|| format!("cannot write {}", args.out.display()))?;

    let ratio = |t: &Trace| match (t.reference, t.norms.last()) {
        (Some(r), Some(&(_, n))) => n / r.max(f32::MIN_POSITIVE),
        _ => 1.0,
    };
    let flagged: Vec<String> = traces
        .iter()
        .filter(|t| ratio(t) > args.collapse_factor)
        .map(|t| format!("L{}H{} (x{:.1})", t.layer, t.head, ratio(t)))
        .collect();
    eprintln!(
        "{} tokens with mitigation `{}`: {} of {} heads grew more than {}x past position {reference_length}{}{}",
        tokens.len(),
        session.plan().describe(),
        flagged.len(),
        traces.len(),
        args.collapse_factor,
        if flagged.is_empty() { "" } else { ": " },
        flagged.join(", ")
    );
    eprintln!("diagnostics written to {}", args.out.display());
    if let Some(path) = &args.plot {
        traces.sort_by(|a, b| ratio(b).total_cmp(&ratio(a)).then(b.norms.last().map(|n| n.1).unwrap_or(0.0).total_cmp(&a.norms.last().map(|n| n.1).unwrap_or(0.0))));
        let title = format!("state norm of the 8 heads that grew most ({}, mitigation {})", loaded.source(), session.plan().describe());
        let series: Vec<(String, Vec<(u64, f32)>)> =
            traces.iter().take(8).map(|t| (format!("L{} H{}", t.layer, t.head), t.norms.clone())).collect();
        coil::plot::lines(path, &title, "position (tokens)", "||S_h||_F", &series, Some(reference_length))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// Frobenius norm, RMS, mean, variance and max |.| of one head's state, in f64.
struct Moments {
    norm: f32,
    rms: f32,
    mean: f32,
    variance: f32,
    max_abs: f32,
}

impl Moments {
    fn of(values: &[f32]) -> Moments {
        let n = values.len().max(1) as f64;
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = values.iter().map(|&v| (v as f64).powi(2)).sum();
        let mean = sum / n;
        Moments {
            norm: sum_sq.sqrt() as f32,
            rms: (sum_sq / n).sqrt() as f32,
            mean: mean as f32,
            variance: (sum_sq / n - mean * mean).max(0.0) as f32,
            max_abs: values.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        }
    }
}
