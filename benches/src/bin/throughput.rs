//! Prefill and decode throughput of a released model shape with random weights, for notes and
//! for side-by-side comparisons with other engines:
//!
//! `throughput SHAPE PREFILL DECODE [THREADS] [MITIGATIONS] [--device D] [--batch B]
//! [--weights f32|bf16|f16] [--model DIR] [--chunk Q]`
//!
//! e.g. `cargo run --release -p coil-benches --bin throughput -- 130m 2048 64 2`. MITIGATIONS are
//! `--mitigate` specs joined by `;` (`window:size=1024,granularity=256`), empty or `none` for the
//! plain model; THREADS 0 keeps rayon's default. PREFILL and B may be lists (`8192,65536`,
//! `--batch 1,32`), measured one after the other on the one model (a large one takes a minute to
//! build): each prefill starts from an empty state, and each decode from the last prefill's state.
//! `--batch B` decodes B independent sequences together (`Model::step_batch`, B copies of the
//! prefilled state) and reports their aggregate tokens/s. `--weights bf16` holds the weight
//! matrices in bf16; `--chunk Q` overrides the checkpoint's SSD chunk length. Prints `prefill:`
//! and `decode:` lines, and on Linux a `memory:` line per prefill (resident MB before it, peak
//! after it: flat in the prompt length, as the prefill streams in pieces).

use std::sync::Arc;
use std::time::Instant;

use coil_benches::{random_model_on, released_shape};
use coil_kernels::Device;
use coil_ssm::{Mitigation, Plan, Session};

fn fail(message: String) -> ! {
    eprintln!("throughput: {message}");
    std::process::exit(2);
}

