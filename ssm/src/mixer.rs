//! One residual block: pre-norm, the Mamba-2 mixer, residual add (mamba2.md, "One layer").

use coil_checkpoints::LayerWeights;
use coil_kernels::{Buffer, DtLimit, Engine, Matrix, Recurrence, RecurrenceViews, ScanViews, SsmShape, View, ViewMut, WeightDtype};
use rayon::prelude::*;

use crate::mitigation::LayerPlan;
use crate::state::{LayerState, Ring, State};
use crate::Config;

/// A block's weights, arranged for the ops.
pub(crate) struct Block {
    norm: Param,
    in_proj: Projection,   // [I + C + H, D]: z | xBC | dt
    conv_weight: Param, // [C, K]
    conv_bias: Option<Param>,
    dt_bias: Param,
    a_log: Vec<f32>, // [H]; A = -exp(A_log) is formed by the plan
    d: Param,
    mixer_norm: Param,
    out_proj: Projection, // [D, I]
}

/// A small parameter vector: its values on the host, and a copy where a device engine computes.
pub(crate) struct Param {
    host: Vec<f32>,
    device: Option<Buffer>,
}

impl Param {
    pub fn new(host: Vec<f32>) -> Param {
        Param { host, device: None }
    }

    pub fn host(&self) -> &[f32] {
        &self.host
    }

    pub fn view(&self) -> View<'_> {
        match &self.device {
            Some(buffer) => buffer.view(),
            None => View::Host(&self.host),
        }
    }

    /// Copies the values to `engine`'s memory once, if it computes away from the host.
    pub fn place(&mut self, engine: &dyn Engine) {
        let buffer = engine.upload(&self.host);
        self.device = (!buffer.is_host()).then_some(buffer);
    }
}

/// A linear layer's weight and optional bias.
struct Projection {
    weight: Matrix,
    bias: Option<Param>,
}

impl Projection {
    /// The weight and the bias as the engine's products take them.
    fn parts(&self) -> (&Matrix, Option<View<'_>>) {
        (&self.weight, self.bias.as_ref().map(Param::view))
    }

    fn convert(&mut self, dtype: WeightDtype) {
        if self.weight.dtype() != dtype {
            self.weight = self.weight.to_dtype(dtype);
        }
    }
}

/// Sizes every block shares.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub d_model: usize,
    pub conv_dim: usize,
    pub ssm: SsmShape,
    pub eps: f32,
}

impl Dims {
    pub fn of(config: &Config) -> Dims {
        Dims {
            d_model: config.d_model,
            conv_dim: config.conv_dim(),
            ssm: SsmShape { heads: config.n_heads, head_dim: config.head_dim, d_state: config.d_state, groups: config.n_groups },
            eps: config.norm_eps,
        }
    }

    fn inner(&self) -> usize {
        self.ssm.inner()
    }
}

/// Per-call activations for T tokens, reused across blocks, where the engine computes.
pub(crate) struct Activations {
    normed: Buffer, // [T, D]
    zxbcdt: Buffer, // [T, I + C + H], in_proj's output before the split
    z: Buffer,      // [T, I]
    xbc_raw: Buffer,
    xbc: Buffer, // [T, C]
    dt_raw: Buffer,
    dt: Buffer, // [T, H]
    x: Buffer,  // [T, I]
    b: Buffer,  // [T, G*N]
    c: Buffer,
    y: Buffer, // [T, I]
    u: Buffer,
    out: Buffer, // [T, D]
    tokens: usize,
}

/// Host copies of one sequence's x, dt and B, for the window's ring and the statistics when the
/// engine computes away from the host.
pub(crate) type HostScratch = [Vec<f32>; 3];

