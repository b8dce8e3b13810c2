//! The recurrent state: all a model carries from one token to the next. Always f32.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use std::sync::OnceLock;

use coil_kernels::{Buffer, Engine, HostArray, ViewMut};

use crate::{Config, Error};

/// The sizes a state must have to belong to a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateShape {
    /// Layers (`n_layer`).
    pub layers: usize,
    /// Channels of the causal conv: `d_inner + 2 * n_groups * d_state`.
    pub conv_dim: usize,
    /// The conv kernel's width `K`.
    pub conv_kernel: usize,
    /// SSM heads per layer, `H`.
    pub heads: usize,
    /// Channels per head, `P`.
    pub head_dim: usize,
    /// State size per channel, `N`.
    pub d_state: usize,
}

impl StateShape {
    /// The state sizes of a model with `config`.
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
///
/// The state lives where its model computes (a GPU's memory, for a model on a GPU): a forward
/// pass moves it there once, and [`State::conv`], [`State::ssm`] and the diagnostics read it back
/// once after each change. Cloning a state on a device copies it on the device.
#[derive(Clone, Debug)]
pub struct State {
    shape: StateShape,
    // In host memory, both in huge pages when large (decode reads and writes the whole ssm state
    // every token), and zeros written, not mapped, when new (see `HostArray::zeroed`).
    conv: Buffer, // [L, conv_dim, K]
    ssm: Buffer,  // [L, H, P, N]
    /// Host copies of `conv` and `ssm` when they live on a device, made when first read after a
    /// change.
    on_host: OnceLock<[HostArray<f32>; 2]>,
    position: u64,
    /// `[L, H]` running sum of `log(alpha)` over every token so far, in f64: the retention of the
    /// stream's first input is its exponential, and window retractions read differences of it.
    log_decay_total: Vec<f64>,
    /// The sliding window's lagged inputs, one ring per windowed layer.
    window: Option<WindowState>,
    /// Per layer and head dt and decay statistics, when diagnostics are on.
    stats: Option<Vec<HeadStats>>,
    /// [`crate::Model::fingerprint`] of the model the state was made for, when known: saved with
    /// the state, so [`crate::Model::load_state`] can refuse another model's state of the same shape.
    model: Option<u64>,
}

/// dt and decay statistics of one head since they were last taken ([`State::take_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeadStats {
    /// Tokens these statistics cover.
    pub tokens: u64,
    /// Sum of `dt` over those tokens (after the bias, softplus and clamp).
    pub dt_sum: f64,
    /// Smallest `dt`.
    pub dt_min: f32,
    /// Largest `dt`.
    pub dt_max: f32,
    /// Sum of `alpha = exp(dt * A + offset)`.
    pub decay_sum: f64,
}

impl HeadStats {
    pub(crate) fn record(&mut self, dt: f32, log_decay: f32) {
        if self.tokens == 0 {
            (self.dt_min, self.dt_max) = (dt, dt);
        }
        self.tokens += 1;
        self.dt_sum += dt as f64;
        self.dt_min = self.dt_min.min(dt);
        self.dt_max = self.dt_max.max(dt);
        self.decay_sum += (log_decay as f64).exp();
    }
}

/// The window mitigation's memory: for each windowed layer, the inputs the state still holds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WindowState {
    pub size: u64,
    pub granularity: u64,
    pub rings: Vec<Option<Ring>>, // per layer
}

/// The last inputs of one layer, oldest first: `dt*x [I]`, `B [G*N]` as written, and the running
/// The longest window (size + granularity, in tokens) a state takes: 2^40, as long as the longest
/// passkey length; the ring grows only as inputs arrive, so a long window costs nothing up front.
pub(crate) const MAX_WINDOW_SPAN: u64 = 1 << 40;

/// log-decay sum through each token `[H]` (f64).
#[derive(Clone, Debug)]
pub(crate) struct Ring {
    capacity: usize,
    inner: usize,
    bc: usize,
    heads: usize,
    first: usize,
    len: usize,
    /// Stream position of the oldest entry.
    pub oldest_position: u64,
    xdt: Vec<f32>,
    b: Vec<f32>,
    log_cum: Vec<f64>,
}

impl Ring {
    pub(crate) fn new(capacity: usize, inner: usize, bc: usize, heads: usize, position: u64) -> Ring {
        Ring {
            capacity,
            inner,
            bc,
            heads,
            first: 0,
            len: 0,
            oldest_position: position,
            // Grown as inputs arrive: a window far longer than the stream costs nothing, and a
            // state file cannot make us allocate more than it holds.
            xdt: Vec::new(),
            b: Vec::new(),
            log_cum: Vec::new(),
        }
    }

