//! A passkey capacity sweep from code, with a custom template and two mitigation arms.
//! `cargo run --release --example sweep -- /tmp/sweep-out`

use std::sync::Arc;

use coil::{Checkpoint, Mitigation, Model, Plan};
use coil::passkey::{read_results, run_sweep, write_report, CoilSubject, ResultsFile, Shard, SweepConfig, Template};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "sweep-example".into()));
    let mut checkpoint = Checkpoint::embedded_default()?;
    let tokenizer = Arc::new(checkpoint.tokenizer.take().ok_or("the checkpoint has no tokenizer")?);
    let model = Arc::new(Model::from_checkpoint(checkpoint));

    let template = Template {
        name: "custom".into(),
        prefix: "Remember the secret number hidden in this story.\n".into(),
        filler: "The river ran quietly past the old mill. ".into(),
        needle: "The secret number is {key}. ".into(),
        suffix: "\nThe secret number is".into(),
    };
    let mut subjects = Vec::new();
    for arm in ["none", "rri:lambda=0.999,beta=0.75"] {
        let plan = Plan::resolve(&model, &Mitigation::parse_list(arm)?, None, ".".as_ref())?;
        subjects.push(CoilSubject {
            model: model.clone(),
            mitigation: plan.describe(),
            plan: Arc::new(plan),
            tokenizer: tokenizer.clone(),
            name: "default".into(),
            train_length: None,
        });
    }
    let config = SweepConfig { lengths: vec![256, 512, 1024], depths: 4, seed: 0, template, shard: Shard::whole() };
    let mut results = ResultsFile::open(&out, Shard::whole(), true)?;
    let summary = run_sweep(&subjects, &config, &mut results, |p| eprint!("\r{}/{} cells", p.cells_done, p.cells_total))?;
    eprintln!("\nran {} cells, saved {:.0}% of the work by forking", summary.cells_run, summary.saving() * 100.0);
    let report = write_report(&read_results(&[out.clone()])?, 0.95, &out)?;
    for (model, n_s, arm, capacity, _) in &report.capacity {
        println!("{model} (N_S {n_s}) {arm}: capacity {capacity:?}");
    }
    Ok(())
}
