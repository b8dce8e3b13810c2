//! Hostile and broken input through the `coil` binary: every case must exit non-zero with a
//! message naming what is wrong, and never panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn coil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coil")).args(args).output().expect("coil runs")
}

/// Asserts a clean failure whose stderr mentions every one of `needles`.
fn assert_fails_with(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks `{needle}`: {stderr}");
    }
}

/// A copy of the g1_tied checkpoint whose tensors went through `edit` (name -> (dtype, shape, bytes)).
fn edited_checkpoint(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let source = fixture("g1_tied");
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let parsed = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir.to_owned()
}

fn ids_file(dir: &Path, text: &str) -> String {
    let path = dir.join("ids.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn missing_checkpoint_folder_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert_fails_with(&coil(&["inspect", "--model", missing.to_str().unwrap()]), &["nope", "no such checkpoint folder"]);
    let out = dir.path().join("out");
    assert_fails_with(&coil(&["convert", "--model", missing.to_str().unwrap(), "--out", out.to_str().unwrap()]), &["nope", "no such checkpoint folder"]);
    assert_fails_with(&coil(&["convert", "--model", "embedded:passkey-n16", "--out", out.to_str().unwrap()]), &["embedded:passkey-n16", "compiled into the binary"]);
    assert_fails_with(&coil(&["inspect", "--model", dir.path().to_str().unwrap()]), &["config.json"]);
    std::fs::copy(fixture("g1_tied").join("config.json"), dir.path().join("config.json")).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", dir.path().to_str().unwrap()]), &["model.safetensors", "no such file"]);
}

#[test]
fn invalid_json_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |_| {});
    // The optional training.json, when there, must hold a positive `train_length` (a bad one
    // was ignored, and calibration silently used a default length).
    for bad in ["{\"train_length\": 0}", "{\"train_length\": \"2k\"}", "not json"] {
        std::fs::write(path.join("training.json"), bad).unwrap();
        assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["training.json", "train_length"]);
    }
    std::fs::write(path.join("training.json"), "{\"train_length\": 512, \"best_mitigation\": 3}").unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["training.json", "best_mitigation"]);
    std::fs::write(path.join("training.json"), "{\"train_length\": 512}").unwrap();
    assert!(coil(&["inspect", "--model", path.to_str().unwrap()]).status.success());
    assert_fails_with(
        &coil(&["run", "--model", path.to_str().unwrap(), "--prompt", "a", "--max-new-tokens", "1", "--mitigate", "best"]),
        &["--mitigate best", "best_mitigation", "training.json"],
    );
    std::fs::remove_file(path.join("training.json")).unwrap();
    std::fs::write(path.join("config.json"), "{\"hidden_size\": 64,,}").unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["config.json", "invalid JSON"]);
    std::fs::write(path.join("config.json"), [0xff, 0xfe, b'{']).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["config.json", "UTF-8"]);
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |_| {});
    let file = path.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["model.safetensors", "not a valid safetensors"]);
    std::fs::write(&file, &bytes[..5]).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["model.safetensors", "not a valid safetensors"]);
}

#[test]
fn header_that_lies_about_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |_| {});
    let file = path.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    // Claim a header far longer than the file.
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["model.safetensors", "not a valid safetensors"]);

    // A shape whose element count disagrees with the tensor's byte range.
    let original = std::fs::read(fixture("g1_tied").join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&original[8..8 + header_len]).unwrap();
    let lying = header.replacen("\"shape\":[8]", "\"shape\":[9]", 1);
    assert_ne!(lying, header, "fixture has an [8] tensor to tamper with");
    let mut bytes = original[..8].to_vec();
    bytes.extend_from_slice(lying.as_bytes());
    bytes.extend_from_slice(&original[8 + header_len..]);
    std::fs::write(&file, &bytes).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["model.safetensors", "not a valid safetensors"]);
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |t| {
        t.remove("backbone.layers.1.mixer.dt_bias");
    });
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["model.safetensors", "backbone.layers.1.mixer.dt_bias", "missing"]);
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |t| {
        let entry = t.get_mut("backbone.layers.0.mixer.A_log").unwrap();
        entry.1 = vec![7];
        entry.2.truncate(7 * 4);
    });
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["A_log", "shape [7]", "expected [8]"]);
}

#[test]
fn unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |t| {
        t.get_mut("backbone.layers.0.mixer.D").unwrap().0 = Dtype::I32;
    });
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["mixer.D", "dtype I32"]);
}

#[test]
fn nan_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |t| {
        let data = &mut t.get_mut("backbone.layers.1.mixer.out_proj.weight").unwrap().2;
        data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["out_proj.weight", "non-finite", "index 10"]);
}

#[test]
fn shard_index_naming_a_missing_or_escaping_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |_| {});
    std::fs::remove_file(path.join("model.safetensors")).unwrap();
    std::fs::write(path.join("model.safetensors.index.json"), r#"{"weight_map": {"backbone.norm_f.weight": "gone.safetensors"}}"#).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["gone.safetensors"]);
    std::fs::write(path.join("model.safetensors.index.json"), r#"{"weight_map": {"x": "../../etc/passwd"}}"#).unwrap();
    assert_fails_with(&coil(&["inspect", "--model", path.to_str().unwrap()]), &["plain file name"]);
}

#[test]
fn token_ids_out_of_range_malformed_or_empty() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("g1_tied");
    let model = model.to_str().unwrap();
    let ids = ids_file(dir.path(), "1 2 96 3");
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", &ids]), &["token id 96 at position 2", "96 embedding rows"]);
    let ids = ids_file(dir.path(), "1 2 three");
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", &ids]), &["`three` at byte 4"]);
    let ids = ids_file(dir.path(), " \n ");
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", &ids]), &["empty"]);
    assert_fails_with(&coil(&["run", "--model", model, "--token-ids", &ids]), &["empty"]);
    assert_fails_with(&coil(&["run", "--prompt", ""]), &["empty"]);
}

