//! One residual block: pre-norm, the Mamba-2 mixer, residual add (mamba2.md, "One layer").

use coil_checkpoints::LayerWeights;
use coil_kernels::{Backend, DtLimit, Matrix, Recurrence, ScanInputs, SsmShape, WeightDtype};
use rayon::prelude::*;

use crate::mitigation::LayerPlan;
use crate::state::{LayerState, Ring, State};
use crate::Config;

/// A block's weights, arranged for the ops.
pub(crate) struct Block {
    norm: Vec<f32>,
    in_proj: Projection,   // [I + C + H, D]: z | xBC | dt
    conv_weight: Vec<f32>, // [C, K]
    conv_bias: Option<Vec<f32>>,
    dt_bias: Vec<f32>,
    a_log: Vec<f32>, // [H]; A = -exp(A_log) is formed by the plan
    d: Vec<f32>,
    mixer_norm: Vec<f32>,
    out_proj: Projection, // [D, I]
}

/// A linear layer's weight and optional bias.
struct Projection {
    weight: Matrix,
    bias: Option<Vec<f32>>,
}

impl Projection {
    fn apply(&self, backend: &dyn Backend, input: &[f32], out: &mut [f32]) {
        backend.linear(input, &self.weight, self.bias.as_deref(), out);
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

/// Per-call activations for T tokens, reused across blocks.
pub(crate) struct Activations {
    normed: Vec<f32>, // [T, D]
    zxbcdt: Vec<f32>, // [T, I + C + H], in_proj's output before the split
    z: Vec<f32>,      // [T, I]
    xbc_raw: Vec<f32>,
    xbc: Vec<f32>, // [T, C]
    dt_raw: Vec<f32>,
    dt: Vec<f32>, // [T, H]
    x: Vec<f32>,  // [T, I]
    b: Vec<f32>,  // [T, G*N]
    c: Vec<f32>,
    y: Vec<f32>, // [T, I]
    u: Vec<f32>,
    out: Vec<f32>, // [T, D]
}

impl Activations {
    pub fn new(dims: &Dims, tokens: usize) -> Activations {
        let mut act = Activations {
            normed: Vec::new(),
            zxbcdt: Vec::new(),
            z: Vec::new(),
            xbc_raw: Vec::new(),
            xbc: Vec::new(),
            dt_raw: Vec::new(),
            dt: Vec::new(),
            x: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
            y: Vec::new(),
            u: Vec::new(),
            out: Vec::new(),
        };
        act.resize(dims, tokens);
        act
    }

    /// Sizes every buffer for `tokens`, keeping allocations: a stream of pieces of varying length
    /// reuses the same memory instead of fragmenting the heap.
    pub fn resize(&mut self, dims: &Dims, tokens: usize) {
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
            buffer.resize(tokens * width, 0.0);
        }
    }

    /// Tokens these buffers hold.
    pub fn tokens(&self, dims: &Dims) -> usize {
        self.out.len() / dims.d_model
    }

    /// Makes these one-token buffers hold row `i` of `batch`'s in_proj outputs.
    fn copy_inputs_from(&mut self, batch: &Activations, dims: &Dims, rows: std::ops::Range<usize>) {
        let (c, h) = (dims.conv_dim, dims.ssm.heads);
        self.resize(dims, rows.len());
        self.xbc_raw.copy_from_slice(&batch.xbc_raw[rows.start * c..rows.end * c]);
        self.dt_raw.copy_from_slice(&batch.dt_raw[rows.start * h..rows.end * h]);
    }

    /// Stores these buffers' scan output as rows `first..` of `self`.
    fn copy_output_from(&mut self, part: &Activations, dims: &Dims, first: usize) {
        let inner = dims.inner();
        self.y[first * inner..first * inner + part.y.len()].copy_from_slice(&part.y);
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

    /// The projection matrices, by name.
    pub fn matrices(&self) -> [(&'static str, &Matrix); 2] {
        [("in_proj", &self.in_proj.weight), ("out_proj", &self.out_proj.weight)]
    }

    /// Bytes of the projection matrices.
    pub fn matrix_bytes(&self) -> usize {
        self.matrices().iter().map(|(_, m)| m.bytes()).sum()
    }

    pub fn dt_bias(&self) -> &[f32] {
        &self.dt_bias
    }

    /// The skip weights `D`.
    pub fn d(&self) -> &[f32] {
        &self.d
    }

    pub fn new(w: LayerWeights, dims: &Dims) -> Block {
        let d_model = dims.d_model;
        let rows = dims.inner() + dims.conv_dim + dims.ssm.heads;
        Block {
            norm: w.norm,
            in_proj: Projection { weight: Matrix::new(w.in_proj, rows, d_model), bias: w.in_proj_bias },
            conv_weight: w.conv_weight,
            conv_bias: w.conv_bias,
            dt_bias: w.dt_bias,
            a_log: w.a_log,
            d: w.d,
            mixer_norm: w.mixer_norm,
            out_proj: Projection { weight: Matrix::new(w.out_proj, d_model, dims.inner()), bias: w.out_proj_bias },
        }
    }

    /// Runs the block over `hidden: [T, D]` in place, from and into `layer` (its part of the
    /// state), with the mitigations of `plan`. `position` is the stream position of the first
    /// token. One token goes through the fused step; more go through chunked SSD with chunk
    /// length `chunk`, split where a mitigation acts between tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        backend: &dyn Backend,
        dims: &Dims,
        hidden: &mut [f32],
        layer: LayerState,
        plan: &LayerPlan,
        position: u64,
        chunk: usize,
        act: &mut Activations,
    ) {
        let tokens = hidden.len() / dims.d_model;
        debug_assert_eq!(act.tokens(dims), tokens);
        self.project_in(backend, dims, hidden, act);
        self.mix(backend, dims, layer, plan, position, chunk, act);
        self.project_out(backend, dims, hidden, act);
    }

    /// B independent sequences of T tokens each: rows `i*T..(i+1)*T` of `hidden: [B*T, D]`
    /// continue `states[i]` (this block is their layer `layer`). The projections run once over
    /// all B*T rows (one pass over the weights); the conv and the scan run per sequence on its
    /// own state, through its own `parts[i]`, the sequences at once where the backend allows.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_batch(
        &self,
        backend: &dyn Backend,
        dims: &Dims,
        hidden: &mut [f32],
        states: &mut [&mut State],
        layer: usize,
        plan: &LayerPlan,
        chunk: usize,
        act: &mut Activations,
        parts: &mut [Activations],
    ) {
        let tokens = act.tokens(dims) / states.len();
        debug_assert_eq!(act.tokens(dims), states.len() * tokens);
        debug_assert_eq!(parts.len(), states.len());
        self.project_in(backend, dims, hidden, act);
        let mix_one = |(i, (state, part)): (usize, (&mut &mut State, &mut Activations))| {
            part.copy_inputs_from(act, dims, i * tokens..(i + 1) * tokens);
            let position = state.position();
            self.mix(backend, dims, state.layer_mut(layer), plan, position, chunk, part);
        };
        if backend.concurrent_sequences() {
            states.par_iter_mut().zip(parts.par_iter_mut()).enumerate().for_each(mix_one);
        } else {
            states.iter_mut().zip(parts.iter_mut()).enumerate().for_each(mix_one);
        }
        for (i, part) in parts.iter().enumerate() {
            act.copy_output_from(part, dims, i * tokens);
        }
        self.project_out(backend, dims, hidden, act);
    }

    /// Pre-norm and in_proj: `act.z`, `act.xbc_raw`, `act.dt_raw` for every row of `hidden`.
    fn project_in(&self, backend: &dyn Backend, dims: &Dims, hidden: &[f32], act: &mut Activations) {
        backend.rms_norm(hidden, &self.norm, dims.eps, &mut act.normed);
        // One product (one pass over the weights, one fork-join), then each row's z | xBC | dt
        // into its own contiguous buffer.
        self.in_proj.apply(backend, &act.normed, &mut act.zxbcdt);
        let (i, c) = (dims.inner(), dims.conv_dim);
        let h = dims.ssm.heads;
        let parts = act.z.par_chunks_mut(i).zip(act.xbc_raw.par_chunks_mut(c)).zip(act.dt_raw.par_chunks_mut(h));
        parts.zip(act.zxbcdt.par_chunks(i + c + h)).with_min_len(COPY_MIN_ROWS).for_each(|(((z, xbc), dt), row)| {
            z.copy_from_slice(&row[..i]);
            xbc.copy_from_slice(&row[i..i + c]);
            dt.copy_from_slice(&row[i + c..]);
        });
    }

    /// The recurrent part for consecutive tokens of one sequence: conv, dt, the scan from and
    /// into `layer`, leaving `act.y`.
    #[allow(clippy::too_many_arguments)]
    fn mix(&self, backend: &dyn Backend, dims: &Dims, layer: LayerState, plan: &LayerPlan, position: u64, chunk: usize, act: &mut Activations) {
        let (inner, conv_dim) = (dims.inner(), dims.conv_dim);
        backend.causal_conv1d(&act.xbc_raw, layer.conv, &self.conv_weight, self.conv_bias.as_deref(), conv_dim, &mut act.xbc);
        split_xbc(&act.xbc, conv_dim, inner, dims.ssm.bc_width(), &mut act.x, &mut act.b, &mut act.c);

        // dt: softplus, then the plan's steps (the checkpoint's clamp first, then mitigations).
        backend.discretize_dt(&act.dt_raw, &self.dt_bias, DtLimit::default(), &mut act.dt);
        plan.transform_dt(&mut act.dt);
        if plan.b_scale != 1.0 {
            act.b.iter_mut().for_each(|v| *v *= plan.b_scale);
        }
        let recurrence = Recurrence { a: &plan.a, log_decay_offset: &plan.log_decay_offset, d: &self.d };
        self.scan(backend, dims, layer, plan, &recurrence, position, chunk, act);
    }

    /// Gated RMSNorm per group of I/G channels (mamba_ssm and HF >= 5; not over all of I),
    /// out_proj, and the residual add into `hidden`.
    fn project_out(&self, backend: &dyn Backend, dims: &Dims, hidden: &mut [f32], act: &mut Activations) {
        backend.gated_rms_norm(&act.y, &act.z, &self.mixer_norm, dims.inner() / dims.ssm.groups, dims.eps, &mut act.u);
        self.out_proj.apply(backend, &act.u, &mut act.out);
        let d = dims.d_model;
        hidden.par_chunks_mut(d).zip(act.out.par_chunks(d)).with_min_len(COPY_MIN_ROWS).for_each(|(hidden, out)| {
            hidden.iter_mut().zip(out).for_each(|(h, o)| *h += o);
        });
    }

    /// The selective scan over the activations' tokens, in segments between the points where
    /// the window drops inputs or the state norm is clamped.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        backend: &dyn Backend,
        dims: &Dims,
        mut layer: LayerState,
        plan: &LayerPlan,
        recurrence: &Recurrence,
        position: u64,
        chunk: usize,
        act: &mut Activations,
    ) {
        let shape = dims.ssm;
        let (inner, heads, p_len) = (shape.inner(), shape.heads, shape.head_dim);
        let tokens = act.dt.len() / heads;
        let inputs = ScanInputs { x: &act.x, dt: &act.dt, b: &act.b, c: &act.c };
        let window = plan.window.filter(|_| layer.ring.is_some());
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
                    retract(backend, &shape, layer.ssm, ring, (w.start(first) - w.start(first - 1)) as usize, layer.log_decay_total, &mut retract_scratch);
                }
            }
            let segment = inputs.slice(&shape, start..end);
            let y = &mut act.y[start * inner..end * inner];
            if end - start == 1 {
                backend.ssm_step(shape, *recurrence, segment, layer.ssm, y);
            } else {
                backend.ssd_scan(shape, *recurrence, segment, layer.ssm, chunk, y);
            }
            // Running log-decay sums (f64), the window's lagged inputs and dt statistics.
            for t in start..end {
                let dt = &inputs.dt[t * heads..(t + 1) * heads];
                for h in 0..heads {
                    let log_decay = recurrence.log_decay(h, dt[h]);
                    layer.log_decay_total[h] += log_decay as f64;
                    if let Some(stats) = layer.stats.as_deref_mut() {
                        stats[h].record(dt[h], log_decay);
                    }
                }
                if let Some(ring) = layer.ring.as_deref_mut() {
                    for (i, v) in xdt.iter_mut().enumerate() {
                        *v = inputs.x[t * inner + i] * dt[i / p_len];
                    }
                    let bc = shape.bc_width();
                    ring.push(&xdt, &inputs.b[t * bc..(t + 1) * bc], layer.log_decay_total);
                }
            }
            if let Some(norm) = plan.state_norm.as_ref().filter(|_| ends_after(end - 1)) {
                backend.clamp_state_norms(shape, layer.ssm, &norm.thresholds);
            }
            start = end;
        }
    }
}

