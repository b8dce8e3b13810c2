//! The `coil` binary end to end: score against HF's logits, state hand-off across processes,
//! streaming tokenization of long text, and the embedded default against HF's greedy decode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use coil::{Checkpoint, Model, Sampler, SamplingConfig, Session, State};
use safetensors::SafeTensors;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn coil(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(args).output().expect("coil runs");
    assert!(output.status.success(), "coil {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn f32_tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let tensors = SafeTensors::deserialize(bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (view.shape().to_vec(), values)
}

fn golden_ids(case: &str) -> Vec<i64> {
    let bytes = std::fs::read(fixture(case).join("golden.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor("input_ids").unwrap();
    view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The GPU device the tests use: `COIL_TEST_DEVICE`, default wgpu (lavapipe without a GPU).
fn gpu_device() -> String {
    std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into())
}

#[test]
fn score_logits_out_matches_hf_and_nll_follows_from_them() {
    for (case, device) in [("mamba_ssm_dialect", "cpu".to_string()), ("k3_limit", "cpu".into()), ("odd_shapes", "cpu".into()), ("odd_shapes", gpu_device()), ("g4_untied_bias", gpu_device())] {
        let dir = tempfile::tempdir().unwrap();
        let ids = golden_ids(case);
        let ids_path = dir.path().join("ids.txt");
        std::fs::write(&ids_path, ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")).unwrap();
        let out = dir.path().join("logits.safetensors");
        let model = fixture(case);
        let output = coil(&[
            "score", "--model", model.to_str().unwrap(), "--token-ids", ids_path.to_str().unwrap(),
            "--logits-out", out.to_str().unwrap(), "--json", "--piece-len", "7", "--device", &device,
        ]);
        let case = format!("{case} on {device}");
        let (shape, ours) = f32_tensor(&std::fs::read(&out).unwrap(), "logits");
        let golden = std::fs::read(model.join("golden.safetensors")).unwrap();
        let (golden_shape, theirs) = f32_tensor(&golden, "logits");
        assert_eq!(shape, golden_shape, "{case}");
        let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{case}: logits-out differs from HF by {diff:e}");

        // NLL computed here from HF's logits, independently of the binary.
        let vocab = shape[1];
        let expected: Vec<f64> = (1..ids.len())
            .map(|t| {
                let row = &theirs[(t - 1) * vocab..t * vocab];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                lse - row[ids[t] as usize] as f64
            })
            .collect();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let nll: Vec<f64> = report["nll"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(nll.len(), expected.len());
        for (a, b) in nll.iter().zip(&expected) {
            assert!((a - b).abs() < 2e-4, "{case}: nll {a} vs {b}");
        }
        assert_eq!(report["tokens"], ids.len());
    }
}

#[test]
fn a_missing_or_unknown_device_is_a_clear_error() {
    for (device, expected) in [("cuda:99", "no CUDA device 99"), ("wgpu:99", "no wgpu adapter wgpu:99"), ("tpu", "unknown device")] {
        let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(["run", "--prompt", "hi", "--max-new-tokens", "1", "--device", device]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--device {device} succeeded");
        assert!(stderr.contains(expected), "--device {device}: {stderr}");
        assert!(!stderr.contains("panicked"), "--device {device} panicked: {stderr}");
    }
}

/// Prefill 45 ids and save the state in one process, continue with 20 more and generate 12 in
/// another; returns that output and the output of one process doing all of it.
fn split_across_processes(extra: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ids: &[u32]| {
        let path = dir.path().join(name);
        std::fs::write(&path, ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")).unwrap();
        path.to_string_lossy().into_owned()
    };
    let first: Vec<u32> = (0..45).map(|i| (i * 37 + 5) % 96).collect();
    let second: Vec<u32> = (0..20).map(|i| (i * 11 + 3) % 96).collect();
    let both: Vec<u32> = first.iter().chain(&second).copied().collect();
    let (a, b, ab) = (write("a.txt", &first), write("b.txt", &second), write("ab.txt", &both));
    let state = dir.path().join("state.safetensors");
    let model = fixture("g1_tied");
    let run = |ids: &str, new_tokens: &str, state_flag: &[&str]| {
        let mut args = vec!["run", "--model", model.to_str().unwrap(), "--token-ids", ids, "--max-new-tokens", new_tokens];
        args.extend_from_slice(extra);
        args.extend_from_slice(state_flag);
        coil(&args).stdout
    };
    run(&a, "0", &["--state-out", state.to_str().unwrap()]);
    let resumed = run(&b, "12", &["--state-in", state.to_str().unwrap()]);
    (resumed, run(&ab, "12", &[]))
}

#[test]
fn state_saved_by_one_process_continues_in_another() {
    let (resumed, direct) = split_across_processes(&[]);
    assert_eq!(String::from_utf8_lossy(&resumed), String::from_utf8_lossy(&direct));
    assert_eq!(String::from_utf8_lossy(&direct).split_whitespace().count(), 12);
}

#[test]
fn long_text_streams_in_blocks_with_the_same_tokens_and_state() {
    let dir = tempfile::tempdir().unwrap();
    // ~200 KB: several tokenizer blocks, with digits, punctuation, newlines and multi-byte text.
    let mut text = String::new();
    for i in 0..2500 {
        text.push_str(&format!("The grass is green, line {i}. Here we go — naïve café {}!\n", i * 7919 % 100000));
        if i % 97 == 0 {
            text.push_str("   spaced   out\t\ttabs  \n\n");
        }
    }
    let path = dir.path().join("long.txt");
    std::fs::write(&path, &text).unwrap();
    let state_path = dir.path().join("state.safetensors");
    coil(&["run", "--prompt-file", path.to_str().unwrap(), "--max-new-tokens", "0", "--state-out", state_path.to_str().unwrap()]);

    let checkpoint = Checkpoint::embedded_default().unwrap();
    let tokens = checkpoint.tokenizer.as_ref().unwrap().encode(&text).unwrap();
    let model = Arc::new(Model::from_checkpoint(checkpoint));
    let mut session = Session::new(model.clone());
    session.prefill(&tokens).unwrap();
    let streamed = State::load(&state_path, model.state_shape()).unwrap();
    assert_eq!(streamed.position(), tokens.len() as u64, "block-wise tokenization gave a different token count");
    let diff = streamed.ssm().iter().zip(session.state().ssm()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "state differs by {diff:e}");
    let conv = streamed.conv().iter().zip(session.state().conv()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(conv < 1e-4, "conv state differs by {conv:e}");
}

/// `checkpoints/models/default/README.md` records HF's greedy ids for this prompt (made by
/// `checkpoints/training/make_default.py`); HF's argmax runs over all 512 logit columns. That checkpoint
/// is embedded as `random`.
#[test]
fn embedded_random_checkpoint_reproduces_hf_greedy_decode() {
    let checkpoint = Checkpoint::embedded("random").unwrap();
    let tokenizer = checkpoint.tokenizer.as_ref().unwrap();
    let prompt = tokenizer.encode("The passkey is 90317. Remember it. 90317 is the passkey.\n").unwrap();
    assert_eq!(prompt.len(), 24);
    let model = Arc::new(Model::from_checkpoint(Checkpoint::embedded("random").unwrap()));
    let mut session = Session::new(model.clone());
    let logits = session.prefill(&prompt).unwrap();
    let max = logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!((max - 13.6825).abs() < 1e-3, "max |logit| {max}");
    let mut sampler = Sampler::new(SamplingConfig::default());
    let generated = session.generate(&mut sampler, 8, model.vocab_size(), |_| true).unwrap();
    assert_eq!(generated, vec![489, 402, 242, 242, 242, 242, 139, 90]);
}

#[test]
fn inspect_reports_dialect_and_state_size() {
    let output = coil(&["inspect", "--model", fixture("mamba_ssm_dialect").to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["dialect"], "MambaSsm");
    assert_eq!(report["vocab_size"], 96);
    assert_eq!(report["vocab_size_unpadded"], 90);
    assert_eq!(report["state_elements"], 2 * 4 * 16 * 16);
    assert_eq!(report["tied_embeddings"], true);
    let text = String::from_utf8(coil(&["inspect"]).stdout).unwrap();
    assert!(text.contains("<embedded passkey-n16>") && text.contains("N_S"), "{text}");
}

/// `--weights auto` holds a 16-bit checkpoint in its own dtype (half the bytes of f32).
#[test]
fn weights_auto_keeps_the_stored_dtype() {
    let mut bytes = Vec::new();
    for (case, held) in [("f16_weights", "f16"), ("bf16_weights", "bf16"), ("g1_tied", "f32")] {
        let path = fixture(case);
        let report = |weights: &str| -> serde_json::Value {
            let output = coil(&["inspect", "--model", path.to_str().unwrap(), "--json", "--weights", weights]);
            serde_json::from_slice(&output.stdout).unwrap()
        };
        assert_eq!(report("auto")["held_dtype"], held, "{case}");
        let f32_bytes = report("f32")["weight_bytes"].as_u64().unwrap();
        assert_eq!(report("f16")["weight_bytes"].as_u64().unwrap() * 2, f32_bytes, "{case}");
        bytes.push(report("auto")["weight_bytes"].as_u64().unwrap());
    }
    assert_eq!((bytes[0], bytes[1]), (bytes[2] / 2, bytes[2] / 2), "f16, bf16 and f32 holds of one shape");
}

/// The issue's acceptance path: `score --mitigate ... --logits-out` against the f64 reference.
#[test]
fn score_with_mitigations_matches_the_f64_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mitigations/odd_shapes");
    for (label, specs) in [
        ("snorm_k7", vec!["state-norm:thresholds=snorm_k7.thresholds.json,every=7"]),
        ("win_r24_q8", vec!["window:size=24,granularity=8"]),
        ("dtscale07_rri_win32q4", vec!["dt-scale:0.7", "rri:lambda=0.98,beta=0.9", "window:size=32,granularity=4"]),
    ] {
        let bytes = std::fs::read(root.join(format!("{label}.safetensors"))).unwrap();
        let (_, golden) = f32_tensor(&bytes, "logits");
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let ids: Vec<String> = tensors.tensor("input_ids").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()).to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let ids_path = dir.path().join("ids.txt");
        std::fs::write(&ids_path, ids.join(" ")).unwrap();
        let out = dir.path().join("logits.safetensors");
        let mut args = vec!["score".to_owned(), "--model".into(), fixture("odd_shapes").to_string_lossy().into_owned()];
        args.extend(["--token-ids".into(), ids_path.to_string_lossy().into_owned(), "--logits-out".into(), out.to_string_lossy().into_owned()]);
        for spec in &specs {
            args.extend(["--mitigate".into(), spec.to_string()]);
        }
        // Threshold files are resolved against the working directory.
        let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(&args).current_dir(&root).output().unwrap();
        assert!(output.status.success(), "{label}: {}", String::from_utf8_lossy(&output.stderr));
        let (_, ours) = f32_tensor(&std::fs::read(&out).unwrap(), "logits");
        let diff = ours.iter().zip(&golden).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{label}: {diff:e}");
    }
}

#[test]
fn windowed_state_continues_across_processes() {
    let window = ["--mitigate", "window:size=12,granularity=5"];
    let (resumed, direct) = split_across_processes(&window);
    assert_eq!(resumed, direct);
    let (_, plain) = split_across_processes(&[]);
    assert_ne!(plain, direct, "a 12-token window changes what a 65-token prompt generates");
}

#[test]
fn calibrate_stats_and_buckets_write_what_they_promise() {
    let dir = tempfile::tempdir().unwrap();
    let thresholds = dir.path().join("t.json");
    coil(&["calibrate", "--length", "300", "--factor", "2", "--out", thresholds.to_str().unwrap()]);
    let checkpoint = Checkpoint::embedded_default().unwrap();
    let model = Arc::new(Model::from_checkpoint(Checkpoint::embedded_default().unwrap()));
    let tokens = coil_eval::probes::Probe::Filler.tokens(checkpoint.tokenizer.as_ref().unwrap(), 300).unwrap();
    let mut session = Session::new(model.clone());
    session.prefill(&tokens).unwrap();
    let expected: Vec<Vec<f32>> = session.state().head_norms().iter().map(|l| l.iter().map(|n| 2.0 * n).collect()).collect();
    let written = coil::read_thresholds(&thresholds).unwrap();
    for (w, e) in written.iter().flatten().zip(expected.iter().flatten()) {
        assert!((w - e).abs() <= 1e-5 * e.abs(), "{w} vs {e}");
    }

    let csv = dir.path().join("stats.csv");
    let plot = dir.path().join("stats.svg");
    coil(&["stats", "--probe", "newlines", "--length", "1000", "--every", "250", "--out", csv.to_str().unwrap(), "--plot", plot.to_str().unwrap(), "--reference-length", "250"]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("position,layer,head,norm"));
    assert_eq!(rows.len(), 1 + 4 * 2 * 8, "4 records x 2 layers x 8 heads");
    let last: Vec<&str> = rows.last().unwrap().split(',').collect();
    assert_eq!((last[0], last[1], last[2]), ("1000", "1", "7"));
    assert!(last[13].parse::<f32>().is_ok(), "ratio to the reference is filled after it: {last:?}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    let text_path = dir.path().join("t.txt");
    std::fs::write(&text_path, "The grass is green. The sky is blue. ".repeat(40)).unwrap();
    let out = coil(&["score", "--text-file", text_path.to_str().unwrap(), "--bucket", "64"]);
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "first_position,last_position,tokens,mean_nll");
    assert!(lines[1].starts_with("0,63,63,"), "position 0 has no prediction: {}", lines[1]);
    assert!(lines[2].starts_with("64,127,64,"));
    let tokens: u64 = lines.iter().skip(1).map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap()).sum::<u64>() + 1;
    assert!(lines.last().unwrap().contains(&format!(",{},", tokens - 1)), "the last bucket ends at the last position: {}", lines.last().unwrap());
}

/// `score` streams: its input is read, scored and written piece by piece (memory flat in the
/// input's length), and the losses do not depend on where the pieces fall, nor on whether the
/// input is read whole first (as --logits-out does).
#[test]
fn streamed_scores_equal_whole_input_scores() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    // About 30 KB: several 8 KB text blocks, whose cuts the pieces must not see.
    std::fs::write(&text, "The grass is green, the sky is blue, and the state holds what it can. ".repeat(420)).unwrap();
    let text = text.to_str().unwrap();
    let json_nll = |extra: &[&str]| -> (Vec<f64>, serde_json::Value) {
        let output = coil(&[&["score", "--text-file", text, "--json"], extra].concat());
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
        let nll = report["nll"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        (nll, report)
    };
    let (streamed, report) = json_nll(&["--piece-len", "7"]);
    let tokens = report["tokens"].as_u64().unwrap() as usize;
    assert!(tokens > 6000, "{tokens} tokens");
    assert_eq!(streamed.len(), tokens - 1);
    let mean = streamed.iter().sum::<f64>() / streamed.len() as f64;
    assert!((report["mean_nll"].as_f64().unwrap() - mean).abs() < 1e-9);
    let logits = dir.path().join("l.safetensors");
    for extra in [&["--piece-len", "4096"][..], &["--piece-len", "300", "--logits-out", logits.to_str().unwrap()]] {
        let (other, _) = json_nll(extra);
        assert_eq!(other.len(), streamed.len(), "{extra:?}");
        let diff = other.iter().zip(&streamed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-4, "{extra:?}: the losses differ by {diff:e}");
    }

    // --json with --bucket: one JSON object, the buckets in it.
    let both: serde_json::Value = serde_json::from_slice(&coil(&["score", "--text-file", text, "--json", "--bucket", "1000"]).stdout).unwrap();
    assert_eq!(both["scored"].as_u64(), Some(tokens as u64 - 1));
    let buckets = both["buckets"].as_array().unwrap();
    assert_eq!((buckets[0]["first_position"].as_u64(), buckets[0]["last_position"].as_u64(), buckets[0]["tokens"].as_u64()), (Some(0), Some(999), Some(999)));
    assert_eq!(buckets.iter().map(|b| b["tokens"].as_u64().unwrap()).sum::<u64>(), tokens as u64 - 1);

    // The table: one line per predicted token, positions 1.. in order, the JSON's losses.
    let table = String::from_utf8(coil(&["score", "--text-file", text, "--piece-len", "7", "--per-token"]).stdout).unwrap();
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), tokens - 1);
    for (i, (row, loss)) in rows.iter().zip(&streamed).enumerate() {
        assert_eq!(row[0], (i + 1).to_string());
        assert!((row[2].parse::<f64>().unwrap() - loss).abs() < 1e-5, "position {}: {row:?} vs {loss}", i + 1);
    }
}

/// A copy of g1_tied (tied config) whose file also stores `lm_head.weight = head`, and whose
/// config says `tie_word_embeddings: tie`.
fn g1_with_stored_head(dir: &Path, head: &[f32], tie: bool) -> PathBuf {
    use safetensors::tensor::TensorView;
    let source = fixture("g1_tied");
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    let config = config.replace("\"tie_word_embeddings\": true", &format!("\"tie_word_embeddings\": {tie}"));
    std::fs::write(dir.join("config.json"), config).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let parsed = SafeTensors::deserialize(&bytes).unwrap();
    let shape = parsed.tensor("backbone.embeddings.weight").unwrap().shape().to_vec();
    let head_bytes: Vec<u8> = head.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut views: Vec<(String, TensorView)> = parsed.tensors();
    views.push(("lm_head.weight".into(), TensorView::new(safetensors::Dtype::F32, shape, &head_bytes).unwrap()));
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir.to_owned()
}

/// HF transformers (5.x) unties a tied config whose file stores a head that differs from the
/// embedding, and uses the stored head; a stored head equal to the embedding stays tied.
#[test]
fn a_stored_head_that_differs_from_a_tied_embedding_is_used_as_hf_does() {
    let bytes = std::fs::read(fixture("g1_tied").join("model.safetensors")).unwrap();
    let (_, embedding) = f32_tensor(&bytes, "backbone.embeddings.weight");
    let head: Vec<f32> = embedding.iter().enumerate().map(|(i, v)| -0.5 * v + (i % 7) as f32 * 0.01).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tied_config = g1_with_stored_head(dirs[0].path(), &head, true);
    let untied_config = g1_with_stored_head(dirs[1].path(), &head, false);
    let same_as_embedding = g1_with_stored_head(dirs[2].path(), &embedding, true);

    let load = |dir: &Path| Checkpoint::open_dir(dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(load(&tied_config).weights.lm_head.as_deref(), Some(&head[..]));
    assert_eq!(load(&same_as_embedding).weights.lm_head, None, "a stored copy of the embedding is the tied head");

    let ids: Vec<u32> = golden_ids("g1_tied").iter().map(|&t| t as u32).collect();
    let logits = |dir: &Path| {
        let model = Model::from_checkpoint(load(dir));
        model.forward(&mut model.new_state(), &ids, coil::LogitRows::All).unwrap()
    };
    let with_head = logits(&tied_config);
    assert_eq!(with_head, logits(&untied_config), "the tied config computes what the untied one does");
    assert_ne!(with_head, logits(&fixture("g1_tied")), "the stored head changes the logits");
    assert_eq!(logits(&same_as_embedding), logits(&fixture("g1_tied")));

    let text = String::from_utf8(coil(&["inspect", "--model", tied_config.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("differs from the embedding"), "{text}");
}

/// Without a terminal (a log, a pipe), long commands still report progress: a plain line every
/// `COIL_PROGRESS_SECONDS` (30 s by default), here every update.
#[test]
fn progress_reaches_a_log_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.txt");
    // Several 8 KB text blocks, so the prefill reports more than once.
    std::fs::write(&prompt, "the sky is blue and the grass is green. ".repeat(1000)).unwrap();
    let progress_lines = |args: &[&str], prefix: &str| -> Vec<String> {
        let output = Command::new(env!("CARGO_BIN_EXE_coil")).args(args).env("COIL_PROGRESS_SECONDS", "0").output().unwrap();
        assert!(output.status.success(), "coil {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    };

    let lines = progress_lines(&["run", "--prompt-file", prompt.to_str().unwrap(), "--max-new-tokens", "1"], "prefill: ");
    let with_share: Vec<_> = lines.iter().filter(|l| l.contains("% of the input") && l.contains("tok/s")).collect();
    assert!(with_share.len() >= 3, "{lines:#?}");

    let out = dir.path().join("sweep");
    let args = ["passkey", "--model", "embedded:passkey-n16", "--lengths", "256", "--depths", "3", "--out", out.to_str().unwrap()];
    let lines = progress_lines(&args, "passkey: ");
    assert!(lines.iter().any(|l| l.contains("3/3 cells")), "{lines:#?}");
}

/// A checkpoint trained on the `bindings` haystack (its training.json says so) gets that haystack
/// from `stats` and `calibrate` by default, not the paper's filler; `--probe` still chooses.
#[test]
fn a_bindings_checkpoint_streams_its_own_haystack_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/models/passkey-n16");
    let folder = dir.path().join("bindings-like");
    std::fs::create_dir_all(&folder).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(shipped.join(file), folder.join(file)).unwrap();
    }
    std::fs::write(folder.join("training.json"), r#"{"train_length": 256, "template": "bindings"}"#).unwrap();
    let model = folder.to_str().unwrap();
    let csv = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let stats = |extra: &[&str], out: &str| {
        let output = coil(&[&["stats", "--model", model, "--length", "600", "--every", "300", "--out", out][..], extra].concat());
        (String::from_utf8_lossy(&output.stderr).into_owned(), std::fs::read_to_string(out).unwrap())
    };
    let (note, default) = stats(&[], &csv("default.csv"));
    assert!(note.contains("streaming the `bindings` probe"), "{note}");
    let (_, bindings) = stats(&["--probe", "bindings"], &csv("bindings.csv"));
    let (_, filler) = stats(&["--probe", "filler"], &csv("filler.csv"));
    assert_eq!(default, bindings);
    assert_ne!(default, filler, "the two texts leave different states");
    // calibrate: the thresholds are the state norms after the bindings probe, and say so.
    let out = csv("thresholds.json");
    coil(&["calibrate", "--model", model, "--length", "300", "--out", &out]);
    let loaded = coil::load(&coil::Source::Dir(folder.clone()), coil::Device::Cpu).unwrap();
    let tokens = coil::probes::Probe::Bindings.tokens(loaded.tokenizer().unwrap(), 300).unwrap();
    let expected = coil::calibrate(loaded.model(), &loaded.plan(&[]).unwrap(), &tokens, 1.0).unwrap();
    assert_eq!(coil::read_thresholds(Path::new(&out)).unwrap(), expected);
    assert!(std::fs::read_to_string(&out).unwrap().contains("the bindings probe"));
}
