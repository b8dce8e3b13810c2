//! A passkey capacity sweep from code, with a custom template and two mitigation arms.
//! `cargo run --release --example sweep -- /tmp/sweep-out`

use coil::passkey::{read_results, run_sweep, write_report, ResultsFile, Shard, Spacing, SweepConfig, Template};

fn main() -> Result<(), coil::Error> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "sweep-example".into()));
    let loaded = coil::load_default()?;

    // The embedded checkpoints were trained on the paper's template only: on this one they find
    // no passkey at any length, which is what a custom template is for (does retrieval transfer?).
    // `Template::paper()` gives them back their 100% at the training length.
    let template = Template {
        name: "custom".into(),
        prefix: "Remember the secret number hidden in this story.\n".into(),
        filler: "The river ran quietly past the old mill. ".into(),
        needle: "The secret number is {key}. ".into(),
        suffix: "\nThe secret number is".into(),
        key_digits: 5,
    };
    let mut arms = Vec::new();
    for specs in ["none", "rri:lambda=0.999,beta=0.75"] {
        let plan = loaded.plan(&coil::parse_mitigations(specs)?)?;
        arms.push(loaded.passkey_subject("default", plan)?);
    }
    let config = SweepConfig { lengths: vec![256, 512, 1024], depths: 4, spacing: Spacing::Even, seed: 0, template, shard: Shard::whole(), batch_forks: false };
    // `true`: resume, skipping cells an interrupted run already wrote.
    let mut results = ResultsFile::open(&out, Shard::whole(), true)?;
    let summary = run_sweep(&arms, &config, &mut results, |p| eprint!("\r{}/{} cells", p.cells_done, p.cells_total))?;
    eprintln!("\nran {} cells, saved {:.0}% of the work by forking", summary.cells_run, summary.saving() * 100.0);
    let report = write_report(&read_results(std::slice::from_ref(&out))?, 0.95, &out)?;
    for row in &report.accuracy {
        println!("{} {} length {}: {}/{} correct", row.model, row.mitigation, row.length, row.correct, row.cells);
    }
    for row in &report.capacity {
        println!("{} (N_S {}) {}: capacity {:?}", row.model, row.n_s, row.mitigation, row.tokens);
    }
    Ok(())
}