/// Takes the ring's oldest `count` inputs out of the state, each decayed from when it was written
/// to now: weight `exp(L_now - L_k)`, a difference of f64 running sums.
fn retract(backend: &dyn Backend, shape: &SsmShape, state: &mut [f32], ring: &mut Ring, count: usize, log_now: &[f64], scratch: &mut RetractScratch) {
    let RetractScratch { xdt, b, log_cum, weights } = scratch;
    ring.pop_oldest(count, xdt, b, log_cum);
    let heads = shape.heads;
    weights.clear();
    weights.extend(log_cum.iter().enumerate().map(|(i, &l)| (log_now[i % heads] - l).exp() as f32));
    backend.retract_inputs(*shape, state, xdt, b, weights);
}

/// Buffers of [`retract`], kept across the window moves of one forward pass.
#[derive(Default)]
struct RetractScratch {
    xdt: Vec<f32>,
    b: Vec<f32>,
    log_cum: Vec<f64>,
    weights: Vec<f32>,
}

/// Splits conv output rows `[x | B | C]` into three contiguous buffers.
fn split_xbc(xbc: &[f32], conv_dim: usize, inner: usize, bc: usize, x: &mut [f32], b: &mut [f32], c: &mut [f32]) {
    let parts = x.par_chunks_mut(inner).zip(b.par_chunks_mut(bc)).zip(c.par_chunks_mut(bc));
    parts.zip(xbc.par_chunks(conv_dim)).with_min_len(COPY_MIN_ROWS).for_each(|(((x, b), c), row)| {
        x.copy_from_slice(&row[..inner]);
        b.copy_from_slice(&row[inner..inner + bc]);
        c.copy_from_slice(&row[inner + bc..]);
    });
}

/// Rows per task of the copies between a block's ops (in_proj's output split three ways, the
/// conv's output split three ways, the residual add): at prefill sizes each moves tens of MB
/// per layer, in parallel; a decode step's single row stays on the calling thread.
const COPY_MIN_ROWS: usize = 64;