    /// Appends one token's entries; the window logic never lets the ring overflow.
    pub fn push(&mut self, xdt: &[f32], b: &[f32], log_cum: &[f64]) {
        assert!(self.len < self.capacity, "window ring overflow");
        let slot = (self.first + self.len) % self.capacity;
        if slot * self.inner == self.xdt.len() {
            // Slots fill in order until the buffer first wraps, so a new slot is always the next.
            self.xdt.extend_from_slice(xdt);
            self.b.extend_from_slice(b);
            self.log_cum.extend_from_slice(log_cum);
        } else {
            self.xdt[slot * self.inner..(slot + 1) * self.inner].copy_from_slice(xdt);
            self.b[slot * self.bc..(slot + 1) * self.bc].copy_from_slice(b);
            self.log_cum[slot * self.heads..(slot + 1) * self.heads].copy_from_slice(log_cum);
        }
        self.len += 1;
    }

    /// Copies the oldest `count` entries out (contiguous, oldest first) and forgets them.
    pub fn pop_oldest(&mut self, count: usize, xdt: &mut Vec<f32>, b: &mut Vec<f32>, log_cum: &mut Vec<f64>) {
        assert!(count <= self.len, "window ring underflow");
        xdt.clear();
        b.clear();
        log_cum.clear();
        for i in 0..count {
            let slot = (self.first + i) % self.capacity;
            xdt.extend_from_slice(&self.xdt[slot * self.inner..(slot + 1) * self.inner]);
            b.extend_from_slice(&self.b[slot * self.bc..(slot + 1) * self.bc]);
            log_cum.extend_from_slice(&self.log_cum[slot * self.heads..(slot + 1) * self.heads]);
        }
        self.first = (self.first + count) % self.capacity;
        self.len -= count;
        self.oldest_position += count as u64;
    }

    /// Entries oldest first, as `(xdt, b, log_cum)` rows.
    fn rows(&self) -> impl Iterator<Item = (&[f32], &[f32], &[f64])> {
        (0..self.len).map(move |i| {
            let slot = (self.first + i) % self.capacity;
            (
                &self.xdt[slot * self.inner..(slot + 1) * self.inner],
                &self.b[slot * self.bc..(slot + 1) * self.bc],
                &self.log_cum[slot * self.heads..(slot + 1) * self.heads],
            )
        })
    }
}

/// Rings are equal when they hold the same entries, wherever in the buffer they sit.
impl PartialEq for Ring {
    fn eq(&self, other: &Ring) -> bool {
        self.capacity == other.capacity
            && self.oldest_position == other.oldest_position
            && self.len == other.len
            && self.rows().eq(other.rows())
    }
}

/// One layer's part of a [`State`], for the forward pass.
pub(crate) struct LayerState<'a> {
    pub conv: ViewMut<'a>,
    pub ssm: ViewMut<'a>,
    pub log_decay_total: &'a mut [f64],
    pub ring: Option<&'a mut Ring>,
    pub stats: Option<&'a mut [HeadStats]>,
    /// Where a device engine may leave this pass's log-decay sums `[H]` for the model to add to
    /// `log_decay_total` after the pass.
    pub deferred_decay: Option<ViewMut<'a>>,
}

const FORMAT: &str = "coil-state";
/// The state file format [`State::save`] writes: version 2 names its model (metadata `model`);
/// version 1 (still read) did not.
const VERSION: &str = "2";

impl PartialEq for State {
    /// Equal values, wherever they live.
    fn eq(&self, other: &State) -> bool {
        self.shape == other.shape
            && self.position == other.position
            && self.conv() == other.conv()
            && self.ssm() == other.ssm()
            && self.log_decay_total == other.log_decay_total
            && self.window == other.window
            && self.stats == other.stats
            && self.model == other.model
    }
}

impl State {
    /// The state before any token: all zeros.
    pub fn new(shape: StateShape) -> State {
        State {
            shape,
            conv: Buffer::host_zeros(shape.layers * shape.conv_len()),
            ssm: Buffer::host_zeros(shape.layers * shape.ssm_len()),
            on_host: OnceLock::new(),
            position: 0,
            log_decay_total: vec![0.0; shape.layers * shape.heads],
            window: None,
            stats: None,
            model: None,
        }
    }

