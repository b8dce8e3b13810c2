//! `coil run`: stream a prompt in, generate text out.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coil::{Sampler, SamplingConfig, Session};

use super::args::{RunArgs, SamplingArgs};
use super::input::InputSource;
use super::load::load;
use super::progress::Progress;

pub fn run(args: RunArgs) -> Result<()> {
    let sampling = sampling_config(&args.sampling)?;
    // --state-in and --state-out may be one file (continue a stream and save it back).
    let mut inputs = super::read_files(args.model.model.as_deref(), args.model.load.tokenizer.as_deref(), &args.mitigation.specs);
    inputs.extend(args.prompt_file.iter().chain(&args.token_ids).cloned());
    super::check_outputs(inputs, &[("--state-out", args.state_out.as_deref()), ("--device-stats", args.device_stats.as_deref())])?;
    let loaded = load(&args.model)?;
    if let coil::Source::Embedded(name) = &loaded.source() {
        // The default a first run lands on: say what it is before it writes nonsense.
        let what = if name == "random" { "has random weights (it checks the engine against HF)".to_owned() } else { "was trained here for passkey retrieval only".to_owned() };
        eprintln!(
            "note: embedded:{name} is a tiny checkpoint compiled into Coil ({} parameters, a {}-token vocabulary) and {what}: \
             it writes no sensible text beyond that; give --model DIR for a real checkpoint (docs/official-checkpoints.md)",
            loaded.model().parameter_count(),
            loaded.model().vocab_size()
        );
    }
    let input = match (&args.prompt, &args.prompt_file, &args.token_ids) {
        (Some(text), _, _) => InputSource::Text(text.clone()),
        (_, Some(path), _) => InputSource::TextFile(path.clone()),
        (_, _, Some(path)) => InputSource::TokenIds(path.clone()),
        _ => InputSource::Stdin,
    };

    let plan = super::plan::resolve(&loaded, &args.mitigation)?;
    let mut session = match &args.state_in {
        Some(path) => {
            let state = loaded.model().load_state(path)?;
            Session::with_state_and_plan(loaded.model().clone(), state, plan)
                .with_context(|| format!("cannot continue from {}", path.display()))?
        }
        None => Session::with_plan(loaded.model().clone(), plan),
    };
    session.set_piece_len(args.model.load.piece_len);

    let mut progress = Progress::new("prefill", input.len_hint());
    let prompt_tokens = input.stream_pieces(loaded.tokenizer_if_any(), args.model.load.piece_len, &mut progress, |piece| {
        session.prefill(piece)?;
        Ok(())
    })?;
    progress.finish();
    if prompt_tokens == 0 {
        bail!("the prompt is empty: at least one token is needed to start generating");
    }
    eprintln!(
        "prefill: {prompt_tokens} tokens in {:.2} s ({:.0} tok/s)",
        progress.elapsed().as_secs_f64(),
        progress.rate()
    );

    let end_of_text = if args.ignore_eos {
        None
    } else {
        loaded.tokenizer_if_any().and_then(|t| t.token_id("<|endoftext|>").or_else(|| t.token_id("</s>")))
    };
    let mut sampler = Sampler::new(sampling);
    let mut decoder = loaded.tokenizer_if_any().map(|t| t.stream_decoder());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failure: Option<anyhow::Error> = None;
    let started = std::time::Instant::now();
    let generated = session.generate(&mut sampler, args.max_new_tokens, loaded.vocab_limit(), |token| {
        if Some(token) == end_of_text {
            return false;
        }
        let text = match decoder.as_mut() {
            Some(d) => d.push(token).map_err(anyhow::Error::from),
            None => Ok(format!("{token} ")),
        };
        let written = text.and_then(|t| {
            out.write_all(t.as_bytes())?;
            out.flush().map_err(anyhow::Error::from)
        });
        match written {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e).context("cannot write the generated text");
    }
    // Nothing asked, nothing printed (`--max-new-tokens 0` ingests a prompt, for --state-out).
    if args.max_new_tokens > 0 {
        writeln!(out)?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("decode: {} tokens in {seconds:.2} s ({:.1} tok/s)", generated.len(), generated.len() as f64 / seconds.max(1e-9));
    }

    if let Some(path) = &args.state_out {
        session.state().save(path)?;
        eprintln!("state after {} tokens saved to {}", session.position(), path.display());
    }
    super::write_device_stats(args.device_stats.as_deref(), &[loaded.model()])
}

fn sampling_config(args: &SamplingArgs) -> Result<SamplingConfig> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    Ok(SamplingConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed })
}