impl Activations {
    pub fn new(engine: &dyn Engine, dims: &Dims, tokens: usize) -> Activations {
        let mut act = Activations {
            normed: engine.zeros(0),
            zxbcdt: engine.zeros(0),
            z: engine.zeros(0),
            xbc_raw: engine.zeros(0),
            xbc: engine.zeros(0),
            dt_raw: engine.zeros(0),
            dt: engine.zeros(0),
            x: engine.zeros(0),
            b: engine.zeros(0),
            c: engine.zeros(0),
            y: engine.zeros(0),
            u: engine.zeros(0),
            out: engine.zeros(0),
            tokens: 0,
        };
        act.resize(engine, dims, tokens);
        act
    }

    /// Sizes every buffer for `tokens`, keeping allocations: a stream of pieces of varying length
    /// reuses the same memory instead of fragmenting the heap.
    pub fn resize(&mut self, engine: &dyn Engine, dims: &Dims, tokens: usize) {
        let (d, i, c, h, bc) = (dims.d_model, dims.inner(), dims.conv_dim, dims.ssm.heads, dims.ssm.bc_width());
        for (buffer, width) in [
            (&mut self.normed, d),
            (&mut self.zxbcdt, i + c + h),
            (&mut self.z, i),
            (&mut self.xbc_raw, c),
            (&mut self.xbc, c),
            (&mut self.dt_raw, h),
            (&mut self.dt, h),
            (&mut self.x, i),
            (&mut self.b, bc),
            (&mut self.c, bc),
            (&mut self.y, i),
            (&mut self.u, i),
            (&mut self.out, d),
        ] {
            engine.resize(buffer, tokens * width);
        }
        self.tokens = tokens;
    }

    /// Tokens these buffers hold.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

impl Block {
    pub fn a_log(&self) -> &[f32] {
        &self.a_log
    }

    /// Holds the projection matrices (the bulk of the weights) as `dtype`.
    pub fn convert_weights(&mut self, dtype: WeightDtype) {
        for projection in [&mut self.in_proj, &mut self.out_proj] {
            projection.convert(dtype);
        }
    }

    /// Copies the small parameters to where `engine` computes (once, at load); the matrices go
    /// on first use.
    pub fn place(&mut self, engine: &dyn Engine) {
        let params = [&mut self.norm, &mut self.conv_weight, &mut self.dt_bias, &mut self.d, &mut self.mixer_norm];
        let biases = [self.conv_bias.as_mut(), self.in_proj.bias.as_mut(), self.out_proj.bias.as_mut()];
        for param in params.into_iter().chain(biases.into_iter().flatten()) {
            param.place(engine);
        }
    }

