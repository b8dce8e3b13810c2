//! Decoding allocates nothing per token: a session's step, and a batch step that keeps its
//! logits vector, run on buffers made by the first calls. Counted by a global allocator that
//! tallies every allocation on every thread (rayon's workers included). The steps run inside
//! the pool, as a program's decode loop would: jobs sent into the pool from outside go through
//! rayon's injector queue, which allocates a block per 63 jobs (rayon's, not ours).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coil_ssm::{random_weights, Config, Model, Session, WeightDtype};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

mod common;

/// Wide enough that every product and the scan run split over rayon's threads.
fn config() -> Config {
    let mut config = common::config(256, 8, 64, 64, 1, 4);
    (config.vocab_size, config.vocab_size_unpadded, config.chunk_size) = (4000, 4000, 16);
    config
}

#[test]
fn decode_steps_allocate_nothing() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // 16-bit weights take other kernels (widened in registers, or per tile in a batch).
    for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
        pool.install(|| decode_in_pool(dtype));
    }
}

fn decode_in_pool(dtype: WeightDtype) {
    let config = config();
    let model = Model::new(config.clone(), random_weights(&config, 3), Arc::new(coil_ssm::Cpu));
    let model = Arc::new(model.with_weight_dtype(dtype).unwrap());
    let mut session = Session::new(model.clone());
    session.prefill(&[1, 2, 3, 4, 5]).unwrap();
    for token in 0..3 {
        session.step(token).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for token in 0..20 {
        session.step(token * 7).unwrap();
    }
    let single = ALLOCATIONS.load(Ordering::Relaxed) - before;

    let plan = model.plain_plan().clone();
    let mut states: Vec<_> = (0..8).map(|_| session.state().clone()).collect();
    let mut logits = Vec::new();
    let tokens: Vec<u32> = (0..8).collect();
    let mut refs: Vec<_> = states.iter_mut().collect();
    for _ in 0..3 {
        model.step_batch_into(&plan, &mut refs, &tokens, &mut logits).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..20 {
        model.step_batch_into(&plan, &mut refs, &tokens, &mut logits).unwrap();
    }
    let batched = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!((single, batched), (0, 0), "{dtype:?} weights: allocations in 20 steps (single, batch of 8)");
}
