//! Prefill and decode end to end on a mamba2-130m-shaped model with random f32 weights.

use coil_benches::{random_model, released_shape};
use coil_ssm::Session;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn end_to_end(c: &mut Criterion) {
    let config = released_shape("130m").expect("known shape");
    let model = random_model(&config);

    let mut group = c.benchmark_group("prefill_130m_f32");
    group.sample_size(10);
    for tokens in [512usize, 2048] {
        let input: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919) % 50277).collect();
        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
            b.iter(|| Session::new(model.clone()).prefill(&input).map(|l| l[0]).expect("prefill"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_130m_f32");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let mut session = Session::new(model.clone());
    session.prefill(&[1, 2, 3]).expect("prefill");
    group.bench_function("batch1", |b| b.iter(|| session.step(42).map(|l| l[0]).expect("step")));
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
