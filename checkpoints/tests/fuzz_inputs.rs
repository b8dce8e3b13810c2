//! Replays the fuzz corpus that is committed (`fuzz/seeds/<target>/`) and every input a fuzzer
//! ever crashed on (`fuzz/regressions/<target>/`) through the fuzz targets' own bodies, so the
//! normal test run guards what fuzzing found without needing cargo-fuzz or nightly features.

#[path = "../../fuzz/fuzz_targets/common.rs"]
#[allow(dead_code)]
mod common;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for folder in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn config() {
    replay("config", common::config);
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
    replay("tokenizer", common::tokenizer);
}
