//! What the integration tests share.

use coil_ssm::{Config, Dialect};

/// A two-layer HF-dialect config of the given widths (vocabulary 37, chunk 8): change fields
/// for other needs.
pub fn config(d_model: usize, heads: usize, head_dim: usize, d_state: usize, groups: usize, conv_kernel: usize) -> Config {
    Config {
        dialect: Dialect::HuggingFace,
        d_model,
        n_layer: 2,
        vocab_size: 37,
        vocab_size_unpadded: 37,
        d_state,
        head_dim,
        n_heads: heads,
        n_groups: groups,
        conv_kernel,
        chunk_size: 8,
        norm_eps: 1e-5,
        use_bias: false,
        use_conv_bias: true,
        tie_embeddings: Some(true),
        time_step_limit: (0.0, f32::INFINITY),
        d_has_hdim: false,
    }
}
