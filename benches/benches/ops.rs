//! Each op at mamba2-130m's sizes (D 768, H 24, P 64, N 128, G 1, K 4) on each backend of
//! `COIL_BENCH_DEVICES` (default cpu,wgpu), prefill-shaped
//! (T = 256 and 1024) and decode-shaped (T = 1).

use std::sync::Arc;

use coil_kernels::{Backend, Device, Matrix, Recurrence, ScanInputs, SsmShape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const D_MODEL: usize = 768;
const SHAPE: SsmShape = SsmShape { heads: 24, head_dim: 64, d_state: 128, groups: 1 };

fn random(len: usize, scale: f32) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(len as u64);
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// The backends to compare: `COIL_BENCH_DEVICES` (default `cpu,wgpu`, plus `cuda` on an NVIDIA
/// machine); a device that cannot be opened is skipped with a note.
fn backends() -> Vec<Arc<dyn Backend>> {
    let wanted = std::env::var("COIL_BENCH_DEVICES").unwrap_or_else(|_| "cpu,wgpu".into());
    wanted
        .split(',')
        .filter_map(|name| {
            let device: Device = name.trim().parse().unwrap_or_else(|e| panic!("COIL_BENCH_DEVICES: {e}"));
            coil_gpu::open(device).map_err(|e| eprintln!("skipping {device}: {e}")).ok()
        })
        .collect()
}

fn linear(c: &mut Criterion) {
    let rows = SHAPE.inner() * 2 + 2 * SHAPE.bc_width() + SHAPE.heads; // in_proj
    let weight = Matrix::new(random(rows * D_MODEL, 0.05), rows, D_MODEL);
    let mut group = c.benchmark_group("linear_in_proj");
    for tokens in [1usize, 256] {
        let input = random(tokens * D_MODEL, 1.0);
        let mut out = vec![0.0; tokens * rows];
        group.throughput(Throughput::Elements(tokens as u64));
        for backend in backends() {
            group.bench_with_input(BenchmarkId::new(backend.name(), tokens), &tokens, |b, _| {
                b.iter(|| backend.linear(&input, &weight, None, &mut out))
            });
        }
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
        for backend in backends() {
            group.bench_with_input(BenchmarkId::new(backend.name(), tokens), &tokens, |bench, _| {
                let recurrence = Recurrence { a: &a, log_decay_offset: &offset, d: &d };
                let inputs = ScanInputs { x: &x, dt: &dt, b: &b, c: &cm };
                bench.iter(|| backend.ssd_scan(SHAPE, recurrence, inputs, &mut state, 256, &mut y))
            });
        }
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
    for backend in backends() {
        c.bench_function(&format!("ssm_step/{}", backend.name()), |bench| bench.iter(|| backend.ssm_step(SHAPE, recurrence, inputs, &mut state, &mut y)));
    }
}

fn conv_and_norms(c: &mut Criterion) {
    let channels = SHAPE.inner() + 2 * SHAPE.bc_width();
    let weight = random(channels * 4, 0.5);
    let bias = random(channels, 0.5);
    let mut conv_state = vec![0.0; channels * 4];
    for tokens in [1usize, 256] {
        let xbc = random(tokens * channels, 1.0);
        let mut out = vec![0.0; tokens * channels];
        for backend in backends() {
            c.bench_function(&format!("causal_conv1d/{}/{tokens}", backend.name()), |b| {
                b.iter(|| backend.causal_conv1d(&xbc, &mut conv_state, &weight, Some(&bias), channels, &mut out))
            });
        }
        let y = random(tokens * SHAPE.inner(), 1.0);
        let z = random(tokens * SHAPE.inner(), 1.0);
        let norm = random(SHAPE.inner(), 1.0);
        let mut u = vec![0.0; tokens * SHAPE.inner()];
        for backend in backends() {
            c.bench_function(&format!("gated_rms_norm/{}/{tokens}", backend.name()), |b| {
                b.iter(|| backend.gated_rms_norm(&y, &z, &norm, SHAPE.inner(), 1e-5, &mut u))
            });
        }
    }
}

criterion_group!(benches, linear, scan, conv_and_norms);
criterion_main!(benches);
