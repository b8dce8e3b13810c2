//! Streaming generation: prefill a prompt, then sample tokens and print them as they come.
//! `cargo run --release --example stream -- "Once upon a time" [DEVICE]`

use std::io::Write;

use coil::{Device, Sampler, SamplingConfig, Source};

fn main() -> Result<(), coil::Error> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "The grass is green. The sky is".into());
    // The device as on the command line (`cpu`, `cuda:0`, `wgpu`, `auto`); the CPU by default.
    let device: Device = match args.next() {
        Some(text) => text.parse().unwrap_or_else(|message| {
            eprintln!("{message}");
            std::process::exit(2)
        }),
        None => Device::Cpu,
    };
    let loaded = coil::load(&Source::Embedded(coil::embedded_names()[0].into()), device)?;

    let mut session = loaded.session();
    session.prefill(&loaded.encode(&prompt)?)?;
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1 });
    let mut decoder = loaded.tokenizer()?.stream_decoder();
    let mut out = std::io::stdout();
    print!("{prompt}");
    session.generate(&mut sampler, 24, loaded.vocab_limit(), |token| {
        let text = decoder.push(token).unwrap_or_default();
        // Stop quietly when stdout is gone (a closed pipe).
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    println!();
    Ok(())
}
