//! The body of every fuzz target, shared with `checkpoints/loader/tests/fuzz_inputs.rs`, which replays
//! the committed seeds and every input that once crashed through exactly the same code.

use std::path::Path;

use coil_checkpoints::{Config, TensorStore, Tokenizer, Weights};

/// `config.json` in either dialect: any text parses to a validated config or an error.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_json(text, Path::new("config.json")) {
            // Derived sizes must not overflow for a config that validated.
            let _ = (config.in_proj_rows(), config.conv_dim(), config.state_elements());
        }
    }
}

/// A 2-layer model of the seeds' sizes (d_model 4, 2 heads of 4, d_state 2, vocab 8).
const TINY_CONFIG: &str = r#"{"model_type": "mamba2", "hidden_size": 4, "num_hidden_layers": 2, "vocab_size": 8,
    "state_size": 2, "num_heads": 2, "head_dim": 4, "n_groups": 1, "expand": 2, "conv_kernel": 4}"#;

/// One weights file (`model.safetensors` or `pytorch_model.bin`, by `file_name`): every tensor the
/// store lists is described and read, then a tiny model's weights are loaded from it. Returns
/// whether the file opened (the seed replay checks the harness reaches that far).
pub fn weights(file_name: &str, data: &[u8]) -> bool {
    let Ok(store) = TensorStore::from_bytes(file_name, data.to_vec()) else { return false };
    for name in store.names() {
        if let Ok((shape, _)) = store.describe(name) {
            let _ = store.read_f32(name, &shape);
        }
        let _ = store.path_of(name);
    }
    let config = Config::from_json(TINY_CONFIG, Path::new("config.json")).expect("the fixed config is valid");
    let _ = Weights::load(&config, &store);
    true
}

/// The restricted unpickler alone: `data` becomes `data.pkl` of a well-formed torch ZIP with three
/// small storages (`0`: 64 f32, `1`: 8, `2`: 2), so mutations reach the pickle machine instead of
/// failing ZIP checks.
pub fn pickle(data: &[u8]) -> bool {
    if data.len() > 1 << 20 {
        return false;
    }
    let floats: Vec<u8> = (0..64).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect();
    let file = zip(&[
        ("archive/data.pkl", data),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &floats),
        ("archive/data/1", &floats[..32]),
        ("archive/data/2", &floats[..8]),
    ]);
    weights("pytorch_model.bin", &file)
}

/// `tokenizer.json`: loading, then encoding and decoding a fixed text with whatever loaded.
pub fn tokenizer(data: &[u8]) {
    if let Ok(tokenizer) = Tokenizer::from_bytes(data, Path::new("tokenizer.json")) {
        if let Ok(ids) = tokenizer.encode("Hello, world! 123 Ünïcode ✓") {
            let _ = tokenizer.decode(&ids);
        }
        let _ = tokenizer.decode(&[0, 1, 2, 3, 50000, u32::MAX]);
    }
}

/// A stored ZIP of `entries` (no CRCs: the reader does not check them).
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for &(name, data) in entries {
        let offset = out.len() as u32;
        let sizes = [(data.len() as u32).to_le_bytes(), (data.len() as u32).to_le_bytes()].concat();
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&sizes);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&sizes);
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra and comment lengths, disk, attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let directory = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&directory.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}
