//! "All paths agree": token-by-token step, chunked prefill at several chunk sizes, prefill split
//! at arbitrary points with the state carried, a state saved and loaded mid-stream, and the naive
//! reference backend all give the same logits and the same state, on random models of awkward
//! shapes (G > 1, odd widths, conv kernels 2..5, per-channel D, biases, a biting dt clamp).

use std::sync::Arc;

use coil_ssm::{random_weights, Backend, Config, LogitRows, Model, Reference, Session, State, WeightDtype};

mod common;
use common::config;

fn configs() -> Vec<Config> {
    let mut with_everything = config(20, 6, 5, 7, 3, 5);
    with_everything.use_bias = true;
    with_everything.d_has_hdim = true;
    with_everything.tie_embeddings = Some(false);
    let mut clamped = config(16, 4, 8, 8, 2, 3);
    clamped.time_step_limit = (0.02, 0.3);
    vec![config(16, 4, 8, 8, 1, 4), config(12, 3, 8, 5, 3, 2), with_everything, clamped]
}

fn model(config: &Config, seed: u64) -> Model {
    Model::new(config.clone(), random_weights(config, seed), Arc::new(coil_ssm::Cpu))
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 7919 + seed * 104729) % vocab as u64) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits here are O(1..10); the paths differ only by f32 reassociation.
const TOLERANCE: f32 = 2e-4;

fn assert_states_close(what: &str, a: &State, b: &State) {
    assert_eq!(a.position(), b.position(), "{what}: positions differ");
    let ssm = max_diff(a.ssm(), b.ssm());
    let conv = max_diff(a.conv(), b.conv());
    assert!(ssm < TOLERANCE && conv < 2e-5, "{what}: ssm {ssm:e} conv {conv:e}");
}

#[test]
fn step_chunked_split_and_reference_agree() {
    paths_agree_on(Arc::new(coil_ssm::Cpu));
}

/// The same on the GPU backend (`COIL_TEST_DEVICE`, default wgpu: lavapipe without a GPU).
#[test]
fn step_chunked_split_and_reference_agree_on_the_gpu() {
    paths_agree_on(coil_gpu::test_backend());
}

fn paths_agree_on(backend: Arc<dyn Backend>) {
    let model = |config: &Config, seed: u64| crate::model(config, seed).with_backend(backend.clone());
    for (i, config) in configs().iter().enumerate() {
        let seed = i as u64 + 11;
        let base = model(config, seed);
        for length in [1, 2, 7, 8, 9, 23, 41] {
            let input = tokens(length, config.vocab_size, seed);

            // Token by token.
            let mut step_state = base.new_state();
            let mut stepped = Vec::new();
            for &t in &input {
                stepped.extend(base.step(&mut step_state, t).unwrap());
            }

            // Chunked prefill, several chunk lengths.
            for chunk in [1, 3, 8, 64] {
                let m = model(config, seed).with_chunk_size(chunk);
                let mut state = m.new_state();
                let logits = m.forward(&mut state, &input, LogitRows::All).unwrap();
                let d = max_diff(&logits, &stepped);
                assert!(d < TOLERANCE, "config {i} T={length} chunk {chunk}: {d:e}");
                assert_states_close(&format!("config {i} T={length} chunk {chunk}"), &state, &step_state);
            }

            // Prefill split at every point, the state carried across.
            for split in 1..length {
                let mut state = base.new_state();
                let mut logits = base.forward(&mut state, &input[..split], LogitRows::All).unwrap();
                logits.extend(base.forward(&mut state, &input[split..], LogitRows::All).unwrap());
                let d = max_diff(&logits, &stepped);
                assert!(d < TOLERANCE, "config {i} T={length} split {split}: {d:e}");
                assert_states_close(&format!("config {i} split {split}"), &state, &step_state);
            }

            // The naive reference backend.
            let reference = crate::model(config, seed).with_backend(Arc::new(Reference));
            let mut state = reference.new_state();
            let logits = reference.forward(&mut state, &input, LogitRows::All).unwrap();
            assert!(max_diff(&logits, &stepped) < TOLERANCE, "config {i} T={length} reference");
            assert_states_close(&format!("config {i} reference"), &state, &step_state);
        }
    }
}

