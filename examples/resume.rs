//! Save a state after a long prefill and resume it in a new process.
//! `cargo run --release --example resume -- save /tmp/long.state 1000000`, then
//! `cargo run --release --example resume -- resume /tmp/long.state`

use std::sync::Arc;

use coil::{Checkpoint, Model, Sampler, SamplingConfig, Session, State};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, path) = match args.as_slice() {
        [mode, path, ..] => (mode.as_str(), std::path::PathBuf::from(path)),
        _ => return Err("usage: resume (save PATH [TOKENS] | resume PATH)".into()),
    };
    let mut checkpoint = Checkpoint::embedded_default()?;
    let tokenizer = checkpoint.tokenizer.take().ok_or("the checkpoint has no tokenizer")?;
    let model = Arc::new(Model::from_checkpoint(checkpoint));
    match mode {
        "save" => {
            let tokens: usize = args.get(2).map_or(Ok(100_000), |t| t.parse())?;
            let block = tokenizer.encode("The grass is green. The sky is blue. The sun is yellow.\n")?;
            let mut session = Session::new(model);
            let piece: Vec<u32> = block.iter().copied().cycle().take(8192).collect();
            while (session.position() as usize) < tokens {
                let n = piece.len().min(tokens - session.position() as usize);
                session.prefill(&piece[..n])?; // constant memory, however long
            }
            session.state().save(&path)?;
            println!("saved the state after {} tokens to {}", session.position(), path.display());
        }
        "resume" => {
            let state = State::load(&path, model.state_shape())?;
            let mut session = Session::with_state(model, state)?;
            session.prefill(&tokenizer.encode(" And then")?)?;
            let ids = session.generate(&mut Sampler::new(SamplingConfig::default()), 8, tokenizer.vocab_size(), |_| true)?;
            println!("resumed at token {}: {:?}", session.position(), tokenizer.decode(&ids)?);
        }
        other => return Err(format!("unknown mode `{other}`").into()),
    }
    Ok(())
}
