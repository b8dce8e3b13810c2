//! The model: immutable weights and the forward pass. Everything that changes lives in a
//! [`State`], so one `Model` serves any number of streams and threads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use coil_files::Fnv1a;
use coil_checkpoints::{Checkpoint, Weights};
use coil_kernels::{Backend, Buffer, Cpu, Engine, HostEngine, Matrix, Traffic, View, ViewMut, WeightDtype};

use crate::mixer::{Activations, Block, Dims, HostScratch, Param};
use crate::mitigation::Plan;
use crate::{Config, Error, State, StateShape};

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None: only the state moves on (the lm_head, the costliest matmul, is skipped).
    None,
    /// The last position's, `[V]`.
    Last,
    /// Every position's, `[T, V]`.
    All,
}

/// Tokens a model has run, by kind of pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokensRun {
    /// Tokens fed in passes of a prompt or a scored text (any length, one included).
    pub prefill: u64,
    /// Tokens fed as decode steps ([`Model::step`], [`Model::step_batch`], `Session::step`).
    pub decode: u64,
}

/// Which kind of pass a forward is, for [`TokensRun`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Prefill,
    Decode,
}

/// A Mamba-2 language model, ready to run on one backend.
pub struct Model {
    config: Config,
    dims: Dims,
    /// The backend's engine: its ops on buffers where it computes.
    engine: Arc<dyn Engine>,
    embedding: Matrix, // [V, D]
    blocks: Vec<Block>,
    norm_f: Param,
    lm_head: Option<Matrix>, // [V, D]; None = tied to the embedding
    chunk_size: Option<usize>, // set explicitly; else the backend's choice or the checkpoint's
    parameters: usize,
    /// See [`Model::fingerprint`].
    fingerprint: u64,
    plain: Plan,
    /// Buffers of the batched passes, kept between calls (a batch step would otherwise have
    /// the kernel zero megabytes of fresh pages every token).
    batch_buffers: std::sync::Mutex<Vec<Workspace>>,
    prefill_tokens: AtomicU64,
    decode_tokens: AtomicU64,
}

/// The token sequences of a batch, one per state.
trait Sequences: Sync {
    fn count(&self) -> usize;
    fn sequence(&self, i: usize) -> &[u32];
}

impl<S: AsRef<[u32]> + Sync> Sequences for [S] {
    fn count(&self) -> usize {
        self.len()
    }

    fn sequence(&self, i: usize) -> &[u32] {
        self[i].as_ref()
    }
}

/// One token per state (a batched decode step).
struct OneEach<'a>(&'a [u32]);

impl Sequences for OneEach<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn sequence(&self, i: usize) -> &[u32] {
        std::slice::from_ref(&self.0[i])
    }
}

/// Buffers for a forward pass, reused between calls of any length and batch, where the engine
/// computes; only the logits are on the host.
pub(crate) struct Workspace {
    hidden: Buffer,
    act: Activations,
    normed: Buffer,
    /// Each sequence's last row, gathered (a batch's logits rows).
    last: Buffer,
    /// A batch's ids, sequence after sequence.
    ids: Vec<u32>,
    /// One per sequence: their scans may run at once.
    scratch: Vec<HostScratch>,
    pub(crate) logits: Vec<f32>,
    /// On a device: the logits before they come back, and what else a pass reads back (each
    /// layer's log-decay sums and the finiteness flags), there and on the host.
    device_logits: Buffer,
    results: Buffer,
    results_host: Vec<f32>,
}

impl Workspace {
    /// On a device, at the end of a pass: the logits of `rows` rows of `self.normed` under `head`
    /// into `logits`, and `self.results` into `self.results_host`, in one read. Logits past one
    /// device buffer (many rows of a large vocabulary) come back in blocks of rows, a read each.
    fn read_back(&mut self, engine: &dyn Engine, head: &Matrix, rows: usize, logits: &mut Vec<f32>) {
        logits.resize(rows * head.rows(), 0.0);
        let together = rows > 0 && logits.len() <= engine.max_buffer();
        if together {
            engine.resize(&mut self.device_logits, logits.len());
            engine.linear(self.normed.view(), head, None, self.device_logits.view_mut());
        } else if rows > 0 {
            engine.linear(self.normed.view(), head, None, ViewMut::Host(logits));
        }
        self.results_host.resize(self.results.len(), 0.0);
        let results = (self.results.view(), &mut self.results_host[..]);
        if together {
            engine.download_all(&mut [results, (self.device_logits.view(), &mut logits[..])]);
        } else {
            engine.download_all(&mut [results]);
        }
    }