#[test]
fn saved_state_resumes_exactly() {
    let config = &configs()[2];
    let model = Arc::new(model(config, 5));
    let input = tokens(40, config.vocab_size, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");

    let mut whole = Session::new(model.clone());
    let expected = whole.prefill(&input).unwrap().to_vec();

    let mut first = Session::new(model.clone());
    first.prefill(&input[..17]).unwrap();
    first.state().save(&path).unwrap();
    let loaded = State::load(&path, model.state_shape()).unwrap();
    assert_eq!(&loaded, first.state(), "save/load is bit-exact");
    let mut resumed = Session::with_state(model.clone(), loaded).unwrap();
    let got = resumed.prefill(&input[17..]).unwrap().to_vec();
    assert!(max_diff(&got, &expected) < TOLERANCE);
    assert_eq!(resumed.position(), 40);

    // A NaN in the saved ssm states: refused, naming the tensor and where.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = {
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let data = tensors.tensor("ssm_states").unwrap().data();
        data.as_ptr() as usize - bytes.as_ptr() as usize + 4 * 5
    };
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let message = State::load(&path, model.state_shape()).unwrap_err().to_string();
    assert!(message.contains("ssm_states") && message.contains("flat index 5"), "{message}");
}

#[test]
fn forks_are_independent_and_restore_rewinds() {
    let config = &configs()[0];
    let model = Arc::new(model(config, 9));
    let mut session = Session::new(model.clone());
    session.prefill(&tokens(12, config.vocab_size, 1)).unwrap();
    let snapshot = session.state().clone();
    let mut fork = session.fork();
    let a = fork.step(3).unwrap().to_vec();
    let b = session.step(3).unwrap().to_vec();
    assert_eq!(a, b, "a fork continues exactly like its parent");
    fork.step(4).unwrap();
    assert_ne!(fork.state(), session.state());
    session.restore(&snapshot).unwrap();
    assert_eq!(session.state(), &snapshot);
    assert_eq!(session.step(3).unwrap(), &a[..]);
}

#[test]
fn piece_length_does_not_change_results() {
    let config = &configs()[1];
    let model = Arc::new(model(config, 3));
    let input = tokens(50, config.vocab_size, 3);
    let mut reference = Session::new(model.clone());
    let expected = reference.prefill(&input).unwrap().to_vec();
    for piece in [1, 4, 13, 49, 50] {
        let mut session = Session::new(model.clone());
        session.set_piece_len(piece);
        let got = session.prefill(&input).unwrap();
        assert!(max_diff(got, &expected) < TOLERANCE, "piece {piece}");
        assert_states_close(&format!("piece {piece}"), session.state(), reference.state());
    }
}

