//! One model shared by many threads, each with its own session; each thread's logits are checked
//! against the same work done sequentially.
//! `cargo run --release --example threads`

use std::sync::Arc;

use coil::{Model, Session};

fn main() -> Result<(), coil::Error> {
    let loaded = coil::load_default()?;
    let model: Arc<Model> = loaded.model().clone(); // Send + Sync: share it freely
    let prompts = (0..4).map(|i| loaded.encode(&format!("Thread {i} says: here we go. ").repeat(20 + i))).collect::<Result<Vec<_>, _>>()?;

    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|tokens| {
            let model = model.clone();
            std::thread::spawn(move || -> Result<Vec<f32>, coil::Error> {
                let mut session = Session::new(model); // one session per thread
                Ok(session.prefill(&tokens)?.to_vec())
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let logits = handle.join().expect("a session thread panicked")?;
        let sequential = Session::new(model.clone()).prefill(&prompts[i])?.to_vec();
        assert_eq!(logits, sequential, "threads must not change results");
        println!("thread {i}: {} tokens, same logits as a sequential run", prompts[i].len());
    }
    Ok(())
}
