//! Prefix sharing: prefill a shared prefix once, then fork the state into several continuations.
//! `cargo run --release --example fork`

use coil::{Sampler, SamplingConfig};

fn main() -> Result<(), coil::Error> {
    let loaded = coil::load_default()?;

    let prefix = "There is an important info hidden inside a lot of irrelevant text. ".repeat(50);
    let mut shared = loaded.session();
    shared.prefill(&loaded.encode(&prefix)?)?;
    println!("shared prefix: {} tokens, prefilled once", shared.position());

    for seed in 0..3 {
        let mut branch = shared.fork(); // a copy of the state: the prefix is not recomputed
        branch.prefill(&loaded.encode(&format!(" Branch {seed}:"))?)?;
        let config = SamplingConfig { temperature: 1.0, seed, ..SamplingConfig::default() };
        let ids = branch.generate(&mut Sampler::new(config), 12, loaded.vocab_limit(), |_| true)?;
        println!("branch {seed}: {:?}", loaded.decode(&ids)?);
    }
    // The shared session is untouched by its forks.
    assert_eq!(shared.position() as usize, loaded.encode(&prefix)?.len());
    Ok(())
}
