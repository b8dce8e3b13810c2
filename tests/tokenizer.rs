//! A checkpoint as users have the released ones: config.json and weights, no tokenizer, in a
//! folder the program must not write to (a model hub's cache), with the tokenizer taken from
//! elsewhere (`--tokenizer FILE`, `Loaded::with_tokenizer_file`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

/// A byte-level BPE `tokenizer.json` in GPT-NeoX's layout (ByteLevel pre-tokenizer and decoder,
/// BPE model with merges), with 80 entries so that every id fits the fixtures' vocabularies (90
/// and 96): the bytes of ASCII letters, digits and the passkey prompts' punctuation (space as
/// `Ġ`, newline as `Ċ`, as byte-level BPE maps them), and ten merges.
fn write_byte_level_bpe(path: &Path) {
    let mut tokens: Vec<String> = vec!["Ġ".into(), "Ċ".into()];
    tokens.extend(('0'..='9').chain('a'..='z').chain('A'..='Z').map(String::from));
    tokens.extend([".", "?", ",", ":", "'", "-"].map(String::from));
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "s"), ("Ġ", "is"), ("e", "r"), ("a", "n"), ("Ġ", "a"), ("Ġ", "s"), ("e", "y")];
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    assert_eq!(tokens.len(), 80);
    let vocab: BTreeMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>(),
        },
    });
    std::fs::write(path, json.to_string()).unwrap();
}

/// Copies only `files` of a fixture into a new folder: a checkpoint as the hub serves it.
fn checkpoint_with(dir: &Path, case: &str, files: &[&str]) -> PathBuf {
    let model = dir.join(case);
    std::fs::create_dir(&model).unwrap();
    for file in files {
        std::fs::copy(fixture(case).join(file), model.join(file)).unwrap();
    }
    model
}

/// Every file's name, size and modification time, and the folder's own.
fn snapshot(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut seen = vec![(".".to_string(), 0, std::fs::metadata(dir).unwrap().modified().unwrap())];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        seen.push((entry.file_name().to_string_lossy().into_owned(), meta.len(), meta.modified().unwrap()));
    }
    seen.sort();
    seen
}

fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if read_only { 0o444 } else { 0o644 })).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(if read_only { 0o555 } else { 0o755 })).unwrap();
}

fn coil(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coil")).args(args).current_dir(cwd).output().expect("coil runs")
}

fn succeeds(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_tokenizer_from_elsewhere_serves_a_read_only_checkpoint_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("gpt-neox-like.json");
    write_byte_level_bpe(&tokenizer);
    let tok = tokenizer.to_str().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "The grass is green. The sky is blue.\nThe passkey is 4217. Remember it.\n").unwrap();
    let out = dir.path().join("sweep");
    // Both dialects: mamba_ssm's folder of config.json and pytorch_model.bin only, and HF's.
    for (case, files) in [("mamba_ssm_dialect", &["config.json", "pytorch_model.bin"][..]), ("g1_tied", &["config.json", "model.safetensors"][..])] {
        let model = checkpoint_with(dir.path(), case, files);
        let m = model.to_str().unwrap();
        set_read_only(&model, true);
        let before = snapshot(&model);

        // Without a tokenizer, text is refused with the way to give one.
        let refused = coil(&["run", "--model", m, "--prompt", "The grass"], dir.path());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("--tokenizer FILE"), "{case}: {stderr}");

        let generated = succeeds(coil(&["run", "--model", m, "--tokenizer", tok, "--prompt", "The grass is", "--max-new-tokens", "5", "--ignore-eos"], dir.path()), "run");
        assert!(!generated.trim().is_empty(), "{case}: run generated nothing");
        let scored = succeeds(coil(&["score", "--model", m, "--tokenizer", tok, "--text-file", text.to_str().unwrap(), "--json"], dir.path()), "score");
        let scored: serde_json::Value = serde_json::from_str(&scored).unwrap();
        // Every byte of the text is in the tokenizer's vocabulary, most as merged pairs.
        let tokens = scored["tokens"].as_u64().unwrap();
        assert!(tokens > 40 && tokens < 70, "{case}: {tokens} tokens");
        let sweep = out.join(case);
        succeeds(coil(&["passkey", "--model", m, "--tokenizer", tok, "--lengths", "512..1k", "--depths", "2", "--out", sweep.to_str().unwrap()], dir.path()), "passkey");
        let results = std::fs::read_to_string(sweep.join("results.jsonl")).unwrap();
        assert_eq!(results.lines().count(), 4, "{case}: {results}");
        succeeds(coil(&["inspect", "--model", m, "--tokenizer", tok], dir.path()), "inspect");

        assert_eq!(snapshot(&model), before, "{case}: the checkpoint folder changed");
        set_read_only(&model, false);
    }
}

/// A tokenizer whose ids pass the model's vocabulary is refused when text is fed, naming the id.
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint_with(dir.path(), "mamba_ssm_dialect", &["config.json", "pytorch_model.bin"]);
    let embedded_tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/models/passkey-n16/tokenizer.json");
    let output = coil(
        &["run", "--model", model.to_str().unwrap(), "--tokenizer", embedded_tokenizer.to_str().unwrap(), "--prompt", "The passkey is 90210."],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("out of range"), "{stderr}");
}

/// The library does the same: a checkpoint without a tokenizer, and one from another file.
#[test]
fn the_library_takes_a_tokenizer_from_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    write_byte_level_bpe(&tokenizer);
    let model = checkpoint_with(dir.path(), "mamba_ssm_dialect", &["config.json", "pytorch_model.bin"]);
    let loaded = coil::load(&coil::Source::Dir(model), coil::Device::Cpu).unwrap();
    let missing = loaded.encode("The grass").expect_err("no tokenizer yet");
    assert!(missing.to_string().contains("with_tokenizer_file"), "{missing}");
    let loaded = loaded.with_tokenizer_file(&tokenizer).unwrap();
    let ids = loaded.encode("The grass is green.").unwrap();
    assert!(ids.iter().all(|&id| id < 80) && ids.len() < "The grass is green.".len());
    assert_eq!(loaded.tokenizer().unwrap().decode(&ids).unwrap(), "The grass is green.");
    let logits = loaded.session().prefill(&ids).unwrap().to_vec();
    assert_eq!(logits.len(), loaded.model().vocab_size());
}
