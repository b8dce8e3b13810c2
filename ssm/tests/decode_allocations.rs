//! Decoding allocates nothing per token: a session's step, and a batch step that keeps its
//! logits vector, run on buffers made by the first calls. Counted by a global allocator that
//! tallies every allocation on every thread (rayon's workers included). The steps run inside
//! the pool, as a program's decode loop would: jobs sent into the pool from outside go through
//! rayon's injector queue, which allocates a block per 63 jobs (rayon's, not ours).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coil_ssm::{random_weights, Config, Dialect, Model, Session};

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

/// Wide enough that every product and the scan run split over rayon's threads.
fn config() -> Config {
    Config {
        dialect: Dialect::HuggingFace,
        d_model: 256,
        n_layer: 2,
        vocab_size: 4000,
        vocab_size_unpadded: 4000,
        d_state: 64,
        head_dim: 64,
        n_heads: 8,
        n_groups: 1,
        conv_kernel: 4,
        chunk_size: 16,
        norm_eps: 1e-5,
        use_bias: false,
        use_conv_bias: true,
        tie_embeddings: Some(true),
        time_step_limit: (0.0, f32::INFINITY),
        d_has_hdim: false,
    }
}

#[test]
fn decode_steps_allocate_nothing() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(decode_in_pool);
}

fn decode_in_pool() {
    let config = config();
    let model = Arc::new(Model::new(config.clone(), random_weights(&config, 3), Arc::new(coil_ssm::Cpu)));
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
    assert_eq!((single, batched), (0, 0), "allocations in 20 steps: (single, batch of 8)");
}