    /// The projection matrices, by name.
    pub fn matrices(&self) -> [(&'static str, &Matrix); 2] {
        [("in_proj", &self.in_proj.weight), ("out_proj", &self.out_proj.weight)]
    }

    /// Bytes of the projection matrices.
    pub fn matrix_bytes(&self) -> usize {
        self.matrices().iter().map(|(_, m)| m.bytes()).sum()
    }

    pub fn dt_bias(&self) -> &[f32] {
        self.dt_bias.host()
    }

    /// The skip weights `D`.
    pub fn d(&self) -> &[f32] {
        self.d.host()
    }

    pub fn new(w: LayerWeights, dims: &Dims) -> Block {
        let d_model = dims.d_model;
        let rows = dims.inner() + dims.conv_dim + dims.ssm.heads;
        Block {
            norm: Param::new(w.norm),
            in_proj: Projection { weight: Matrix::new(w.in_proj, rows, d_model), bias: w.in_proj_bias.map(Param::new) },
            conv_weight: Param::new(w.conv_weight),
            conv_bias: w.conv_bias.map(Param::new),
            dt_bias: Param::new(w.dt_bias),
            a_log: w.a_log,
            d: Param::new(w.d),
            mixer_norm: Param::new(w.mixer_norm),
            out_proj: Projection { weight: Matrix::new(w.out_proj, d_model, dims.inner()), bias: w.out_proj_bias.map(Param::new) },
        }
    }

    /// Runs the block in place over `hidden: [B*T, D]`: B independent sequences of T tokens,
    /// rows `i*T..(i+1)*T` continuing `states[i]` (this block is their layer `layer`), under the
    /// mitigations of `plan`. Everything but the conv and the scan works row by row and runs once
    /// over all B*T rows (the projections in one pass over the weights); the conv and the scan
    /// read and write each sequence's rows in place with its own state (`scratch[i]` holds its
    /// host copies), the sequences at once where the engine allows. One token goes through the
    /// fused step; more through chunked SSD with chunk length `chunk`, split where a mitigation
    /// acts between tokens. On a device, sequence `i`'s log-decay sums for this layer go to
    /// `deferred` at `i * stride + layer * H`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        engine: &dyn Engine,
        dims: &Dims,
        hidden: &mut Buffer,
        states: &mut [&mut State],
        layer: usize,
        plan: &LayerPlan,
        chunk: usize,
        act: &mut Activations,
        scratch: &mut [HostScratch],
        deferred: Option<(&Buffer, usize)>,
    ) {
        let tokens = act.tokens() / states.len();
        debug_assert_eq!(act.tokens(), states.len() * tokens);
        debug_assert_eq!(scratch.len(), states.len());
        let (conv_dim, inner, heads, shape) = (dims.conv_dim, dims.inner(), dims.ssm.heads, dims.ssm);
        // At once on host memory only (an engine computing elsewhere runs them in turn).
        let concurrent = states.len() > 1 && engine.concurrent_sequences() && act.xbc.is_host();
        self.project_in(engine, dims, hidden.view(), act);

        let xbc_raw = act.xbc_raw.view();
        let conv_one = |i: usize, state: &mut State, out: ViewMut| {
            let mut layer_state = state.layer_mut(layer);
            let rows = xbc_raw.slice(i * tokens * conv_dim..(i + 1) * tokens * conv_dim);
            engine.causal_conv1d(rows, layer_state.conv.reborrow(), self.conv_weight.view(), self.conv_bias.as_ref().map(Param::view), conv_dim, out);
        };
        if concurrent {
            let out = act.xbc.view_mut().host();
            out.par_chunks_mut(tokens * conv_dim).zip(states.par_iter_mut()).enumerate().for_each(|(i, (out, state))| conv_one(i, state, ViewMut::Host(out)));
        } else {
            for (i, state) in states.iter_mut().enumerate() {
                conv_one(i, state, act.xbc.slice_mut(i * tokens * conv_dim..(i + 1) * tokens * conv_dim));
            }
        }
        self.split_conv_output(engine, plan, act);

        let inputs = ScanViews { x: act.x.view(), dt: act.dt.view(), b: act.b.view(), c: act.c.view() };
        let scan_one = |i: usize, state: &mut State, host: &mut HostScratch, y: ViewMut| {
            let position = state.position();
            let mut layer_state = state.layer_mut(layer);
            let at = |stride: usize| i * stride + layer * heads;
            layer_state.deferred_decay = deferred.and_then(|(results, stride)| results.device_slice_mut(at(stride)..at(stride) + heads));
            self.scan(engine, dims, &mut layer_state, plan, position, chunk, inputs.slice(&shape, i * tokens..(i + 1) * tokens), y, host);
        };
        if concurrent {
            let y = act.y.view_mut().host();
            y.par_chunks_mut(tokens * inner)
                .zip(states.par_iter_mut())
                .zip(scratch.par_iter_mut())
                .enumerate()
                .for_each(|(i, ((y, state), host))| scan_one(i, state, host, ViewMut::Host(y)));
        } else {
            for (i, (state, host)) in states.iter_mut().zip(scratch.iter_mut()).enumerate() {
                scan_one(i, state, host, act.y.slice_mut(i * tokens * inner..(i + 1) * tokens * inner));
            }
        }
        self.project_out(engine, dims, hidden, act);
    }

