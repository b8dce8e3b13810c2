//! Replays the fuzz corpus that is committed (`fuzz/seeds/<target>/`) and every input a fuzzer
//! ever crashed on (`fuzz/regressions/<target>/`) through the fuzz targets' own bodies, so the
//! normal test run guards what fuzzing found without needing cargo-fuzz or nightly features.

#[path = "../../../fuzz/fuzz_targets/common.rs"]
mod common;

use std::path::Path;

/// Runs every committed input of `target`; `run` says whether an input got through all the
/// format checks, and at least one seed must (or the harness would only ever test rejections).
fn replay(target: &str, run: fn(&[u8]) -> bool) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let (mut count, mut accepted) = (0, 0);
    for folder in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            accepted += run(&std::fs::read(&path).unwrap()) as usize;
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for {target}");
    assert!(accepted > 0, "no input of {target} was accepted");
}

#[test]
fn config() {
    replay("config", |data| {
        common::config(data);
        true
    });
}

#[test]
fn safetensors() {
    replay("safetensors", |data| common::weights("model.safetensors", data));
}

#[test]
fn torch_zip() {
    replay("torch_zip", |data| common::weights("pytorch_model.bin", data));
}

#[test]
fn pickle() {
    replay("pickle", common::pickle);
}

#[test]
fn tokenizer() {
    replay("tokenizer", |data| {
        common::tokenizer(data);
        true
    });
}

/// tokenizers 0.22.2 panics on these two (fuzzing found the first); they must be plain errors.
#[test]
fn tokenizer_panics_become_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/tokenizer");
    for (file, needle) in [("decoder_syntax_error.json", "invalid JSON"), ("bad_precompiled.json", "tokenizers crate rejected it")] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let error = coil_checkpoints::Tokenizer::from_bytes(&bytes, Path::new(file)).err().expect("an error");
        assert!(error.to_string().contains(needle), "{file}: {error}");
    }
}
