//! Writing a checkpoint back out in the HF transformers dialect (`config.json` for
//! `Mamba2ForCausalLM` plus one `model.safetensors`), from any folder Coil can load: the way to turn
//! a mamba_ssm `pytorch_model.bin` into safetensors without Python.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use serde_json::{json, Value};

use coil_files::Partial;
use crate::names::{self, Role};
use crate::{Config, DType, Dialect, LoadError, TensorStore, Tokenizer, Weights};

/// What [`convert_to_hf`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The `config.json` written.
    pub config: PathBuf,
    /// The `model.safetensors` written.
    pub model: PathBuf,
    /// `tokenizer.json` when the source had one.
    pub tokenizer: Option<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// The dtypes written: each tensor keeps the one it was stored in (f64 becomes f32).
    pub dtypes: Vec<DType>,
}

/// Loads the checkpoint in `model_dir` (either dialect, either weights format), checks every
/// tensor as loading always does, and writes it to `out_dir` in the HF dialect.
pub fn convert_to_hf(model_dir: &Path, out_dir: &Path) -> Result<Exported, LoadError> {
    if !model_dir.is_dir() {
        return Err(LoadError::Io { path: model_dir.to_owned(), source: crate::not_a_checkpoint_folder(model_dir) });
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Io { path, source }
    };
    let config_path = model_dir.join("config.json");
    let text = coil_files::read_text_limited(&config_path, coil_files::JSON_LIMIT).map_err(io(&config_path))?;
    let config = Config::from_json(&text, &config_path)?;
    let store = TensorStore::open_dir(model_dir)?;
    let weights = Weights::load(&config, &store)?;
    if config.d_has_hdim {
        return Err(LoadError::Unsupported {
            path: config_path,
            message: "`D_has_hdim` (a per-channel D) has no equivalent in the HF Mamba-2 config".into(),
        });
    }
    let tokenizer_path = model_dir.join("tokenizer.json");
    // Present but unreadable (a dangling link, a pipe) is an error, as when loading.
    let tokenizer = if std::fs::symlink_metadata(&tokenizer_path).is_ok() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };

    if std::fs::metadata(out_dir).is_ok_and(|m| !m.is_dir()) {
        return Err(LoadError::Io {
            path: out_dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a folder: --out names the folder to write"),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    if same(model_dir, out_dir) {
        return Err(LoadError::config(out_dir, "the output folder must differ from the source folder"));
    }

    let model = out_dir.join("model.safetensors");
    let config_out = out_dir.join("config.json");
    let tokenizer_out = out_dir.join("tokenizer.json");
    check_targets(model_dir, &[&model, &config_out, &tokenizer_out])?;

    let tensors = hf_tensors(&config, &weights, &store);
    let mut dtypes: Vec<DType> = tensors.iter().map(|t| t.dtype).collect();
    dtypes.sort_by_key(|d| d.size());
    dtypes.dedup();

    let count = tensors.len();
    let eos = tokenizer.as_ref().and_then(|t| t.token_id("<|endoftext|>"));
    let config_json = hf_config(&config, weights.lm_head.is_none(), weights.stored_dtype, eos);
    let text = serde_json::to_string_pretty(&config_json).expect("a JSON value serialises") + "\n";

    // Every file is written beside its final name first and only then renamed into place. The
    // old config goes first: a run killed (or failing) between the renames leaves a folder
    // without config.json, which says it is no checkpoint, never new weights under an old config
    // (which, were the shapes alike, would load).
    let mut written = vec![write_beside(&model, |tmp| write_safetensors(&tensors, tmp))?, write_beside(&config_out, |tmp| std::fs::write(tmp, &text))?];
    if tokenizer.is_some() {
        written.push(write_beside(&tokenizer_out, |tmp| std::fs::copy(&tokenizer_path, tmp).map(|_| ()))?);
    }
    let old_config = coil_files::resolve_output(&config_out).map_err(io(&config_out))?;
    if std::fs::symlink_metadata(&old_config).is_ok() {
        std::fs::remove_file(&old_config).map_err(io(&config_out))?;
    }
    for (path, partial) in written {
        partial.finish().map_err(|source| LoadError::Io { path, source })?;
    }

    let tokenizer = match tokenizer {
        Some(_) => Some(tokenizer_out),
        None => {
            // One left by an earlier conversion into this folder belongs to another model.
            if std::fs::symlink_metadata(&tokenizer_out).is_ok() {
                std::fs::remove_file(&tokenizer_out).map_err(io(&tokenizer_out))?;
            }
            None
        }
    };
    Ok(Exported { config: config_out, model, tokenizer, tensors: count, dtypes })
}

/// One output tensor: f32 weights narrowed back to the dtype they were stored in, which is exact
/// because they were widened from it. Encoded one at a time while the file is written.
struct OutTensor<'a> {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    values: &'a [f32],
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::F32 | DType::F64 => Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match self.dtype {
            DType::F16 => self.values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            DType::BF16 => self.values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F32 | DType::F64 => self.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    fn data_len(&self) -> usize {
        self.values.len() * self.dtype.size().min(4)
    }
}

/// `tensors` as a safetensors file at `path`: the header ([`coil_files::safetensors_header`]:
/// `__metadata__` and each tensor's dtype, shape and byte range), then each tensor's bytes in
/// header order, one tensor encoded at a time. Written here rather than by
/// `safetensors::serialize_to_file`, which goes through a temporary file of its own that a killed
/// run leaves behind.
fn write_safetensors(tensors: &[OutTensor], path: &Path) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data_len();
        header.insert(t.name.clone(), json!({ "dtype": t.dtype(), "shape": t.shape(), "data_offsets": [offset, end] }));
        offset = end;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&coil_files::safetensors_header(&Value::Object(header)))?;
    for t in tensors {
        file.write_all(&t.data())?;
    }
    file.flush() // write_beside syncs the file before it takes the name
}

