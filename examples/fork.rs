//! Prefix sharing: prefill a shared prefix once, then fork the state into several continuations.
//! `cargo run --release --example fork`

use std::sync::Arc;

use coil::{Checkpoint, Model, Sampler, SamplingConfig, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut checkpoint = Checkpoint::embedded_default()?;
    let tokenizer = checkpoint.tokenizer.take().ok_or("the checkpoint has no tokenizer")?;
    let model = Arc::new(Model::from_checkpoint(checkpoint));

    let prefix = "There is an important info hidden inside a lot of irrelevant text. ".repeat(50);
    let mut shared = Session::new(model.clone());
    shared.prefill(&tokenizer.encode(&prefix)?)?;
    println!("shared prefix: {} tokens, prefilled once", shared.position());

    for seed in 0..3 {
        let mut branch = shared.fork(); // a copy of the state: the prefix is not recomputed
        branch.prefill(&tokenizer.encode(&format!(" Branch {seed}:"))?)?;
        let config = SamplingConfig { temperature: 1.0, seed, ..SamplingConfig::default() };
        let ids = branch.generate(&mut Sampler::new(config), 12, tokenizer.vocab_size(), |_| true)?;
        println!("branch {seed}: {:?}", tokenizer.decode(&ids)?);
    }
    Ok(())
}