/// `score` streams piece by piece: a bad id that opens a piece is an error naming it (it was
/// scored against the previous piece's logits first, and panicked), and the rows of the pieces
/// before it are written before the error.
#[test]
fn score_reports_a_bad_id_wherever_the_pieces_fall() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("g1_tied");
    let model = model.to_str().unwrap();
    let ones = |n: usize| vec!["1"; n].join(" ");
    let at_a_piece_start = ids_file(dir.path(), &format!("{} 96", ones(1024)));
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", &at_a_piece_start]), &["token id 96 at position 1024"]);
    let second = ids_file(dir.path(), "1 4294967295");
    for extra in [&["--piece-len", "1"][..], &["--piece-len", "1", "--json"], &["--piece-len", "1", "--bucket", "2"]] {
        let output = coil(&[&["score", "--model", model, "--token-ids", &second], extra].concat());
        assert_fails_with(&output, &["token id 4294967295 at position 1"]);
    }
    let later = ids_file(dir.path(), &format!("{} 96 {}", ones(300), ones(10)));
    let output = coil(&["score", "--model", model, "--token-ids", &later, "--piece-len", "7", "--per-token"]);
    assert_fails_with(&output, &["token id 96 at position 300"]);
    // Pieces of 7: the one holding position 300 starts at 294, so rows 1..=293 were written.
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.lines().last().unwrap().starts_with("293\t1\t"), "{table}");

    // --json stays one JSON object: the losses before the bad id, then the error.
    let short = ids_file(dir.path(), "1 2 3 96");
    let output = coil(&["score", "--model", model, "--token-ids", &short, "--json", "--piece-len", "1"]);
    assert_fails_with(&output, &["token id 96 at position 3"]);
    let object: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object on stdout");
    assert_eq!(object["nll"].as_array().map(Vec::len), Some(2), "{object}");
    assert!(object["error"].as_str().unwrap().contains("token id 96 at position 3"), "{object}");

    // A run of digits longer than a read block is no id (it was cut into two ids: `0…0` and `5`).
    let zeros = ids_file(dir.path(), &format!("{}5 3", "0".repeat(8192)));
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", &zeros]), &["without a separator"]);
    // Control characters in a bad field are escaped; invalid UTF-8 in an ids file says what ids are.
    let control = ids_file(dir.path(), "1 2 \u{1b}[31mred");
    let output = coil(&["score", "--model", model, "--token-ids", &control]);
    assert_fails_with(&output, &["\\u{1b}[31mred"]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains('\u{1b}'));
    let bytes = dir.path().join("bytes.txt");
    std::fs::write(&bytes, b"1 2 \xff 3").unwrap();
    assert_fails_with(&coil(&["score", "--model", model, "--token-ids", bytes.to_str().unwrap()]), &["invalid UTF-8 at byte 4", "ASCII digits"]);

    // A bad COIL_PROGRESS_SECONDS is a warning, not a panic.
    let fine = ids_file(dir.path(), "1 2 3");
    for bad in ["nan", "-1", "inf", "1e400", "soon"] {
        let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(["score", "--model", model, "--token-ids", &fine]).env("COIL_PROGRESS_SECONDS", bad).output().unwrap();
        assert!(output.status.success(), "{bad}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stderr).contains("COIL_PROGRESS_SECONDS"), "{bad}");
    }
}

#[test]
fn text_for_a_model_without_tokenizer_and_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("g1_tied");
    assert_fails_with(&coil(&["run", "--model", model.to_str().unwrap(), "--prompt", "hello"]), &["no tokenizer.json", "--token-ids"]);
    let text = dir.path().join("bad.txt");
    std::fs::write(&text, b"fine text \xff\xfe more").unwrap();
    assert_fails_with(&coil(&["score", "--text-file", text.to_str().unwrap()]), &["bad.txt", "invalid UTF-8 at byte 10"]);
}