    /// Pre-norm and in_proj: `act.z`, `act.xbc_raw`, `act.dt_raw` for every row of `hidden`.
    fn project_in(&self, engine: &dyn Engine, dims: &Dims, hidden: View, act: &mut Activations) {
        // The norm, then one product (one pass over the weights; the norm inside it where the
        // engine can), then each row's z | xBC | dt into its own contiguous buffer.
        let (weight, bias) = self.in_proj.parts();
        engine.linear_after_norm(hidden, self.norm.view(), dims.eps, weight, bias, act.normed.view_mut(), act.zxbcdt.view_mut());
        let rows = act.tokens();
        engine.split_columns(act.zxbcdt.view(), rows, [act.z.view_mut(), act.xbc_raw.view_mut(), act.dt_raw.view_mut()]);
    }

    /// Row by row, for every row of `act`: the conv's output split into x, B and C; dt (softplus,
    /// then the plan's steps: the checkpoint's clamp first, then mitigations); B scaled by RRI.
    fn split_conv_output(&self, engine: &dyn Engine, plan: &LayerPlan, act: &mut Activations) {
        let rows = act.tokens();
        engine.split_columns(act.xbc.view(), rows, [act.x.view_mut(), act.b.view_mut(), act.c.view_mut()]);
        engine.prepare_dt(act.dt_raw.view(), self.dt_bias.view(), DtLimit::default(), &plan.dt_steps, act.dt.view_mut());
        if plan.b_scale != 1.0 {
            engine.scale(act.b.view_mut(), plan.b_scale);
        }
    }

    /// Gated RMSNorm per group of I/G channels (mamba_ssm and HF >= 5; not over all of I),
    /// out_proj, and the residual add into `hidden`.
    fn project_out(&self, engine: &dyn Engine, dims: &Dims, hidden: &mut Buffer, act: &mut Activations) {
        let group = dims.inner() / dims.ssm.groups;
        engine.gated_rms_norm(act.y.view(), act.z.view(), self.mixer_norm.view(), group, dims.eps, act.u.view_mut());
        // The residual add as out_proj's epilogue (one kernel on a GPU).
        let (weight, bias) = self.out_proj.parts();
        engine.linear_add(act.u.view(), weight, bias, act.out.view_mut(), hidden.view_mut());
    }

