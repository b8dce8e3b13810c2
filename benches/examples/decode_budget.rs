//! Where a decode step's time goes, op by op: the CPU backend behind a wrapper that times each
//! call, on the compare script's mamba2-130m-shaped weights (or any HF-dialect checkpoint).
//!
//! `cargo run --release -p coil-benches --example decode_budget -- [MODEL_DIR] [f32|bf16|f16]
//! [--batch B | --prefill TOKENS]` (default `target/compare/mamba2-130m-random`, made by
//! `scripts/compare-engines.sh`; bf16). Prints each op's milliseconds per step (products by
//! weight shape), the step's total, and what ran outside the backend's ops (embedding, residual
//! adds, copies, the finiteness checks). `--batch B` steps B sequences at once
//! (`Model::step_batch`); `--prefill TOKENS` times a prefill of that many tokens instead (best of
//! three), per prefill.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coil_kernels::{Backend, Cpu, DtLimit, Matrix, Recurrence, ScanInputs, SsmShape, WeightDtype};

/// The CPU backend, each op's wall time added up by name.
#[derive(Default)]
struct Timed {
    seconds: Mutex<BTreeMap<String, f64>>,
}

impl Timed {
    fn time<R>(&self, op: impl Into<String>, run: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let result = run();
        *self.seconds.lock().unwrap().entry(op.into()).or_default() += started.elapsed().as_secs_f64();
        result
    }
}

impl Backend for Timed {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, work: &mut (dyn FnMut() + Send)) {
        Cpu.run(work)
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        self.time(format!("linear {}x{}", weight.rows(), weight.cols()), || Cpu.linear(input, weight, bias, out))
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        self.time("rms_norm", || Cpu.rms_norm(x, weight, eps, out))
    }

    fn gated_rms_norm(&self, y: &[f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32, out: &mut [f32]) {
        self.time("gated_rms_norm", || Cpu.gated_rms_norm(y, z, weight, group_size, eps, out))
    }

    fn causal_conv1d(&self, xbc: &[f32], state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, channels: usize, out: &mut [f32]) {
        self.time("conv", || Cpu.causal_conv1d(xbc, state, weight, bias, channels, out))
    }

    fn discretize_dt(&self, dt_raw: &[f32], dt_bias: &[f32], limit: DtLimit, dt: &mut [f32]) {
        self.time("dt", || Cpu.discretize_dt(dt_raw, dt_bias, limit, dt))
    }

    fn concurrent_sequences(&self) -> bool {
        Cpu.concurrent_sequences()
    }

    fn preferred_chunk(&self) -> Option<usize> {
        Cpu.preferred_chunk()
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], chunk: usize, y: &mut [f32]) {
        self.time("ssd_scan", || Cpu.ssd_scan(shape, recurrence, inputs, state, chunk, y))
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        self.time("ssm_step", || Cpu.ssm_step(shape, recurrence, inputs, state, y))
    }

    fn retract_inputs(&self, shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]) {
        self.time("retract_inputs", || Cpu.retract_inputs(shape, state, xdt, b, weights))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("decode_budget: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let (mut batch, mut prefill_tokens) = (1, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut count = |flag: &str| -> Result<usize, String> {
            let value = args.next().unwrap_or_default();
            value.parse().ok().filter(|&n| n > 0).ok_or(format!("{flag} takes a positive number, not `{value}`"))
        };
        match arg.as_str() {
            "--batch" => batch = count("--batch")?,
            "--prefill" => prefill_tokens = Some(count("--prefill")?),
            _ => positional.push(arg),
        }
    }
    let dir = positional.first().map_or("target/compare/mamba2-130m-random", String::as_str);
    let dtype = match positional.get(1).map_or("bf16", String::as_str) {
        "f32" => WeightDtype::F32,
        "bf16" => WeightDtype::Bf16,
        "f16" => WeightDtype::F16,
        other => return Err(format!("the weight dtype (second argument) is f32, bf16 or f16, not `{other}`").into()),
    };
    let timed = Arc::new(Timed::default());
    let checkpoint = coil_checkpoints::Checkpoint::open_dir(Path::new(dir))?;
    let model = Arc::new(coil_ssm::Model::from_checkpoint(checkpoint).with_backend(timed.clone()).with_weight_dtype(dtype)?);
    if let Some(tokens) = prefill_tokens {
        return prefill_budget(model, &timed, dtype, tokens);
    }
    let mut session = coil_ssm::Session::new(model.clone());
    session.prefill(&[1, 2, 3, 4])?;
    let mut states: Vec<_> = (0..batch).map(|_| session.state().clone()).collect();
    let plan = model.plain_plan();
    let mut logits = Vec::new();
    let mut step = |i: usize| -> Result<(), coil_ssm::Error> {
        let tokens: Vec<u32> = (0..batch).map(|b| ((i + b) * 31 % 1000) as u32).collect();
        let mut refs: Vec<&mut coil_ssm::State> = states.iter_mut().collect();
        model.step_batch_into(plan, &mut refs, &tokens, &mut logits)
    };
    for i in 0..20 {
        step(i)?; // warm-up: pages touched, buffers grown
    }
    timed.seconds.lock().unwrap().clear();
    let steps = (200 / batch).max(10);
    let started = Instant::now();
    for i in 0..steps {
        step(i)?;
    }
    let per_step = started.elapsed().as_secs_f64() / steps as f64;
    println!("{dtype} weights, {} threads, batch {batch}, ms per step:", rayon::current_num_threads());
    let in_ops = print_ops(&timed.seconds.lock().unwrap(), steps);
    let rate = batch as f64 / per_step;
    println!("{:>20}: {:.3} ({rate:.1} tok/s), {:.3} outside the ops", "step", per_step * 1e3, (per_step - in_ops) * 1e3);
    Ok(())
}

/// The op budget of a prefill of `tokens` tokens from a fresh state: the fastest of three runs,
/// after one to warm up.
fn prefill_budget(model: Arc<coil_ssm::Model>, timed: &Timed, dtype: WeightDtype, tokens: usize) -> Result<(), Box<dyn std::error::Error>> {
    let prompt: Vec<u32> = (0..tokens as u32).map(|t| t * 7919 % 1000).collect();
    let mut best: Option<(f64, BTreeMap<String, f64>)> = None;
    for run in 0..4 {
        timed.seconds.lock().unwrap().clear();
        let started = Instant::now();
        coil_ssm::Session::new(model.clone()).prefill(&prompt)?;
        let seconds = started.elapsed().as_secs_f64();
        if run > 0 && best.as_ref().is_none_or(|(b, _)| seconds < *b) {
            best = Some((seconds, timed.seconds.lock().unwrap().clone()));
        }
    }
    let (seconds, ops) = best.expect("three timed runs");
    println!("{dtype} weights, {} threads, prefill of {tokens} tokens, ms:", rayon::current_num_threads());
    let in_ops = print_ops(&ops, 1);
    println!("{:>20}: {:.1} ({:.0} tok/s), {:.1} outside the ops", "prefill", seconds * 1e3, tokens as f64 / seconds, (seconds - in_ops) * 1e3);
    Ok(())
}

/// Prints each op's milliseconds per `runs`; returns the seconds per run in all of them.
fn print_ops(ops: &BTreeMap<String, f64>, runs: usize) -> f64 {
    let mut in_ops = 0.0;
    for (op, seconds) in ops {
        println!("{op:>20}: {:.3}", seconds / runs as f64 * 1e3);
        in_ops += seconds / runs as f64;
    }
    in_ops
}
