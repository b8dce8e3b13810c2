//! One model shared by many threads, each with its own session.
//! `cargo run --release --example threads`

use std::sync::Arc;

use coil::{Checkpoint, Model, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut checkpoint = Checkpoint::embedded_default()?;
    let tokenizer = checkpoint.tokenizer.take().ok_or("the checkpoint has no tokenizer")?;
    let model = Arc::new(Model::from_checkpoint(checkpoint));
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| tokenizer.encode(&format!("Thread {i} says: here we go. ").repeat(20 + i))).collect::<Result<_, _>>()?;

    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|tokens| {
            let model = model.clone();
            std::thread::spawn(move || -> Result<Vec<f32>, coil::Error> {
                let mut session = Session::new(model);
                Ok(session.prefill(&tokens)?.to_vec())
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let logits = handle.join().map_err(|_| "a thread panicked")??;
        let sequential = Session::new(model.clone()).prefill(&prompts[i])?.to_vec();
        assert_eq!(logits, sequential, "threads must not change results");
        println!("thread {i}: {} tokens, same logits as a sequential run", prompts[i].len());
    }
    Ok(())
}
