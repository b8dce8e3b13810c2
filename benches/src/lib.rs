//! Shared set-up for Coil's benchmarks: model shapes of released checkpoints, with random weights.

use std::sync::Arc;

use coil_ssm::{random_weights, Config, Dialect, Model};

/// The shape of a released state-spaces/mamba2 checkpoint, by name: `130m`, `370m`, `780m`,
/// `1.3b`, `2.7b`; `NAME:LAYERS` or `NAME:LAYERS:VOCAB` keeps the widths with fewer layers or
/// another vocabulary (`130m:4:8192`, small enough to time on lavapipe).
pub fn released_shape(name: &str) -> Option<Config> {
    let mut parts = name.split(':');
    let base = released_shape_named(parts.next()?)?;
    let n_layer = match parts.next() {
        Some(layers) => layers.parse().ok().filter(|&n| n > 0)?,
        None => base.n_layer,
    };
    let vocab_size = match parts.next() {
        Some(vocab) => vocab.parse().ok().filter(|&n| n > 0)?,
        None => base.vocab_size,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Config { n_layer, vocab_size, vocab_size_unpadded: base.vocab_size_unpadded.min(vocab_size), ..base })
}

fn released_shape_named(name: &str) -> Option<Config> {
    let (d_model, n_layer) = match name {
        "130m" => (768, 24),
        "370m" => (1024, 48),
        "780m" => (1536, 48),
        "1.3b" => (2048, 48),
        "2.7b" => (2560, 64),
        _ => return None,
    };
    Some(Config {
        dialect: Dialect::MambaSsm,
        d_model,
        n_layer,
        vocab_size: 50288,
        vocab_size_unpadded: 50277,
        d_state: 128,
        head_dim: 64,
        n_heads: 2 * d_model / 64,
        n_groups: 1,
        conv_kernel: 4,
        chunk_size: 256,
        norm_eps: 1e-5,
        use_bias: false,
        use_conv_bias: true,
        tie_embeddings: Some(true),
        time_step_limit: (0.0, f32::INFINITY),
        d_has_hdim: false,
    })
}

/// A CPU model of `config`'s shape with deterministic random weights.
pub fn random_model(config: &Config) -> Arc<Model> {
    random_model_on(config, Arc::new(coil_kernels::Cpu))
}

/// [`random_model`] on another backend.
pub fn random_model_on(config: &Config, backend: Arc<dyn coil_kernels::Backend>) -> Arc<Model> {
    Arc::new(Model::new(config.clone(), random_weights(config, 0), backend))
}
