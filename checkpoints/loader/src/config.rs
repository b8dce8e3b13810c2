//! `config.json` in both dialects, normalised into one [`Config`] that owns the model's arithmetic.

use std::path::Path;

use serde_json::{Map, Value};

use crate::json::{as_float, parse_lenient};
use crate::LoadError;

/// Which family wrote the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// transformers' `Mamba2ForCausalLM.save_pretrained`.
    HuggingFace,
    /// state-spaces/mamba_ssm (`MambaLMHeadModel`), as the official mamba2-* checkpoints.
    MambaSsm,
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialect::HuggingFace => "HF transformers (Mamba2ForCausalLM)",
            Dialect::MambaSsm => "mamba_ssm (MambaLMHeadModel)",
        })
    }
}

/// A Mamba-2 language model's hyper-parameters, whatever dialect they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The dialect the file was written in.
    pub dialect: Dialect,
    /// D.
    pub d_model: usize,
    /// L.
    pub n_layer: usize,
    /// Rows of the embedding and width of the logits (padded as the checkpoint pads them).
    pub vocab_size: usize,
    /// The vocabulary before padding, when the config says (mamba_ssm's `vocab_size`).
    pub vocab_size_unpadded: usize,
    /// N.
    pub d_state: usize,
    /// P.
    pub head_dim: usize,
    /// H.
    pub n_heads: usize,
    /// G.
    pub n_groups: usize,
    /// K, the causal conv's width.
    pub conv_kernel: usize,
    /// The SSD chunk length the checkpoint was trained with; prefill may use any.
    pub chunk_size: usize,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f32,
    /// in_proj and out_proj carry biases.
    pub use_bias: bool,
    /// Whether the causal conv has a bias.
    pub use_conv_bias: bool,
    /// `Some(true)`: lm_head is the embedding; `None`: the config does not say, and the weights
    /// decide (a missing `lm_head.weight` means tied). Either way a stored `lm_head.weight` that
    /// differs from the embedding is used as the head, as HF transformers does (see
    /// `Weights::lm_head`).
    pub tie_embeddings: Option<bool>,
    /// `(min, max)` clamp of dt after softplus.
    pub time_step_limit: (f32, f32),
    /// D is per channel (`[H*P]`) rather than per head.
    pub d_has_hdim: bool,
}

impl Config {
    /// I = H * P.
    pub fn d_inner(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Channels through the causal conv: x, B and C, `I + 2 G N`.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.n_groups * self.d_state
    }

    /// Rows of in_proj: `z | xBC | dt`.
    pub fn in_proj_rows(&self) -> usize {
        self.d_inner() + self.conv_dim() + self.n_heads
    }

    /// N_S, the recurrent state's size in elements as the capacity laws count it: `L * H * P * N`.
    pub fn state_elements(&self) -> usize {
        self.n_layer * self.n_heads * self.head_dim * self.d_state
    }

    /// Reads and validates `config.json` text. `path` is only used to name the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Config, LoadError> {
        let value = parse_lenient(text)
            .map_err(|e| LoadError::Json { path: path.to_owned(), message: e.to_string() })?;
        let Value::Object(root) = value else {
            return Err(LoadError::config(path, "config.json must hold a JSON object"));
        };
        let fields = Fields { map: &root, path, prefix: "" };
        let config = if root.contains_key("d_model") || root.contains_key("ssm_cfg") {
            from_mamba_ssm(&fields)?
        } else if root.contains_key("hidden_size") || root.get("model_type").and_then(Value::as_str) == Some("mamba2") {
            from_hugging_face(&fields)?
        } else {
            return Err(LoadError::config(
                path,
                "not a Mamba-2 config: expected `hidden_size` (HF dialect) or `d_model` (mamba_ssm dialect)",
            ));
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Rejects sizes no model can have; shapes against the weights are checked when they load.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let fail = |message: String| Err(LoadError::config(path, message));
        if !self.n_heads.is_multiple_of(self.n_groups) {
            return fail(format!("num_heads ({}) is not a multiple of n_groups ({})", self.n_heads, self.n_groups));
        }
        if self.vocab_size < self.vocab_size_unpadded {
            return fail(format!("vocab_size {} is smaller than the unpadded {}", self.vocab_size, self.vocab_size_unpadded));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return fail(format!("layer_norm_epsilon must be positive and finite, found {}", self.norm_eps));
        }
        let (low, high) = self.time_step_limit;
        if !(low >= 0.0 && low <= high && !high.is_nan()) {
            return fail(format!("time_step_limit must satisfy 0 <= min <= max, found ({low}, {high})"));
        }
        // Every size product the engine forms must fit comfortably in memory arithmetic.
        let products = [
            self.conv_dim().checked_mul(self.d_model),
            self.vocab_size.checked_mul(self.d_model),
            self.state_elements().checked_mul(4),
        ];
        if products.iter().any(|p| p.is_none_or(|v| v > isize::MAX as usize / 8)) {
            return fail("model dimensions are too large to address".into());
        }
        Ok(())
    }
}

