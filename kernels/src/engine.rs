//! What the model runs on: the ops of a forward pass on [`Buffer`]s that live where the engine
//! computes. Host backends ([`Backend`] on slices: the CPU, the naive reference) become an engine
//! through [`HostEngine`], which hands their ops the buffers' host memory as it is; a GPU backend
//! supplies an engine whose buffers stay on the device ([`Backend::engine`]), so a forward pass
//! is a sequence of launches with only the logits coming back.

use std::ops::Range;
use std::sync::Arc;

use crate::{Backend, Buffer, DtLimit, HostArray, Matrix, Recurrence, ScanInputs, SsmShape, Traffic, View, ViewMut};

/// One step of the per-token dt transform of a mitigation plan, per head (`[H]` each).
#[derive(Clone, Debug, PartialEq)]
pub enum DtStep {
    Clamp { min: Vec<f32>, max: Vec<f32> },
    Scale(Vec<f32>),
}

/// Per-head parameters of one layer's recurrence (see [`Recurrence`]), as views.
#[derive(Clone, Copy)]
pub struct RecurrenceViews<'a> {
    pub a: View<'a>,
    pub log_decay_offset: View<'a>,
    pub d: View<'a>,
}

impl<'a> RecurrenceViews<'a> {
    /// The host slices; panics on device memory.
    pub fn host(self) -> Recurrence<'a> {
        Recurrence { a: self.a.host(), log_decay_offset: self.log_decay_offset.host(), d: self.d.host() }
    }
}

/// Per-token inputs of a scan (see [`ScanInputs`]), as views.
#[derive(Clone, Copy)]
pub struct ScanViews<'a> {
    pub x: View<'a>,
    pub dt: View<'a>,
    pub b: View<'a>,
    pub c: View<'a>,
}

impl<'a> ScanViews<'a> {
    pub fn tokens(&self, shape: &SsmShape) -> usize {
        self.dt.len() / shape.heads
    }

    /// The inputs of tokens `range` only.
    pub fn slice(self, shape: &SsmShape, range: Range<usize>) -> ScanViews<'a> {
        let (inner, bc, h) = (shape.inner(), shape.bc_width(), shape.heads);
        ScanViews {
            x: self.x.slice(range.start * inner..range.end * inner),
            dt: self.dt.slice(range.start * h..range.end * h),
            b: self.b.slice(range.start * bc..range.end * bc),
            c: self.c.slice(range.start * bc..range.end * bc),
        }
    }

    /// The host slices; panics on device memory.
    pub fn host(self) -> ScanInputs<'a> {
        ScanInputs { x: self.x.host(), dt: self.dt.host(), b: self.b.host(), c: self.c.host() }
    }
}

/// The ops of a Mamba-2 forward pass on buffers the engine made ([`Engine::zeros`],
/// [`Engine::upload`], [`Engine::adopt`]). Shapes are those of the [`Backend`] op of the same
/// name. Views of host memory are accepted everywhere (a device engine uploads them); a host
/// engine given device memory panics (a caller bug).
pub trait Engine: Send + Sync {
    /// The backend's name.
    fn name(&self) -> &'static str;

    /// See [`Backend::run`].
    fn run(&self, work: &mut (dyn FnMut() + Send));

    /// See [`Backend::preferred_chunk`].
    fn preferred_chunk(&self) -> Option<usize>;

    /// See [`Backend::concurrent_sequences`].
    fn concurrent_sequences(&self) -> bool;

    /// See [`Backend::device_failure`].
    fn device_failure(&self) -> Option<String>;

    /// See [`Backend::traffic`].
    fn traffic(&self) -> Traffic;

    /// `len` zeros where this engine computes.
    fn zeros(&self, len: usize) -> Buffer;

    /// A copy of `values` where this engine computes (parameters, at load).
    fn upload(&self, values: &[f32]) -> Buffer;

    /// Moves `buffer` where this engine computes, if it is elsewhere (a state loaded from a file,
    /// or forked on another device).
    fn adopt(&self, buffer: &mut Buffer);

    /// Makes `buffer` hold `len` values (their contents unspecified), keeping its memory when
    /// it is large enough.
    fn resize(&self, buffer: &mut Buffer, len: usize);

