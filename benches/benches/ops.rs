//! Each CPU op at mamba2-130m's sizes (D 768, H 24, P 64, N 128, G 1, K 4), prefill-shaped
//! (T = 256 and 1024) and decode-shaped (T = 1).

use coil_kernels::{Backend, Cpu, Matrix, Recurrence, ScanInputs, SsmShape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const D_MODEL: usize = 768;
const SHAPE: SsmShape = SsmShape { heads: 24, head_dim: 64, d_state: 128, groups: 1 };

fn random(len: usize, scale: f32) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(len as u64);
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

fn linear(c: &mut Criterion) {
    let rows = SHAPE.inner() * 2 + 2 * SHAPE.bc_width() + SHAPE.heads; // in_proj
    let weight = Matrix::new(random(rows * D_MODEL, 0.05), rows, D_MODEL);
    let mut group = c.benchmark_group("linear_in_proj");
    for tokens in [1usize, 256] {
        let input = random(tokens * D_MODEL, 1.0);
        let mut out = vec![0.0; tokens * rows];
        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
            b.iter(|| Cpu.linear(&input, &weight, None, &mut out))
        });
    }
    group.finish();
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("ssd_scan");
    group.sample_size(10);
    let a: Vec<f32> = (0..SHAPE.heads).map(|h| -1.0 - h as f32 * 0.5).collect();
    let d = random(SHAPE.heads, 1.0);
    let offset = vec![0.0f32; SHAPE.heads];
    for tokens in [256usize, 1024] {
        let x = random(tokens * SHAPE.inner(), 1.0);
        let dt: Vec<f32> = random(tokens * SHAPE.heads, 1.0).iter().map(|v| 0.01 + v.abs() * 0.1).collect();
        let b = random(tokens * SHAPE.bc_width(), 1.0);
        let cm = random(tokens * SHAPE.bc_width(), 1.0);
        let mut state = vec![0.0; SHAPE.state_len()];
        let mut y = vec![0.0; tokens * SHAPE.inner()];
        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_with_input(BenchmarkId::new("chunk256", tokens), &tokens, |bench, _| {
            let recurrence = Recurrence { a: &a, log_decay_offset: &offset, d: &d };
            let inputs = ScanInputs { x: &x, dt: &dt, b: &b, c: &cm };
            bench.iter(|| Cpu.ssd_scan(SHAPE, recurrence, inputs, &mut state, 256, &mut y))
        });
    }
    group.finish();

    let x = random(SHAPE.inner(), 1.0);
    let dt = vec![0.05; SHAPE.heads];
    let b = random(SHAPE.bc_width(), 1.0);
    let cm = random(SHAPE.bc_width(), 1.0);
    let mut state = vec![0.0; SHAPE.state_len()];
    let mut y = vec![0.0; SHAPE.inner()];
    let recurrence = Recurrence { a: &a, log_decay_offset: &offset, d: &d };
    let inputs = ScanInputs { x: &x, dt: &dt, b: &b, c: &cm };
    c.bench_function("ssm_step", |bench| bench.iter(|| Cpu.ssm_step(SHAPE, recurrence, inputs, &mut state, &mut y)));
}

fn conv_and_norms(c: &mut Criterion) {
    let channels = SHAPE.inner() + 2 * SHAPE.bc_width();
    let weight = random(channels * 4, 0.5);
    let bias = random(channels, 0.5);
    let mut conv_state = vec![0.0; channels * 4];
    for tokens in [1usize, 256] {
        let xbc = random(tokens * channels, 1.0);
        let mut out = vec![0.0; tokens * channels];
        c.bench_function(&format!("causal_conv1d/{tokens}"), |b| {
            b.iter(|| Cpu.causal_conv1d(&xbc, &mut conv_state, &weight, Some(&bias), channels, &mut out))
        });
        let y = random(tokens * SHAPE.inner(), 1.0);
        let z = random(tokens * SHAPE.inner(), 1.0);
        let norm = random(SHAPE.inner(), 1.0);
        let mut u = vec![0.0; tokens * SHAPE.inner()];
        c.bench_function(&format!("gated_rms_norm/{tokens}"), |b| {
            b.iter(|| Cpu.gated_rms_norm(&y, &z, &norm, SHAPE.inner(), 1e-5, &mut u))
        });
    }
}

criterion_group!(benches, linear, scan, conv_and_norms);
criterion_main!(benches);