/// Typed access to one JSON object, with errors that name the key.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    prefix: &'a str,
}

impl Fields<'_> {
    fn error(&self, key: &str, message: &str) -> LoadError {
        LoadError::config(self.path, format!("`{}{key}` {message}", self.prefix))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn size(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(Some(n as usize)),
                _ => Err(self.error(key, &format!("must be a positive integer, found {v}"))),
            },
        }
    }

    fn required_size(&self, key: &str) -> Result<usize, LoadError> {
        self.size(key)?.ok_or_else(|| self.error(key, "is missing"))
    }

    fn count(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.error(key, &format!("must be a non-negative integer, found {v}"))),
        }
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.error(key, &format!("must be true or false, found {v}"))),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_float(v).map(Some).ok_or_else(|| self.error(key, &format!("must be a number, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(key, &format!("must be a string, found {v}"))),
        }
    }

    /// `[min, max]` in any of the three spellings transformers has written.
    fn limit(&self, key: &str) -> Result<Option<(f32, f32)>, LoadError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || self.error(key, &format!("must be a pair [min, max], found {v}"));
        let Value::Array(items) = v else { return Err(bad()) };
        match items.as_slice() {
            [low, high] => Ok(Some((as_float(low).ok_or_else(bad)? as f32, as_float(high).ok_or_else(bad)? as f32))),
            _ => Err(bad()),
        }
    }

    fn activation_is_silu(&self, key: &str) -> Result<(), LoadError> {
        match self.string(key)? {
            None | Some("silu") | Some("swish") => Ok(()),
            Some(other) => Err(self.error(key, &format!("is `{other}`; only silu (swish) is supported"))),
        }
    }
}