    fn resize(&mut self, engine: &dyn Engine, dims: &Dims, tokens: usize) {
        engine.resize(&mut self.hidden, tokens * dims.d_model);
        self.act.resize(engine, dims, tokens);
    }
}

impl Model {
    /// A model on the CPU backend from a loaded checkpoint.
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Model {
        Model::new(checkpoint.config, checkpoint.weights, Arc::new(Cpu))
    }

    /// `weights` must have been loaded for `config` (as [`Weights::load`] does).
    pub fn new(config: Config, weights: Weights, backend: Arc<dyn Backend>) -> Model {
        let dims = Dims::of(&config);
        let parameters = weights.parameter_count();
        let mut model = Model {
            plain: Plan::empty(),
            batch_buffers: Default::default(),
            prefill_tokens: AtomicU64::new(0),
            decode_tokens: AtomicU64::new(0),
            parameters,
            fingerprint: 0,
            chunk_size: None,
            dims,
            engine: engine_of(backend),
            embedding: Matrix::new(weights.embedding, config.vocab_size, config.d_model),
            blocks: weights.layers.into_iter().map(|layer| Block::new(layer, &dims)).collect(),
            norm_f: Param::new(weights.norm_f),
            lm_head: weights.lm_head.map(|head| Matrix::new(head, config.vocab_size, config.d_model)),
            config,
        };
        model.plain = Plan::plain(&model);
        model.fingerprint = model.compute_fingerprint();
        model.place_parameters();
        model
    }

    /// Copies the small parameters where the engine computes.
    fn place_parameters(&mut self) {
        for block in &mut self.blocks {
            block.place(&*self.engine);
        }
        self.norm_f.place(&*self.engine);
    }

