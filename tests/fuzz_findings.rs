//! What fuzzing found (`fuzz/README.md`), through the binary: each input that once panicked now
//! ends with a clean error and exit code 1.

use std::path::Path;
use std::process::Command;

#[test]
fn malformed_tokenizers_fail_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["decoder_syntax_error.json", "bad_precompiled.json"] {
        let dir = tempfile::tempdir().unwrap();
        for name in ["config.json", "model.safetensors"] {
            std::fs::copy(root.join("checkpoints/models/default").join(name), dir.path().join(name)).unwrap();
        }
        std::fs::copy(root.join("fuzz/regressions/tokenizer").join(file), dir.path().join("tokenizer.json")).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(["inspect", "--model", dir.path().to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}: {stderr}");
        assert!(!stderr.contains("panicked") && stderr.contains("tokenizer.json"), "{file}: {stderr}");
    }
}
