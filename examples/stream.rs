//! Streaming generation: prefill a prompt, then sample tokens and print them as they come.
//! `cargo run --release --example stream -- "Once upon a time"`

use std::io::Write;
use std::sync::Arc;

use coil::{Checkpoint, Model, Sampler, SamplingConfig, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "The grass is green. The sky is".into());
    let mut checkpoint = Checkpoint::embedded_default()?;
    let tokenizer = checkpoint.tokenizer.take().ok_or("the checkpoint has no tokenizer")?;
    let model = Arc::new(Model::from_checkpoint(checkpoint));

    let mut session = Session::new(model);
    session.prefill(&tokenizer.encode(&prompt)?)?;
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1 });
    let mut decoder = tokenizer.stream_decoder();
    let mut out = std::io::stdout();
    print!("{prompt}");
    session.generate(&mut sampler, 24, tokenizer.vocab_size(), |token| {
        let text = decoder.push(token).unwrap_or_default();
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        true
    })?;
    println!();
    Ok(())
}
