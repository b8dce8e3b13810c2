//! The passkey sweep on a real model: forked-state answers equal from-scratch ones, and a sweep
//! killed with SIGKILL and resumed ends with every cell exactly once.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coil::{Checkpoint, Model, Plan, Sampler, SamplingConfig, Session};
use coil_eval::passkey::{key, read_results, run_sweep, CellRecord, CoilSubject, ResultsFile, Shard, Spacing, SweepConfig, Template, TokenizedTemplate};

fn subject(mitigation: &str) -> CoilSubject {
    let mut checkpoint = Checkpoint::embedded_default().unwrap();
    let tokenizer = Arc::new(checkpoint.tokenizer.take().unwrap());
    let model = Arc::new(Model::from_checkpoint(checkpoint));
    let mitigations = coil::Mitigation::parse_list(mitigation).unwrap();
    let plan = Arc::new(Plan::resolve(&model, &mitigations, None, std::path::Path::new(".")).unwrap());
    CoilSubject { model, mitigation: plan.describe(), plan, tokenizer, name: "default".into(), train_length: None, piece_len: 1024 }
}

#[test]
fn forked_state_answers_equal_from_scratch_runs() {
    forked_answers_equal_from_scratch(false);
}

#[test]
fn batched_fork_answers_equal_from_scratch_runs() {
    forked_answers_equal_from_scratch(true);
}

fn forked_answers_equal_from_scratch(batch_forks: bool) {
    let dir = tempfile::tempdir().unwrap();
    let subjects = vec![subject("none"), subject("window:size=300,granularity=16")];
    let config = SweepConfig { lengths: vec![700, 1500], depths: 5, spacing: Spacing::Even, seed: 3, template: Template::paper(), shard: Shard::whole(), batch_forks };
    run_sweep(&subjects, &config, &mut ResultsFile::open(dir.path(), Shard::whole(), false).unwrap(), |_| {}).unwrap();
    let records = read_results(&[dir.path().to_owned()]).unwrap();
    assert_eq!(records.len(), 2 * 2 * 5);
    for r in &records {
        let s = subjects.iter().find(|s| s.mitigation == r.mitigation).unwrap();
        let encode = |t: &str| Ok(s.tokenizer.encode(t)?);
        let template = TokenizedTemplate::new(&config.template, config.seed, r.length, encode).unwrap();
        let cell = template.prompts(r.length, r.depths, r.spacing, encode).unwrap().remove(r.depth_index);
        assert_eq!(r.key, key(config.seed, r.length, r.depth_index));
        assert_eq!(cell.needle, s.tokenizer.encode(&config.template.needle_for("", &r.key)).unwrap());
        let prompt = template.materialise(&cell, encode).unwrap();
        assert_eq!(prompt.len(), r.tokens);
        let mut session = Session::with_plan(s.model.clone(), s.plan.clone());
        session.set_piece_len(97);
        session.prefill(&prompt).unwrap();
        let count = s.tokenizer.encode(&format!(" {}", r.key)).unwrap().len().max(5);
        let answer = session.generate(&mut Sampler::new(SamplingConfig::default()), count, 500, |_| true).unwrap();
        assert_eq!(s.tokenizer.decode(&answer).unwrap(), r.prediction, "{r:?}");
    }
}

#[test]
fn sigkilled_sweep_resumes_with_every_cell_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let args = ["passkey", "--model", "embedded:passkey-n16", "--lengths", "4k..32k", "--depths", "6", "--mitigate", "none", "--mitigate", "rri:lambda=0.99", "--out", out.to_str().unwrap()];
    let mut child = Command::new(env!("CARGO_BIN_EXE_coil")).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let results = out.join("results.jsonl");
    let started = Instant::now();
    // Kill it once a few cells are on disk (or it finished, on a very fast machine).
    loop {
        let lines = std::fs::read_to_string(&results).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 5 || child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let before = std::fs::read_to_string(&results).unwrap().lines().count();
    assert!(before < 2 * 4 * 6, "the kill came after the sweep finished: nothing was tested");

    let status = Command::new(env!("CARGO_BIN_EXE_coil")).args(args).arg("--resume").stderr(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&results).unwrap();
    let records: Vec<CellRecord> = text.lines().map(|l| serde_json::from_str(l).expect("every line whole")).collect();
    let mut ids: Vec<String> = records.iter().map(CellRecord::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), records.len(), "a cell appears twice");
    assert_eq!(records.len(), 2 * 4 * 6, "a cell is missing ({before} were done before the kill)");
    assert!(out.join("report.md").exists());
}

