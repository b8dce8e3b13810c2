//! Prefill and decode end to end on released model shapes with random weights, f32, bf16 and f16.
//!
//! `COIL_BENCH_SHAPES` (default `130m`; the full set is `130m,370m`) and
//! `COIL_BENCH_PREFILL` (default `512,2048`; add `8192,65536` for the long runs, minutes each on
//! two cores) choose the sizes; decode runs at batch 1, 8 and 32 (`Model::step_batch`, aggregate
//! tokens per second as the throughput).

use std::sync::Arc;

use coil_benches::{random_model, released_shape};
use coil_ssm::{Model, Session, State, WeightDtype};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

fn end_to_end(c: &mut Criterion) {
    let prefill: Vec<usize> = list("COIL_BENCH_PREFILL", "512,2048").iter().map(|s| s.parse().expect("COIL_BENCH_PREFILL: token counts")).collect();
    for shape in list("COIL_BENCH_SHAPES", "130m") {
        let config = released_shape(&shape).unwrap_or_else(|| panic!("COIL_BENCH_SHAPES: unknown shape {shape}"));
        let f32_model = random_model(&config);
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let model: Arc<Model> = match dtype {
                WeightDtype::F32 => f32_model.clone(),
                _ => Arc::new(Arc::into_inner(random_model(&config)).expect("one owner").with_weight_dtype(dtype).expect("random weights fit 16 bits")),
            };
            let name = format!("{shape}_{dtype}");

            let mut group = c.benchmark_group(format!("prefill_{name}"));
            group.sample_size(10);
            for &tokens in &prefill {
                let input: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919) % 50277).collect();
                group.throughput(Throughput::Elements(tokens as u64));
                group.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
                    b.iter(|| Session::new(model.clone()).prefill(&input).map(|l| l[0]).expect("prefill"))
                });
            }
            group.finish();

            let mut group = c.benchmark_group(format!("decode_{name}"));
            group.sample_size(10);
            let plan = model.plain_plan().clone();
            let mut primed = model.new_state();
            model.forward(&mut primed, &[1, 2, 3], coil_ssm::LogitRows::None).expect("prefill");
            for batch in [1usize, 8, 32] {
                let mut states: Vec<State> = vec![primed.clone(); batch];
                let tokens: Vec<u32> = (0..batch as u32).map(|b| 42 + b).collect();
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, _| {
                    b.iter(|| {
                        let mut refs: Vec<&mut State> = states.iter_mut().collect();
                        model.step_batch(&plan, &mut refs, &tokens).map(|l| l[0]).expect("step")
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
