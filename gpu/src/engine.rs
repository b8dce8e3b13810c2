//! The GPU as a model runs on it: states, activations and parameters in device buffers, each op
//! a few launches on them, nothing read back but what the model asks for (the logits, and the
//! few values the host keeps per pass; see `Model`).
//!
//! Views into the middle of a buffer (a layer's part of the state, a segment of a scan) cannot
//! be bound as they are (a binding's offset must be aligned, to 256 bytes on many drivers), so the
//! ops that take whole buffers stage such a view through a scratch buffer on the device; the
//! copies and the small kernels address offsets themselves.

use std::any::Any;
use std::sync::Arc;

use coil_kernels::{
    Buffer, Cpu, DeviceArray, DeviceView, DtLimit, DtStep, Engine, Matrix, RecurrenceViews, ScanViews, SsmShape, Traffic, View,
    ViewMut, WeightDtype,
};
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::backend::{Core, Placed, RowBlock, ScanArgs, FEW_ROWS};
use crate::kernels;

/// A buffer on the device.
pub(crate) struct GpuArray<R: Runtime> {
    core: Arc<Core<R>>,
    handle: Handle,
    len: usize,
}

impl<R: Runtime> DeviceArray for GpuArray<R> {
    fn len(&self) -> usize {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn read(&self, offset: usize, out: &mut [f32]) {
        self.core.read("a buffer read back", &self.handle, offset, out);
    }

    fn duplicate(&self) -> Box<dyn DeviceArray> {
        let handle = self.core.alloc("a copy of a state", self.len);
        self.core.copy(&self.handle, 0, &handle, 0, self.len);
        Box::new(GpuArray { core: self.core.clone(), handle, len: self.len })
    }
}

/// The engine of a [`crate::Gpu`].
pub(crate) struct GpuEngine<R: Runtime> {
    core: Arc<Core<R>>,
}

/// A buffer an op updates in place at an offset (a layer's part of a state): ours as it is, or a
/// host view uploaded and read back.
struct InPlace {
    handle: Handle,
    offset: usize,
    host: Option<Target>,
}

impl InPlace {
    fn at(&self) -> (&Handle, usize) {
        (&self.handle, self.offset)
    }

    fn finish<R: Runtime>(self, engine: &GpuEngine<R>, view: ViewMut, what: &str) {
        if let Some(target) = self.host {
            engine.finish(target, view, what);
        }
    }
}

/// Where an op writes: straight into a device buffer, into scratch copied into a range of one
/// afterwards, or into scratch read back into host memory.
enum Target {
    Whole(Handle),
    Range { scratch: Handle, array: Handle, offset: usize },
    Host(Handle),
}

impl Target {
    fn handle(&self) -> &Handle {
        match self {
            Target::Whole(handle) | Target::Range { scratch: handle, .. } | Target::Host(handle) => handle,
        }
    }
}

impl<R: Runtime> GpuEngine<R> {
    pub(crate) fn new(core: Arc<Core<R>>) -> GpuEngine<R> {
        GpuEngine { core }
    }

