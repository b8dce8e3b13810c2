//! The recurrent state: all a model carries from one token to the next. Always f32.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::{Config, Error};

/// The sizes a state must have to belong to a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateShape {
    pub layers: usize,
    pub conv_dim: usize,
    pub conv_kernel: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub d_state: usize,
}

impl StateShape {
    pub fn of(config: &Config) -> StateShape {
        StateShape {
            layers: config.n_layer,
            conv_dim: config.conv_dim(),
            conv_kernel: config.conv_kernel,
            heads: config.n_heads,
            head_dim: config.head_dim,
            d_state: config.d_state,
        }
    }

    fn conv_len(&self) -> usize {
        self.conv_dim * self.conv_kernel
    }

    fn ssm_len(&self) -> usize {
        self.heads * self.head_dim * self.d_state
    }

    fn conv_dims(&self) -> [usize; 3] {
        [self.layers, self.conv_dim, self.conv_kernel]
    }

    fn ssm_dims(&self) -> [usize; 4] {
        [self.layers, self.heads, self.head_dim, self.d_state]
    }
}

/// A model's recurrent state after some number of tokens.
///
/// Per layer: the conv state `[conv_dim, K]` (the last K raw xBC inputs, oldest first) and the
/// ssm state `[H, P, N]`. Cloning a state forks the stream; [`State::save`] and [`State::load`]
/// carry it across processes.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    shape: StateShape,
    conv: Vec<f32>, // [L, conv_dim, K]
    ssm: Vec<f32>,  // [L, H, P, N]
    position: u64,
}

const FORMAT: &str = "coil-state";
const VERSION: &str = "1";

impl State {
    /// The state before any token: all zeros.
    pub fn new(shape: StateShape) -> State {
        State {
            shape,
            conv: vec![0.0; shape.layers * shape.conv_len()],
            ssm: vec![0.0; shape.layers * shape.ssm_len()],
            position: 0,
        }
    }

    pub fn shape(&self) -> StateShape {
        self.shape
    }

    /// Tokens consumed since the stream began.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.position += tokens as u64;
    }

    /// All layers' conv states, `[L, conv_dim, K]`.
    pub fn conv(&self) -> &[f32] {
        &self.conv
    }

    /// All layers' ssm states, `[L, H, P, N]`.
    pub fn ssm(&self) -> &[f32] {
        &self.ssm
    }

    /// Layer `i`'s conv state `[conv_dim, K]` and ssm state `[H, P, N]`.
    pub fn layer_mut(&mut self, i: usize) -> (&mut [f32], &mut [f32]) {
        let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
        (&mut self.conv[i * c..(i + 1) * c], &mut self.ssm[i * s..(i + 1) * s])
    }

    /// Layer `i`'s ssm state `[H, P, N]`.
    pub fn ssm_layer(&self, i: usize) -> &[f32] {
        let s = self.shape.ssm_len();
        &self.ssm[i * s..(i + 1) * s]
    }

    /// Overwrites this state with `other` (a snapshot taken earlier), reusing the allocation.
    pub fn restore(&mut self, other: &State) -> Result<(), Error> {
        self.check_shape(other.shape)?;
        self.conv.copy_from_slice(&other.conv);
        self.ssm.copy_from_slice(&other.ssm);
        self.position = other.position;
        Ok(())
    }

    pub(crate) fn check_shape(&self, expected: StateShape) -> Result<(), Error> {
        if self.shape == expected {
            Ok(())
        } else {
            Err(Error::StateMismatch { message: format!("state has {:?}, the model needs {expected:?}", self.shape) })
        }
    }

    /// The first layer holding a non-finite value, if any.
    pub fn first_non_finite_layer(&self) -> Option<usize> {
        (0..self.shape.layers).find(|&i| {
            let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
            self.conv[i * c..(i + 1) * c].iter().chain(&self.ssm[i * s..(i + 1) * s]).any(|v| !v.is_finite())
        })
    }

    /// Writes the state as safetensors (`conv_states [L, conv_dim, K]`, `ssm_states [L, H, P, N]`,
    /// the position and shape in the header's metadata). The file is written beside its final
    /// name and renamed into place, so a killed process never leaves a torn state file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let file_error = |message: String| Error::StateFile { path: path.to_owned(), message };
        let conv_bytes = f32_bytes(&self.conv);
        let ssm_bytes = f32_bytes(&self.ssm);
        let conv = TensorView::new(Dtype::F32, self.shape.conv_dims().to_vec(), &conv_bytes).map_err(|e| file_error(e.to_string()))?;
        let ssm = TensorView::new(Dtype::F32, self.shape.ssm_dims().to_vec(), &ssm_bytes).map_err(|e| file_error(e.to_string()))?;
        let s = self.shape;
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_owned()),
            ("version", VERSION.to_owned()),
            ("position", self.position.to_string()),
            ("layers", s.layers.to_string()),
            ("conv_dim", s.conv_dim.to_string()),
            ("conv_kernel", s.conv_kernel.to_string()),
            ("heads", s.heads.to_string()),
            ("head_dim", s.head_dim.to_string()),
            ("d_state", s.d_state.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let bytes = safetensors::serialize([("conv_states", conv), ("ssm_states", ssm)], Some(metadata))
            .map_err(|e| file_error(e.to_string()))?;
        write_atomically(path, &bytes).map_err(|e| file_error(e.to_string()))
    }

    /// Reads a state written by [`State::save`], checking it against the model's shape.
    pub fn load(path: &Path, expected: StateShape) -> Result<State, Error> {
        let file_error = |message: String| Error::StateFile { path: path.to_owned(), message };
        let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| file_error(format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| file_error(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(file_error("not a Coil state file (metadata `format` is not `coil-state`)".into()));
        }
        let position = meta
            .get("position")
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| file_error("metadata `position` is missing or not a number".into()))?;
        let read = |name: &str, dims: &[usize]| -> Result<Vec<f32>, Error> {
            let view = tensors.tensor(name).map_err(|_| file_error(format!("tensor `{name}` is missing")))?;
            if view.dtype() != Dtype::F32 {
                return Err(file_error(format!("tensor `{name}` has dtype {:?}, expected F32", view.dtype())));
            }
            if view.shape() != dims {
                return Err(Error::StateMismatch {
                    message: format!("{}: tensor `{name}` has shape {:?}, this model needs {dims:?}", path.display(), view.shape()),
                });
            }
            let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(file_error(format!("tensor `{name}` holds a non-finite value at flat index {i}")));
            }
            Ok(values)
        };
        let conv = read("conv_states", &expected.conv_dims())?;
        let ssm = read("ssm_states", &expected.ssm_dims())?;
        Ok(State { shape: expected, conv, ssm, position })
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = PathBuf::from(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    temporary.set_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
