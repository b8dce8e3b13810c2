//! One `Model` shared by several threads, each with its own `Session`: every thread's results
//! (logits, sampled tokens, final state) must be bit for bit those of the same work done
//! sequentially, with and without a mitigation plan. This is the facade's concurrency promise.

use std::sync::{Arc, Barrier};

use coil::{Loaded, Mitigation, Plan, Sampler, SamplingConfig, Scope, Session, State};

const THREADS: usize = 4;

/// What one stream produced: the prefill logits, the generated tokens with each step's logits,
/// and the state it ended in.
#[derive(Debug, PartialEq)]
struct Outcome {
    prefill_logits: Vec<u32>, // f32 bits, so equality is bitwise
    generated: Vec<u32>,
    step_logits: Vec<u32>,
    state: State,
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn prompts(loaded: &Loaded) -> Vec<Vec<u32>> {
    (0..THREADS)
        .map(|i| {
            // Different lengths, some beyond one prefill piece and the window, so the threads
            // are never in the same phase.
            let text = format!("Stream {i}: the grass is green and the sky is blue. ").repeat(30 + 40 * i);
            let mut tokens = loaded.encode(&text).unwrap();
            tokens.truncate(200 + 700 * i);
            tokens
        })
        .collect()
}

fn run(session: &mut Session, prompt: &[u32], seed: u64, vocab_limit: usize) -> Outcome {
    let prefill_logits = bits(session.prefill(prompt).unwrap());
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.9, top_k: 50, top_p: 0.95, seed });
    let mut step_logits = Vec::new();
    let mut generated = Vec::new();
    for _ in 0..12 {
        let token = sampler.sample(session.logits().unwrap(), vocab_limit);
        generated.push(token);
        step_logits.extend(bits(session.step(token).unwrap()));
    }
    Outcome { prefill_logits, generated, step_logits, state: session.state().clone() }
}

fn check_threads_match_sequential(mitigations: &[Mitigation]) {
    let loaded = coil::load_default().unwrap();
    let plan = (!mitigations.is_empty()).then(|| loaded.plan(mitigations).unwrap());
    let model = loaded.model().clone();
    let vocab_limit = loaded.vocab_limit();
    let prompts = prompts(&loaded);
    let new_session = |model: Arc<coil::Model>| match &plan {
        Some(plan) => Session::with_plan(model, plan.clone()),
        None => Session::new(model),
    };

    let sequential: Vec<Outcome> =
        prompts.iter().enumerate().map(|(i, p)| run(&mut new_session(model.clone()), p, i as u64, vocab_limit)).collect();

    // All threads start together so their forward passes overlap.
    let barrier = Barrier::new(THREADS);
    let threaded: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let (model, barrier, new_session) = (model.clone(), &barrier, &new_session);
                scope.spawn(move || {
                    let mut session = new_session(model);
                    barrier.wait();
                    run(&mut session, prompt, i as u64, vocab_limit)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a session thread panicked")).collect()
    });

    for (i, (s, t)) in sequential.iter().zip(&threaded).enumerate() {
        assert_eq!(s.generated, t.generated, "thread {i}: sampled tokens differ from the sequential run");
        assert!(s.prefill_logits == t.prefill_logits, "thread {i}: prefill logits differ from the sequential run");
        assert!(s.step_logits == t.step_logits, "thread {i}: step logits differ from the sequential run");
        assert!(s.state == t.state, "thread {i}: the final state differs from the sequential run");
    }
    // The streams really were different work.
    assert_ne!(sequential[0].prefill_logits, sequential[1].prefill_logits);
}

#[test]
fn threads_match_sequential_runs() {
    check_threads_match_sequential(&[]);
}

#[test]
fn threads_match_sequential_runs_with_mitigations() {
    check_threads_match_sequential(&[
        Mitigation::Window { size: 512, granularity: 64, scope: Scope::all() },
        Mitigation::Rri { lambda: 0.999, beta: 0.75, scope: Scope::all() },
    ]);
}

#[test]
fn model_and_sessions_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<coil::Model>();
    send_sync::<coil::Loaded>();
    send_sync::<Plan>();
    send::<Session>();
    send::<State>();
}