    /// This state made for the model with `fingerprint`.
    pub(crate) fn for_model(mut self, fingerprint: u64) -> State {
        self.model = Some(fingerprint);
        self
    }

    /// [`crate::Model::fingerprint`] of the model this state was made for (or saved by), when
    /// known: `None` for a state made by [`State::new`] or read from a file that does not say.
    pub fn model_fingerprint(&self) -> Option<u64> {
        self.model
    }

    /// Prepares the window mitigation's lagged inputs for the layers `layers` says are on (a
    /// state must start its stream with the window to be able to take inputs back out). A state
    /// that has them already is checked without allocating: every pass prepares its states.
    pub(crate) fn attach_window(&mut self, size: u64, granularity: u64, layers: impl Iterator<Item = bool> + Clone) -> Result<(), Error> {
        // The state of any token spans at most R + Q - 1 inputs; one more slot is pushed before
        // the oldest are dropped at a window move.
        let Some(capacity) = size.checked_add(granularity).filter(|&c| c <= MAX_WINDOW_SPAN).map(|c| c as usize) else {
            return Err(Error::Mitigation {
                spec: format!("window:size={size},granularity={granularity}"),
                message: format!("size + granularity must be at most {MAX_WINDOW_SPAN} tokens (2^40)"),
            });
        };
        let listed = |on: &mut dyn Iterator<Item = bool>| -> String {
            let layers: Vec<String> = on.enumerate().filter(|&(_, on)| on).map(|(l, _)| l.to_string()).collect();
            if layers.is_empty() { "no layer".into() } else { format!("layers {}", layers.join(",")) }
        };
        match &self.window {
            Some(w) if w.size == size && w.granularity == granularity => {
                if w.rings.iter().map(Option::is_some).eq(layers.clone()) {
                    return Ok(());
                }
                return Err(Error::StateMismatch {
                    message: format!(
                        "the state carries a window on {}, but this run's window is on {}",
                        listed(&mut w.rings.iter().map(Option::is_some)),
                        listed(&mut layers.clone())
                    ),
                });
            }
            Some(w) => {
                return Err(Error::StateMismatch {
                    message: format!("the state carries a window of size {} granularity {}, not {size}/{granularity}", w.size, w.granularity),
                })
            }
            None if self.position > 0 => {
                return Err(Error::StateMismatch {
                    message: "the window mitigation must run from the start of the stream: this state has no window history".into(),
                })
            }
            None => {}
        }
        let s = self.shape;
        let (inner, bc) = (s.heads * s.head_dim, (s.conv_dim - s.heads * s.head_dim) / 2);
        let rings = layers.map(|on| on.then(|| Ring::new(capacity, inner, bc, s.heads, 0))).collect();
        self.window = Some(WindowState { size, granularity, rings });
        Ok(())
    }

    /// Whether the state carries window history.
    pub fn has_window(&self) -> bool {
        self.window.is_some()
    }

    /// Turns dt/decay statistics on (or off); see [`State::take_stats`].
    pub fn record_stats(&mut self, on: bool) {
        self.stats = on.then(|| vec![HeadStats::default(); self.shape.layers * self.shape.heads]);
    }

    /// `[L][H]` statistics since the last call, which starts a new interval.
    pub fn take_stats(&mut self) -> Option<Vec<Vec<HeadStats>>> {
        let heads = self.shape.heads;
        self.stats.as_mut().map(|stats| {
            let taken = stats.chunks(heads).map(<[HeadStats]>::to_vec).collect();
            stats.iter_mut().for_each(|s| *s = HeadStats::default());
            taken
        })
    }

    /// `[L][H]` running sum of `log(alpha)` over the stream: `exp` of it is how much of the first
    /// token's input is left.
    pub fn log_retention(&self) -> Vec<Vec<f64>> {
        self.log_decay_total.chunks(self.shape.heads).map(<[f64]>::to_vec).collect()
    }

    /// `[L][H]` Frobenius norm of each head's `[P, N]` state.
    pub fn head_norms(&self) -> Vec<Vec<f32>> {
        let head_len = self.shape.head_dim * self.shape.d_state;
        self.ssm()
            .chunks(self.shape.ssm_len())
            .map(|layer| layer.chunks(head_len).map(|h| h.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32).collect())
            .collect()
    }

    /// The sizes this state was made for.
    pub fn shape(&self) -> StateShape {
        self.shape
    }

