//! Name mapping from either dialect to one set of f32 weights, with every shape checked.

use crate::{Config, DType, LoadError, TensorStore};

/// A weight widened to f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One residual block: pre-norm plus the Mamba-2 mixer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `[D]` the block's pre-norm.
    pub norm: Vec<f32>,
    /// `[2I + 2GN + H, D]`, rows `z | xBC | dt`.
    pub in_proj: Vec<f32>,
    pub in_proj_bias: Option<Vec<f32>>,
    /// `[conv_dim, K]` (stored `[conv_dim, 1, K]`).
    pub conv_weight: Vec<f32>,
    pub conv_bias: Option<Vec<f32>>,
    /// `[H]`.
    pub dt_bias: Vec<f32>,
    /// `[H]`, A = -exp(A_log).
    pub a_log: Vec<f32>,
    /// `[H]`, or `[I]` with `D_has_hdim`.
    pub d: Vec<f32>,
    /// `[I]` weight of the grouped gated RMSNorm.
    pub mixer_norm: Vec<f32>,
    /// `[D, I]`.
    pub out_proj: Vec<f32>,
    pub out_proj_bias: Option<Vec<f32>>,
}

/// All weights of a Mamba-2 language model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[V, D]`.
    pub embedding: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    /// `[D]`.
    pub norm_f: Vec<f32>,
    /// `[V, D]`, or `None` when tied to the embedding: no stored `lm_head.weight`, or one equal
    /// to the embedding.
    pub lm_head: Option<Vec<f32>>,
    /// The dtype the projection weights were stored in.
    pub stored_dtype: DType,
}

impl Weights {
    /// Scalars across all tensors (the embedding once when tied).
    pub fn parameter_count(&self) -> usize {
        let optional = |t: &Option<Vec<f32>>| t.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.norm.len() + l.in_proj.len() + optional(&l.in_proj_bias) + l.conv_weight.len() + optional(&l.conv_bias)
                    + l.dt_bias.len() + l.a_log.len() + l.d.len() + l.mixer_norm.len() + l.out_proj.len()
                    + optional(&l.out_proj_bias)
            })
            .sum();
        self.embedding.len() + layers + self.norm_f.len() + optional(&self.lm_head)
    }
}

const EMBEDDING_NAMES: [&str; 2] = ["backbone.embeddings.weight", "backbone.embedding.weight"];

impl Weights {
    /// Reads every tensor the config calls for. Extra tensors are ignored, as HF ignores them.
    pub fn load(config: &Config, store: &TensorStore) -> Result<Weights, LoadError> {
        let (d_model, inner, heads) = (config.d_model, config.d_inner(), config.n_heads);
        let embedding_name = EMBEDDING_NAMES.iter().copied().find(|n| store.contains(n)).unwrap_or(match config.dialect {
            crate::Dialect::HuggingFace => EMBEDDING_NAMES[0],
            crate::Dialect::MambaSsm => EMBEDDING_NAMES[1],
        });
        let embedding = store.read_f32(embedding_name, &[config.vocab_size, d_model])?;
        let stored_dtype = store.describe(embedding_name)?.1;

        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let name = |suffix: &str| format!("backbone.layers.{i}.{suffix}");
            let mixer = |suffix: &str| name(&format!("mixer.{suffix}"));
            let optional = |tensor: String, wanted: bool, shape: &[usize]| -> Result<Option<Vec<f32>>, LoadError> {
                if wanted { store.read_f32(&tensor, shape).map(Some) } else { Ok(None) }
            };

            let in_proj_name = mixer("in_proj.weight");
            check_in_proj_rows(config, store, &in_proj_name)?;
            let conv_name = mixer("conv1d.weight");
            // mamba_ssm and HF store the depthwise conv as [C, 1, K]; accept a squeezed [C, K] too.
            let conv_shape = match store.describe(&conv_name) {
                Ok((shape, _)) if shape.len() == 2 => vec![config.conv_dim(), config.conv_kernel],
                _ => vec![config.conv_dim(), 1, config.conv_kernel],
            };
            let d_shape = [if config.d_has_hdim { inner } else { heads }];

            layers.push(LayerWeights {
                norm: store.read_f32(&name("norm.weight"), &[d_model])?,
                in_proj: store.read_f32(&in_proj_name, &[config.in_proj_rows(), d_model])?,
                in_proj_bias: optional(mixer("in_proj.bias"), config.use_bias, &[config.in_proj_rows()])?,
                conv_weight: store.read_f32(&conv_name, &conv_shape)?,
                conv_bias: optional(mixer("conv1d.bias"), config.use_conv_bias, &[config.conv_dim()])?,
                dt_bias: store.read_f32(&mixer("dt_bias"), &[heads])?,
                a_log: store.read_f32(&mixer("A_log"), &[heads])?,
                d: store.read_f32(&mixer("D"), &d_shape)?,
                mixer_norm: store.read_f32(&mixer("norm.weight"), &[inner])?,
                out_proj: store.read_f32(&mixer("out_proj.weight"), &[d_model, inner])?,
                out_proj_bias: optional(mixer("out_proj.bias"), config.use_bias, &[d_model])?,
            });
        }

        let norm_f = store.read_f32("backbone.norm_f.weight", &[d_model])?;
        // A stored `lm_head.weight` is the head unless it equals the embedding, whatever the
        // config says about tying (mamba_ssm saves the tied tensor under both names). A tied
        // config with a different stored head: HF transformers (5.x) unties them and uses the
        // stored head, and so does Coil (`coil inspect` says so); an untied config needs one.
        let head_shape = [config.vocab_size, d_model];
        let lm_head = if store.contains("lm_head.weight") || config.tie_embeddings == Some(false) {
            Some(store.read_f32("lm_head.weight", &head_shape)?).filter(|head| *head != embedding)
        } else {
            None
        };
        Ok(Weights { embedding, layers, norm_f, lm_head, stored_dtype })
    }
}

/// Old mamba_ssm code can put two `d_mlp` parts before z in in_proj; every released Mamba-2 has
/// d_mlp = 0. Name that case precisely instead of reporting a bare shape mismatch.
fn check_in_proj_rows(config: &Config, store: &TensorStore, name: &str) -> Result<(), LoadError> {
    let Ok((shape, _)) = store.describe(name) else { return Ok(()) };
    let expected = config.in_proj_rows();
    match shape.first() {
        Some(&rows) if rows > expected && (rows - expected).is_multiple_of(2) && shape.len() == 2 && shape[1] == config.d_model => {
            Err(LoadError::Unsupported {
                path: store.path_of(name).to_owned(),
                message: format!(
                    "tensor `{name}` has {rows} rows, {expected} expected: that implies d_mlp = {}, a gated MLP inside the mixer, which is not supported",
                    (rows - expected) / 2
                ),
            })
        }
        _ => Ok(()),
    }
}
