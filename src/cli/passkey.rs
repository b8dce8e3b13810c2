//! `coil passkey` and `coil report`: the capacity sweep and its report.


use anyhow::{bail, Context, Result};
use coil::Source;
use coil::passkey::{
    check_sweep, format_state_size, parse_lengths, read_results, run_sweep, write_report, CoilSubject, Report, ResultsFile, Shard, SweepConfig, Template,
};

use super::args::{LoadArgs, MitigationArgs, ModelArgs, PasskeyArgs, ReportArgs};
use super::load::load_on;
use super::progress::Progress;

/// The name each swept model goes by in the results (and what a resumed sweep matches cells on):
/// its folder's name, or as much more of its path as tells apart two folders of the same name
/// (`runA/passkey-n32` and `runB/passkey-n32`). The same checkpoint twice is an error.
fn labels(sources: &[&Source]) -> Result<Vec<String>> {
    let label = |source: &Source, depth: usize| match source {
        Source::Dir(d) => {
            let parts: Vec<_> = d.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            parts[parts.len().saturating_sub(depth)..].join("/")
        }
        Source::Embedded(name) => name.clone(),
        Source::Memory => "memory".to_owned(),
    };
    let mut names: Vec<String> = sources.iter().map(|s| label(s, 1)).collect();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            if names[i] != names[j] {
                continue;
            }
            let same = match (sources[i], sources[j]) {
                (Source::Dir(a), Source::Dir(b)) => a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a)),
                (Source::Embedded(a), Source::Embedded(b)) => a == b,
                _ => false, // a folder and an embedded checkpoint of the same name
            };
            let depth = (2..64).find(|&d| label(sources[i], d) != label(sources[j], d)).filter(|_| !same);
            let Some(depth) = depth else { bail!("the checkpoint {} is given twice", sources[i]) };
            let (a, b) = (label(sources[i], depth), label(sources[j], depth));
            (names[i], names[j]) = (a, b);
        }
    }
    Ok(names)
}