/// Two checkpoint folders of the same name (two training runs' `passkey-n16`) are two models in
/// the results, named by as much of their paths as differs; one folder given twice is an error.
#[test]
fn same_named_checkpoints_get_distinct_labels() {
    let dir = tempfile::tempdir().unwrap();
    let coil = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_coil")).args(args).output().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/models/passkey-n16");
    for run in ["runA", "runB"] {
        let folder = dir.path().join(run).join("passkey-n16");
        std::fs::create_dir_all(&folder).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json", "training.json"] {
            std::fs::copy(shipped.join(file), folder.join(file)).unwrap();
        }
    }
    let (a, b) = (dir.path().join("runA/passkey-n16"), dir.path().join("runB/passkey-n16"));
    let out = dir.path().join("sweep");
    let sweep = |models: [&std::path::Path; 2]| {
        coil(&["passkey", "--model", models[0].to_str().unwrap(), "--model", models[1].to_str().unwrap(), "--lengths", "256", "--depths", "3", "--out", out.to_str().unwrap()])
    };
    let output = sweep([&a, &b]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records = read_results(std::slice::from_ref(&out)).unwrap();
    let count = |name: &str| records.iter().filter(|r| r.model == name).count();
    assert_eq!((count("runA/passkey-n16"), count("runB/passkey-n16"), records.len()), (3, 3, 6));

    let output = sweep([&a, &dir.path().join("runB/../runA/passkey-n16")]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("given twice"), "{err}");

    // A folder named like an embedded checkpoint is another model, not the same one twice.
    let out = dir.path().join("sweep2");
    let output = coil(&["passkey", "--model", a.to_str().unwrap(), "--model", "embedded:passkey-n16", "--lengths", "256", "--depths", "2", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records = read_results(std::slice::from_ref(&out)).unwrap();
    let count = |name: &str| records.iter().filter(|r| r.model == name).count();
    assert_eq!((count("runA/passkey-n16"), count("passkey-n16")), (2, 2));
}

/// `--mitigate best` runs each checkpoint's own best mitigation (its training.json's
/// `best_mitigation`), labelled by what it is; a checkpoint without one runs only `none`.
#[test]
fn mitigate_best_runs_each_checkpoints_own() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/models/passkey-n16");
    let folder = dir.path().join("collapsing");
    std::fs::create_dir_all(&folder).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(shipped.join(file), folder.join(file)).unwrap();
    }
    std::fs::write(folder.join("training.json"), r#"{"train_length": 512, "best_mitigation": "window:size=300"}"#).unwrap();
    let out = dir.path().join("sweep");
    let output = Command::new(env!("CARGO_BIN_EXE_coil"))
        .args(["passkey", "--model", folder.to_str().unwrap(), "--model", "embedded:passkey-n8", "--mitigate", "none", "--mitigate", "best"])
        .args(["--lengths", "512", "--depths", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records = read_results(std::slice::from_ref(&out)).unwrap();
    let mut arms: Vec<(String, String)> = records.iter().map(|r| (r.model.clone(), r.mitigation.clone())).collect();
    arms.sort();
    arms.dedup();
    assert_eq!(
        arms,
        [("collapsing", "none"), ("collapsing", "window:size=300,granularity=1"), ("passkey-n8", "none")].map(|(m, a)| (m.to_owned(), a.to_owned()))
    );
}