#[test]
fn state_files_that_are_garbage_or_from_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a state").unwrap();
    assert_fails_with(&coil(&["run", "--prompt", "hi", "--state-in", garbage.to_str().unwrap()]), &["garbage.safetensors", "not a valid safetensors"]);

    let other = dir.path().join("other.safetensors");
    let ids = ids_file(dir.path(), "1 2 3");
    // k3_limit's state is smaller than the default model's (conv kernel 3, 4 heads).
    let small = fixture("k3_limit");
    let out = coil(&["run", "--model", small.to_str().unwrap(), "--token-ids", &ids, "--max-new-tokens", "1", "--state-out", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_fails_with(&coil(&["run", "--prompt", "hi", "--state-in", other.to_str().unwrap()]), &["conv_states", "this model needs"]);

    // Same shapes, other weights: embedded:random and embedded:passkey-n16 share their sizes.
    let random = dir.path().join("random.safetensors");
    let out = coil(&["run", "--model", "embedded:random", "--token-ids", &ids, "--max-new-tokens", "1", "--state-out", random.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = |model: &str| coil(&["run", "--model", model, "--token-ids", &ids, "--max-new-tokens", "1", "--state-in", random.to_str().unwrap()]);
    assert_fails_with(&run("embedded:passkey-n16"), &["random.safetensors", "another model"]);
    let again = run("embedded:random");
    assert!(again.status.success(), "its own model takes it back: {}", String::from_utf8_lossy(&again.stderr));

    // The fingerprint is sixteen hex digits, and a version 2 state must name its model.
    let edited = |key: &str, value: Option<&str>| -> String {
        let bytes = std::fs::read(&random).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut metadata = metadata.metadata().clone().unwrap();
        match value {
            Some(v) => metadata.insert(key.into(), v.into()),
            None => metadata.remove(key),
        };
        let parsed = SafeTensors::deserialize(&bytes).unwrap();
        let path = dir.path().join(format!("edited-{key}-{}.safetensors", value.unwrap_or("none").len()));
        std::fs::write(&path, safetensors::serialize(parsed.tensors(), Some(metadata)).unwrap()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let saved = SafeTensors::read_metadata(&std::fs::read(&random).unwrap()).unwrap().1.metadata().clone().unwrap()["model"].clone();
    let load = |path: &str| coil(&["run", "--model", "embedded:random", "--token-ids", &ids, "--max-new-tokens", "1", "--state-in", path]);
    for bad in [&saved[1..], &format!("+{}", &saved[1..]), &format!("00000000{saved}")] {
        assert_fails_with(&load(&edited("model", Some(bad))), &["metadata `model`", "not a model fingerprint"]);
    }
    assert_fails_with(&load(&edited("model", None)), &["metadata `model` is missing"]);
    // A position at the end of u64 wrapped to a small one as the run went on.
    assert_fails_with(&load(&edited("position", Some("18446744073709551615"))), &["pass the last position"]);
}

#[test]
fn a_windowed_state_whose_window_disagrees_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("window.safetensors");
    let window = ["--mitigate", "window:size=4,granularity=2"];
    let mut args = vec!["run", "--prompt", "hello there world", "--max-new-tokens", "0", "--state-out", saved.to_str().unwrap()];
    args.extend_from_slice(&window);
    let out = coil(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same tensors, with one metadata value changed.
    let tampered = |key: &str, value: &str| -> String {
        let bytes = std::fs::read(&saved).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut metadata = metadata.metadata().clone().unwrap();
        assert!(metadata.contains_key(key), "the state file has `{key}`");
        metadata.insert(key.into(), value.into());
        let parsed = SafeTensors::deserialize(&bytes).unwrap();
        let path = dir.path().join(format!("{key}-{value}.safetensors"));
        std::fs::write(&path, safetensors::serialize(parsed.tensors(), Some(metadata)).unwrap()).unwrap();
        path.to_string_lossy().into_owned()
    };
    for (key, value) in [("window.0.oldest", "100"), ("window.0.oldest", "18446744073709551615"), ("position", "2"), ("position", "18446744073709551615")] {
        let path = tampered(key, value);
        let mut args = vec!["run", "--prompt", " x y z", "--max-new-tokens", "2", "--state-in", &path];
        args.extend_from_slice(&window);
        assert_fails_with(&coil(&args), &["window layer 0 holds the inputs of tokens"]);
    }
    let newer = tampered("version", "3");
    let mut args = vec!["run", "--prompt", " x", "--max-new-tokens", "1", "--state-in", &newer];
    args.extend_from_slice(&window);
    assert_fails_with(&coil(&args), &["state format version 3", "reads versions 1 and 2"]);

    // A window on other layers than the run's (it panicked on a ring overflow), or a layer
    // listed twice.
    let saved_path = saved.to_str().unwrap();
    let args = ["run", "--prompt", " x", "--max-new-tokens", "1", "--state-in", saved_path, "--mitigate", "window:size=4,granularity=2,layers=1"];
    assert_fails_with(&coil(&args), &["carries a window on layers 0,1", "this run's window is on layers 1"]);
    let twice = tampered("window_layers", "0,0");
    let mut args = vec!["run", "--prompt", " x", "--max-new-tokens", "1", "--state-in", &twice];
    args.extend_from_slice(&window);
    assert_fails_with(&coil(&args), &["window_layers", "`0`"]);
}

#[test]
#[cfg(target_os = "linux")]
fn inputs_that_never_end_are_refused_not_read_forever() {
    // A config, tokenizer, weights, template or state that is a device or a pipe (which would be
    // read without end, or wait for a writer) is refused; a real file far larger than any of its
    // kind is refused at a limit.
    let dir = tempfile::tempdir().unwrap();
    let model = edited_checkpoint(dir.path(), |_| {});
    let inspect = || coil(&["inspect", "--model", model.to_str().unwrap()]);
    let replace = |name: &str, with: &dyn Fn(&Path)| {
        let path = model.join(name);
        let saved = std::fs::read(&path).ok();
        let _ = std::fs::remove_file(&path);
        with(&path);
        move || {
            std::fs::remove_file(&path).unwrap();
            if let Some(bytes) = &saved {
                std::fs::write(&path, bytes).unwrap();
            }
        }
    };
    let to_zero = |path: &Path| std::os::unix::fs::symlink("/dev/zero", path).unwrap();
    let fifo = |path: &Path| assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        for make in [&to_zero as &dyn Fn(&Path), &fifo] {
            let restore = replace(name, make);
            assert_fails_with(&inspect(), &[name, "not a regular file"]);
            restore();
        }
    }
    let restore = replace("config.json", &|path: &Path| std::fs::write(path, vec![b' '; 65 << 20]).unwrap());
    assert_fails_with(&inspect(), &["config.json", "larger than 64 MB"]);
    restore();
    assert_fails_with(&coil(&["run", "--prompt", "hi", "--state-in", "/dev/zero"]), &["/dev/zero", "not a regular file"]);
    let out = dir.path().join("sweep");
    assert_fails_with(
        &coil(&["passkey", "--model", "embedded:passkey-n16", "--template", "/dev/zero", "--lengths", "64", "--out", out.to_str().unwrap()]),
        &["/dev/zero", "not a regular file"],
    );
}

#[test]
fn a_killed_writers_temporary_file_is_removed_by_the_next_write() {
    // `score --logits-out` writes `.NAME.partial-PID` beside NAME; a run killed outright leaves
    // it. The next write of the same output removes it (its PID is no longer running).
    let dir = tempfile::tempdir().unwrap();
    let ids = ids_file(dir.path(), "1 2 3 4");
    let out = dir.path().join("logits.safetensors");
    let left = dir.path().join(".logits.safetensors.partial-4294967");
    std::fs::write(&left, vec![0u8; 4096]).unwrap();
    let g1 = fixture("g1_tied");
    let run = coil(&["score", "--model", g1.to_str().unwrap(), "--token-ids", &ids, "--logits-out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.exists());
    if cfg!(target_os = "linux") {
        assert!(!left.exists(), "the dead writer's temporary file is still there");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains(".partial-")), "{names:?}");
}

#[test]
#[cfg(target_os = "linux")]
fn outputs_write_through_links_and_into_pipes_instead_of_replacing_them() {
    // The atomic rename replaced whatever the output named: a symlink lost its link (and its
    // target got nothing), and `--state-out /dev/null` as root replaced /dev/null with a file.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.state");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("link.state");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = coil(&["run", "--model", "embedded:random", "--prompt", "x", "--max-new-tokens", "1", "--state-out", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is still a link");
    assert!(std::fs::read(&target).unwrap().len() > 1000, "the state went into the file the link names");

    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = coil(&["run", "--model", "embedded:random", "--prompt", "x", "--max-new-tokens", "1", "--state-out", fifo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = reader.join().unwrap();
    assert!(SafeTensors::deserialize(&bytes).is_ok(), "the reader got the whole state");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the pipe is still a pipe");
}

#[test]
#[cfg(target_os = "linux")]
fn outputs_never_land_on_inputs_through_any_door() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let model = edited_checkpoint(&d(""), |_| {});
    let m = model.to_str().unwrap();
    let ids = ids_file(dir.path(), "1 2 3");
    // A checkpoint's own files (they were replaced: the weights by logits, the config by a state).
    let weights = model.join("model.safetensors");
    assert_fails_with(
        &coil(&["score", "--model", m, "--token-ids", &ids, "--logits-out", weights.to_str().unwrap()]),
        &["model.safetensors", "also an input"],
    );
    let config = model.join("config.json");
    assert_fails_with(&coil(&["run", "--model", m, "--token-ids", &ids, "--state-out", config.to_str().unwrap()]), &["config.json", "also an input"]);
    assert!(coil(&["inspect", "--model", m]).status.success(), "the checkpoint is intact");
    // A thresholds file the run reads (calibrate wrote over it).
    let thresholds = d("t.json");
    std::fs::write(&thresholds, "{}").unwrap();
    let spec = format!("state-norm:thresholds={}", thresholds.display());
    assert_fails_with(
        &coil(&["calibrate", "--model", "embedded:passkey-n16", "--length", "64", "--mitigate", &spec, "--out", thresholds.to_str().unwrap()]),
        &["t.json", "also an input"],
    );
    // Anything else in the folder is not an input: a state kept there is continued in place.
    let kept = model.join("chat.state");
    for _ in 0..2 {
        let run = coil(&["run", "--model", m, "--token-ids", &ids, "--max-new-tokens", "1", "--state-out", kept.to_str().unwrap()]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let k = kept.to_str().unwrap();
    let run = coil(&["run", "--model", m, "--token-ids", &ids, "--max-new-tokens", "1", "--state-in", k, "--state-out", k]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // Two outputs meeting through a dangling link (the plot was written, then replaced).
    std::os::unix::fs::symlink("o2.svg", d("olink.svg")).unwrap();
    let text = d("in.txt");
    std::fs::write(&text, "some words to score here").unwrap();
    let (t, olink, o2) = (text.to_str().unwrap(), d("olink.svg"), d("o2.svg"));
    assert_fails_with(&coil(&["score", "--text-file", t, "--bucket", "4", "--csv", olink.to_str().unwrap(), "--plot", o2.to_str().unwrap()]), &["both name"]);
    // A dangling link into a missing folder: refused before the run, not after it.
    std::os::unix::fs::symlink("nowhere/x.state", d("dangling")).unwrap();
    assert_fails_with(&coil(&["run", "--prompt", "hi", "--state-out", d("dangling").to_str().unwrap()]), &["nowhere", "does not exist"]);

    // A report file linked to the results it is made of.
    let sweep = d("sweep");
    let out = coil(&["passkey", "--model", "embedded:passkey-n16", "--lengths", "64", "--depths", "2", "--out", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = std::fs::read(sweep.join("results.jsonl")).unwrap();
    std::fs::remove_file(sweep.join("report.md")).unwrap();
    std::os::unix::fs::symlink("results.jsonl", sweep.join("report.md")).unwrap();
    assert_fails_with(&coil(&["report", sweep.to_str().unwrap()]), &["report.md", "results file"]);
    assert_eq!(std::fs::read(sweep.join("results.jsonl")).unwrap(), results, "the results are intact");

    // convert: an output folder whose model.safetensors links into the source, or is a pipe; and
    // a tokenizer.json an earlier conversion left (of another model) is removed.
    let converted = d("converted");
    std::fs::create_dir(&converted).unwrap();
    std::os::unix::fs::symlink(&weights, converted.join("model.safetensors")).unwrap();
    let convert = || coil(&["convert", "--model", m, "--out", converted.to_str().unwrap()]);
    assert_fails_with(&convert(), &["model.safetensors", "replace the source"]);
    std::fs::remove_file(converted.join("model.safetensors")).unwrap();
    assert!(Command::new("mkfifo").arg(converted.join("model.safetensors")).status().unwrap().success());
    assert_fails_with(&convert(), &["model.safetensors", "not a regular file"]);
    std::fs::remove_file(converted.join("model.safetensors")).unwrap();
    std::fs::write(converted.join("tokenizer.json"), "{}").unwrap();
    assert!(convert().status.success());
    assert!(!converted.join("tokenizer.json").exists(), "another model's tokenizer was left beside the weights");
    assert!(coil(&["inspect", "--model", m]).status.success(), "the source is intact");
}

#[test]
fn logits_out_refuses_above_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ids_file(dir.path(), "1 2 3 4");
    let out = dir.path().join("logits.safetensors");
    let g1 = fixture("g1_tied");
    assert_fails_with(
        &coil(&["score", "--model", g1.to_str().unwrap(), "--token-ids", &ids, "--logits-out", out.to_str().unwrap(), "--max-logits-bytes", "1000"]),
        &["--max-logits-bytes"],
    );
    assert!(!out.exists(), "nothing written when refused");
}

#[test]
fn bad_arguments() {
    assert_fails_with(&coil(&["run", "--prompt", "x", "--top-p", "0"]), &["--top-p"]);
    // Sizes past any real run are refused up front, not allocated or looped over.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let sweep = |extra: &[&str]| {
        let mut args = vec!["passkey", "--model", "embedded:passkey-n4", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        coil(&args)
    };
    assert_fails_with(&sweep(&["--lengths", "1k..18446744073709551615"]), &["--lengths", "longest length"]);
    assert_fails_with(&sweep(&["--lengths", "1k", "--depths", "18446744073709551615"]), &["--depths must be from 1 to 10000"]);
    assert_fails_with(&sweep(&["--lengths", "1k", "--depths", "0"]), &["--depths must be from 1"]);
    assert!(!out.exists(), "nothing written before the arguments are checked");
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", "window:size=18446744073709551615"]), &["size + granularity must be at most"]);
    // A piece far longer than the input is just the whole input.
    let run = coil(&["run", "--prompt", "hello", "--max-new-tokens", "2", "--piece-len", "18446744073709551615"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_fails_with(&coil(&["run", "--prompt", "x", "--temperature=-1"]), &["--temperature"]);
    assert_fails_with(&coil(&["inspect", "--threads", "0"]), &["--threads"]);
    assert_fails_with(&coil(&["inspect", "--threads", "100000"]), &["--threads", "4096"]);
    // A reference position the stream never reaches flagged nothing, silently.
    let stats_out = tempfile::tempdir().unwrap();
    let csv = stats_out.path().join("s.csv");
    assert_fails_with(
        &coil(&["stats", "--probe", "filler", "--length", "100", "--reference-length", "1000", "--out", csv.to_str().unwrap()]),
        &["--reference-length 1000"],
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let f = file.path().to_str().unwrap();
    assert_fails_with(&coil(&["passkey", "--lengths", "64", "--depths", "2", "--out", f]), &["is a file, not a folder"]);
    let folder = tempfile::tempdir().unwrap();
    let thresholds = folder.path().join("t.json");
    assert_fails_with(
        &coil(&["calibrate", "--model", "embedded:passkey-n16", "--length", "64", "--factor", "1e-45", "--out", thresholds.to_str().unwrap()]),
        &["--factor", "positive finite thresholds"],
    );
    // Calibration tokens are held in memory: a huge count aborted on allocation.
    assert_fails_with(&coil(&["run", "--prompt", "hi", "--mitigate", "state-norm:calibrate=18446744073709551615"]), &["calibrate=T", "at most"]);
}

#[test]
fn bad_mitigations() {
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", "warp:2"]), &["unknown mitigation `warp`"]);
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", "a-scale:2,layers=9"]), &["layer 9 does not exist"]);
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", "window:size=4", "--mitigate", "state-norm:calibrate=10"]), &["cannot be combined"]);
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", "window:size=4;window:size=8"]), &["window can appear only once"]);
    // The factor given twice: the positional one silently won.
    for spec in ["dt-scale:0.5,factor=0.7", "a-scale:2,factor=3"] {
        assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", spec]), &["give the factor once"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    std::fs::write(&file, r#"{"thresholds": [[1.0, 2.0]]}"#).unwrap();
    let spec = format!("state-norm:thresholds={}", file.display());
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", &spec]), &["2 layers of 8 heads"]);
    std::fs::write(&file, "{oops").unwrap();
    assert_fails_with(&coil(&["run", "--prompt", "x", "--mitigate", &spec]), &["t.json", "invalid JSON"]);
    let g1 = fixture("g1_tied");
    assert_fails_with(&coil(&["run", "--model", g1.to_str().unwrap(), "--token-ids", &ids_file(dir.path(), "1 2"), "--mitigate", "state-norm:calibrate=100"]), &["tokenizer.json"]);
}

#[test]
fn a_closed_stdout_pipe_ends_the_process_without_a_panic() {
    use std::process::Stdio;
    for args in [&["inspect"][..], &["inspect", "--json"], &["devices"]] {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_coil")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("coil runs");
        drop(child.stdout.take()); // the reader goes away before coil has printed anything
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "coil {args:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "coil {args:?}: {stderr}");
    }
}

#[test]
fn an_output_that_is_an_input_a_folder_or_in_a_missing_folder_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let original = "The grass is green. The sky is blue. ".repeat(20);
    std::fs::write(&text, &original).unwrap();
    let t = text.to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &["stats", "--text-file", t, "--length", "64", "--every", "32", "--out", t],
        &["score", "--text-file", t, "--bucket", "16", "--csv", t],
        &["calibrate", "--text-file", t, "--length", "64", "--out", t],
        &["run", "--prompt-file", t, "--max-new-tokens", "1", "--state-out", t],
    ];
    for args in cases {
        assert_fails_with(&coil(args), &["text.txt", "is also an input of this command"]);
        assert_eq!(std::fs::read_to_string(&text).unwrap(), original, "coil {args:?} left the input alone");
    }
    let missing = dir.path().join("no-such-folder").join("state.safetensors");
    assert_fails_with(&coil(&["run", "--prompt-file", t, "--state-out", missing.to_str().unwrap()]), &["no-such-folder", "does not exist"]);
    let folder = dir.path().to_str().unwrap();
    assert_fails_with(&coil(&["score", "--text-file", t, "--bucket", "16", "--csv", folder]), &["--csv", "is a folder"]);
    let png = dir.path().join("loss.png");
    assert_fails_with(&coil(&["score", "--text-file", t, "--bucket", "16", "--plot", png.to_str().unwrap()]), &["loss.png", "SVG"]);
    assert_fails_with(&coil(&["stats", "--text-file", t, "--length", "64", "--out", &format!("{folder}/s.csv"), "--plot", png.to_str().unwrap()]), &["SVG"]);
    assert!(!dir.path().join("s.csv").exists(), "stats refused its plot before writing its CSV");
    // Two outputs naming one file (written one over the other), however the name is spelt.
    let svg = dir.path().join("loss.svg");
    let same = format!("{folder}/./loss.svg");
    assert_fails_with(&coil(&["score", "--text-file", t, "--bucket", "16", "--plot", svg.to_str().unwrap(), "--csv", &same]), &["both name"]);
    assert!(!svg.exists());
}

#[test]
fn small_argument_and_file_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // A tokenizer.json that is there but is not a file (a folder, a broken cache symlink): an
    // error naming it once, not a model silently without a tokenizer.
    let path = edited_checkpoint(dir.path(), |_| {});
    std::fs::create_dir(path.join("tokenizer.json")).unwrap();
    let out = coil(&["inspect", "--model", path.to_str().unwrap()]);
    assert_fails_with(&out, &["tokenizer.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cause = stderr.rsplit(": ").next().unwrap().trim();
    assert_eq!(stderr.matches(cause).count(), 1, "the cause is printed once: {stderr}");

    let sweep = dir.path().join("sweep");
    assert_fails_with(
        &coil(&["passkey", "--lengths", "1k", "--mitigate", "none", "--mitigate", "none", "--out", sweep.to_str().unwrap()]),
        &["--mitigate `none` is given twice"],
    );
    let csv = dir.path().join("stats.csv");
    assert_fails_with(&coil(&["stats", "--length", "64", "--collapse-factor", "NaN", "--out", csv.to_str().unwrap()]), &["--collapse-factor"]);
    // Lengths whose tokens would be held in memory (they grew memory without end), from a flag or
    // from a checkpoint's training.json.
    assert_fails_with(&coil(&["stats", "--length", "99999999999999", "--out", csv.to_str().unwrap()]), &["--length", "at most 67108864"]);
    let thresholds = dir.path().join("t.json");
    assert_fails_with(
        &coil(&["calibrate", "--model", "embedded:passkey-n16", "--length", "99999999999999", "--out", thresholds.to_str().unwrap()]),
        &["--length", "at most 67108864"],
    );
    let ids = ids_file(dir.path(), "1 2 3");
    assert_fails_with(&coil(&["score", "--token-ids", &ids, "--bucket", "0"]), &["--bucket must be at least 1"]);
    let one = coil(&["score", "--token-ids", &ids_file(dir.path(), "5"), "--json"]);
    assert!(one.status.success() && !String::from_utf8_lossy(&one.stderr).contains("NaN"), "{}", String::from_utf8_lossy(&one.stderr));
    let default = coil(&["inspect", "--model", "embedded:default"]);
    assert!(default.status.success(), "{}", String::from_utf8_lossy(&default.stderr));
}

/// A resumed sweep must be the same sweep: other depths, seed or template are refused (they
/// used to be appended and pooled into one report), and weights converted by --weights are
/// their own subject (they used to be taken as the f32 cells already done).
#[test]
fn a_resume_with_another_setup_or_weight_dtype_does_not_mix_cells() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let sweep = |extra: &[&str]| {
        let mut args = vec!["passkey", "--model", "embedded:passkey-n4", "--lengths", "256", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        coil(&args)
    };
    let first = sweep(&["--depths", "2"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_fails_with(&sweep(&["--depths", "3", "--resume"]), &["holds a sweep with", "2 depths", "3 depths"]);
    assert_fails_with(&sweep(&["--depths", "2", "--seed", "5", "--resume"]), &["seed 0", "seed 5"]);
    let bf16 = sweep(&["--depths", "2", "--weights", "bf16", "--resume"]);
    assert!(String::from_utf8_lossy(&bf16.stderr).contains("2 cells run, 0 already done"), "{}", String::from_utf8_lossy(&bf16.stderr));
    let csv = std::fs::read_to_string(out.join("accuracy.csv")).unwrap();
    assert!(csv.contains("\npasskey-n4,") && csv.contains("\npasskey-n4@bf16,"), "{csv}");
}

/// `--mitigate ""` read as the plain model without a word: refused, naming `none`; and a run
/// asked for no new tokens prints none (it printed an empty line and "0 tokens in 0.00 s").
#[test]
fn an_empty_mitigation_is_refused_and_a_run_without_new_tokens_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    for args in [
        vec!["run", "--prompt", "The grass", "--mitigate", ""],
        vec!["passkey", "--lengths", "256", "--depths", "1", "--out", out.to_str().unwrap(), "--mitigate", " "],
    ] {
        let output = coil(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("empty spec") && stderr.contains("none"), "{args:?}: {stderr}");
    }
    assert!(!out.exists(), "a refused sweep left its folder");
    let output = coil(&["run", "--prompt", "The grass is green.", "--max-new-tokens", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "printed {:?}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("prefill:") && !stderr.contains("decode:"), "{stderr}");
}

/// What loads as HF transformers loads it, with its warning: extra layers past the config's
/// count, a tensor no Mamba-2 has, another `model_type`. What HF would refuse is an error naming
/// the tensor: a name given twice in the header, offsets past the data, a tensor taken out.
#[test]
fn what_a_checkpoint_holds_beyond_its_config_is_named() {
    let warns = |dir: &Path, needles: &[&str]| {
        let output = coil(&["inspect", "--model", dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        for needle in needles {
            assert!(stderr.contains("warning:") && stderr.contains(needle), "lacks `{needle}`: {stderr}");
        }
    };
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("g1_tied").join("config.json")).unwrap()).unwrap();
    let with_config = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tempfile::tempdir().unwrap();
        edited_checkpoint(dir.path(), |_| {});
        let mut config = config.clone();
        edit(&mut config);
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    };
    let one_layer = with_config(&|c| c["num_hidden_layers"] = 1.into());
    warns(one_layer.path(), &["layers 1..=1", "num_hidden_layers", "not the model that was saved"]);
    let llama = with_config(&|c| c["model_type"] = "llama".into());
    warns(llama.path(), &["model_type `llama`"]);
    let extra = tempfile::tempdir().unwrap();
    edited_checkpoint(extra.path(), |t| {
        t.insert("backbone.layers.0.mixer.gate.weight".into(), (Dtype::F32, vec![2], vec![0; 8]));
    });
    warns(extra.path(), &["1 tensor(s)", "`backbone.layers.0.mixer.gate.weight`"]);
    // The fixture itself warns about nothing.
    let clean = coil(&["inspect", "--model", fixture("g1_tied").to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&clean.stderr).contains("warning"));

    // Headers edited by hand: (what the header says, what the error must name).
    let original = std::fs::read(fixture("g1_tied").join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&original[8..8 + header_len]).unwrap();
    let data = &original[8 + header_len..];
    let file_with = |header: String, data: &[u8]| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    };
    let mut by_offset: Vec<(&String, u64)> = header.iter().filter(|(k, _)| *k != "__metadata__").map(|(k, v)| (k, v["data_offsets"][0].as_u64().unwrap())).collect();
    by_offset.sort_by_key(|e| e.1);
    let (second, third) = (by_offset[1].0.clone(), by_offset[2].0.clone());
    let last = by_offset.last().unwrap().0.clone();
    let json = serde_json::Value::Object(header.clone()).to_string();
    let twice = json.replacen('{', &format!("{{\"{second}\":{},", header[&second]), 1);
    let mut removed = header.clone();
    removed.remove(&second);
    let mut past = header.clone();
    past[&last]["data_offsets"][1] = (data.len() as u64 + 4).into();
    let cases = [
        (file_with(twice, data), vec![format!("names `{second}` twice")]),
        (file_with(serde_json::Value::Object(removed).to_string(), data), vec![format!("between `{}` and `{third}`", by_offset[0].0), "missing from the header".into()]),
        (file_with(serde_json::Value::Object(past).to_string(), data), vec![format!("tensor `{last}`"), "end past the data".into()]),
    ];
    for (bytes, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("g1_tied").join("config.json"), dir.path().join("config.json")).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_fails_with(&coil(&["inspect", "--model", dir.path().to_str().unwrap()]), &needles);
    }
}

/// Messages that used to mislead, each now naming what is wrong.
#[test]
fn messages_name_the_real_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(d("file.txt"), "not a folder").unwrap();
    assert_fails_with(&coil(&["run", "--model", &d("file.txt"), "--prompt", "x"]), &["file.txt", "is a file, not a checkpoint folder"]);
    assert_fails_with(&coil(&["convert", "--model", &d("file.txt"), "--out", &d("o")]), &["is a file, not a checkpoint folder"]);
    // Without --model a sweep takes the embedded family trained on its template, if there is one.
    assert_fails_with(
        &coil(&["passkey", "--template", "bindings", "--lengths", "256", "--out", &d("sweep-b")]),
        &["trained on the `bindings` template", "--model"],
    );
    assert_fails_with(
        &coil(&["convert", "--model", fixture("g1_tied").to_str().unwrap(), "--out", &d("file.txt")]),
        &["file.txt", "exists and is not a folder"],
    );
    assert_fails_with(&coil(&["calibrate", "--length", "0", "--out", &d("t.json")]), &["--length is 0", "at least 1"]);
    let ids = ids_file(dir.path(), "1 2 3");
    assert_fails_with(
        &coil(&["score", "--model", fixture("g1_tied").to_str().unwrap(), "--token-ids", &ids, "--logits-out", &d("l.st"), "--max-logits-bytes", "10"]),
        &["--max-logits-bytes 10 is less than one row", "384 bytes"],
    );
    // A tokenizer.json whose model is of no known kind, or malformed.
    let tokenizer = |model: serde_json::Value| {
        std::fs::write(d("tokenizer.json"), serde_json::json!({"version": "1.0", "model": model}).to_string()).unwrap();
        coil(&["inspect", "--tokenizer", &d("tokenizer.json")])
    };
    assert_fails_with(&tokenizer(serde_json::json!({"type": "Fancy", "vocab": {}})), &["tokenizer.json", "`model.type` is `Fancy`"]);
    assert_fails_with(&tokenizer(serde_json::json!({"vocab": {}})), &["matches none of BPE, WordPiece"]);
    // A negative number is a bad value of its argument, not an unknown argument.
    let output = coil(&["passkey", "--lengths", "1k", "--depths", "-1", "--out", &d("p")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value '-1' for '--depths <N>'"), "{stderr}");
}

/// Inputs that were accepted without a word: growing rescaling, an empty report, a text far
/// shorter than asked for, a length that cannot hold the prompt, the filler used unasked.
#[test]
fn nothing_wrong_is_accepted_silently() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    for spec in ["rri:lambda=1.5", "rri:beta=2"] {
        assert_fails_with(&coil(&["run", "--prompt", "x", "--max-new-tokens", "1", "--mitigate", spec]), &[spec, "grow=1"]);
    }
    let grown = coil(&["run", "--prompt", "x", "--max-new-tokens", "1", "--mitigate", "rri:lambda=1.001,grow=1"]);
    assert!(grown.status.success(), "{}", String::from_utf8_lossy(&grown.stderr));

    std::fs::create_dir(d("empty")).unwrap();
    std::fs::write(d("empty/results.jsonl"), "").unwrap();
    assert_fails_with(&coil(&["report", &d("empty")]), &["no finished cell", "nothing to report"]);
    std::fs::create_dir(d("none")).unwrap();
    assert_fails_with(&coil(&["report", &d("empty"), &d("none")]), &["--out"]);
    assert_fails_with(&coil(&["report", &d("empty"), &d("none"), "--out", &d("merged")]), &["none", "no results*.jsonl here"]);

    std::fs::write(d("short.txt"), "The grass is green.").unwrap();
    let output = coil(&["stats", "--text-file", &d("short.txt"), "--length", "100000", "--out", &d("s.csv")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("fewer than the 100000 asked for"), "{stderr}");
    let output = coil(&["stats", "--length", "64", "--out", &d("s.csv")]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no --text-file or --probe: streaming the `filler` probe"));

    // Refused before the banner and before a results file exists.
    let output = coil(&["passkey", "--lengths", "10", "--depths", "2", "--out", &d("sweep")]);
    assert_fails_with(&output, &["length 10 is too short for the template"]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("passkey sweep:"));
    assert!(!dir.path().join("sweep").exists(), "a refused sweep left its folder");
    let one_group = ["passkey", "--model", "embedded:passkey-n4", "--lengths", "256", "--depths", "1", "--shard", "3/4", "--out"];
    assert_fails_with(&coil(&[&one_group[..], &[&d("sharded")]].concat()), &["--shard 3/4: this shard gets no cells"]);
}

/// Everyday uses the README promises: text on standard input, `-` for it, results into a pipe,
/// --piece-len on passkey, a summary by default and the table on request, a note on what the
/// embedded default is.
#[test]
fn everyday_uses_work_as_the_help_says() {
    use std::io::Write;
    let piped = |args: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coil"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    };
    let text = "The grass is green. The sky is blue.";
    let summary = String::from_utf8(piped(&["score"], text).stdout).unwrap();
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(summary.starts_with("mean NLL ") && summary.contains("perplexity"), "{summary}");
    assert_eq!(String::from_utf8(piped(&["score", "--text-file", "-"], text).stdout).unwrap(), summary);
    let table = String::from_utf8(piped(&["score", "--per-token"], text).stdout).unwrap();
    let tokens = table.lines().count() - 1;
    assert!(tokens > 5 && table.lines().nth(1).unwrap().starts_with("1\t"), "{table}");
    assert!(summary.contains(&format!("over {tokens} predicted tokens")), "{summary} vs {tokens} rows");

    // The logits into a pipe (standard output is one here): a whole safetensors file.
    let ids = piped(&["score", "--model", fixture("g1_tied").to_str().unwrap(), "--token-ids", "-", "--logits-out", "/dev/stdout"], "1 2 3 4");
    let tensors = SafeTensors::deserialize(&ids.stdout[..]).expect("a safetensors file on stdout");
    assert_eq!(tensors.tensor("logits").unwrap().shape(), &[4, 96]);

    // A CSV output into the pipe too.
    let csv = String::from_utf8(piped(&["stats", "--length", "64", "--every", "32", "--out", "/dev/stdout"], "").stdout).unwrap();
    assert!(csv.starts_with("position,layer,head,") && csv.lines().count() > 2, "{csv}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let sweep = coil(&["passkey", "--lengths", "512", "--depths", "2", "--piece-len", "7", "--model", "embedded:passkey-n4", "--out", out.to_str().unwrap()]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));

    let run = coil(&["run", "--prompt", "Hello", "--max-new-tokens", "2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("note: embedded:default") || stderr.contains("note: embedded:passkey-n16"), "{stderr}");
    assert!(stderr.contains("trained here for passkey retrieval only") && stderr.contains("--model DIR"), "{stderr}");
}

/// Every option of every command says what it does, on the line it is named on (clap falls back
/// to another layout when one does not, as `stats --help` did), and the help names the embedded
/// checkpoints.
#[test]
fn every_option_has_a_help_text() {
    for command in ["run", "score", "inspect", "calibrate", "stats", "passkey", "report", "devices", "convert"] {
        let output = coil(&[command, "--help"]);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command}");
        for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            let described = line.trim_start().split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "`coil {command} --help`: no description on `{}`", line.trim());
        }
    }
    let help = String::from_utf8_lossy(&coil(&["run", "--help"]).stdout).into_owned();
    for name in ["passkey-n4", "passkey-n8", "passkey-n16", "passkey-n32", "random"] {
        assert!(help.contains(name), "run --help lacks {name}");
    }
}