fn from_hugging_face(f: &Fields) -> Result<Config, LoadError> {
    // HF's class defaults are Codestral's (n_groups 8, vocab 32768, ...): a checkpoint that omits a
    // size is ambiguous, so sizes are required rather than filled in.
    let d_model = f.required_size("hidden_size")?;
    let n_heads = f.required_size("num_heads")?;
    let head_dim = f.required_size("head_dim")?;
    if let Some(expand) = f.float("expand")? {
        let inner = expand * d_model as f64;
        if inner != (n_heads * head_dim) as f64 {
            return Err(f.error("expand", &format!(
                "({expand}) times hidden_size ({d_model}) must equal num_heads * head_dim ({n_heads} * {head_dim})"
            )));
        }
    }
    if f.flag("rms_norm")? == Some(false) {
        return Err(f.error("rms_norm", "is false; only RMSNorm Mamba-2 models are supported"));
    }
    f.activation_is_silu("hidden_act")?;
    let vocab_size = f.required_size("vocab_size")?;
    Ok(Config {
        dialect: crate::Dialect::HuggingFace,
        d_model,
        n_layer: f.required_size("num_hidden_layers")?,
        vocab_size,
        vocab_size_unpadded: vocab_size,
        d_state: f.required_size("state_size")?,
        head_dim,
        n_heads,
        n_groups: f.required_size("n_groups")?,
        conv_kernel: f.size("conv_kernel")?.unwrap_or(4),
        chunk_size: f.size("chunk_size")?.unwrap_or(256),
        norm_eps: f.float("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
        use_bias: f.flag("use_bias")?.unwrap_or(false),
        use_conv_bias: f.flag("use_conv_bias")?.unwrap_or(true),
        tie_embeddings: f.flag("tie_word_embeddings")?,
        time_step_limit: f.limit("time_step_limit")?.unwrap_or((0.0, f32::INFINITY)),
        d_has_hdim: false,
    })
}

fn from_mamba_ssm(f: &Fields) -> Result<Config, LoadError> {
    let d_model = f.required_size("d_model")?;
    if f.count("d_intermediate")?.unwrap_or(0) != 0 {
        return Err(f.error("d_intermediate", "is non-zero: MLP blocks between mixers are not supported"));
    }
    if f.get("attn_layer_idx").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
        return Err(f.error("attn_layer_idx", "lists attention layers: hybrid models are not supported"));
    }
    if f.flag("rms_norm")? == Some(false) {
        return Err(f.error("rms_norm", "is false; only RMSNorm Mamba-2 models are supported"));
    }
    let empty = Map::new();
    let ssm_map = match f.get("ssm_cfg") {
        None => &empty,
        Some(Value::Object(map)) => map,
        Some(v) => return Err(f.error("ssm_cfg", &format!("must be an object, found {v}"))),
    };
    let ssm = Fields { map: ssm_map, path: f.path, prefix: "ssm_cfg." };
    match ssm.string("layer")? {
        Some("Mamba2") => {}
        Some(other) => return Err(ssm.error("layer", &format!("is `{other}`; only Mamba2 is supported"))),
        None => return Err(ssm.error("layer", "is missing: mamba_ssm then builds Mamba1 layers, which Coil does not run")),
    }
    if ssm.flag("norm_before_gate")? == Some(true) {
        return Err(ssm.error("norm_before_gate", "is true; only the released gate-then-norm order is supported"));
    }
    if ssm.flag("rmsnorm")? == Some(false) {
        return Err(ssm.error("rmsnorm", "is false; the ungated-norm variant is not supported"));
    }
    ssm.activation_is_silu("activation")?;

    // mamba_ssm's Mamba2 defaults.
    let expand = ssm.float("expand")?.unwrap_or(2.0);
    let head_dim = ssm.size("headdim")?.unwrap_or(64);
    let inner = expand * d_model as f64;
    if inner.fract() != 0.0 || inner < 1.0 || !(inner as usize).is_multiple_of(head_dim) {
        return Err(ssm.error("headdim", &format!("({head_dim}) must divide expand * d_model ({inner})")));
    }
    let vocab = f.required_size("vocab_size")?;
    let multiple = f.size("pad_vocab_size_multiple")?.unwrap_or(8);
    Ok(Config {
        dialect: crate::Dialect::MambaSsm,
        d_model,
        n_layer: f.required_size("n_layer")?,
        vocab_size: vocab.div_ceil(multiple) * multiple,
        vocab_size_unpadded: vocab,
        d_state: ssm.size("d_state")?.unwrap_or(128),
        head_dim,
        n_heads: inner as usize / head_dim,
        n_groups: ssm.size("ngroups")?.unwrap_or(1),
        conv_kernel: ssm.size("d_conv")?.unwrap_or(4),
        chunk_size: ssm.size("chunk_size")?.unwrap_or(256),
        norm_eps: f.float("norm_epsilon")?.unwrap_or(1e-5) as f32,
        use_bias: ssm.flag("bias")?.unwrap_or(false),
        use_conv_bias: ssm.flag("conv_bias")?.unwrap_or(true),
        tie_embeddings: Some(f.flag("tie_embeddings")?.unwrap_or(true)),
        time_step_limit: ssm.limit("dt_limit")?.unwrap_or((0.0, f32::INFINITY)),
        d_has_hdim: ssm.flag("D_has_hdim")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, LoadError> {
        Config::from_json(text, Path::new("config.json"))
    }

    const HF: &str = r#"{"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 96,
        "state_size": 16, "num_heads": 8, "head_dim": 16, "n_groups": 2, "expand": 2,
        "time_step_limit": [0.0, Infinity], "some_future_key": {"x": 1}}"#;

    #[test]
    fn hugging_face_dialect_with_bare_infinity() {
        let c = parse(HF).unwrap();
        assert_eq!(c.dialect, Dialect::HuggingFace);
        assert_eq!((c.d_inner(), c.conv_dim(), c.in_proj_rows()), (128, 192, 328));
        assert_eq!(c.time_step_limit, (0.0, f32::INFINITY));
        assert_eq!(c.tie_embeddings, None);
        assert_eq!(c.state_elements(), 2 * 8 * 16 * 16);
    }

    #[test]
    fn transformers_5_float_objects() {
        let text = HF.replace("[0.0, Infinity]", r#"[0.001, {"__float__": "Infinity"}]"#);
        assert_eq!(parse(&text).unwrap().time_step_limit, (0.001, f32::INFINITY));
    }

    #[test]
    fn mamba_ssm_dialect_pads_vocab_and_fills_mamba2_defaults() {
        let c = parse(r#"{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 16,
            "ssm_cfg": {"layer": "Mamba2"}, "rms_norm": true, "tie_embeddings": true}"#).unwrap();
        assert_eq!(c.dialect, Dialect::MambaSsm);
        assert_eq!((c.vocab_size, c.vocab_size_unpadded), (50288, 50277));
        assert_eq!((c.n_heads, c.head_dim, c.d_state, c.n_groups, c.conv_kernel), (24, 64, 128, 1, 4));
        assert_eq!(c.state_elements(), 24 * 24 * 64 * 128); // 4.72M, mamba2-130m
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = parse(r#"{"hidden_size": 64}"#).unwrap_err().to_string();
        assert!(missing.contains("num_heads") && missing.contains("missing"), "{missing}");
        let bad = parse(&HF.replace("\"n_groups\": 2", "\"n_groups\": 3")).unwrap_err().to_string();
        assert!(bad.contains("multiple of n_groups"), "{bad}");
        let mamba1 = parse(r#"{"d_model": 64, "n_layer": 2, "vocab_size": 10}"#).unwrap_err().to_string();
        assert!(mamba1.contains("Mamba1"), "{mamba1}");
        let json = parse("{\"hidden_size\": ").unwrap_err().to_string();
        assert!(json.contains("invalid JSON"), "{json}");
        let negative = parse(&HF.replace("\"state_size\": 16", "\"state_size\": -1")).unwrap_err().to_string();
        assert!(negative.contains("state_size") && negative.contains("positive"), "{negative}");
    }
}
