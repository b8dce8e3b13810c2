//! Shared by the weight-file targets: read every tensor a store lists, then load a tiny model's
//! weights from it, so every check between header and f32 values runs.

use std::path::Path;

use coil_checkpoints::{Config, TensorStore, Weights};

/// A 2-layer model of the seeds' sizes (d_model 4, 1 head of 4, d_state 2, vocab 8).
const CONFIG: &str = r#"{"model_type": "mamba2", "hidden_size": 4, "num_hidden_layers": 2, "vocab_size": 8,
    "state_size": 2, "num_heads": 2, "head_dim": 4, "n_groups": 1, "expand": 2, "conv_kernel": 4}"#;

pub fn exercise(file_name: &str, data: &[u8]) {
    let Ok(store) = TensorStore::from_bytes(file_name, data.to_vec()) else { return };
    for name in store.names() {
        if let Ok((shape, _)) = store.describe(name) {
            let _ = store.read_f32(name, &shape);
        }
        let _ = store.path_of(name);
    }
    let config = Config::from_json(CONFIG, Path::new("config.json")).expect("the fixed config is valid");
    let _ = Weights::load(&config, &store);
}