    /// A 64-bit FNV-1a hash of the state's shape and of the per-head parameters every token's
    /// recurrence depends on (each layer's A_log, D and dt_bias) and the final norm: two models
    /// whose states are interchangeable share it; two checkpoints that only share their shapes
    /// (another seed, another training run) almost surely do not. Unchanged by the weight dtype
    /// ([`Model::with_weight_dtype`] converts only the matrices) and the backend.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn compute_fingerprint(&self) -> u64 {
        let s = self.state_shape();
        let sizes = [s.layers, s.conv_dim, s.conv_kernel, s.heads, s.head_dim, s.d_state, self.config.d_model];
        let hash = sizes.iter().fold(Fnv1a::default(), |hash, &n| hash.write(&(n as u64).to_le_bytes()));
        let values = self.blocks.iter().flat_map(|b| [b.a_log(), b.d(), b.dt_bias()]).chain([self.norm_f.host()]);
        values.flatten().fold(hash, |hash, v| hash.write(&v.to_bits().to_le_bytes())).finish()
    }

    /// Reads a state saved by [`State::save`], refusing one of another shape, or one saved by
    /// another model (a file that names a different [`Model::fingerprint`]).
    pub fn load_state(&self, path: &std::path::Path) -> Result<State, Error> {
        let state = State::load(path, self.state_shape())?;
        self.check_model(&state).map_err(|message| Error::StateMismatch { message: format!("{}: {message}", path.display()) })?;
        Ok(state)
    }

    /// Refuses a state made for (or saved by) another model: its shapes may agree, but not the
    /// weights its recurrence depends on.
    fn check_model(&self, state: &State) -> Result<(), String> {
        match state.model_fingerprint() {
            Some(other) if other != self.fingerprint => Err(format!(
                "the state belongs to another model (fingerprint {other:016x}; this model's is {:016x}): the shapes agree \
                 but the weights its recurrence depends on differ",
                self.fingerprint
            )),
            _ => Ok(()),
        }
    }

    /// Runs on another backend (the naive [`coil_kernels::Reference`], say).
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Model {
        self.engine = engine_of(backend);
        self.place_parameters();
        // Buffers made for the old engine would be the wrong kind.
        self.batch_buffers = Default::default();
        self
    }

    /// Holds the weight matrices (projections, embedding, lm_head) as `dtype`: bf16 and f16 halve
    /// the memory and what decode reads per token; products still accumulate in f32. Converting
    /// to a 16-bit type rounds (to nearest even); a checkpoint stored in that type converts back
    /// exactly. bf16 has f32's range; f16 holds only ±65504, and a matrix with a value beyond it
    /// is [`Error::WeightRange`] (the other 16-bit type or f32 then holds it).
    pub fn with_weight_dtype(mut self, dtype: WeightDtype) -> Result<Model, Error> {
        for block in &mut self.blocks {
            block.convert_weights(dtype);
        }
        if self.embedding.dtype() != dtype {
            self.embedding = self.embedding.to_dtype(dtype);
        }
        if let Some(head) = self.lm_head.as_mut().filter(|h| h.dtype() != dtype) {
            *head = head.to_dtype(dtype);
        }
        // Only f16 can lose a value (the loader refuses non-finite weights): name the first
        // matrix that did.
        if dtype == WeightDtype::F16 {
            let layers = self.blocks.iter().enumerate().flat_map(|(layer, block)| {
                block.matrices().map(|(name, matrix)| (format!("layer {layer} {name}"), matrix))
            });
            let others = [("embedding", Some(&self.embedding)), ("lm_head", self.lm_head.as_ref())];
            let mut all = layers.chain(others.into_iter().filter_map(|(name, m)| Some((name.to_owned(), m?))));
            if let Some((matrix, _)) = all.find(|(_, m)| !m.is_finite()) {
                return Err(Error::WeightRange { dtype, matrix });
            }
        }
        Ok(self)
    }

    /// The dtype the weight matrices are held in.
    pub fn weight_dtype(&self) -> WeightDtype {
        self.embedding.dtype()
    }

    /// Bytes of the weight matrices as held (what decode reads per token, about).
    pub fn weight_bytes(&self) -> usize {
        self.blocks.iter().map(Block::matrix_bytes).sum::<usize>() + self.embedding.bytes() + self.lm_head.as_ref().map_or(0, Matrix::bytes)
    }

    /// Sets the SSD chunk length of prefill (default: the backend's preferred length, else the
    /// checkpoint's `chunk_size`). Any positive value gives the same results up to f32 rounding.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Model {
        self.chunk_size = Some(chunk_size.max(1));
        self
    }

    /// The SSD chunk length prefill runs with.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size.or_else(|| self.engine.preferred_chunk()).unwrap_or(self.config.chunk_size)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend_name(&self) -> &'static str {
        self.engine.name()
    }

    /// What the backend has launched and moved so far, for every model that runs on it.
    pub fn device_traffic(&self) -> Traffic {
        self.engine.traffic()
    }

    /// Tokens this model has run (in every state and session), prefill and decode apart.
    pub fn tokens_run(&self) -> TokensRun {
        TokensRun { prefill: self.prefill_tokens.load(Relaxed), decode: self.decode_tokens.load(Relaxed) }
    }

    fn count(&self, pass: Pass, tokens: usize) {
        let counter = match pass {
            Pass::Prefill => &self.prefill_tokens,
            Pass::Decode => &self.decode_tokens,
        };
        counter.fetch_add(tokens as u64, Relaxed);
    }

    /// Width of the logits (embedding rows, padding included).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Logit columns that are real tokens, for a tokenizer of `tokenizer_size` entries (if any):
    /// the smallest of the tokenizer, the declared unpadded vocabulary and the embedding, so
    /// padding rows are never sampled.
    pub fn vocab_limit(&self, tokenizer_size: Option<usize>) -> usize {
        let limit = self.config.vocab_size_unpadded.min(self.config.vocab_size);
        match tokenizer_size {
            Some(size) => size.min(limit).max(1),
            None => limit,
        }
    }

    pub fn state_shape(&self) -> StateShape {
        StateShape::of(&self.config)
    }

    /// A fresh, all-zero state for this model.
    pub fn new_state(&self) -> State {
        State::new(self.state_shape()).for_model(self.fingerprint)
    }

    /// Whether the output head is the embedding (no separate `lm_head.weight`).
    pub fn tied_embeddings(&self) -> bool {
        self.lm_head.is_none()
    }

    /// Weights in the model (the embedding counted once when tied).
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    /// Feeds `tokens` through the plain model from `state` (chunked SSD for more than one
    /// token), leaving the state after the last token, and returns the requested logits.
    pub fn forward(&self, state: &mut State, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, Error> {
        self.forward_with(&self.plain, state, tokens, rows)
    }

    /// [`Model::forward`] with mitigations (a [`Plan`] resolved for this model).
    pub fn forward_with(&self, plan: &Plan, state: &mut State, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, Error> {
        self.forward_pass(Pass::Prefill, plan, state, tokens, rows)
    }

    fn forward_pass(&self, pass: Pass, plan: &Plan, state: &mut State, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, Error> {
        let mut workspace = self.workspace(tokens.len());
        self.forward_in(pass, plan, state, tokens, rows, &mut workspace)?;
        Ok(std::mem::take(&mut workspace.logits))
    }

    /// The plan of the plain model.
    pub fn plain_plan(&self) -> &Plan {
        &self.plain
    }

    /// A fresh state ready for `plan` (with the window's history buffers when it has a window).
    pub fn new_state_for(&self, plan: &Plan) -> State {
        let mut state = self.new_state();
        self.prepare_state(plan, &mut state).expect("an empty state takes any plan");
        state
    }

    /// Checks that `state` fits this model and `plan`, adding what the plan needs.
    pub(crate) fn prepare_state(&self, plan: &Plan, state: &mut State) -> Result<(), Error> {
        state.check_shape(self.state_shape())?;
        self.check_model(state).map_err(|message| Error::StateMismatch { message })?;
        match plan.window() {
            Some(w) => state.attach_window(w.size, w.granularity, plan.layers.iter().map(|l| l.window.is_some())),
            None if state.has_window() => Err(Error::StateMismatch {
                message: "the state carries sliding-window history but the session runs without the window".into(),
            }),
            None => Ok(()),
        }
    }

    /// Layer `l`'s A_log `[H]`.
    pub fn a_log(&self, layer: usize) -> &[f32] {
        self.blocks[layer].a_log()
    }

    /// Layer `l`'s dt_bias `[H]`.
    pub fn dt_bias(&self, layer: usize) -> &[f32] {
        self.blocks[layer].dt_bias()
    }

    /// One token through the recurrent step; returns its logits `[V]`.
    pub fn step(&self, state: &mut State, token: u32) -> Result<Vec<f32>, Error> {
        self.forward_pass(Pass::Decode, &self.plain, state, &[token], LogitRows::Last)
    }

    /// One decode step of several independent sequences in one pass: `tokens[i]` continues the
    /// sequence of `states[i]` (each at its own position, all under `plan`). Returns the logits
    /// `[B, V]`, row `i` for sequence `i`. Every projection reads its weights once for the whole
    /// batch, which is what makes decoding B sequences together faster than B single steps; the
    /// results equal B separate [`Model::step`]s up to f32 rounding.
    ///
    /// ```
    /// use coil_ssm::{Checkpoint, Model};
    /// let model = Model::from_checkpoint(Checkpoint::embedded_default()?);
    /// let plan = model.plain_plan().clone();
    /// let (mut a, mut b) = (model.new_state(), model.new_state());
    /// model.forward(&mut a, &[5, 6, 7], coil_ssm::LogitRows::None)?;
    /// let logits = model.step_batch(&plan, &mut [&mut a, &mut b], &[8, 9])?;
    /// assert_eq!(logits.len(), 2 * model.vocab_size());
    /// assert_eq!((a.position(), b.position()), (4, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn step_batch(&self, plan: &Plan, states: &mut [&mut State], tokens: &[u32]) -> Result<Vec<f32>, Error> {
        let mut logits = Vec::new();
        self.step_batch_into(plan, states, tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`Model::step_batch`] into `logits` (resized to `[B, V]`), so a decode loop that keeps
    /// the vector allocates nothing per step.
    pub fn step_batch_into(&self, plan: &Plan, states: &mut [&mut State], tokens: &[u32], logits: &mut Vec<f32>) -> Result<(), Error> {
        if states.len() != tokens.len() {
            return Err(Error::BatchMismatch { states: states.len(), tokens: tokens.len() });
        }
        self.batch_into(Pass::Decode, plan, states, &OneEach(tokens), logits)
    }

    /// Feeds `tokens[i]` to `states[i]` for every sequence `i`, all sequences the same length,
    /// in one pass per layer (chunked SSD per sequence, the projections over all B*T rows at
    /// once). Returns each sequence's last-position logits, `[B, V]`. The results equal B
    /// separate [`Model::forward_with`] calls up to f32 rounding; activation memory grows with
    /// B*T (split long inputs, as [`crate::Session::prefill_batch`] does).
    ///
    /// Ids are checked before any state moves; a state that overflows stops the batch with
    /// [`Error::StateOverflow`] (the states have then consumed the tokens).
    pub fn prefill_batch(&self, plan: &Plan, states: &mut [&mut State], tokens: &[impl AsRef<[u32]> + Sync]) -> Result<Vec<f32>, Error> {
        let mut logits = Vec::new();
        self.prefill_batch_into(plan, states, tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`Model::prefill_batch`] into `logits` (resized to `[B, V]`).
    pub fn prefill_batch_into(&self, plan: &Plan, states: &mut [&mut State], tokens: &[impl AsRef<[u32]> + Sync], logits: &mut Vec<f32>) -> Result<(), Error> {
        self.batch_into(Pass::Prefill, plan, states, tokens, logits)
    }

    fn batch_into(
        &self,
        pass: Pass,
        plan: &Plan,
        states: &mut [&mut State],
        tokens: &(impl Sequences + ?Sized),
        logits: &mut Vec<f32>,
    ) -> Result<(), Error> {
        let taken = self.batch_buffers.lock().ok().and_then(|mut pool| pool.pop());
        let mut workspace = taken.unwrap_or_else(|| self.workspace(0));
        let result = self.run_pass(pass, plan, states, tokens, LogitRows::Last, &mut workspace, logits);
        if let Ok(mut pool) = self.batch_buffers.lock() {
            pool.push(workspace);
        }
        result
    }

    /// Checks a pass's inputs, runs it where the engine computes, and counts its tokens.
    #[allow(clippy::too_many_arguments)]
    fn run_pass(
        &self,
        pass: Pass,
        plan: &Plan,
        states: &mut [&mut State],
        tokens: &(impl Sequences + ?Sized),
        rows: LogitRows,
        workspace: &mut Workspace,
        logits: &mut Vec<f32>,
    ) -> Result<(), Error> {
        self.admit(plan, states, tokens)?;
        let mut result = Ok(());
        self.engine.run(&mut || result = self.pass(plan, states, tokens, rows, workspace, logits));
        self.device_ok()?;
        if result.is_ok() {
            self.count(pass, (0..tokens.count()).map(|i| tokens.sequence(i).len()).sum());
        }
        result
    }

    /// Refuses a pass before any state moves: states and sequences must pair up, be non-empty
    /// and of one length, each state must fit this model and `plan` (which attaches the window's
    /// history when the plan has a window), have room for its tokens, and every id must be in the
    /// vocabulary.
    fn admit(&self, plan: &Plan, states: &mut [&mut State], tokens: &(impl Sequences + ?Sized)) -> Result<(), Error> {
        if states.len() != tokens.count() {
            return Err(Error::BatchMismatch { states: states.len(), tokens: tokens.count() });
        }
        let len = if tokens.count() > 0 { tokens.sequence(0).len() } else { 0 };
        if len == 0 {
            return Err(Error::EmptyInput);
        }
        if let Some(index) = (0..tokens.count()).find(|&i| tokens.sequence(i).len() != len) {
            return Err(Error::BatchLengths { first: len, index, len: tokens.sequence(index).len() });
        }
        let vocab = self.config.vocab_size;
        for (i, state) in states.iter_mut().enumerate() {
            let sequence = tokens.sequence(i);
            self.prepare_state(plan, state)?;
            check_room(state, sequence.len())?;
            if let Some(i) = sequence.iter().position(|&t| t as usize >= vocab) {
                return Err(Error::TokenOutOfRange { token: sequence[i], position: state.position() + i as u64, vocab });
            }
        }
        Ok(())
    }

    /// One pass of B sequences of T tokens through the blocks (admitted by [`Model::admit`]):
    /// the row-wise ops once over all B*T rows, the conv and the scan per sequence. Leaves in
    /// `logits` the rows `rows` asks for: every position of every sequence (`[B*T, V]`), each
    /// sequence's last (`[B, V]`), or none (the lm_head skipped). On a device, what the host needs
    /// of the pass (the logits; per sequence, `[L, H]` log-decay sums and three finiteness flags)
    /// waits there and comes back in one read.
    fn pass(
        &self,
        plan: &Plan,
        states: &mut [&mut State],
        tokens: &(impl Sequences + ?Sized),
        rows: LogitRows,
        workspace: &mut Workspace,
        logits: &mut Vec<f32>,
    ) -> Result<(), Error> {
        let (batch, len, d, vocab) = (tokens.count(), tokens.sequence(0).len(), self.dims.d_model, self.config.vocab_size);
        let engine = &*self.engine;
        workspace.resize(engine, &self.dims, batch * len);
        workspace.scratch.resize_with(workspace.scratch.len().max(batch), HostScratch::default);
        for state in states.iter_mut() {
            state.place(engine);
        }
        if batch == 1 {
            engine.embed(&self.embedding, tokens.sequence(0), workspace.hidden.view_mut());
        } else {
            workspace.ids.clear();
            workspace.ids.extend((0..batch).flat_map(|i| tokens.sequence(i).iter().copied()));
            engine.embed(&self.embedding, &workspace.ids, workspace.hidden.view_mut());
        }
        let device = !engine.computes_on_host();
        let (heads, layers) = (self.dims.ssm.heads, self.blocks.len());
        let (flags, stride) = (layers * heads, layers * heads + 3);
        if device {
            engine.resize(&mut workspace.results, batch * stride);
            engine.fill(workspace.results.view_mut(), 0.0);
        }
        let chunk = self.chunk_size();
        for (i, block) in self.blocks.iter().enumerate() {
            let deferred = device.then_some((&workspace.results, stride));
            let (hidden, act, scratch) = (&mut workspace.hidden, &mut workspace.act, &mut workspace.scratch[..batch]);
            block.forward(engine, &self.dims, hidden, states, i, &plan.layers[i], chunk, act, scratch, deferred);
        }
        for state in states.iter_mut() {
            state.advance(len);
        }

        // The rows logits come from, `per_sequence` of each sequence in turn: all of `hidden`,
        // one sequence's last row in place, or each one's last row gathered.
        let per_sequence = if rows == LogitRows::All { len } else { 1 };
        if rows != LogitRows::All && batch > 1 {
            engine.resize(&mut workspace.last, batch * d);
            for i in 0..batch {
                let row = (i * len + len - 1) * d;
                engine.copy_columns(workspace.hidden.slice(row..row + d), d, 0, workspace.last.slice_mut(i * d..(i + 1) * d));
            }
        }
        let selected = match rows {
            LogitRows::All => workspace.hidden.view(),
            _ if batch == 1 => workspace.hidden.slice((len - 1) * d..len * d),
            _ => workspace.last.view(),
        };
        for (i, state) in states.iter().enumerate() {
            let hidden = selected.slice(i * per_sequence * d..(i + 1) * per_sequence * d);
            if device {
                flag_non_finite(engine, state, len, hidden, &mut workspace.results, i * stride + flags);
            } else {
                check_finite(engine, state, len, hidden)?;
            }
        }
        let logit_rows = if rows == LogitRows::None { 0 } else { batch * per_sequence };
        if logit_rows > 0 {
            engine.resize(&mut workspace.normed, logit_rows * d);
            engine.rms_norm(selected, self.norm_f.view(), self.dims.eps, workspace.normed.view_mut());
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embedding);
        if device {
            workspace.read_back(engine, head, logit_rows, logits);
            for (state, results) in states.iter_mut().zip(workspace.results_host.chunks_exact(stride)) {
                state.add_log_decay(&results[..flags]);
            }
            for (state, results) in states.iter().zip(workspace.results_host.chunks_exact(stride)) {
                check_flags(engine, state, &results[flags..])?;
            }
        } else {
            logits.resize(logit_rows * vocab, 0.0);
            if logit_rows > 0 {
                engine.linear(workspace.normed.view(), head, None, ViewMut::Host(logits));
            }
        }
        if let Some(row) = logits.chunks_exact(vocab).position(|row| row.iter().any(|v| !v.is_finite())) {
            return Err(Error::NonFiniteLogits { position: states[row / per_sequence].position() });
        }
        Ok(())
    }

    pub(crate) fn workspace(&self, tokens: usize) -> Workspace {
        let engine = &*self.engine;
        Workspace {
            hidden: engine.zeros(tokens * self.dims.d_model),
            act: Activations::new(engine, &self.dims, tokens),
            normed: engine.zeros(0),
            last: engine.zeros(0),
            ids: Vec::new(),
            scratch: Vec::new(),
            logits: Vec::new(),
            device_logits: engine.zeros(0),
            results: engine.zeros(0),
            results_host: Vec::new(),
        }
    }

    /// [`Model::forward`] into reusable buffers; the logits are left in `workspace.logits`.
    pub(crate) fn forward_in(
        &self,
        pass: Pass,
        plan: &Plan,
        state: &mut State,
        tokens: &[u32],
        rows: LogitRows,
        workspace: &mut Workspace,
    ) -> Result<(), Error> {
        let mut logits = std::mem::take(&mut workspace.logits);
        let result = self.run_pass(pass, plan, &mut [state], &[tokens][..], rows, workspace, &mut logits);
        workspace.logits = logits;
        result
    }

    /// The backend's device failure, if any, as the error of the pass that ran into it (its
    /// outputs are NaN, so this comes before any check of them).
    fn device_ok(&self) -> Result<(), Error> {
        match self.engine.device_failure() {
            Some(message) => Err(Error::Device { message }),
            None => Ok(()),
        }
    }
}

/// On a device: sets the three flags at `results[at..at + 3]` that [`check_flags`] reads after
/// the pass (non-finite `hidden` rows; after more than one token, a non-finite conv or ssm state,
/// which a chunked pass can leave where no output shows it: see [`check_finite`]).
fn flag_non_finite(engine: &dyn Engine, state: &State, tokens: usize, hidden: View, results: &mut Buffer, at: usize) {
    engine.flag_non_finite(hidden, results.slice_mut(at..at + 1));
    if tokens > 1 {
        let (conv, ssm) = state.buffers();
        engine.flag_non_finite(conv.view(), results.slice_mut(at + 1..at + 2));
        engine.flag_non_finite(ssm.view(), results.slice_mut(at + 2..at + 3));
    }
}

/// The error [`check_finite`] gives, from the flags [`flag_non_finite`] left.
fn check_flags(engine: &dyn Engine, state: &State, flags: &[f32]) -> Result<(), Error> {
    if flags.iter().all(|&flag| flag == 0.0) {
        return Ok(());
    }
    let layer = state.first_non_finite_layer_in(engine);
    Err(layer.map_or(Error::NonFiniteLogits { position: state.position() }, |layer| Error::StateOverflow { layer, position: state.position() }))
}

/// The engine a model on `backend` runs on.
fn engine_of(backend: Arc<dyn Backend>) -> Arc<dyn Engine> {
    backend.device_engine().unwrap_or_else(|| Arc::new(HostEngine::new(backend)))
}

/// After `tokens` went into `state`: an error if the state holds a non-finite value or `hidden`
/// (the rows logits are taken from) does. A step's output reads every state value, so a
/// non-finite one shows there; a chunked pass can leave one that no output shows (a decay of
/// exactly zero carries it), so after more than one token the state is scanned (a pass over it
/// per prefill piece).
fn check_finite(engine: &dyn Engine, state: &State, tokens: usize, hidden: View) -> Result<(), Error> {
    let overflow = || state.first_non_finite_layer_in(engine).map(|layer| Error::StateOverflow { layer, position: state.position() });
    if tokens > 1 {
        if let Some(err) = overflow() {
            return Err(err);
        }
    }
    if engine.any_non_finite(hidden) {
        return Err(overflow().unwrap_or(Error::NonFiniteLogits { position: state.position() }));
    }
    Ok(())
}

/// Refuses `tokens` more when the state's position would pass `u64::MAX` (a state file can say
/// anything), before anything moves.
fn check_room(state: &State, tokens: usize) -> Result<(), Error> {
    match state.position().checked_add(tokens as u64) {
        Some(_) => Ok(()),
        None => Err(Error::PositionOverflow { position: state.position(), tokens }),
    }
}
