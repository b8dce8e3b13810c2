//! The GPU path on a released model's vocabulary: an embedding past a device's largest buffer
//! (lavapipe grants 128 MiB; 50288 x 768 f32 is 154 MB) is split, not silently lost, and a device
//! that fails ends the command with an error naming it, never with exit 0.
//!
//! The device is `COIL_TEST_DEVICE` (default wgpu: lavapipe on a machine without a GPU).

use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const VOCAB: usize = 50288;
const D_MODEL: usize = 768;
const HEADS: usize = 24;
const HEAD_DIM: usize = 64;
const D_STATE: usize = 128;

fn gpu_device() -> String {
    std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into())
}

/// SplitMix64, uniform in `[-scale, scale)`.
struct Rng(u64);

impl Rng {
    fn values(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
                scale * (2.0 * unit - 1.0)
            })
            .collect()
    }
}

/// A one-layer HF-dialect checkpoint of mamba2-130m's widths (hidden 768, 24 heads of 64,
/// state 128) and vocabulary (50288, tied), from seeded random values.
fn write_130m_shaped_checkpoint(dir: &Path) {
    let inner = HEADS * HEAD_DIM;
    let conv_dim = inner + 2 * D_STATE;
    let mut rng = Rng(130);
    let ones_ish = |rng: &mut Rng, n: usize| rng.values(n, 0.2).into_iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("backbone.embeddings.weight", vec![VOCAB, D_MODEL], rng.values(VOCAB * D_MODEL, 1.0)),
        ("backbone.layers.0.norm.weight", vec![D_MODEL], ones_ish(&mut rng, D_MODEL)),
        ("backbone.layers.0.mixer.in_proj.weight", vec![2 * inner + 2 * D_STATE + HEADS, D_MODEL], rng.values((2 * inner + 2 * D_STATE + HEADS) * D_MODEL, 0.06)),
        ("backbone.layers.0.mixer.conv1d.weight", vec![conv_dim, 1, 4], rng.values(conv_dim * 4, 0.5)),
        ("backbone.layers.0.mixer.conv1d.bias", vec![conv_dim], rng.values(conv_dim, 0.3)),
        ("backbone.layers.0.mixer.dt_bias", vec![HEADS], rng.values(HEADS, 2.0).into_iter().map(|v| v - 3.0).collect()),
        ("backbone.layers.0.mixer.A_log", vec![HEADS], rng.values(HEADS, 1.3).into_iter().map(|v| v + 1.4).collect()),
        ("backbone.layers.0.mixer.D", vec![HEADS], ones_ish(&mut rng, HEADS)),
        ("backbone.layers.0.mixer.norm.weight", vec![inner], ones_ish(&mut rng, inner)),
        ("backbone.layers.0.mixer.out_proj.weight", vec![D_MODEL, inner], rng.values(D_MODEL * inner, 0.04)),
        ("backbone.norm_f.weight", vec![D_MODEL], ones_ish(&mut rng, D_MODEL)),
    ];
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), b)| (name.to_string(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()));
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let config = serde_json::json!({
        "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"],
        "vocab_size": VOCAB, "hidden_size": D_MODEL, "num_hidden_layers": 1, "state_size": D_STATE,
        "num_heads": HEADS, "head_dim": HEAD_DIM, "expand": 2, "n_groups": 1, "conv_kernel": 4,
        "chunk_size": 256, "layer_norm_epsilon": 1e-5, "use_bias": false, "use_conv_bias": true,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn score(model: &Path, ids: &Path, logits: &Path, device: &str, max_buffer: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coil"));
    command.args(["score", "--model", model.to_str().unwrap(), "--token-ids", ids.to_str().unwrap()]);
    command.args(["--logits-out", logits.to_str().unwrap(), "--json", "--device", device]);
    command.env_remove(coil_gpu::MAX_BUFFER_VAR);
    if let Some(bytes) = max_buffer {
        command.env(coil_gpu::MAX_BUFFER_VAR, bytes);
    }
    command.output().expect("coil runs")
}

fn logits(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn a_released_vocabulary_runs_on_the_gpu_as_on_the_cpu_and_a_device_failure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    write_130m_shaped_checkpoint(&model);
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, "11 50287 0 4096 12345 7 7 30000").unwrap();

    let (cpu_out, gpu_out) = (dir.path().join("cpu.safetensors"), dir.path().join("gpu.safetensors"));
    let cpu = score(&model, &ids, &cpu_out, "cpu", None);
    assert!(cpu.status.success(), "cpu: {}", String::from_utf8_lossy(&cpu.stderr));
    let device = gpu_device();
    let gpu = score(&model, &ids, &gpu_out, &device, None);
    assert!(gpu.status.success(), "{device}: {}", String::from_utf8_lossy(&gpu.stderr));
    let (cpu_logits, gpu_logits) = (logits(&cpu_out), logits(&gpu_out));
    assert_eq!(cpu_logits.len(), 8 * VOCAB);
    let largest = cpu_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(largest > 1.0, "the logits are too small to tell a wrong result from a right one: {largest}");
    let diff = cpu_logits.iter().zip(&gpu_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "{device} differs from the CPU by {diff:e} (largest logit {largest})");

    // Buffers capped far below the matrices: every weight and activation goes in many blocks.
    let split_out = dir.path().join("split.safetensors");
    let split = score(&model, &ids, &split_out, &device, Some("1000000"));
    assert!(split.status.success(), "{device} with 1 MB buffers: {}", String::from_utf8_lossy(&split.stderr));
    let diff = cpu_logits.iter().zip(&logits(&split_out)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "{device} with 1 MB buffers differs from the CPU by {diff:e}");

    // Told the device takes 64 GB buffers, the backend asks for the whole 154 MB embedding at
    // once; a device that cannot hold it fails inside its own thread. That must end the command
    // with an error naming the device, and leave no logits file behind.
    if device.starts_with("wgpu") {
        let failed_out = dir.path().join("failed.safetensors");
        let failed = score(&model, &ids, &failed_out, &device, Some("68719476736"));
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "a device failure must exit 1: {stderr}");
        assert!(stderr.contains("wgpu") && stderr.contains("154484736"), "the error names the device and the size: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!failed_out.exists(), "logits were written from a failed device");
    }
}

