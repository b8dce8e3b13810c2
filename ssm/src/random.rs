//! Random weights for a config, for tests and benchmarks of shapes no checkpoint here has.
//! The distributions follow the fixture recipe (mamba2.md): parameters that initialise to
//! trivial values (A_log, dt_bias, D, norms, conv bias) are spread out so every path matters.

use coil_checkpoints::{DType, LayerWeights, Weights};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Config;

/// Deterministic random weights of `config`'s shapes.
pub fn random_weights(config: &Config, seed: u64) -> Weights {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (d, inner, heads) = (config.d_model, config.d_inner(), config.n_heads);
    let rows = config.in_proj_rows();
    let mut normal = |n: usize, mean: f32, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box-Muller.
                let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                mean + std * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    };
    let mut layers = Vec::new();
    for _ in 0..config.n_layer {
        layers.push(LayerWeights {
            norm: normal(d, 1.0, 0.15),
            in_proj: normal(rows * d, 0.0, 1.0 / (d as f32).sqrt()),
            in_proj_bias: config.use_bias.then(|| normal(rows, 0.0, 0.1)),
            conv_weight: normal(config.conv_dim() * config.conv_kernel, 0.0, 0.5),
            conv_bias: config.use_conv_bias.then(|| normal(config.conv_dim(), 0.0, 0.3)),
            dt_bias: Vec::new(),
            a_log: Vec::new(),
            d: normal(if config.d_has_hdim { inner } else { heads }, 1.0, 0.5),
            mixer_norm: normal(inner, 1.0, 0.15),
            out_proj: normal(d * inner, 0.0, 1.0 / (inner as f32).sqrt()),
            out_proj_bias: config.use_bias.then(|| normal(d, 0.0, 0.1)),
        });
    }
    let embedding = normal(config.vocab_size * d, 0.0, 1.0);
    let norm_f = normal(d, 1.0, 0.15);
    let lm_head = (config.tie_embeddings == Some(false)).then(|| normal(config.vocab_size * d, 0.0, 1.0 / (d as f32).sqrt()));
    for layer in &mut layers {
        // A_log ~ log U(1, 16); dt_bias = softplus⁻¹(log-uniform(1e-3, 1)).
        layer.a_log = (0..heads).map(|_| rng.random_range(1.0f32..16.0).ln()).collect();
        layer.dt_bias = (0..heads)
            .map(|_| {
                let dt = 10f32.powf(rng.random_range(-3.0..0.0));
                dt + (-(-dt).exp_m1()).ln()
            })
            .collect();
    }
    Weights { embedding, layers, norm_f, lm_head, stored_dtype: DType::F32 }
}