    /// Copies `from` to the host (a blocking read on a device).
    fn download(&self, from: View, out: &mut [f32]);

    fn linear(&self, input: View, weight: &Matrix, bias: Option<View>, out: ViewMut);

    /// `out = rms_norm(input) · weightᵀ (+ bias)` (the RMSNorm's weight `norm`, `eps`): a product
    /// with the norm in front. An engine that cannot normalise inside the product writes the
    /// normalised input to `normed` (`input`'s size) first.
    #[allow(clippy::too_many_arguments)]
    fn linear_after_norm(&self, input: View, norm: View, eps: f32, weight: &Matrix, bias: Option<View>, mut normed: ViewMut, out: ViewMut) {
        self.rms_norm(input, norm, eps, normed.reborrow());
        self.linear(normed.as_view(), weight, bias, out);
    }

    /// `out += input · weightᵀ (+ bias)`: a product with the residual add as its epilogue. An
    /// engine that cannot add inside the product puts it in `scratch` (`out`'s size) first.
    fn linear_add(&self, input: View, weight: &Matrix, bias: Option<View>, mut scratch: ViewMut, out: ViewMut) {
        self.linear(input, weight, bias, scratch.reborrow());
        self.add(out, scratch.as_view());
    }
    fn rms_norm(&self, x: View, weight: View, eps: f32, out: ViewMut);
    #[allow(clippy::too_many_arguments)]
    fn gated_rms_norm(&self, y: View, z: View, weight: View, group_size: usize, eps: f32, out: ViewMut);
    fn causal_conv1d(&self, xbc: View, conv_state: ViewMut, weight: View, bias: Option<View>, channels: usize, out: ViewMut);
    fn ssd_scan(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, state: ViewMut, chunk: usize, y: ViewMut);
    fn ssm_step(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, state: ViewMut, y: ViewMut);
    fn clamp_state_norms(&self, shape: SsmShape, state: ViewMut, thresholds: &[f32]);
    fn retract_inputs(&self, shape: SsmShape, state: ViewMut, xdt: &[f32], b: &[f32], weights: &[f32]);

    /// `out[t] = table[ids[t]]` (`[T, D]`).
    fn embed(&self, table: &Matrix, ids: &[u32], out: ViewMut);

    /// Columns `first..first + W` of each row of `src` (rows of `src_width`) into `out`
    /// (`[rows, W]`, W = `out.len() / rows`).
    fn copy_columns(&self, src: View, src_width: usize, first: usize, out: ViewMut);

    /// Splits each of the `rows` rows of `src` into three parts side by side, in one pass: row
    /// `t` of `src` is row `t` of `parts[0]`, then of `parts[1]`, then of `parts[2]` (each
    /// part's width is its length over `rows`; the widths add up to `src`'s). in_proj's output
    /// into z, xBC and dt; the conv's into x, B and C. No part may be empty.
    fn split_columns(&self, src: View, rows: usize, parts: [ViewMut; 3]);

    /// `dt[T, H] = steps(clamp(softplus(dt_raw + dt_bias)))`, the steps in order.
    fn prepare_dt(&self, dt_raw: View, dt_bias: View, limit: DtLimit, steps: &[DtStep], dt: ViewMut);

    /// `x *= factor`.
    fn scale(&self, x: ViewMut, factor: f32);

    /// Adds `Σ_t (dt[t, h] · a[h] + offset[h])` to the running log-decay sums a state keeps per
    /// head: to `totals[h]` (f64; each term rounded to f32 first, as the scan computes it), or,
    /// on an engine that computes away from the host and given `deferred`, to `deferred[h]`
    /// (f32, in the engine's memory), for the model to read back with the pass's other results.
    fn add_log_decay(&self, dt: View, a: &[f32], offset: &[f32], totals: &mut [f64], deferred: Option<ViewMut>);

    /// `x[i] = value`.
    fn fill(&self, x: ViewMut, value: f32);

    /// Sets `flag[0]` to 1 when any value of `x` is NaN or infinite, and leaves it otherwise: a
    /// check whose answer comes back with the pass's other reads.
    fn flag_non_finite(&self, x: View, flag: ViewMut);

    /// Copies each view to its host slice, all at once (one wait on a device).
    fn download_all(&self, parts: &mut [(View, &mut [f32])]) {
        for (from, out) in parts.iter_mut() {
            self.download(*from, out);
        }
    }

