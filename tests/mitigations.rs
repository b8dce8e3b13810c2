//! Every mitigation against an independent float64 sequential implementation of
//! docs/mitigations.md (`tests/fixtures/make_mitigation_fixtures.py`), through every path:
//! chunked prefill at several chunk sizes (K and Q not dividing them), token-by-token steps,
//! prefill split mid-stream with the state carried, and a state saved and reloaded mid-stream.
//!
//! Tolerance 1e-4 on logits of magnitude ~10, as the plain golden tests: the f64 reference sits
//! within 1.6e-5 of HF on these checkpoints; a wrong formula moves logits by 0.5 to 12.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coil::{Backend, Checkpoint, LogitRows, Mitigation, Model, Plan, Session, State};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    checkpoint: String,
    label: String,
    specs: Vec<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("mitigations/cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            checkpoint: c["checkpoint"].as_str().unwrap().into(),
            label: c["label"].as_str().unwrap().into(),
            specs: c["specs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect(),
        })
        .collect()
}

fn read(case: &Case) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let path = fixtures().join("mitigations").join(&case.checkpoint).join(format!("{}.safetensors", case.label));
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        tensors.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let ids = tensors.tensor("input_ids").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    (ids, f32s("logits"), f32s("ssm_states"))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn model(checkpoint: &str, chunk: usize) -> Model {
    Model::from_checkpoint(Checkpoint::open_dir(&fixtures().join(checkpoint)).unwrap()).with_chunk_size(chunk)
}

fn plan(model: &Model, case: &Case) -> Plan {
    let mitigations: Vec<Mitigation> = case.specs.iter().flat_map(|s| Mitigation::parse_list(s).unwrap()).collect();
    Plan::resolve(model, &mitigations, None, &fixtures().join("mitigations").join(&case.checkpoint)).unwrap()
}

/// Chunked prefill at the checkpoint's chunk 16 and at `more_chunks`, then token-by-token steps,
/// on `backend`, against the f64 reference.
fn check_prefill_and_steps(case: &Case, backend: Arc<dyn Backend>, more_chunks: &[usize]) {
    let (ids, golden, golden_state) = read(case);
    let what = format!("{}/{} [{}] on {}", case.checkpoint, case.label, case.specs.join("; "), backend.name());
    let state_scale = golden_state.iter().fold(1.0f32, |m, v| m.max(v.abs()));

    // Chunked prefill of the whole input (K and Q do not divide the chunks).
    for &chunk in [16].iter().chain(more_chunks) {
        let m = model(&case.checkpoint, chunk).with_backend(backend.clone());
        let p = plan(&m, case);
        // At chunk 16 a bare state (new_state, not new_state_for): the pass attaches what the
        // plan needs (a window's history; it once ran such a state without the window).
        let mut state = if chunk == 16 { m.new_state() } else { m.new_state_for(&p) };
        let logits = m.forward_with(&p, &mut state, &ids, LogitRows::All).unwrap();
        let d = max_diff(&logits, &golden);
        assert!(d < 1e-4, "{what}: chunked (chunk {chunk}) logits differ by {d:e}");
        let s = max_diff(state.ssm(), &golden_state);
        assert!(s < 1e-4 * state_scale, "{what}: chunked (chunk {chunk}) final state differs by {s:e}");
    }

    // Token by token.
    let m = Arc::new(model(&case.checkpoint, 16).with_backend(backend));
    let mut session = Session::with_plan(m.clone(), Arc::new(plan(&m, case)));
    let mut stepped = Vec::new();
    for &t in &ids {
        stepped.extend_from_slice(session.step(t).unwrap());
    }
    let d = max_diff(&stepped, &golden);
    assert!(d < 1e-4, "{what}: step logits differ by {d:e}");
}

/// Every path on the CPU: chunks 3, 16, 64, steps, and a prefill split, saved and resumed.
fn check(case: &Case) {
    check_prefill_and_steps(case, Arc::new(coil::backend::Cpu), &[3, 64]);
    let (ids, golden, _) = read(case);
    let what = format!("{}/{} [{}]", case.checkpoint, case.label, case.specs.join("; "));
    let m = Arc::new(model(&case.checkpoint, 16));
    let p = Arc::new(plan(&m, case));
    let vocab = m.vocab_size();

    // Prefill split at an odd point, the state saved, reloaded and continued by steps and prefill.
    let split = 37;
    let mut first = Session::with_plan(m.clone(), p.clone());
    first.set_piece_len(11);
    let mut logits = Vec::new();
    first.score(&ids[..split], |_, row| logits.extend_from_slice(row)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mid.state");
    first.state().save(&path).unwrap();
    let again = dir.path().join("again.state");
    first.state().save(&again).unwrap();
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap(), "{what}: one state, two different files");
    let reloaded = State::load(&path, m.state_shape()).unwrap();
    assert!(&reloaded == first.state(), "{what}: state save/load round trip changed the state");
    let mut second = Session::with_state_and_plan(m.clone(), reloaded, p.clone()).unwrap();
    for &t in &ids[split..split + 5] {
        logits.extend_from_slice(second.step(t).unwrap());
    }
    second.score(&ids[split + 5..], |_, row| logits.extend_from_slice(row)).unwrap();
    assert_eq!(logits.len(), ids.len() * vocab);
    let d = max_diff(&logits, &golden);
    assert!(d < 1e-4, "{what}: split/saved/resumed logits differ by {d:e}");
}

#[test]
fn every_mitigation_matches_the_f64_reference_in_every_path() {
    let cases = cases();
    assert!(cases.len() >= 40, "fixture list present");
    for case in &cases {
        check(case);
    }
}

/// Every mitigation case on the GPU backend (`COIL_TEST_DEVICE`, default wgpu): chunked prefill
/// and token by token against the same f64 reference.
#[test]
fn every_mitigation_matches_the_f64_reference_on_the_gpu() {
    let backend = coil_gpu::test_backend();
    for case in &cases() {
        check_prefill_and_steps(case, backend.clone(), &[]);
    }
}

#[test]
fn neutral_settings_reproduce_the_plain_model_exactly() {
    let m = model("g4_untied_bias", 16);
    let ids: Vec<u32> = (0..60).map(|i| (i * 13 + 7) % 112).collect();
    let mut plain_state = m.new_state();
    let plain = m.forward(&mut plain_state, &ids, LogitRows::All).unwrap();
    for spec in ["rri:lambda=1,beta=1", "dt-scale:1", "a-scale:1", "window:size=1000", "decay-clip:low=0,high=100", "none"] {
        let p = Plan::resolve(&m, &Mitigation::parse_list(spec).unwrap(), None, Path::new(".")).unwrap();
        let mut state = m.new_state_for(&p);
        let logits = m.forward_with(&p, &mut state, &ids, LogitRows::All).unwrap();
        assert!(max_diff(&logits, &plain) < 1e-6, "{spec}");
    }
}
