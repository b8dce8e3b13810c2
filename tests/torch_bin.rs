//! mamba_ssm's `pytorch_model.bin` end to end: a folder holding only it and the native config
//! loads everywhere a safetensors folder does and reproduces HF's logits, `coil convert` turns it
//! into an HF-dialect folder with the same logits, and every hostile `.bin` in
//! `tests/fixtures/hostile_bin/` (made by `make_hostile_bin.py`) fails cleanly through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coil_ssm::{Checkpoint, Dialect, LogitRows, Model, Session};
use safetensors::SafeTensors;

/// As in golden.rs: HF's own chunked-vs-step spread here is 6e-6 and a correct f32 engine lands
/// within a few 1e-5; real bugs move logits by 0.1 or more.
const LOGIT_TOLERANCE: f32 = 1e-4;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn coil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coil")).args(args).output().expect("coil runs")
}

/// A copy of the mamba_ssm fixture with only `config.json` and `pytorch_model.bin`.
fn bin_only(dir: &Path) -> PathBuf {
    let source = fixture("mamba_ssm_dialect");
    for file in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    dir.to_owned()
}

fn golden_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("mamba_ssm_dialect").join("golden.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn golden_ids() -> Vec<u32> {
    let bytes = std::fs::read(fixture("mamba_ssm_dialect").join("golden.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors.tensor("input_ids").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn chunked_logits(dir: &Path) -> Vec<f32> {
    let model = Model::from_checkpoint(Checkpoint::open_dir(dir).unwrap_or_else(|e| panic!("{e}")));
    let mut state = model.new_state();
    model.forward(&mut state, &golden_ids(), LogitRows::All).unwrap()
}

#[test]
fn a_folder_with_only_pytorch_model_bin_matches_hf() {
    let dir = tempfile::tempdir().unwrap();
    let path = bin_only(dir.path());
    let checkpoint = Checkpoint::open_dir(&path).unwrap();
    assert_eq!(checkpoint.config.dialect, Dialect::MambaSsm);
    // The same weights as the safetensors twin, bit for bit (the extra tied lm_head is ignored).
    let twin = Checkpoint::open_dir(&fixture("mamba_ssm_dialect")).unwrap();
    assert_eq!(checkpoint.weights.embedding, twin.weights.embedding);
    assert!(checkpoint.weights.lm_head.is_none());
    assert_eq!(checkpoint.weights.parameter_count(), twin.weights.parameter_count());

    let golden = golden_f32("logits");
    let diff = max_abs_diff(&chunked_logits(&path), &golden);
    assert!(diff <= LOGIT_TOLERANCE, "chunked logits differ from HF by {diff:e}");

    let model = std::sync::Arc::new(Model::from_checkpoint(checkpoint));
    let mut session = Session::new(model);
    let mut stepped = Vec::new();
    for &t in &golden_ids() {
        stepped.extend_from_slice(session.step(t).unwrap());
    }
    let diff = max_abs_diff(&stepped, &golden_f32("logits_step"));
    assert!(diff <= LOGIT_TOLERANCE, "step logits differ from HF by {diff:e}");
}

#[test]
fn a_sharded_pytorch_model_bin_index_loads() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("mamba_ssm_dialect");
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let shard = "pytorch_model-00001-of-00001.bin";
    std::fs::copy(source.join("pytorch_model.bin"), dir.path().join(shard)).unwrap();
    let store = coil_checkpoints::TensorStore::open_dir(&source).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = store.names().iter().map(|n| (n.to_string(), shard.into())).collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
    let diff = max_abs_diff(&chunked_logits(dir.path()), &golden_f32("logits"));
    assert!(diff <= LOGIT_TOLERANCE, "{diff:e}");
}

#[test]
fn the_binary_scores_and_inspects_a_bin_only_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = bin_only(dir.path());
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, golden_ids().iter().map(u32::to_string).collect::<Vec<_>>().join(" ")).unwrap();
    let out = dir.path().join("logits.safetensors");
    let output = coil(&["score", "--model", path.to_str().unwrap(), "--token-ids", ids.to_str().unwrap(), "--logits-out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let ours: Vec<f32> = tensors.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let diff = max_abs_diff(&ours, &golden_f32("logits"));
    assert!(diff <= LOGIT_TOLERANCE, "{diff:e}");
    let output = coil(&["inspect", "--model", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("mamba_ssm"));
}

#[test]
fn convert_writes_an_hf_folder_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    bin_only(&source);
    let out = dir.path().join("hf");
    let output = coil(&["convert", "--model", source.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let converted = Checkpoint::open_dir(&out).unwrap();
    assert_eq!(converted.config.dialect, Dialect::HuggingFace);
    assert_eq!(converted.config.vocab_size, 96);
    let original = chunked_logits(&source);
    assert_eq!(chunked_logits(&out), original, "converted logits are not identical");
    let diff = max_abs_diff(&original, &golden_f32("logits"));
    assert!(diff <= LOGIT_TOLERANCE, "{diff:e}");
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"tie_word_embeddings\": true") && config.contains("Mamba2ForCausalLM"), "{config}");
    // The weights are as readable as the config (safetensors' temporary file was private).
    let mode = |name: &str| std::fs::metadata(out.join(name)).unwrap().permissions();
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    // Nothing else is left in the folder (no temporary files), and a second conversion writes
    // the same bytes.
    let mut names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    let again = dir.path().join("again");
    coil(&["convert", "--model", source.to_str().unwrap(), "--out", again.to_str().unwrap()]);
    for name in names {
        assert!(std::fs::read(out.join(&name)).unwrap() == std::fs::read(again.join(&name)).unwrap(), "{name} differs between two conversions");
    }
}

#[test]
fn convert_keeps_narrow_dtypes_tokenizers_and_untied_heads() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["bf16_weights", "g4_untied_bias"] {
        let out = dir.path().join(case);
        let output = coil(&["convert", "--model", fixture(case).to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let a = Checkpoint::open_dir(&fixture(case)).unwrap();
        let b = Checkpoint::open_dir(&out).unwrap();
        assert_eq!(a.weights.stored_dtype, b.weights.stored_dtype, "{case}");
        assert_eq!(a.weights.lm_head, b.weights.lm_head, "{case}");
        assert_eq!(a.config, b.config, "{case}");
        let size = |p: &Path| std::fs::metadata(p.join("model.safetensors")).unwrap().len();
        assert!(size(&out) <= size(&fixture(case)) + 1024, "{case}: written in a wider dtype");
    }
    // The embedded default's folder has a tokenizer; it is copied, and the converted folder runs.
    let out = dir.path().join("default");
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/models/default");
    let output = coil(&["convert", "--model", default.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.join("tokenizer.json").is_file());
    let run = coil(&["run", "--model", out.to_str().unwrap(), "--prompt", "Once upon", "--max-new-tokens", "3"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

/// Asserts a clean failure whose stderr mentions every one of `needles`.
fn assert_fails_with(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks `{needle}`: {stderr}");
    }
}

#[test]
fn convert_refuses_its_own_source_and_broken_sources() {
    let dir = tempfile::tempdir().unwrap();
    let source = bin_only(dir.path());
    let path = source.to_str().unwrap();
    assert_fails_with(&coil(&["convert", "--model", path, "--out", path]), &["must differ from the source"]);
    std::fs::copy(fixture("hostile_bin/os_system.bin"), source.join("pytorch_model.bin")).unwrap();
    let out = dir.path().join("out");
    assert_fails_with(&coil(&["convert", "--model", path, "--out", out.to_str().unwrap()]), &["os.system"]);
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn hostile_bin_files_fail_cleanly_naming_the_problem() {
    let cases: [(&str, &[&str]); 10] = [
        ("os_system.bin", &["global `os.system` is refused"]),
        ("non_tensor_global.bin", &["global `numpy.core.multiarray._reconstruct` is refused"]),
        ("inst_opcode.bin", &["pickle opcode INST"]),
        ("storage_offset_past_end.bin", &["backbone.norm_f.weight", "offset 1000", "past the end of storage"]),
        ("numel_overflow.bin", &["backbone.norm_f.weight", "more elements than memory can address"]),
        ("storage_size_lies.bin", &["storage `0` declares 1099511627776 float32 elements", "holds 16 bytes"]),
        ("entry_size_lies.bin", &["entry `archive/data/0` claims 2147483647 bytes"]),
        ("recursive.bin", &["`backbone.norm_f.weight` is a dict, not a tensor"]),
        ("truncated.bin", &["no end-of-central-directory record"]),
        ("big_endian.bin", &["byte order `big`"]),
    ];
    for (file, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("mamba_ssm_dialect/config.json"), dir.path().join("config.json")).unwrap();
        std::fs::copy(fixture("hostile_bin").join(file), dir.path().join("pytorch_model.bin")).unwrap();
        let output = coil(&["inspect", "--model", dir.path().to_str().unwrap()]);
        let mut all = vec!["pytorch_model.bin", "not a readable PyTorch checkpoint"];
        all.extend_from_slice(needles);
        assert_fails_with(&output, &all);
    }
}