    /// Whether this engine's buffers are host memory.
    fn computes_on_host(&self) -> bool;

    /// The most values one of this engine's buffers holds.
    fn max_buffer(&self) -> usize {
        usize::MAX
    }

    /// `acc += x`.
    fn add(&self, acc: ViewMut, x: View);

    /// Whether any value of `x` is NaN or infinite.
    fn any_non_finite(&self, x: View) -> bool;
}

/// A host [`Backend`] as an [`Engine`]: buffers in host memory, each op handed their slices.
pub struct HostEngine<B: ?Sized> {
    backend: Arc<B>,
}

impl<B: Backend + ?Sized> HostEngine<B> {
    pub fn new(backend: Arc<B>) -> HostEngine<B> {
        HostEngine { backend }
    }
}

/// Rows per task of the host copies between ops (a decode step's single row stays on the
/// calling thread).
const COPY_MIN_ROWS: usize = 64;

impl<B: Backend + ?Sized> Engine for HostEngine<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn run(&self, work: &mut (dyn FnMut() + Send)) {
        self.backend.run(work)
    }

    fn preferred_chunk(&self) -> Option<usize> {
        self.backend.preferred_chunk()
    }

    fn concurrent_sequences(&self) -> bool {
        self.backend.concurrent_sequences()
    }

    fn device_failure(&self) -> Option<String> {
        self.backend.device_failure()
    }

    fn traffic(&self) -> Traffic {
        self.backend.traffic()
    }

    fn zeros(&self, len: usize) -> Buffer {
        Buffer::Host(HostArray::heap_zeros(len))
    }

    fn upload(&self, values: &[f32]) -> Buffer {
        Buffer::Host(HostArray::from_slice(values))
    }

    fn adopt(&self, buffer: &mut Buffer) {
        if !buffer.is_host() {
            *buffer = Buffer::Host(buffer.to_host());
        }
    }

    fn resize(&self, buffer: &mut Buffer, len: usize) {
        match buffer {
            Buffer::Host(values) => values.resize(len),
            Buffer::Device(_) => *buffer = Buffer::Host(HostArray::heap_zeros(len)),
        }
    }

    fn download(&self, from: View, out: &mut [f32]) {
        out.copy_from_slice(from.host());
    }

    fn linear(&self, input: View, weight: &Matrix, bias: Option<View>, out: ViewMut) {
        self.backend.linear(input.host(), weight, bias.map(View::host), out.host());
    }

    fn rms_norm(&self, x: View, weight: View, eps: f32, out: ViewMut) {
        self.backend.rms_norm(x.host(), weight.host(), eps, out.host());
    }

    fn gated_rms_norm(&self, y: View, z: View, weight: View, group_size: usize, eps: f32, out: ViewMut) {
        self.backend.gated_rms_norm(y.host(), z.host(), weight.host(), group_size, eps, out.host());
    }

    fn causal_conv1d(&self, xbc: View, conv_state: ViewMut, weight: View, bias: Option<View>, channels: usize, out: ViewMut) {
        self.backend.causal_conv1d(xbc.host(), conv_state.host(), weight.host(), bias.map(View::host), channels, out.host());
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, state: ViewMut, chunk: usize, y: ViewMut) {
        self.backend.ssd_scan(shape, recurrence.host(), inputs.host(), state.host(), chunk, y.host());
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, state: ViewMut, y: ViewMut) {
        self.backend.ssm_step(shape, recurrence.host(), inputs.host(), state.host(), y.host());
    }

    fn clamp_state_norms(&self, shape: SsmShape, state: ViewMut, thresholds: &[f32]) {
        self.backend.clamp_state_norms(shape, state.host(), thresholds);
    }

    fn retract_inputs(&self, shape: SsmShape, state: ViewMut, xdt: &[f32], b: &[f32], weights: &[f32]) {
        self.backend.retract_inputs(shape, state.host(), xdt, b, weights);
    }

    fn embed(&self, table: &Matrix, ids: &[u32], out: ViewMut) {
        let out = out.host();
        let width = table.cols();
        for (row, &id) in out.chunks_exact_mut(width).zip(ids) {
            table.row_f32(id as usize, row);
        }
    }

    fn split_columns(&self, src: View, rows: usize, parts: [ViewMut; 3]) {
        use rayon::prelude::*;
        let Some(widths) = split_widths(src.len(), rows, &parts) else { return };
        let src = src.host();
        let [a, b, c] = parts.map(|part| part.host());
        src.par_chunks(src.len() / rows)
            .zip(a.par_chunks_mut(widths[0]))
            .zip(b.par_chunks_mut(widths[1]))
            .zip(c.par_chunks_mut(widths[2]))
            .with_min_len(COPY_MIN_ROWS)
            .for_each(|(((row, a), b), c)| {
                let (first, rest) = row.split_at(a.len());
                let (second, third) = rest.split_at(b.len());
                a.copy_from_slice(first);
                b.copy_from_slice(second);
                c.copy_from_slice(third);
            });
    }

    fn copy_columns(&self, src: View, src_width: usize, first: usize, out: ViewMut) {
        use rayon::prelude::*;
        let (src, out) = (src.host(), out.host());
        if out.is_empty() {
            return;
        }
        let rows = src.len() / src_width;
        let width = out.len() / rows;
        out.par_chunks_mut(width).zip(src.par_chunks(src_width)).with_min_len(COPY_MIN_ROWS).for_each(|(out, row)| {
            out.copy_from_slice(&row[first..first + width]);
        });
    }

    fn prepare_dt(&self, dt_raw: View, dt_bias: View, limit: DtLimit, steps: &[DtStep], dt: ViewMut) {
        let (dt_bias, dt) = (dt_bias.host(), dt.host());
        self.backend.discretize_dt(dt_raw.host(), dt_bias, limit, dt);
        for row in dt.chunks_exact_mut(dt_bias.len()) {
            for step in steps {
                match step {
                    DtStep::Clamp { min, max } => {
                        for ((v, &lo), &hi) in row.iter_mut().zip(min).zip(max) {
                            *v = v.max(lo).min(hi);
                        }
                    }
                    DtStep::Scale(factors) => {
                        for (v, f) in row.iter_mut().zip(factors) {
                            *v *= f;
                        }
                    }
                }
            }
        }
    }

    fn scale(&self, x: ViewMut, factor: f32) {
        x.host().iter_mut().for_each(|v| *v *= factor);
    }

    fn add_log_decay(&self, dt: View, a: &[f32], offset: &[f32], totals: &mut [f64], _deferred: Option<ViewMut>) {
        for row in dt.host().chunks_exact(a.len()) {
            for (h, &dt) in row.iter().enumerate() {
                totals[h] += (dt * a[h] + offset[h]) as f64;
            }
        }
    }

    fn add(&self, acc: ViewMut, x: View) {
        use rayon::prelude::*;
        let (acc, x) = (acc.host(), x.host());
        // Rows of 1024 values per task: a prefill's residual add moves tens of MB per layer.
        acc.par_chunks_mut(1024).zip(x.par_chunks(1024)).with_min_len(COPY_MIN_ROWS).for_each(|(acc, x)| {
            acc.iter_mut().zip(x).for_each(|(a, v)| *a += v);
        });
    }

    fn any_non_finite(&self, x: View) -> bool {
        x.host().iter().any(|v| !v.is_finite())
    }

    fn fill(&self, x: ViewMut, value: f32) {
        x.host().fill(value);
    }

    fn flag_non_finite(&self, x: View, flag: ViewMut) {
        if self.any_non_finite(x) {
            flag.host()[0] = 1.0;
        }
    }

    fn computes_on_host(&self) -> bool {
        true
    }
}

/// The widths of [`Engine::split_columns`]'s parts, `None` when there is nothing to split. Panics
/// (a caller's bug) when the parts do not add up to the source, are ragged or one is empty.
pub fn split_widths(src_len: usize, rows: usize, parts: &[ViewMut; 3]) -> Option<[usize; 3]> {
    let lens = parts.each_ref().map(ViewMut::len);
    assert_eq!(lens.iter().sum::<usize>(), src_len, "split_columns: the parts do not add up to the source");
    if rows == 0 || src_len == 0 {
        return None;
    }
    assert!(lens.iter().all(|&len| len > 0 && len % rows == 0), "split_columns: an empty or ragged part");
    Some(lens.map(|len| len / rows))
}