#[test]
fn bad_tokens_and_mismatched_states_are_errors_that_leave_the_state_alone() {
    let config = &configs()[0];
    let model = Arc::new(model(config, 1));
    let mut session = Session::new(model.clone());
    session.prefill(&[1, 2, 3]).unwrap();
    let before = session.state().clone();
    let err = session.prefill(&[4, 37, 5]).unwrap_err().to_string();
    assert!(err.contains("token id 37 at position 4") && err.contains("37 embedding rows"), "{err}");
    assert_eq!(session.state(), &before);
    assert!(session.prefill(&[]).unwrap_err().to_string().contains("empty"));

    let other = configs()[1].clone();
    let foreign = State::new(coil_ssm::StateShape::of(&other));
    let err = Session::with_state(model.clone(), foreign).err().expect("mismatch").to_string();
    assert!(err.contains("does not fit"), "{err}");

    // Same shapes, other weights (another seed): another model's state, in memory or from a file.
    let twin = Arc::new(self::model(config, 2));
    assert_eq!(twin.state_shape(), model.state_shape());
    assert_ne!(twin.fingerprint(), model.fingerprint());
    let err = Session::with_state(twin.clone(), session.state().clone()).err().expect("another model's state").to_string();
    assert!(err.contains("another model"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    session.state().save(&path).unwrap();
    let err = twin.load_state(&path).unwrap_err().to_string();
    assert!(err.contains("state.safetensors") && err.contains("another model"), "{err}");
    assert_eq!(&model.load_state(&path).unwrap(), session.state(), "its own model takes it back");
    // The weight dtype and the backend are not part of the identity.
    let bf16 = self::model(config, 1).with_weight_dtype(WeightDtype::Bf16).unwrap();
    assert_eq!(bf16.fingerprint(), model.fingerprint());
}

#[test]
fn a_diverging_state_is_reported_not_returned_as_nan() {
    let mut config = configs()[0].clone();
    config.n_layer = 1;
    let mut weights = random_weights(&config, 2);
    // Finite weights can still overflow the state: a dt bias near f32::MAX makes dt * x
    // infinite on the first token (softplus passes large arguments through unchanged).
    for layer in &mut weights.layers {
        layer.dt_bias.iter_mut().for_each(|b| *b = 3e38);
    }
    // Whatever the chunk length: where a whole prompt fits one chunk, the decays of exactly zero
    // keep the overflow out of every output row, and only the state shows it. On the GPU the
    // check's answer comes back with the pass's other results.
    let backends: [Arc<dyn coil_ssm::Backend>; 2] = [Arc::new(coil_ssm::Cpu), coil_gpu::test_backend()];
    for (backend, chunk) in backends.iter().flat_map(|b| [1, 16, 64, 256].map(|chunk| (b, chunk))) {
        let model = Arc::new(Model::new(config.clone(), weights.clone(), backend.clone()).with_chunk_size(chunk));
        let mut session = Session::new(model);
        let err = session.prefill(&tokens(30, config.vocab_size, 1)).unwrap_err().to_string();
        assert!(err.contains("non-finite") && err.contains("layer 0"), "{} chunk {chunk}: {err}", backend.name());
    }
}

#[test]
fn weights_past_f16_range_are_refused_by_name_and_16_bit_holds_agree() {
    let config = configs()[2].clone();
    for (layer, matrix) in [(Some(1), "layer 1 out_proj"), (None, "lm_head")] {
        let mut weights = random_weights(&config, 4);
        match layer {
            Some(l) => weights.layers[l].out_proj[7] = 7.0e4,
            None => weights.lm_head.as_mut().unwrap()[3] = -1.0e5,
        }
        let model = Model::new(config.clone(), weights, Arc::new(coil_ssm::Cpu));
        let Err(err) = model.with_weight_dtype(WeightDtype::F16) else { panic!("{matrix}: a value past ±65504 held in f16") };
        let err = err.to_string();
        assert!(err.contains(&format!("`{matrix}`")) && err.contains("f16"), "{err}");
    }
    // In range, f16 and bf16 holds follow the f32 model within their rounding (f16 much closer).
    let tokens = tokens(23, config.vocab_size, 5);
    let run = |dtype| {
        let model = model(&config, 4).with_weight_dtype(dtype).unwrap();
        model.forward(&mut model.new_state(), &tokens, LogitRows::All).unwrap()
    };
    let exact = run(WeightDtype::F32);
    let (f16, bf16) = (max_diff(&run(WeightDtype::F16), &exact), max_diff(&run(WeightDtype::Bf16), &exact));
    assert!(f16 > 0.0 && f16 < bf16 && bf16 < 0.1, "f16 {f16:e}, bf16 {bf16:e}");
}

#[test]
fn state_norm_invariant_holds_at_every_clamp_and_only_there() {
    use coil_ssm::{Mitigation, Plan, Scope, Thresholds};
    let config = &configs()[1];
    let model = Arc::new(model(config, 21));
    let every = 6u64;
    let tau = 0.05f32;
    let taus = vec![vec![tau; config.n_heads]; config.n_layer];
    let mitigation = Mitigation::StateNorm { thresholds: Thresholds::Values(taus), every, scope: Scope::all() };
    let plan = Arc::new(Plan::resolve(&model, &[mitigation], None, std::path::Path::new(".")).unwrap());
    let mut session = Session::with_plan(model.clone(), plan);
    let input = tokens(40, config.vocab_size, 2);
    let mut saw_unclamped = false;
    for &t in &input {
        session.step(t).unwrap();
        let norms = session.state().head_norms();
        let max = norms.iter().flatten().fold(0.0f32, |m, &n| m.max(n));
        if session.position().is_multiple_of(every) {
            assert!(max <= tau * (1.0 + 1e-5), "after token {} the largest head norm is {max}", session.position());
        } else {
            saw_unclamped |= max > tau * 1.5;
        }
    }
    assert!(saw_unclamped, "the threshold must bite between clamps for this test to mean anything");
}

/// A batch step of sequences at different positions equals each sequence's own step: plain, and
/// with mitigations whose behaviour depends on the position (window, state-norm clamp).
#[test]
fn batched_steps_and_prefills_equal_separate_ones() {
    batched_on(Arc::new(coil_ssm::Cpu));
}

#[test]
fn batched_steps_and_prefills_equal_separate_ones_on_the_gpu() {
    batched_on(coil_gpu::test_backend());
}

fn batched_on(backend: Arc<dyn Backend>) {
    use coil_ssm::{Mitigation, Plan, Scope, Thresholds};
    for (i, config) in configs().iter().enumerate() {
        let m = crate::model(config, 40 + i as u64).with_backend(backend.clone());
        let state_norm = Mitigation::StateNorm { thresholds: Thresholds::Values(vec![vec![0.05; config.n_heads]; config.n_layer]), every: 3, scope: Scope::all() };
        for (spec, mitigations) in [
            ("none", vec![]),
            ("window", Mitigation::parse_list("window:size=6,granularity=2").unwrap()),
            ("state-norm", vec![state_norm]),
            ("rri", Mitigation::parse_list("rri:lambda=0.99,beta=0.8").unwrap()),
        ] {
            let plan = Plan::resolve(&m, &mitigations, None, ".".as_ref()).unwrap();
            // Five sequences with prefixes of different lengths (one empty).
            let prefixes: Vec<Vec<u32>> = (0..5).map(|s| tokens(s * 4, config.vocab_size, s as u64 + 1)).collect();
            let mut batched: Vec<State> = prefixes
                .iter()
                .map(|p| {
                    let mut state = m.new_state_for(&plan);
                    if !p.is_empty() {
                        m.forward_with(&plan, &mut state, p, LogitRows::None).unwrap();
                    }
                    state
                })
                .collect();
            let mut separate = batched.clone();
            // Steps of one token, then batched prefills of 7 (several segments of the window
            // and the state-norm clamp) and 2.
            for (step, len) in [(0u32, 1usize), (1, 1), (2, 7), (3, 1), (4, 2)] {
                let next: Vec<Vec<u32>> =
                    (0..5u32).map(|s| (0..len as u32).map(|t| (s * 5 + step * 3 + t * 11) % config.vocab_size as u32).collect()).collect();
                let mut refs: Vec<&mut State> = batched.iter_mut().collect();
                let logits = if len == 1 {
                    m.step_batch(&plan, &mut refs, &next.concat()).unwrap()
                } else {
                    m.prefill_batch(&plan, &mut refs, &next.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap()
                };
                for (s, state) in separate.iter_mut().enumerate() {
                    let one = m.forward_with(&plan, state, &next[s], LogitRows::Last).unwrap();
                    let row = &logits[s * config.vocab_size..(s + 1) * config.vocab_size];
                    let d = max_diff(row, &one);
                    assert!(d < 1e-4, "config {i} [{spec}] sequence {s} step {step}: {d:e}");
                    assert_states_close(&format!("config {i} [{spec}] sequence {s} step {step}"), &batched[s], state);
                }
            }
        }
    }
    // A batch needs one sequence per state, all of one length, and leaves the states alone
    // when it refuses.
    let m = crate::model(&configs()[0], 1);
    let (mut a, mut b) = (m.new_state(), m.new_state());
    let err = m.step_batch(m.plain_plan(), &mut [&mut a], &[1, 2]).unwrap_err();
    assert!(err.to_string().contains("1 states and 2 token sequences"), "{err}");
    let err = m.prefill_batch(m.plain_plan(), &mut [&mut a, &mut b], &[&[1, 2][..], &[3]]).unwrap_err();
    assert!(err.to_string().contains("sequence 1 has 1"), "{err}");
    let err = m.prefill_batch(m.plain_plan(), &mut [&mut a, &mut b], &[[1, 2], [3, u32::MAX]]).unwrap_err();
    assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
    assert_eq!((a.position(), b.position()), (0, 0));
}

/// Sessions fed together, in pieces smaller than the input, hold what separate prefills give.
#[test]
fn session_batches_equal_separate_sessions() {
    use coil_ssm::Session;
    let config = &configs()[1];
    let m = Arc::new(crate::model(config, 77));
    let prompt = tokens(23, config.vocab_size, 5);
    let mut separate: Vec<Session> = (0..3).map(|_| Session::new(m.clone())).collect();
    for (s, session) in separate.iter_mut().enumerate() {
        session.prefill(&prompt[..5 + s]).unwrap();
    }
    let mut batched: Vec<Session> = separate.iter().map(Session::fork).collect();
    for session in &mut batched {
        session.set_piece_len(8); // pieces of 8 / 3 = 2 tokens per sequence
    }
    let tails: Vec<Vec<u32>> = (0..3).map(|s| tokens(9, config.vocab_size, 10 + s as u64)).collect();
    let tail_refs: Vec<&[u32]> = tails.iter().map(Vec::as_slice).collect();
    Session::prefill_batch(&mut batched.iter_mut().collect::<Vec<_>>(), &tail_refs).unwrap();
    for (s, (one, together)) in separate.iter_mut().zip(&batched).enumerate() {
        let want = one.prefill(&tails[s]).unwrap().to_vec();
        let d = max_diff(together.logits().unwrap(), &want);
        assert!(d < 1e-4, "session {s}: {d:e}");
        assert_states_close(&format!("session {s}"), together.state(), one.state());
    }
    // Sessions of another model cannot join.
    let other = Arc::new(crate::model(config, 78));
    let mut stranger = Session::new(other);
    let err = Session::prefill_batch(&mut [&mut batched[0], &mut stranger], &[&[1], &[2]]).unwrap_err();
    assert!(err.to_string().contains("session 1"), "{err}");
}
