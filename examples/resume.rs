//! Save a state after a long prefill and resume it in a new process.
//! `cargo run --release --example resume -- save /tmp/long.state 1000000`, then
//! `cargo run --release --example resume -- resume /tmp/long.state`

use std::path::PathBuf;

use coil::{Sampler, SamplingConfig, Session};

fn main() -> Result<(), coil::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: resume (save PATH [TOKENS] | resume PATH)");
        std::process::exit(2)
    };
    let (mode, path) = match args.as_slice() {
        [mode, path, ..] => (mode.as_str(), PathBuf::from(path)),
        _ => usage(),
    };
    let loaded = coil::load_default()?;
    match mode {
        "save" => {
            let tokens: usize = args.get(2).map_or(Some(1_000_000), |t| t.parse().ok()).unwrap_or_else(|| usage());
            let block = loaded.encode("The grass is green. The sky is blue. The sun is yellow.\n")?;
            let piece: Vec<u32> = block.iter().copied().cycle().take(8192).collect();
            let mut session = loaded.session();
            let started = std::time::Instant::now();
            while (session.position() as usize) < tokens {
                let n = piece.len().min(tokens - session.position() as usize);
                session.prefill(&piece[..n])?; // constant memory, however long
            }
            let seconds = started.elapsed().as_secs_f64();
            session.state().save(&path)?;
            println!(
                "saved the state after {} tokens ({:.0} tokens/s) to {}",
                session.position(),
                session.position() as f64 / seconds,
                path.display()
            );
        }
        "resume" => {
            let state = loaded.model().load_state(&path)?;
            let mut session = Session::with_state(loaded.model().clone(), state)?;
            session.prefill(&loaded.encode(" And then")?)?;
            let ids = session.generate(&mut Sampler::new(SamplingConfig::default()), 8, loaded.vocab_limit(), |_| true)?;
            println!("resumed at token {}: {:?}", session.position(), loaded.decode(&ids)?);
        }
        _ => usage(),
    }
    Ok(())
}