fn main() {
    let mut positional = Vec::new();
    let (mut device, mut batches, mut weights) = (Device::Cpu, vec![1usize], coil_kernels::WeightDtype::F32);
    let mut model_dir: Option<String> = None;
    let mut chunk: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => device = args.next().unwrap_or_default().parse().unwrap_or_else(|e: String| fail(e)),
            "--weights" => {
                weights = match args.next().as_deref() {
                    Some("f32") => coil_kernels::WeightDtype::F32,
                    Some("bf16") => coil_kernels::WeightDtype::Bf16,
                    Some("f16") => coil_kernels::WeightDtype::F16,
                    other => fail(format!("--weights takes f32, bf16 or f16, not {other:?}")),
                }
            }
            "--model" => model_dir = args.next(),
            "--chunk" => chunk = Some(args.next().and_then(|q| q.parse().ok()).filter(|&q| q > 0).unwrap_or_else(|| fail("--chunk takes a positive number".into()))),
            "--batch" => batches = list(&args.next().unwrap_or_default(), "--batch"),
            _ => positional.push(arg),
        }
    }
    let shape = positional.first().map_or("130m", String::as_str);
    let prefills = list(positional.get(1).map_or("2048", String::as_str), "PREFILL");
    let decode: usize = positional.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    if let Some(threads) = positional.get(3).and_then(|a| a.parse().ok()).filter(|&t: &usize| t > 0) {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    }
    let backend = coil_gpu::open(device).unwrap_or_else(|e| fail(e.to_string()));
    let model = match &model_dir {
        // A checkpoint folder (the same weights another engine runs), SHAPE then only names it.
        Some(dir) => {
            let checkpoint = coil_checkpoints::Checkpoint::open_dir(std::path::Path::new(dir)).unwrap_or_else(|e| fail(e.to_string()));
            coil_ssm::Model::from_checkpoint(checkpoint).with_backend(backend)
        }
        None => {
            let Some(config) = released_shape(shape) else { fail(format!("unknown shape `{shape}`: use 130m, 370m, 780m, 1.3b or 2.7b, optionally with :LAYERS[:VOCAB]")) };
            Arc::into_inner(random_model_on(&config, backend)).expect("one owner")
        }
    };
    let model = model.with_weight_dtype(weights).unwrap_or_else(|e| fail(e.to_string()));
    let model = Arc::new(match chunk {
        Some(q) => model.with_chunk_size(q),
        None => model,
    });
    let specs = positional.get(4).map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("none");
    let mitigations = Mitigation::parse_list(specs).unwrap_or_else(|e| fail(e.to_string()));
    let vocab = model.config().vocab_size_unpadded as u32;
    let longest = *prefills.iter().max().expect("at least one length");
    let tokens: Vec<u32> = (0..longest as u32).map(|i| (i * 7919) % vocab).collect();
    // state-norm:calibrate=T calibrates on these same tokens (T <= the longest prefill).
    let plan = Arc::new(Plan::resolve(&model, &mitigations, Some(&tokens), std::path::Path::new(".")).expect("plan resolves"));

    // Warm up (page in the weights, upload them to a device, compile kernels, spin up the pool).
    let mut warm = Session::new(model.clone());
    warm.prefill(&tokens[..tokens.len().min(256)]).unwrap_or_else(|e| fail(format!("warm-up: {e}")));
    warm.step(1).unwrap_or_else(|e| fail(format!("warm-up step: {e}")));

    println!(
        "shape {shape} {:?} weights ({} MB) on {}, {} threads, mitigation {}",
        model.weight_dtype(),
        model.weight_bytes() >> 20,
        match model.backend_name() {
            "cpu" => format!("cpu ({})", coil_kernels::Cpu::simd()),
            gpu => gpu.to_string(),
        },
        rayon::current_num_threads(),
        plan.describe()
    );
    let mut prefilled = None;
    for &prefill in &prefills {
        let mut session = Session::with_plan(model.clone(), plan.clone());
        // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS, so the peak below is
        // the prefill's, not the model build's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let resident_before = memory_mb("VmRSS:");
        let started = Instant::now();
        session.prefill(&tokens[..prefill]).unwrap_or_else(|e| fail(format!("prefill: {e}")));
        let prefill_seconds = started.elapsed().as_secs_f64();
        let peak_after_prefill = memory_mb("VmHWM:");
        println!("prefill: {prefill} tokens {:.1} tok/s", prefill as f64 / prefill_seconds);
        if let (Some(before), Some(peak)) = (resident_before, peak_after_prefill) {
            println!("memory: {before:.0} MB resident before the prefill, peak {peak:.0} MB after it");
        }
        prefilled = Some(session.into_state());
    }
    // Decode from the last prefill's state.
    let prefilled = prefilled.expect("at least one length");
    for &batch in &batches {
        // The batch's states are copied (and their pages touched) before the clock starts.
        let mut states: Vec<_> = (0..batch).map(|_| prefilled.clone()).collect();
        let started = Instant::now();
        if batch == 1 {
            let mut session = Session::with_state_and_plan(model.clone(), states.pop().expect("one state"), plan.clone()).expect("state");
            for i in 0..decode {
                session.step((i as u32 * 31) % vocab).unwrap_or_else(|e| fail(format!("step: {e}")));
            }
        } else {
            let mut logits = Vec::new();
            for i in 0..decode {
                let next: Vec<u32> = (0..batch).map(|b| ((i + b) as u32 * 31) % vocab).collect();
                let mut refs: Vec<_> = states.iter_mut().collect();
                model.step_batch_into(&plan, &mut refs, &next, &mut logits).unwrap_or_else(|e| fail(format!("batch step: {e}")));
            }
        }
        let decode_seconds = started.elapsed().as_secs_f64();
        println!("decode: batch {batch} x {decode} tokens {:.2} tok/s aggregate", (batch * decode) as f64 / decode_seconds);
    }
}

/// A comma-separated list of positive numbers (`8192,65536`).
fn list(text: &str, what: &str) -> Vec<usize> {
    let numbers: Option<Vec<usize>> = text.split(',').map(|n| n.trim().parse().ok().filter(|&n| n > 0)).collect();
    numbers.filter(|n| !n.is_empty()).unwrap_or_else(|| fail(format!("{what} takes positive numbers joined by commas, not {text:?}")))
}

/// A `/proc/self/status` line (`VmRSS:`, `VmHWM:`) in MB, where there is one (Linux).
fn memory_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}