pub fn passkey(args: PasskeyArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!("--threshold must be between 0 and 1");
    }
    let lengths = parse_lengths(&args.lengths)?;
    if !(1..=coil::passkey::MAX_DEPTHS).contains(&args.depths) {
        bail!("--depths must be from 1 to {}, not {}", coil::passkey::MAX_DEPTHS, args.depths);
    }
    let template = Template::named(&args.template)?;
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: is a file, not a folder", args.out.display());
    }
    // The outputs must not land on an input (a template or checkpoint kept there).
    let mut inputs: Vec<std::path::PathBuf> = args.models.iter().flat_map(|m| super::read_files(Some(m), None, &[])).collect();
    inputs.extend(super::read_files(None, args.load.tokenizer.as_deref(), &args.arms));
    inputs.push(args.template.clone().into());
    let (report, accuracy) = (args.out.join("report.md"), args.out.join("accuracy.csv"));
    let in_out = args.out.is_dir();
    let outputs = [
        ("the report", Some(&*report).filter(|_| in_out)),
        ("the accuracy table", Some(&*accuracy).filter(|_| in_out)),
        ("--device-stats", args.device_stats.as_deref()),
    ];
    super::check_outputs(inputs, &outputs)?;
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?.unwrap_or(Shard::whole());
    let arms = if args.arms.is_empty() { vec!["none".to_owned()] } else { args.arms.clone() };
    if let Some((i, arm)) = arms.iter().enumerate().find(|(i, arm)| arms[..*i].contains(arm)) {
        bail!("--mitigate `{arm}` is given twice (arm {} repeats an earlier one)", i + 1);
    }
    // Without --model: the embedded family trained on this template (state sizes to compare).
    let sources: Vec<Option<std::path::PathBuf>> = if args.models.is_empty() {
        let family = coil::embedded_family(&args.template);
        if family.is_empty() {
            bail!("no checkpoint compiled into Coil was trained on the `{}` template: give --model", args.template);
        }
        family.into_iter().map(|n| Some(std::path::PathBuf::from(format!("embedded:{n}")))).collect()
    } else {
        args.models.iter().cloned().map(Some).collect()
    };

    // One device for every checkpoint of the sweep.
    let backend = coil::open_device(args.load.device).with_context(|| format!("--device {}", args.load.device))?;
    let mut models = Vec::new();
    for (i, dir) in sources.iter().enumerate() {
        // The thread pool is set up once, by the first.
        let load = LoadArgs { threads: if i == 0 { args.load.threads } else { None }, ..args.load.clone() };
        let model_args = ModelArgs { model: dir.clone(), load };
        models.push(load_on(&model_args, backend.clone())?);
    }
    let names = labels(&models.iter().map(|m| m.source()).collect::<Vec<_>>())?;
    let ran: Vec<std::sync::Arc<coil::Model>> = models.iter().map(|m| m.model().clone()).collect();
    let mut subjects = Vec::new();
    for (loaded, name) in models.into_iter().zip(names) {
        // Weights converted by --weights are another subject: their cells must not be taken for
        // (or resumed from) the checkpoint's own.
        let name = if loaded.converted() { format!("{name}@{}", loaded.model().weight_dtype()) } else { name };
        // `best` is each checkpoint's own (training.json); one without any runs `none` in its
        // place. Arms that come to the same plan run once.
        let mut plans: Vec<std::sync::Arc<coil::Plan>> = Vec::new();
        for arm in &arms {
            let arm = if arm == super::plan::BEST && loaded.best_mitigation().is_none() { "none" } else { arm.as_str() };
            let plan = super::plan::resolve(&loaded, &MitigationArgs { specs: vec![arm.to_owned()] })?;
            if !plans.iter().any(|p| p.describe() == plan.describe()) {
                plans.push(plan);
            }
        }
        if loaded.tokenizer_if_any().is_none() {
            bail!("{}: the passkey sweep needs a tokenizer: {}", loaded.source(), super::NO_TOKENIZER);
        }
        for plan in plans {
            let subject = loaded.passkey_subject(&name, plan)?;
            subjects.push(CoilSubject { piece_len: args.load.piece_len, ..subject });
        }
    }
    let spacing = args.spacing.parse()?;
    let config = SweepConfig { lengths, depths: args.depths, spacing, seed: args.seed, template, shard, batch_forks: args.batch_forks };
    // Every length must take a prompt before a results file is made or the banner printed.
    check_sweep(&subjects, &config)?;
    let mut results = ResultsFile::open(&args.out, shard, args.resume)?;
    let total_groups = subjects.len() * config.lengths.len();
    let cells = (0..total_groups).filter(|g| g % shard.count == shard.index).count() * config.depths;
    if cells == 0 {
        bail!("--shard {}/{}: this shard gets no cells: the sweep has only {total_groups} (model, arm, length) group(s)", shard.index, shard.count);
    }
    eprintln!(
        "passkey sweep: {} model(s) x {} arm(s) x {} lengths x {} depths = {cells} cells{} -> {}",
        sources.len(),
        arms.len(),
        config.lengths.len(),
        config.depths,
        if shard.count > 1 { format!(" in shard {}/{}", shard.index, shard.count) } else { String::new() },
        results.path().display()
    );
    let mut progress = Progress::cells("passkey", cells as u64);
    let summary = run_sweep(&subjects, &config, &mut results, |p| progress.set(p.tokens, p.cells_done as u64))?;
    progress.finish();
    eprintln!(
        "{} cells run, {} already done; {} tokens in {:.1} s ({:.0} tok/s); forking at the needles saved {:.0}% of the work ({} tokens instead of {})",
        summary.cells_run,
        summary.cells_skipped,
        summary.tokens_processed,
        summary.seconds,
        summary.tokens_processed as f64 / summary.seconds.max(1e-9),
        summary.saving() * 100.0,
        summary.tokens_processed,
        summary.tokens_unshared
    );
    let records = read_results(std::slice::from_ref(&args.out))?;
    let report = write_report(&records, args.threshold, &args.out)?;
    print_capacity(&report);
    eprintln!("report: {}", args.out.join("report.md").display());
    super::write_device_stats(args.device_stats.as_deref(), &ran.iter().map(|m| &**m).collect::<Vec<_>>())
}

pub fn report(args: ReportArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!("--threshold must be between 0 and 1");
    }
    // One folder: the report goes beside its results, as `coil passkey` writes it. Several: where
    // the merged report goes is the user's to say, not the first folder's.
    let out = match (&args.out, args.dirs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [dir]) => dir.clone(),
        (None, _) => bail!("{} folders to merge: give --out DIR for the merged report (it is not written into any of them)", args.dirs.len()),
    };
    let records = read_results(&args.dirs)?;
    if out.exists() && !out.is_dir() {
        bail!("--out {}: is a file, not a folder", out.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let report = write_report(&records, args.threshold, &out)?;
    print_capacity(&report);
    eprintln!("{} cells merged; report: {}", records.len(), out.join("report.md").display());
    Ok(())
}

fn print_capacity(report: &Report) {
    println!("model\tN_S\tmitigation\tcapacity\tmemory span");
    for row in &report.capacity {
        let capacity = row.tokens.map_or("< shortest".into(), |c| c.to_string());
        println!("{}\t{}\t{}\t{capacity}\t{}", row.model, format_state_size(row.n_s), row.mitigation, row.span_text());
    }
}