    /// This engine's array behind a device view, if it is one of ours.
    fn ours<'a>(&self, view: &DeviceView<'a>) -> Option<&'a GpuArray<R>> {
        view.array.as_any().downcast_ref::<GpuArray<R>>().filter(|array| Arc::ptr_eq(&array.core, &self.core))
    }

    /// The buffer and offset of `view` on this device; a host view (or another device's) is
    /// uploaded first.
    fn place(&self, view: View, what: &str) -> (Handle, usize) {
        match view {
            View::Device(device) => match self.ours(&device) {
                Some(array) => (array.handle.clone(), device.offset),
                None => {
                    let mut values = vec![0.0; device.len];
                    device.array.read(device.offset, &mut values);
                    (self.core.upload(what, &values), 0)
                }
            },
            View::Host(values) => (self.core.upload(what, values), 0),
        }
    }

    /// `view` as a whole buffer of its own (staged through scratch when it is part of one).
    fn whole(&self, view: View, what: &str) -> Handle {
        let (handle, offset) = self.place(view, what);
        let len = view.len();
        // A kernel reads only the first `len` values of what it is given.
        if offset == 0 {
            return handle;
        }
        let scratch = self.core.alloc(what, len);
        self.core.copy(&handle, offset, &scratch, 0, len);
        scratch
    }

    /// Where an op writes `view`; with `read_first`, the scratch starts as the view's values
    /// (a state updated in place).
    fn target(&self, view: &ViewMut, what: &str, read_first: bool) -> Target {
        let len = view.len();
        match view {
            ViewMut::Device(device) => match self.ours(device) {
                // A kernel writes only the first `len` values of what it is given.
                Some(array) if device.offset == 0 => Target::Whole(array.handle.clone()),
                Some(array) => {
                    let scratch = self.core.alloc(what, len);
                    if read_first {
                        self.core.copy(&array.handle, device.offset, &scratch, 0, len);
                    }
                    Target::Range { scratch, array: array.handle.clone(), offset: device.offset }
                }
                None => panic!("an engine was handed another device's buffer to write"),
            },
            ViewMut::Host(values) => {
                Target::Host(if read_first { self.core.upload(what, values) } else { self.core.alloc(what, len) })
            }
        }
    }

    /// `view` to update in place where it lives.
    fn in_place(&self, view: &ViewMut, what: &str) -> InPlace {
        self.addressed(view, what, true)
    }

    /// `view` to write where it lives, at its offset, for a kernel that addresses offsets (its
    /// old values are not needed).
    fn output_at(&self, view: &ViewMut, what: &str) -> InPlace {
        self.addressed(view, what, false)
    }

    fn addressed(&self, view: &ViewMut, what: &str, read_first: bool) -> InPlace {
        if let ViewMut::Device(device) = view {
            if let Some(array) = self.ours(device) {
                return InPlace { handle: array.handle.clone(), offset: device.offset, host: None };
            }
        }
        let target = self.target(view, what, read_first);
        InPlace { handle: target.handle().clone(), offset: 0, host: Some(target) }
    }

    /// Puts what an op wrote into `target` where `view` says.
    fn finish(&self, target: Target, view: ViewMut, what: &str) {
        match (target, view) {
            (Target::Whole(_), _) => {}
            (Target::Range { scratch, array, offset }, view) => self.core.copy(&scratch, 0, &array, offset, view.len()),
            (Target::Host(scratch), ViewMut::Host(values)) => self.core.read(what, &scratch, 0, values),
            (Target::Host(_), ViewMut::Device(_)) => unreachable!("a host target is made for a host view"),
        }
    }

    fn array(&self, handle: Handle, len: usize) -> Buffer {
        Buffer::Device(Box::new(GpuArray { core: self.core.clone(), handle, len }))
    }

    /// `out = input · weightᵀ (+ bias)`, or `out +=` that when `accumulate`; `norm` (weight, eps;
    /// a few rows only) takes the input through an RMSNorm first, inside the product.
    fn product(&self, input: View, weight: &Matrix, bias: Option<View>, mut out: ViewMut, accumulate: bool, norm: Option<(View, f32)>) {
        let core = &*self.core;
        let (k, n) = (weight.cols(), weight.rows());
        let rows = input.len() / k;
        if rows == 0 {
            return;
        }
        if k > core.max_values {
            // Not one row of the weight fits a buffer: computed on the host (`linear_add` adds
            // afterwards).
            debug_assert!(!accumulate && norm.is_none(), "a host product neither accumulates nor normalises");
            let mut x = Vec::new();
            let x = input.on_host(&mut x).to_vec();
            let b = bias.map(|b| b.on_host(&mut Vec::new()).to_vec());
            let mut y = vec![0.0; rows * n];
            coil_kernels::Backend::linear(&Cpu, &x, weight, b.as_deref(), &mut y);
            let target = self.target(&out, "a linear layer's output", false);
            if let Target::Host(_) = target {
                out.reborrow().host().copy_from_slice(&y);
            } else {
                let up = core.upload("a linear layer's output", &y);
                core.copy(&up, 0, target.handle(), 0, y.len());
                self.finish(target, out, "a linear layer");
            }
            return;
        }
        let w = core.matrix(weight);
        let bias = bias.map(|b| self.whole(b, "a linear layer's bias"));
        let norm = norm.map(|(w, eps)| (self.whole(w, "an RMSNorm's weight"), eps));
        // Row blocks whose input and output each fit one buffer (logits of a long piece do not).
        let block = (core.max_values / n.max(k)).max(1);
        for first in (0..rows).step_by(block) {
            let end = rows.min(first + block);
            let x = self.whole(input.slice(first * k..end * k), "a linear layer's input");
            let mut part = out.slice_mut(first * n..end * n);
            let target = self.target(&part, "a linear layer's output", accumulate);
            core.linear(&x, end - first, &w, bias.as_ref(), k, n, target.handle(), accumulate, norm.as_ref().map(|(w, eps)| (w, *eps)));
            self.finish(target, part.reborrow(), &format!("a linear layer ({} x {k} times {n} x {k})", end - first));
        }
    }

    fn launch_elementwise(&self, len: usize) -> Option<(CubeCount, CubeDim)> {
        if len == 0 || self.core.failed() {
            return None;
        }
        self.core.launched(1);
        Some(Core::<R>::elementwise(len))
    }

    /// The embedding rows of `tokens` ids that fall in `block` (held as `W`) into `out`.
    fn gather<W: Float>(&self, block: &RowBlock, ids: &Handle, tokens: usize, width: usize, out: &Handle) {
        if let Some((count, dim)) = self.launch_elementwise(tokens * width) {
            unsafe {
                kernels::gather_rows::launch_unchecked::<W, R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(block.handle.clone(), block.rows * width),
                    ArrayArg::from_raw_parts(ids.clone(), tokens),
                    ArrayArg::from_raw_parts(out.clone(), tokens * width),
                    0,
                    block.first_row as u32,
                    block.rows as u32,
                    width as u32,
                    tokens as u32,
                );
            }
        }
    }

    /// Launches `kernel` (one thread per value) on `x` where it lives: it gets the client, the
    /// grid, the buffer, the view's offset and its length.
    fn update_in_place(
        &self,
        mut x: ViewMut,
        what: &str,
        kernel: impl FnOnce(&ComputeClient<R>, CubeCount, CubeDim, ArrayArg<R>, u32, u32),
    ) {
        let len = x.len();
        let target = self.in_place(&x, what);
        if let Some((count, dim)) = self.launch_elementwise(len) {
            let (handle, offset) = target.at();
            // SAFETY: the buffer holds `offset + len` values (the view lies inside it).
            let values = unsafe { ArrayArg::from_raw_parts(handle.clone(), offset + len) };
            kernel(&self.core.client, count, dim, values, offset as u32, len as u32);
        }
        target.finish(self, x.reborrow(), what);
    }

    /// The scan's device arguments for `inputs` and `recurrence`.
    fn scan_args(&self, recurrence: RecurrenceViews, inputs: ScanViews) -> ScanArgs {
        // The kernel takes offsets into its per-token arrays, so a sequence's rows or a segment
        // are read where they are.
        let arg = |view: View, what: &str| {
            let (handle, offset) = self.place(view, what);
            Placed { handle, offset, len: view.len() }
        };
        ScanArgs {
            x: arg(inputs.x, "the scan's x"),
            dt: arg(inputs.dt, "the scan's dt"),
            a: arg(recurrence.a, "the scan's A"),
            offset: arg(recurrence.log_decay_offset, "the scan's log-decay offset"),
            b: arg(inputs.b, "the scan's B"),
            c: arg(inputs.c, "the scan's C"),
            d: arg(recurrence.d, "the scan's D"),
        }
    }
}