    /// Tokens consumed since the stream began.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Adds `sums` (`[L, H]`, one pass's log-decay sums) to the running totals.
    pub(crate) fn add_log_decay(&mut self, sums: &[f32]) {
        self.log_decay_total.iter_mut().zip(sums).for_each(|(total, &sum)| *total += sum as f64);
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.position += tokens as u64;
    }

    /// All layers' conv states, `[L, conv_dim, K]`.
    pub fn conv(&self) -> &[f32] {
        match &self.conv {
            Buffer::Host(values) => values,
            Buffer::Device(_) => &self.host_copies()[0],
        }
    }

    /// All layers' ssm states, `[L, H, P, N]`.
    pub fn ssm(&self) -> &[f32] {
        match &self.ssm {
            Buffer::Host(values) => values,
            Buffer::Device(_) => &self.host_copies()[1],
        }
    }

    fn host_copies(&self) -> &[HostArray<f32>; 2] {
        self.on_host.get_or_init(|| [self.conv.to_host(), self.ssm.to_host()])
    }

    /// The conv and ssm arrays, where they live.
    pub(crate) fn buffers(&self) -> (&Buffer, &Buffer) {
        (&self.conv, &self.ssm)
    }

    /// Moves the state where `engine` computes (once: a state stays where it was last used).
    pub(crate) fn place(&mut self, engine: &dyn Engine) {
        engine.adopt(&mut self.conv);
        engine.adopt(&mut self.ssm);
    }