    /// The selective scan over `inputs`' tokens into `y`, in segments between the points where
    /// the window drops inputs or the state norm is clamped. `host` holds host copies of what
    /// the host keeps per token, when the engine computes elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        engine: &dyn Engine,
        dims: &Dims,
        layer: &mut LayerState,
        plan: &LayerPlan,
        position: u64,
        chunk: usize,
        inputs: ScanViews,
        mut y: ViewMut,
        host: &mut HostScratch,
    ) {
        let shape = dims.ssm;
        let (inner, heads, p_len, bc) = (shape.inner(), shape.heads, shape.head_dim, shape.bc_width());
        let tokens = inputs.tokens(&shape);
        let recurrence = Recurrence { a: &plan.a, log_decay_offset: &plan.log_decay_offset, d: self.d.host() };
        let views = RecurrenceViews { a: View::Host(&plan.a), log_decay_offset: View::Host(&plan.log_decay_offset), d: self.d.view() };
        let window = plan.window.filter(|_| layer.ring.is_some());
        // What the host keeps per token (the window's lagged inputs, dt statistics) reads dt, and
        // with the window x and B, from host memory; without them the engine sums the log
        // decays where dt is.
        let per_token = layer.ring.is_some() || layer.stats.is_some();
        let [x_host, dt_host, b_host] = host;
        let dt = if per_token { inputs.dt.on_host(dt_host) } else { &[][..] };
        let (x, b) = match layer.ring {
            Some(_) => (inputs.x.on_host(x_host), inputs.b.on_host(b_host)),
            None => (&[][..], &[][..]),
        };
        // A segment ends after token i when the state norm clamps there, and before token i when
        // the window's start moves there.
        let ends_after = |i: usize| plan.state_norm.as_ref().is_some_and(|n| (position + i as u64 + 1).is_multiple_of(n.every));
        let window_moves = |p: u64| window.is_some_and(|w| p > 0 && w.start(p) != w.start(p - 1));

        // One token's dt * x for the window's ring, reused across segments (Q = 1 makes every
        // token a segment).
        let mut xdt = vec![0.0f32; if layer.ring.is_some() { inner } else { 0 }];
        let mut retract_scratch = RetractScratch::default();
        let mut start = 0;
        while start < tokens {
            let mut end = start + 1;
            while end < tokens && !ends_after(end - 1) && !window_moves(position + end as u64) {
                end += 1;
            }
            let first = position + start as u64;
            if let (Some(w), Some(ring)) = (window, layer.ring.as_deref_mut()) {
                if window_moves(first) {
                    debug_assert_eq!(ring.oldest_position, w.start(first - 1));
                    let count = (w.start(first) - w.start(first - 1)) as usize;
                    retract(engine, &shape, layer.ssm.reborrow(), ring, count, layer.log_decay_total, &mut retract_scratch);
                }
            }
            let segment = inputs.slice(&shape, start..end);
            let y = y.slice_mut(start * inner..end * inner);
            if end - start == 1 {
                engine.ssm_step(shape, views, segment, layer.ssm.reborrow(), y);
            } else {
                engine.ssd_scan(shape, views, segment, layer.ssm.reborrow(), chunk, y);
            }
            // Running log-decay sums (f64), the window's lagged inputs and dt statistics.
            if !per_token {
                let deferred = layer.deferred_decay.as_mut().map(ViewMut::reborrow);
                engine.add_log_decay(segment.dt, &plan.a, &plan.log_decay_offset, layer.log_decay_total, deferred);
            }
            for t in (start..end).filter(|_| per_token) {
                let dt = &dt[t * heads..(t + 1) * heads];
                for h in 0..heads {
                    let log_decay = recurrence.log_decay(h, dt[h]);
                    layer.log_decay_total[h] += log_decay as f64;
                    if let Some(stats) = layer.stats.as_deref_mut() {
                        stats[h].record(dt[h], log_decay);
                    }
                }
                if let Some(ring) = layer.ring.as_deref_mut() {
                    for (i, v) in xdt.iter_mut().enumerate() {
                        *v = x[t * inner + i] * dt[i / p_len];
                    }
                    ring.push(&xdt, &b[t * bc..(t + 1) * bc], layer.log_decay_total);
                }
            }
            if let Some(norm) = plan.state_norm.as_ref().filter(|_| ends_after(end - 1)) {
                engine.clamp_state_norms(shape, layer.ssm.reborrow(), &norm.thresholds);
            }
            start = end;
        }
    }
}

/// Takes the ring's oldest `count` inputs out of the state, each decayed from when it was written
/// to now: weight `exp(L_now - L_k)`, a difference of f64 running sums.
fn retract(engine: &dyn Engine, shape: &SsmShape, state: ViewMut, ring: &mut Ring, count: usize, log_now: &[f64], scratch: &mut RetractScratch) {
    let RetractScratch { xdt, b, log_cum, weights } = scratch;
    ring.pop_oldest(count, xdt, b, log_cum);
    let heads = shape.heads;
    weights.clear();
    weights.extend(log_cum.iter().enumerate().map(|(i, &l)| (log_now[i % heads] - l).exp() as f32));
    engine.retract_inputs(*shape, state, xdt, b, weights);
}

/// Buffers of [`retract`], kept across the window moves of one forward pass.
#[derive(Default)]
struct RetractScratch {
    xdt: Vec<f32>,
    b: Vec<f32>,
    log_cum: Vec<f64>,
    weights: Vec<f32>,
}