impl<R: Runtime> Engine for GpuEngine<R> {
    fn name(&self) -> &'static str {
        self.core.name
    }

    fn run(&self, work: &mut (dyn FnMut() + Send)) {
        work()
    }

    fn preferred_chunk(&self) -> Option<usize> {
        None
    }

    fn concurrent_sequences(&self) -> bool {
        false
    }

    fn device_failure(&self) -> Option<String> {
        self.core.failure()
    }

    fn traffic(&self) -> Traffic {
        self.core.traffic()
    }

    fn zeros(&self, len: usize) -> Buffer {
        let handle = self.core.alloc("a working buffer of the pass (fewer tokens per pass, --piece-len, need less)", len);
        if let Some((count, dim)) = self.launch_elementwise(len) {
            unsafe {
                kernels::fill::launch_unchecked::<R>(&self.core.client, count, dim, ArrayArg::from_raw_parts(handle.clone(), len), 0, len as u32, 0.0);
            }
        }
        self.array(handle, len)
    }

    fn upload(&self, values: &[f32]) -> Buffer {
        let handle = self.core.send("a parameter", values, &self.core.counters.load_bytes_up);
        self.array(handle, values.len())
    }

    fn adopt(&self, buffer: &mut Buffer) {
        let here = match &*buffer {
            Buffer::Device(array) => array.as_any().downcast_ref::<GpuArray<R>>().is_some_and(|a| Arc::ptr_eq(&a.core, &self.core)),
            Buffer::Host(_) => false,
        };
        if here {
            return;
        }
        // A new stream's state is zeros: made on the device, not sent.
        if let Buffer::Host(values) = &*buffer {
            if values.iter().all(|&v| v == 0.0) {
                *buffer = self.zeros(values.len());
                return;
            }
        }
        let values = buffer.to_host();
        let handle = self.core.upload("a state", &values);
        *buffer = self.array(handle, values.len());
    }

    fn resize(&self, buffer: &mut Buffer, len: usize) {
        if buffer.len() != len || buffer.is_host() {
            *buffer = self.array(self.core.alloc("a working buffer of the pass (fewer tokens per pass, --piece-len, need less)", len), len);
        }
    }

    fn add_log_decay(&self, dt: View, a: &[f32], offset: &[f32], totals: &mut [f64], deferred: Option<ViewMut>) {
        let heads = a.len();
        let tokens = dt.len() / heads;
        if tokens == 0 {
            return;
        }
        let dt = self.whole(dt, "dt");
        let (a, offset) = (self.core.upload("A", a), self.core.upload("the log-decay offset", offset));
        let device = deferred.as_ref().and_then(|d| match d {
            ViewMut::Device(device) => self.ours(device).map(|array| (array.handle.clone(), device.offset)),
            ViewMut::Host(_) => None,
        });
        let (sums, sums_offset, accumulate) = match &device {
            Some((handle, offset)) => (handle.clone(), *offset, true),
            None => (self.core.alloc("log-decay sums", heads), 0, false),
        };
        if let Some((count, dim)) = self.launch_elementwise(heads) {
            unsafe {
                kernels::log_decay_sums::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(dt, tokens * heads),
                    ArrayArg::from_raw_parts(a, heads),
                    ArrayArg::from_raw_parts(offset, heads),
                    ArrayArg::from_raw_parts(sums.clone(), sums_offset + heads),
                    sums_offset as u32,
                    heads as u32,
                    tokens as u32,
                    accumulate,
                );
            }
        }
        if device.is_none() {
            let mut host = vec![0.0f32; heads];
            self.core.read("the log-decay sums", &sums, 0, &mut host);
            totals.iter_mut().zip(host).for_each(|(total, sum)| *total += sum as f64);
        }
    }

    fn fill(&self, x: ViewMut, value: f32) {
        self.update_in_place(x, "a fill", |client, count, dim, values, offset, len| unsafe {
            kernels::fill::launch_unchecked::<R>(client, count, dim, values, offset, len, value);
        });
    }

    fn flag_non_finite(&self, x: View, mut flag: ViewMut) {
        let len = x.len();
        let (handle, offset) = self.place(x, "values to check");
        let target = self.in_place(&flag, "a flag");
        if let Some((count, dim)) = self.launch_elementwise(len) {
            let (flag_handle, flag_offset) = target.at();
            unsafe {
                kernels::find_non_finite::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(handle, offset + len),
                    ArrayArg::from_raw_parts(flag_handle.clone(), flag_offset + 1),
                    offset as u32,
                    len as u32,
                    flag_offset as u32,
                );
            }
        }
        target.finish(self, flag.reborrow(), "a flag");
    }

    fn download_all(&self, parts: &mut [(View, &mut [f32])]) {
        let mut reads = Vec::new();
        for (from, out) in parts.iter_mut() {
            match *from {
                View::Host(values) => out.copy_from_slice(values),
                View::Device(device) => match self.ours(&device) {
                    Some(array) => reads.push((array.handle.clone(), device.offset, &mut **out)),
                    None => device.array.read(device.offset, out),
                },
            }
        }
        self.core.read_all("a pass's results", &mut reads);
    }

    fn computes_on_host(&self) -> bool {
        false
    }

    fn max_buffer(&self) -> usize {
        self.core.max_values
    }

    fn download(&self, from: View, out: &mut [f32]) {
        match from {
            View::Host(values) => out.copy_from_slice(values),
            View::Device(device) => device.array.read(device.offset, out),
        }
    }

    fn linear(&self, input: View, weight: &Matrix, bias: Option<View>, out: ViewMut) {
        self.product(input, weight, bias, out, false, None);
    }

    fn linear_after_norm(&self, input: View, norm: View, eps: f32, weight: &Matrix, bias: Option<View>, mut normed: ViewMut, out: ViewMut) {
        let rows = input.len() / weight.cols().max(1);
        if rows > FEW_ROWS || weight.cols() > self.core.max_values {
            // Prefill's rows go through the tiled product, which takes its input as it is.
            self.rms_norm(input, norm, eps, normed.reborrow());
            return self.linear(normed.as_view(), weight, bias, out);
        }
        self.product(input, weight, bias, out, false, Some((norm, eps)));
    }

    fn linear_add(&self, input: View, weight: &Matrix, bias: Option<View>, mut scratch: ViewMut, out: ViewMut) {
        if weight.cols() > self.core.max_values {
            // Not one row of the weight fits a buffer: the product runs on the host (`product`),
            // the add after it.
            self.linear(input, weight, bias, scratch.reborrow());
            self.add(out, scratch.as_view());
            return;
        }
        self.product(input, weight, bias, out, true, None);
    }

    fn rms_norm(&self, x: View, weight: View, eps: f32, out: ViewMut) {
        let width = weight.len();
        let (x, w) = (self.whole(x, "an RMSNorm's input"), self.whole(weight, "an RMSNorm's weight"));
        let target = self.target(&out, "an RMSNorm's output", false);
        self.core.norm(&x, None, &w, target.handle(), out.len(), width, width, eps);
        self.finish(target, out, "an RMSNorm");
    }

    fn gated_rms_norm(&self, y: View, z: View, weight: View, group_size: usize, eps: f32, out: ViewMut) {
        let width = weight.len();
        let (y, z) = (self.whole(y, "a gated RMSNorm's input"), self.whole(z, "a gated RMSNorm's gate"));
        let w = self.whole(weight, "a gated RMSNorm's weight");
        let target = self.target(&out, "a gated RMSNorm's output", false);
        self.core.norm(&y, Some(&z), &w, target.handle(), out.len(), group_size, width, eps);
        self.finish(target, out, "a gated RMSNorm");
    }

    fn causal_conv1d(&self, xbc: View, mut conv_state: ViewMut, weight: View, bias: Option<View>, channels: usize, mut out: ViewMut) {
        let (tokens, taps) = (xbc.len() / channels, conv_state.len() / channels);
        // Input and output are addressed at their offsets (a sequence's rows of a batch).
        let x = self.place(xbc, "the conv's input");
        let w = self.whole(weight, "the conv weight");
        let b = bias.map(|b| self.whole(b, "the conv bias"));
        let state = self.in_place(&conv_state, "the conv state");
        let y = self.output_at(&out, "the conv's output");
        self.core.conv((&x.0, x.1), state.at(), &w, b.as_ref(), y.at(), tokens, channels, taps);
        y.finish(self, out.reborrow(), "the causal conv");
        state.finish(self, conv_state.reborrow(), "the conv state");
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, mut state: ViewMut, _chunk: usize, mut y: ViewMut) {
        let tokens = inputs.tokens(&shape);
        let args = self.scan_args(recurrence, inputs);
        let state_at = self.in_place(&state, "the ssm state");
        let y_at = self.output_at(&y, "the scan's output");
        self.core.scan(shape, &args, state_at.at(), y_at.at(), tokens);
        y_at.finish(self, y.reborrow(), "the selective scan");
        state_at.finish(self, state.reborrow(), "the ssm state");
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: RecurrenceViews, inputs: ScanViews, state: ViewMut, y: ViewMut) {
        self.ssd_scan(shape, recurrence, inputs, state, 1, y);
    }

    fn clamp_state_norms(&self, shape: SsmShape, mut state: ViewMut, thresholds: &[f32]) {
        let target = self.target(&state, "the ssm state", true);
        let tau = self.core.upload("state-norm thresholds", thresholds);
        if !self.core.failed() {
            self.core.launched(1);
            unsafe {
                kernels::clamp_head_norms::launch_unchecked::<R>(
                    &self.core.client,
                    Core::<R>::grid(shape.heads),
                    CubeDim::new_1d(kernels::REDUCE_THREADS),
                    ArrayArg::from_raw_parts(target.handle().clone(), shape.state_len()),
                    ArrayArg::from_raw_parts(tau, shape.heads),
                    (shape.head_dim * shape.d_state) as u32,
                    shape.heads as u32,
                );
            }
        }
        self.finish(target, state.reborrow(), "the state norm clamp");
    }

    fn retract_inputs(&self, shape: SsmShape, mut state: ViewMut, xdt: &[f32], b: &[f32], weights: &[f32]) {
        // The window's one host path: its history is on the host, and it acts once per window
        // step, not per token.
        let mut values = vec![0.0; state.len()];
        self.download(state.as_view(), &mut values);
        coil_kernels::Backend::retract_inputs(&Cpu, shape, &mut values, xdt, b, weights);
        let target = self.target(&state, "the ssm state", false);
        let up = self.core.upload("the ssm state", &values);
        self.core.copy(&up, 0, target.handle(), 0, values.len());
        self.finish(target, state.reborrow(), "the window's retraction");
    }

    fn embed(&self, table: &Matrix, ids: &[u32], out: ViewMut) {
        let width = table.cols();
        let table = self.core.matrix(table);
        let ids_handle = self.core.upload_ids(ids);
        let target = self.target(&out, "the embedded tokens", false);
        for block in &table.blocks {
            match table.dtype {
                WeightDtype::F32 => self.gather::<f32>(block, &ids_handle, ids.len(), width, target.handle()),
                WeightDtype::F16 => self.gather::<half::f16>(block, &ids_handle, ids.len(), width, target.handle()),
                WeightDtype::Bf16 => self.gather::<half::bf16>(block, &ids_handle, ids.len(), width, target.handle()),
            }
        }
        self.finish(target, out, "the embedding");
    }

    fn split_columns(&self, src: View, rows: usize, parts: [ViewMut; 3]) {
        let Some(widths) = coil_kernels::split_widths(src.len(), rows, &parts) else { return };
        let widths = widths.map(|w| w as u32);
        let (src_handle, src_offset) = self.place(src, "columns to split");
        let len = src.len();
        let outputs = parts.each_ref().map(|part| self.output_at(part, "split columns"));
        if let Some((count, dim)) = self.launch_elementwise(len) {
            // SAFETY (the arguments and the launch): each output is written from its offset to its
            // offset plus its length, inside its buffer; the kernel reads only `src`'s range.
            let arg = |out: &InPlace, part: &ViewMut| unsafe { ArrayArg::from_raw_parts(out.at().0.clone(), out.at().1 + part.len()) };
            unsafe {
                kernels::split_columns::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(src_handle, src_offset + len),
                    arg(&outputs[0], &parts[0]),
                    arg(&outputs[1], &parts[1]),
                    arg(&outputs[2], &parts[2]),
                    src_offset as u32,
                    outputs[0].at().1 as u32,
                    outputs[1].at().1 as u32,
                    outputs[2].at().1 as u32,
                    widths[0],
                    widths[1],
                    widths[2],
                    rows as u32,
                );
            }
        }
        for (out, part) in outputs.into_iter().zip(parts) {
            out.finish(self, part, "split columns");
        }
    }

    fn copy_columns(&self, src: View, src_width: usize, first: usize, out: ViewMut) {
        let rows = src.len() / src_width;
        if rows == 0 || out.is_empty() {
            return;
        }
        let width = out.len() / rows;
        let (src_handle, src_offset) = self.place(src, "columns to copy");
        let (dst, dst_offset, target) = match &out {
            ViewMut::Device(device) if self.ours(device).is_some() => (self.ours(device).unwrap().handle.clone(), device.offset, None),
            _ => {
                let target = self.target(&out, "copied columns", false);
                (target.handle().clone(), 0, Some(target))
            }
        };
        if let Some((count, dim)) = self.launch_elementwise(rows * width) {
            unsafe {
                kernels::copy_columns::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(src_handle, src_offset + src.len()),
                    ArrayArg::from_raw_parts(dst, dst_offset + rows * width),
                    src_offset as u32,
                    dst_offset as u32,
                    src_width as u32,
                    first as u32,
                    width as u32,
                    rows as u32,
                );
            }
        }
        if let Some(target) = target {
            self.finish(target, out, "copied columns");
        }
    }

    fn prepare_dt(&self, dt_raw: View, dt_bias: View, limit: DtLimit, steps: &[DtStep], mut dt: ViewMut) {
        let heads = dt_bias.len();
        let len = dt.len();
        let raw = self.whole(dt_raw, "dt before softplus");
        let bias = self.whole(dt_bias, "dt_bias");
        let target = self.target(&dt, "dt", false);
        if let Some((count, dim)) = self.launch_elementwise(len) {
            unsafe {
                kernels::softplus_dt::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(raw, len),
                    ArrayArg::from_raw_parts(bias, heads),
                    ArrayArg::from_raw_parts(target.handle().clone(), len),
                    heads as u32,
                    len as u32,
                    limit.min,
                    limit.max,
                );
            }
        }
        for step in steps {
            let (low, high, clamp) = match step {
                // softplus is never negative: a clamp to [0, inf) changes nothing.
                DtStep::Clamp { min, max } if min.iter().all(|&m| m <= 0.0) && max.iter().all(|&m| m == f32::INFINITY) => continue,
                DtStep::Scale(factors) if factors.iter().all(|&f| f == 1.0) => continue,
                DtStep::Clamp { min, max } => (min, max, true),
                DtStep::Scale(factors) => (factors, factors, false),
            };
            let (low, high) = (self.core.upload("a dt transform", low), self.core.upload("a dt transform", high));
            if let Some((count, dim)) = self.launch_elementwise(len) {
                unsafe {
                    kernels::dt_step::launch_unchecked::<R>(
                        &self.core.client,
                        count,
                        dim,
                        ArrayArg::from_raw_parts(target.handle().clone(), len),
                        ArrayArg::from_raw_parts(low, heads),
                        ArrayArg::from_raw_parts(high, heads),
                        heads as u32,
                        len as u32,
                        clamp,
                    );
                }
            }
        }
        self.finish(target, dt.reborrow(), "dt");
    }

    fn scale(&self, x: ViewMut, factor: f32) {
        self.update_in_place(x, "a scaling", |client, count, dim, values, offset, len| unsafe {
            kernels::scale::launch_unchecked::<R>(client, count, dim, values, offset, len, factor);
        });
    }

    fn add(&self, mut acc: ViewMut, x: View) {
        let len = acc.len();
        let target = self.in_place(&acc, "a sum");
        let (x_handle, x_offset) = self.place(x, "a summand");
        if let Some((count, dim)) = self.launch_elementwise(len) {
            let (handle, offset) = target.at();
            unsafe {
                kernels::add::launch_unchecked::<R>(
                    &self.core.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(handle.clone(), offset + len),
                    ArrayArg::from_raw_parts(x_handle, x_offset + len),
                    offset as u32,
                    x_offset as u32,
                    len as u32,
                );
            }
        }
        target.finish(self, acc.reborrow(), "the residual add");
    }

    fn any_non_finite(&self, x: View) -> bool {
        if x.is_empty() {
            return false;
        }
        let mut flag = self.zeros(1);
        self.flag_non_finite(x, flag.view_mut());
        let mut found = [0.0f32];
        self.download(flag.view(), &mut found);
        // A failed device reads NaN: report it as non-finite (the failure itself is the error).
        found[0] != 0.0
    }
}