    /// Layer `i`'s part of the state.
    pub(crate) fn layer_mut(&mut self, i: usize) -> LayerState<'_> {
        let (c, s, h) = (self.shape.conv_len(), self.shape.ssm_len(), self.shape.heads);
        self.on_host = OnceLock::new();
        LayerState {
            conv: self.conv.slice_mut(i * c..(i + 1) * c),
            ssm: self.ssm.slice_mut(i * s..(i + 1) * s),
            log_decay_total: &mut self.log_decay_total[i * h..(i + 1) * h],
            ring: self.window.as_mut().and_then(|w| w.rings[i].as_mut()),
            stats: self.stats.as_mut().map(|stats| &mut stats[i * h..(i + 1) * h]),
            deferred_decay: None,
        }
    }

    /// Layer `i`'s ssm state `[H, P, N]`.
    pub fn ssm_layer(&self, i: usize) -> &[f32] {
        let s = self.shape.ssm_len();
        &self.ssm()[i * s..(i + 1) * s]
    }

    /// Overwrites this state with `other` (a snapshot taken earlier), reusing the allocation.
    pub fn restore(&mut self, other: &State) -> Result<(), Error> {
        self.check_shape(other.shape)?;
        for (mine, theirs) in [(&mut self.conv, &other.conv), (&mut self.ssm, &other.ssm)] {
            match (mine, theirs) {
                (Buffer::Host(mine), Buffer::Host(theirs)) => mine.copy_from_slice(theirs),
                (mine, theirs) => *mine = theirs.clone(),
            }
        }
        self.on_host = other.on_host.clone();
        self.log_decay_total.copy_from_slice(&other.log_decay_total);
        self.window.clone_from(&other.window);
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
            self.conv()[i * c..(i + 1) * c].iter().chain(&self.ssm()[i * s..(i + 1) * s]).any(|v| !v.is_finite())
        })
    }

    /// [`State::first_non_finite_layer`], asked of the engine where the state lives.
    pub(crate) fn first_non_finite_layer_in(&self, engine: &dyn Engine) -> Option<usize> {
        // One check of each whole array (a device answers each with one read); the layer is
        // looked for only when one fails.
        if !engine.any_non_finite(self.conv.view()) && !engine.any_non_finite(self.ssm.view()) {
            return None;
        }
        let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
        (0..self.shape.layers).find(|&i| {
            engine.any_non_finite(self.conv.slice(i * c..(i + 1) * c)) || engine.any_non_finite(self.ssm.slice(i * s..(i + 1) * s))
        })
    }

    /// Writes the state as safetensors (`conv_states [L, conv_dim, K]`, `ssm_states [L, H, P, N]`,
    /// `log_decay_total [L, H]` f64, the window's lagged inputs when it has them; the position
    /// and shape in the header's metadata). The file is written beside its final name and renamed
    /// into place, so a killed process never leaves a torn state file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let file_error = |message: String| Error::StateFile { path: path.to_owned(), message };
        let s = self.shape;
        let mut metadata: HashMap<String, String> = [
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
        if let Some(model) = self.model {
            metadata.insert("model".into(), format!("{model:016x}"));
        }
        // (name, dtype, shape, bytes)
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("conv_states".into(), Dtype::F32, s.conv_dims().to_vec(), f32_bytes(self.conv())),
            ("ssm_states".into(), Dtype::F32, s.ssm_dims().to_vec(), f32_bytes(self.ssm())),
            ("log_decay_total".into(), Dtype::F64, vec![s.layers, s.heads], f64_bytes(&self.log_decay_total)),
        ];
        if let Some(window) = &self.window {
            metadata.insert("window_size".into(), window.size.to_string());
            metadata.insert("window_granularity".into(), window.granularity.to_string());
            let mut layers = Vec::new();
            for (l, ring) in window.rings.iter().enumerate() {
                let Some(ring) = ring else { continue };
                layers.push(l.to_string());
                metadata.insert(format!("window.{l}.oldest"), ring.oldest_position.to_string());
                let (mut xdt, mut b, mut log_cum) = (Vec::new(), Vec::new(), Vec::new());
                for (x_row, b_row, l_row) in ring.rows() {
                    xdt.extend_from_slice(x_row);
                    b.extend_from_slice(b_row);
                    log_cum.extend_from_slice(l_row);
                }
                tensors.push((format!("window.{l}.xdt"), Dtype::F32, vec![ring.len, ring.inner], f32_bytes(&xdt)));
                tensors.push((format!("window.{l}.b"), Dtype::F32, vec![ring.len, ring.bc], f32_bytes(&b)));
                tensors.push((format!("window.{l}.log_cum"), Dtype::F64, vec![ring.len, ring.heads], f64_bytes(&log_cum)));
            }
            metadata.insert("window_layers".into(), layers.join(","));
        }
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(e.to_string()))?;
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| file_error(e.to_string()))?;
        let bytes = sorted_header(&bytes).map_err(file_error)?;
        coil_files::write_atomically(path, |temporary| std::fs::write(temporary, &bytes)).map_err(|e| file_error(e.to_string()))
    }

    /// Reads a state written by [`State::save`], checking it against the model's shape
    /// ([`crate::Model::load_state`] also checks that the state is that model's).
    pub fn load(path: &Path, expected: StateShape) -> Result<State, Error> {
        let file_error = |message: String| Error::StateFile { path: path.to_owned(), message };
        // A state is a file `save` wrote: a device or pipe (read without end) is refused.
        if !std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?.is_file() {
            return Err(file_error("not a regular file".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| file_error(format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| file_error(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(file_error("not a Coil state file (metadata `format` is not `coil-state`)".into()));
        }
        let version = meta.get("version").map_or("1", String::as_str);
        if version != "1" && version != VERSION {
            return Err(file_error(format!("state format version {version}; this build reads versions 1 and {VERSION}")));
        }
        let number = |key: &str| -> Result<u64, Error> {
            meta.get(key).and_then(|p| p.parse::<u64>().ok()).ok_or_else(|| file_error(format!("metadata `{key}` is missing or not a number")))
        };
        let position = number("position")?;
        // Raw little-endian values of a tensor with the given dtype and shape.
        let read = |name: &str, dtype: Dtype, dims: &[usize]| -> Result<&[u8], Error> {
            let view = tensors.tensor(name).map_err(|_| file_error(format!("tensor `{name}` is missing")))?;
            if view.dtype() != dtype {
                return Err(file_error(format!("tensor `{name}` has dtype {:?}, expected {dtype:?}", view.dtype())));
            }
            if view.shape() != dims {
                return Err(Error::StateMismatch {
                    message: format!("{}: tensor `{name}` has shape {:?}, this model needs {dims:?}", path.display(), view.shape()),
                });
            }
            Ok(view.data())
        };
        // Decoded straight into `out` (`dims`' product of values), so the state's own arrays are
        // filled in place rather than replaced by copies.
        let finite_f32_into = |name: &str, dims: &[usize], out: &mut [f32]| -> Result<(), Error> {
            for (i, (o, b)) in out.iter_mut().zip(read(name, Dtype::F32, dims)?.chunks_exact(4)).enumerate() {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !o.is_finite() {
                    return Err(file_error(format!("tensor `{name}` holds a non-finite value at flat index {i}")));
                }
            }
            Ok(())
        };
        let finite_f32 = |name: &str, dims: &[usize]| -> Result<Vec<f32>, Error> {
            let mut values = vec![0.0; dims.iter().product()];
            finite_f32_into(name, dims, &mut values)?;
            Ok(values)
        };
        let finite_f64 = |name: &str, dims: &[usize]| -> Result<Vec<f64>, Error> {
            let values: Vec<f64> = read(name, Dtype::F64, dims)?.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
            match values.iter().position(|v| !v.is_finite()) {
                Some(i) => Err(file_error(format!("tensor `{name}` holds a non-finite value at flat index {i}"))),
                None => Ok(values),
            }
        };
        let s = expected;
        let mut state = State::new(s);
        state.model = match meta.get("model") {
            Some(hex) if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(u64::from_str_radix(hex, 16).expect("sixteen hex digits"))
            }
            Some(hex) => return Err(file_error(format!("metadata `model` is `{hex}`, not a model fingerprint (16 hex digits)"))),
            None if version == "1" => None,
            None => return Err(file_error(format!("metadata `model` is missing (a version {version} state names its model)"))),
        };
        state.position = position;
        finite_f32_into("conv_states", &s.conv_dims(), state.conv.view_mut().host())?;
        finite_f32_into("ssm_states", &s.ssm_dims(), state.ssm.view_mut().host())?;
        state.log_decay_total = finite_f64("log_decay_total", &[s.layers, s.heads])?;
        if meta.contains_key("window_size") {
            let (size, granularity) = (number("window_size")?, number("window_granularity")?);
            if size == 0 || granularity == 0 || size.checked_add(granularity).is_none_or(|c| c > MAX_WINDOW_SPAN) {
                return Err(file_error("window size or granularity out of range".into()));
            }
            let listed = meta.get("window_layers").map(String::as_str).unwrap_or("");
            let mut on = vec![false; s.layers];
            for item in listed.split(',').filter(|i| !i.is_empty()) {
                match item.parse::<usize>() {
                    Ok(l) if l < s.layers && !on[l] => on[l] = true,
                    _ => return Err(file_error(format!("metadata `window_layers` names `{item}`: not a layer of this model, or twice"))),
                }
            }
            state.position = 0; // attach_window requires the start of a stream
            state.attach_window(size, granularity, on.iter().copied())?;
            state.position = position;
            let window = state.window.as_mut().expect("just attached");
            for (l, ring) in window.rings.iter_mut().enumerate() {
                let Some(ring) = ring else { continue };
                let len = tensors.tensor(&format!("window.{l}.xdt")).map(|v| v.shape().first().copied().unwrap_or(0)).unwrap_or(0);
                if len > ring.capacity {
                    return Err(file_error(format!("window layer {l} holds {len} inputs, more than its capacity {}", ring.capacity)));
                }
                let xdt = finite_f32(&format!("window.{l}.xdt"), &[len, ring.inner])?;
                let b = finite_f32(&format!("window.{l}.b"), &[len, ring.bc])?;
                let log_cum = finite_f64(&format!("window.{l}.log_cum"), &[len, ring.heads])?;
                ring.oldest_position = number(&format!("window.{l}.oldest"))?;
                // The ring holds exactly the inputs from the window's start to the last token.
                let expected = if position == 0 { 0 } else { crate::mitigation::WindowPlan { size, granularity }.start(position - 1) };
                if ring.oldest_position != expected || position.checked_sub(ring.oldest_position) != Some(len as u64) {
                    return Err(file_error(format!(
                        "window layer {l} holds the inputs of tokens {}..{} (`window.{l}.oldest` and `window.{l}.xdt`), but a \
                         window of size {size} and granularity {granularity} at position {position} holds tokens {expected}..{position}",
                        ring.oldest_position,
                        ring.oldest_position.saturating_add(len as u64),
                    )));
                }
                for i in 0..len {
                    ring.push(&xdt[i * ring.inner..(i + 1) * ring.inner], &b[i * ring.bc..(i + 1) * ring.bc], &log_cum[i * ring.heads..(i + 1) * ring.heads]);
                }
            }
        }
        Ok(state)
    }
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}


/// A safetensors file with its header's keys sorted. safetensors writes the metadata from a
/// `HashMap`, in another order each run; sorted, one state always gives the same bytes.
fn sorted_header(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let header = header_len.and_then(|n| bytes.get(8..8usize.checked_add(n)?)).ok_or("safetensors wrote a short header")?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| format!("safetensors wrote a bad header: {e}"))?;
    let mut out = coil_files::safetensors_header(&value);
    out.extend_from_slice(&bytes[8 + header.len()..]);
    Ok(out)
}