/// `--device-stats` counts what the device did: on the CPU nothing crosses a bus; on a GPU every
/// launch, wait and byte is counted, weights apart; tokens are counted by kind on both. On the GPU
/// the state and activations stay on the device: a 600-token prompt and 16 new tokens (17
/// passes) bring back little more than their logits rows and send little more than their ids.
#[test]
fn device_stats_count_tokens_launches_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, (0..600).map(|i| ((i * 7919) % 500).to_string()).collect::<Vec<_>>().join(" ")).unwrap();
    let mut seen = Vec::new();
    for device in ["cpu".to_string(), gpu_device()] {
        let stats_path = dir.path().join(format!("{device}.json"));
        let output = Command::new(env!("CARGO_BIN_EXE_coil"))
            .args(["run", "--token-ids", ids.to_str().unwrap(), "--max-new-tokens", "16", "--ignore-eos", "--device", &device])
            .args(["--device-stats", stats_path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{device}: {}", String::from_utf8_lossy(&output.stderr));
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats_path).unwrap()).unwrap();
        let count = |key: &str| stats[key].as_u64().unwrap_or_else(|| panic!("{device}: no {key} in {stats}"));
        assert_eq!((count("prefill_tokens"), count("decode_tokens")), (600, 16), "{stats}");
        let traffic = ["launches", "syncs", "bytes_up", "bytes_down", "load_bytes_up"].map(count);
        if device == "cpu" {
            assert_eq!(stats["device"], "cpu");
            assert_eq!(traffic, [0; 5], "the CPU moves nothing: {stats}");
        } else {
            assert!(traffic.iter().all(|&n| n > 0), "{stats}");
            // Every pass reads its logits back: at least one wait per decode step.
            assert!(count("syncs") >= 16, "{stats}");
            let config = coil::Checkpoint::embedded_default().unwrap().config;
            let passes = 17;
            let logits_bytes = passes * config.vocab_size as u64 * 4;
            assert!(count("bytes_down") <= logits_bytes * 11 / 10 + 65_536, "more than the logits came back: {stats}");
            assert!(count("bytes_up") <= 616 * 16 + 65_536, "more than the ids went up: {stats}");
            // One wait per pass (the logits, the log-decay sums and the finiteness flags come
            // back together): pieces + decode tokens + 2.
            assert!(count("syncs") <= 1 + 16 + 2, "{stats}");
        }
        seen.push(stats);
    }
    assert_ne!(seen[0]["device"], seen[1]["device"]);
}

/// 16-bit checkpoints keep their dtype on the device where it computes with it (f16 on lavapipe;
/// bf16 is widened there): every product and the embedding read them as stored, and agree with
/// the CPU holding the same dtype.
#[test]
fn sixteen_bit_weights_agree_with_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, "1 5 9 13 2 60 3 3 71 40 8").unwrap();
    for case in ["f16_weights", "bf16_weights"] {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case);
        let (cpu_out, gpu_out) = (dir.path().join(format!("{case}-cpu")), dir.path().join(format!("{case}-gpu")));
        for (device, out) in [("cpu".to_string(), &cpu_out), (gpu_device(), &gpu_out)] {
            let run = score(&model, &ids, out, &device, None);
            assert!(run.status.success(), "{case} on {device}: {}", String::from_utf8_lossy(&run.stderr));
        }
        let (cpu, gpu) = (logits(&cpu_out), logits(&gpu_out));
        let diff = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(!cpu.is_empty() && diff < 1e-4, "{case}: the GPU differs from the CPU by {diff:e}");
    }
}
