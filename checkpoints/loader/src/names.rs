//! Where each weight of a Mamba-2 checkpoint lives: one table of tensor roles to names and
//! shapes, which the loader reads by and the exporter writes by. The two dialects name every
//! tensor alike but the embedding (HF `backbone.embeddings.weight`, mamba_ssm
//! `backbone.embedding.weight`); the loader takes either, the exporter writes HF's.

use crate::{Config, Dialect};

/// A tensor of one residual block (pre-norm and mixer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Norm,
    InProj,
    InProjBias,
    Conv,
    ConvBias,
    DtBias,
    ALog,
    D,
    MixerNorm,
    OutProj,
    OutProjBias,
}

impl Role {
    /// Every role, in the order checkpoints list them.
    pub const ALL: [Role; 11] =
        [Role::Norm, Role::InProj, Role::InProjBias, Role::Conv, Role::ConvBias, Role::DtBias, Role::ALog, Role::D, Role::MixerNorm, Role::OutProj, Role::OutProjBias];

    /// Its name in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        let suffix = match self {
            Role::Norm => "norm.weight",
            Role::InProj => "mixer.in_proj.weight",
            Role::InProjBias => "mixer.in_proj.bias",
            Role::Conv => "mixer.conv1d.weight",
            Role::ConvBias => "mixer.conv1d.bias",
            Role::DtBias => "mixer.dt_bias",
            Role::ALog => "mixer.A_log",
            Role::D => "mixer.D",
            Role::MixerNorm => "mixer.norm.weight",
            Role::OutProj => "mixer.out_proj.weight",
            Role::OutProjBias => "mixer.out_proj.bias",
        };
        format!("backbone.layers.{layer}.{suffix}")
    }

    /// Its shape as both dialects store it (the loader also takes the conv squeezed to `[C, K]`).
    pub fn shape(self, config: &Config) -> Vec<usize> {
        let (d_model, inner, heads) = (config.d_model, config.d_inner(), config.n_heads);
        match self {
            Role::Norm | Role::OutProjBias => vec![d_model],
            Role::InProj => vec![config.in_proj_rows(), d_model],
            Role::InProjBias => vec![config.in_proj_rows()],
            Role::Conv => vec![config.conv_dim(), 1, config.conv_kernel],
            Role::ConvBias => vec![config.conv_dim()],
            Role::DtBias | Role::ALog => vec![heads],
            Role::D => vec![if config.d_has_hdim { inner } else { heads }],
            Role::MixerNorm => vec![inner],
            Role::OutProj => vec![d_model, inner],
        }
    }

    /// Whether a checkpoint of `config` has it (the biases are optional).
    pub fn present(self, config: &Config) -> bool {
        match self {
            Role::InProjBias | Role::OutProjBias => config.use_bias,
            Role::ConvBias => config.use_conv_bias,
            _ => true,
        }
    }
}

/// The embedding's name in each dialect.
pub fn embedding(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::HuggingFace => "backbone.embeddings.weight",
        Dialect::MambaSsm => "backbone.embedding.weight",
    }
}

/// Both embedding names, HF's first: a checkpoint may use either whatever its config's dialect.
pub const EMBEDDINGS: [&str; 2] = ["backbone.embeddings.weight", "backbone.embedding.weight"];

/// The final norm.
pub const NORM_F: &str = "backbone.norm_f.weight";

/// The output head, when it is not tied to the embedding.
pub const LM_HEAD: &str = "lm_head.weight";

/// The layer a tensor name belongs to, if any.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("backbone.layers.")?.split('.').next()?.parse().ok()
}
