//! Prefill and decode throughput of a released model shape with random weights, for notes and
//! for side-by-side comparisons with other engines:
//! `cargo run --release -p coil-benches --bin throughput -- 130m 2048 64 [threads] [mitigations]`
//! (mitigations as `--mitigate` specs joined by `;`, e.g. `window:size=1024,granularity=256`).

use std::time::Instant;

use coil_benches::{random_model, released_shape};
use std::sync::Arc;

use coil_ssm::{Mitigation, Plan, Session};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = args.first().map_or("130m", String::as_str);
    let prefill: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2048);
    let decode: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    if let Some(threads) = args.get(3).and_then(|a| a.parse().ok()) {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    }
    let Some(config) = released_shape(shape) else {
        eprintln!("unknown shape `{shape}`: use 130m, 370m, 780m, 1.3b or 2.7b");
        std::process::exit(2);
    };
    let model = random_model(&config);
    let specs = args.get(4).map_or("none", String::as_str);
    let mitigations = Mitigation::parse_list(specs).expect("valid mitigation specs");
    let tokens: Vec<u32> = (0..prefill as u32).map(|i| (i * 7919) % 50277).collect();
    // state-norm:calibrate=T calibrates on these same tokens (T <= the prefill length).
    let plan = Arc::new(Plan::resolve(&model, &mitigations, Some(&tokens), std::path::Path::new(".")).expect("plan resolves"));

    // Warm up (page in the weights, spin up the pool).
    Session::new(model.clone()).prefill(&tokens[..tokens.len().min(256)]).expect("warm-up");

    let mut session = Session::with_plan(model.clone(), plan.clone());
    let started = Instant::now();
    session.prefill(&tokens).expect("prefill");
    let prefill_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    for i in 0..decode {
        session.step((i as u32 * 31) % 50277).expect("step");
    }
    let decode_seconds = started.elapsed().as_secs_f64();
    println!(
        "shape {shape} f32, {} threads, mitigation {}: prefill {prefill} tokens {:.1} tok/s; decode {decode} tokens {:.2} tok/s",
        rayon::current_num_threads(),
        plan.describe(),
        prefill as f64 / prefill_seconds,
        decode as f64 / decode_seconds
    );
}
