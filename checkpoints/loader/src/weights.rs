//! Name mapping from either dialect to one set of f32 weights, with every shape checked.

use crate::names::{self, Role};
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

impl LayerWeights {
    /// The tensor of `role`, when the layer has it.
    pub fn tensor(&self, role: Role) -> Option<&[f32]> {
        match role {
            Role::Norm => Some(&self.norm),
            Role::InProj => Some(&self.in_proj),
            Role::InProjBias => self.in_proj_bias.as_deref(),
            Role::Conv => Some(&self.conv_weight),
            Role::ConvBias => self.conv_bias.as_deref(),
            Role::DtBias => Some(&self.dt_bias),
            Role::ALog => Some(&self.a_log),
            Role::D => Some(&self.d),
            Role::MixerNorm => Some(&self.mixer_norm),
            Role::OutProj => Some(&self.out_proj),
            Role::OutProjBias => self.out_proj_bias.as_deref(),
        }
    }
}

impl Weights {
    /// Reads every tensor the config calls for (by [`Role`]'s table). Extra tensors are left
    /// unread (the checkpoint's warnings name them), as HF leaves them.
    pub fn load(config: &Config, store: &TensorStore) -> Result<Weights, LoadError> {
        let d_model = config.d_model;
        let embedding_name = names::EMBEDDINGS.iter().copied().find(|n| store.contains(n)).unwrap_or(names::embedding(config.dialect));
        let embedding = store.read_f32(embedding_name, &[config.vocab_size, d_model])?;
        let stored_dtype = store.describe(embedding_name)?.1;

        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            check_in_proj_rows(config, store, &Role::InProj.name(i))?;
            let read = |role: Role| -> Result<Vec<f32>, LoadError> {
                let name = role.name(i);
                let mut shape = role.shape(config);
                // mamba_ssm and HF store the depthwise conv as [C, 1, K]; accept a squeezed [C, K] too.
                if role == Role::Conv && store.describe(&name).is_ok_and(|(s, _)| s.len() == 2) {
                    shape.remove(1);
                }
                store.read_f32(&name, &shape)
            };
            let optional = |role: Role| role.present(config).then(|| read(role)).transpose();
            layers.push(LayerWeights {
                norm: read(Role::Norm)?,
                in_proj: read(Role::InProj)?,
                in_proj_bias: optional(Role::InProjBias)?,
                conv_weight: read(Role::Conv)?,
                conv_bias: optional(Role::ConvBias)?,
                dt_bias: read(Role::DtBias)?,
                a_log: read(Role::ALog)?,
                d: read(Role::D)?,
                mixer_norm: read(Role::MixerNorm)?,
                out_proj: read(Role::OutProj)?,
                out_proj_bias: optional(Role::OutProjBias)?,
            });
        }

        let norm_f = store.read_f32(names::NORM_F, &[d_model])?;
        // A stored `lm_head.weight` is the head unless it equals the embedding, whatever the
        // config says about tying (mamba_ssm saves the tied tensor under both names). A tied
        // config with a different stored head: HF transformers (5.x) unties them and uses the
        // stored head, and so does Coil (`coil inspect` says so); an untied config needs one.
        let head_shape = [config.vocab_size, d_model];
        let lm_head = if store.contains(names::LM_HEAD) || config.tie_embeddings == Some(false) {
            Some(store.read_f32(names::LM_HEAD, &head_shape)?).filter(|head| *head != embedding)
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