/// Every weight under its HF name and shape, in the dtype the source stored it in.
fn hf_tensors<'a>(config: &Config, weights: &'a Weights, store: &TensorStore) -> Vec<OutTensor<'a>> {
    // Names are the same in both dialects except the embedding's.
    let stored = |names: &[&str]| -> DType {
        let dtype = names.iter().find_map(|n| store.describe(n).ok()).map_or(DType::F32, |(_, d)| d);
        if dtype == DType::F64 { DType::F32 } else { dtype }
    };
    let mut out = Vec::new();
    let mut push = |name: String, source: &[&str], shape: Vec<usize>, values: &'a [f32]| {
        let own = [name.as_str()];
        let dtype = stored(if source.is_empty() { &own } else { source });
        out.push(OutTensor { name, shape, dtype, values });
    };
    let (d_model, vocab) = (config.d_model, config.vocab_size);
    push(names::embedding(Dialect::HuggingFace).into(), &names::EMBEDDINGS, vec![vocab, d_model], &weights.embedding);
    for (i, layer) in weights.layers.iter().enumerate() {
        for role in Role::ALL {
            if let Some(values) = layer.tensor(role) {
                push(role.name(i), &[], role.shape(config), values);
            }
        }
    }
    push(names::NORM_F.into(), &[], vec![d_model], &weights.norm_f);
    if let Some(head) = &weights.lm_head {
        push(names::LM_HEAD.into(), &[], vec![vocab, d_model], head);
    }
    out
}

/// `config.json` as transformers 5.x's `Mamba2Config` writes it, every size explicit.
fn hf_config(config: &Config, tied: bool, dtype: DType, eos: Option<u32>) -> Value {
    // f32 -> shortest decimal -> f64, so 1e-5 is written as 1e-05 and not 9.99999974e-06.
    let float = |v: f32| -> Value {
        if v.is_finite() {
            json!(v.to_string().parse::<f64>().unwrap_or(v as f64))
        } else {
            json!({"__float__": if v > 0.0 { "Infinity" } else { "-Infinity" }})
        }
    };
    let expand = if config.d_inner().is_multiple_of(config.d_model) {
        json!(config.d_inner() / config.d_model)
    } else {
        json!(config.d_inner() as f64 / config.d_model as f64)
    };
    let (low, high) = config.time_step_limit;
    let mut value = json!({
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "vocab_size": config.vocab_size,
        "state_size": config.d_state,
        "head_dim": config.head_dim,
        "num_heads": config.n_heads,
        "n_groups": config.n_groups,
        "expand": expand,
        "conv_kernel": config.conv_kernel,
        "chunk_size": config.chunk_size,
        "layer_norm_epsilon": float(config.norm_eps),
        "use_bias": config.use_bias,
        "use_conv_bias": config.use_conv_bias,
        "residual_in_fp32": true,
        "rms_norm": true,
        "norm_before_gate": false,
        "hidden_act": "silu",
        "time_step_limit": [float(low), float(high)],
        "tie_word_embeddings": tied,
        "dtype": match dtype { DType::F16 => "float16", DType::BF16 => "bfloat16", DType::F32 | DType::F64 => "float32" },
    });
    if let Some(eos) = eos {
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            value[key] = json!(eos);
        }
    }
    value
}

/// Refuses, before anything is written, an output that would land on a file of the source folder
/// (through a link planted in the output folder) or on a device or pipe (the safetensors writer
/// would replace it with a regular file).
fn check_targets(source: &Path, outputs: &[&Path]) -> Result<(), LoadError> {
    let sources: Vec<PathBuf> = std::fs::read_dir(source)
        .map(|entries| entries.flatten().filter_map(|e| e.path().canonicalize().ok()).collect())
        .unwrap_or_default();
    for &output in outputs {
        let io = |source| LoadError::Io { path: output.to_owned(), source };
        let target = coil_files::resolve_output(output).map_err(io)?;
        if let Ok(kind) = std::fs::metadata(&target) {
            if !kind.is_file() {
                return Err(LoadError::config(output, "is not a regular file (a folder, device or pipe): convert writes files"));
            }
            if target.canonicalize().is_ok_and(|t| sources.contains(&t)) {
                return Err(LoadError::config(output, "is a file of the checkpoint being converted (through a link): writing it would replace the source"));
            }
        }
    }
    Ok(())
}

/// `write` into a temporary file beside `path`, synced, for [`Partial::finish`] to rename into
/// place; errors name `path`.
fn write_beside(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(PathBuf, Partial), LoadError> {
    let written = Partial::new(path).and_then(|partial| {
        write(partial.temporary())?;
        std::fs::File::open(partial.temporary())?.sync_all()?;
        Ok(partial)
    });
    written.map(|partial| (path.to_owned(), partial)).map_err(|source| LoadError::Io { path: path.to_owned(), source })
}
