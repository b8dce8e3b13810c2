use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use coil_kernels::{Backend, Cpu, Matrix, Recurrence, ScanInputs, SsmShape, Traffic};
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::{fault, kernels};

/// The ops on one CubeCL device (`R`: CUDA or wgpu).
///
/// Each op uploads its inputs, launches its kernels and reads the result back; weight matrices
/// are uploaded once per matrix and kept ([`Matrix::resident`]), in blocks of rows that each fit
/// the device's largest buffer. Two mitigation ops, the state norm clamp and the window's
/// retraction, run on the CPU: they touch the state a few times per window step, never per token
/// and channel.
///
/// The device can fail where an op cannot say so (ops return nothing): an allocation past what
/// the driver grants, a shader it rejects. The first failure is kept; from then on every op
/// leaves NaN in its outputs, and [`Backend::device_failure`] names it, which the model checks
/// after every pass. A result is never computed from a buffer that was not filled.
pub struct Gpu<R: Runtime> {
    client: ComputeClient<R>,
    /// Tags this instance's device copies of weight matrices.
    id: u64,
    name: &'static str,
    /// The device as messages name it (`wgpu:0 llvmpipe (…)`, `cuda:0`).
    device: String,
    /// Unroll the scan's loop over the state row: right on real GPUs; lavapipe's shader
    /// compiler takes seconds over unrolled loops.
    unroll: bool,
    /// The most f32 values one buffer holds: the device's largest allocation (on wgpu its
    /// storage-buffer binding limit, 128 MiB on lavapipe), and below the kernels' 32-bit
    /// indexing. Everything larger is split into blocks under it.
    max_values: usize,
    failure: Mutex<Option<String>>,
    /// Device-thread panics recorded before this backend opened: not its own.
    panics_before: usize,
    counters: Counters,
}

/// [`Traffic`], counted as it happens.
#[derive(Default)]
struct Counters {
    launches: AtomicU64,
    syncs: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    load_bytes_up: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, amount: usize) {
        counter.fetch_add(amount as u64, Relaxed);
    }

    fn snapshot(&self) -> Traffic {
        Traffic {
            launches: self.launches.load(Relaxed),
            syncs: self.syncs.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
            load_bytes_up: self.load_bytes_up.load(Relaxed),
        }
    }
}

/// The kernels index with 32 bits: no buffer holds more f32 values than this.
const MAX_INDEXED_VALUES: usize = 1 << 31;

/// A weight matrix on the device: consecutive blocks of whole rows, each its own buffer.
struct DeviceMatrix {
    blocks: Vec<RowBlock>,
}

struct RowBlock {
    handle: Handle,
    first_row: usize,
    rows: usize,
}

impl<R: Runtime> Gpu<R> {
    /// A backend on `client`. `max_buffer_bytes` overrides the device's own allocation limit
    /// (lower, to exercise the splitting on small models; higher only to see how the device
    /// refuses what it cannot hold).
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    pub(crate) fn new(client: ComputeClient<R>, name: &'static str, device: String, unroll: bool, max_buffer_bytes: Option<u64>) -> Gpu<R> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        fault::watch();
        let bytes = max_buffer_bytes.unwrap_or(client.properties().memory.max_page_size);
        let max_values = usize::try_from(bytes / 4).unwrap_or(usize::MAX).clamp(1, MAX_INDEXED_VALUES);
        Gpu {
            client,
            id: NEXT_ID.fetch_add(1, Relaxed),
            name,
            device,
            unroll,
            max_values,
            failure: Mutex::new(None),
            panics_before: fault::seen(),
            counters: Counters::default(),
        }
    }

    /// The most f32 values one device buffer holds.
    pub fn max_buffer_values(&self) -> usize {
        self.max_values
    }

    fn launched(&self, kernels: usize) {
        Counters::add(&self.counters.launches, kernels);
    }

    fn failed(&self) -> bool {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Keeps the first failure (later ones are usually its consequences).
    fn fail(&self, message: String) {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(message);
    }

    /// Records a device-thread panic that happened since this backend opened, naming `what`
    /// was running.
    fn check_device(&self, what: &str) {
        if let Some(panic) = fault::first_since(self.panics_before) {
            self.fail(format!("{}: the device failed during {what}: {panic}", self.device));
        }
    }

    /// A buffer holding `data`, or a failure naming `what` when the device cannot hold it.
    fn upload(&self, what: &str, data: &[f32]) -> Handle {
        self.send(what, data, &self.counters.bytes_up)
    }

    /// [`Gpu::upload`], counting the bytes in `counter`.
    fn send(&self, what: &str, data: &[f32], counter: &AtomicU64) -> Handle {
        Counters::add(counter, std::mem::size_of_val(data));
        if data.len() > self.max_values {
            self.refuse(what, data.len());
            return self.client.empty(4);
        }
        // A zero-length buffer is not a valid binding everywhere: give empty inputs one element.
        if data.is_empty() {
            return self.client.create_from_slice(f32::as_bytes(&[0.0]));
        }
        self.client.create_from_slice(f32::as_bytes(data))
    }

    fn empty(&self, what: &str, len: usize) -> Handle {
        if len > self.max_values {
            self.refuse(what, len);
            return self.client.empty(4);
        }
        self.client.empty(len.max(1) * std::mem::size_of::<f32>())
    }

    fn refuse(&self, what: &str, values: usize) {
        self.fail(format!(
            "{}: {what} needs a buffer of {} bytes, past the {} bytes the device allows in one buffer",
            self.device,
            values as u128 * 4,
            self.max_values as u128 * 4
        ));
    }

    /// Reads `handle` into `out`; NaN instead when the device failed (now or before), so no
    /// result is ever taken from a buffer that was not filled.
    fn download(&self, what: &str, handle: Handle, out: &mut [f32]) {
        if !self.failed() {
            Counters::add(&self.counters.syncs, 1);
            match self.client.read_one(handle) {
                Ok(bytes) => {
                    Counters::add(&self.counters.bytes_down, bytes.len());
                    self.check_device(what);
                    let values = f32::from_bytes(&bytes);
                    if values.len() >= out.len() {
                        out.copy_from_slice(&values[..out.len()]);
                    } else {
                        self.fail(format!("{}: reading {what} back gave {} values, expected {}", self.device, values.len(), out.len()));
                    }
                }
                Err(e) => {
                    self.check_device(what);
                    self.fail(format!("{}: reading {what} back from the device failed: {e:?}", self.device));
                }
            }
        }
        if self.failed() {
            out.fill(f32::NAN);
        }
    }

    fn matrix(&self, weight: &Matrix) -> Arc<DeviceMatrix> {
        // Kept as f32 on the device (the kernels read f32); bf16 and f16 rows are widened here,
        // one block at a time.
        weight.resident(self.id, |matrix| {
            let (rows, cols) = (matrix.rows(), matrix.cols());
            let block_rows = (self.max_values / cols.max(1)).max(1);
            let mut widened = Vec::new();
            let blocks = (0..rows)
                .step_by(block_rows)
                .map(|first_row| {
                    let end = rows.min(first_row + block_rows);
                    matrix.rows_f32(first_row..end, &mut widened);
                    let what = format!("rows {first_row}..{end} of a {rows} x {cols} weight matrix");
                    RowBlock { handle: self.send(&what, &widened, &self.counters.load_bytes_up), first_row, rows: end - first_row }
                })
                .collect();
            DeviceMatrix { blocks }
        })
    }

    /// A grid of `count` cubes spread over x and y (each at most 65535).
    fn grid(count: usize) -> CubeCount {
        let count = count.max(1) as u32;
        let x = count.min(65535);
        CubeCount::Static(x, count.div_ceil(x), 1)
    }

    /// `out[rows, n] = input[rows, k] · weightᵀ`, one launch per block of weight rows, each
    /// writing its columns of the one output buffer.
    fn linear_rows(&self, input: &[f32], weight: &DeviceMatrix, bias: Option<&Handle>, k: usize, n: usize, out: &mut [f32]) {
        let rows = input.len() / k;
        let x = self.upload("a linear layer's input", input);
        let y = self.empty("a linear layer's output", rows * n);
        let none = self.upload("", &[]);
        let bias_arg = bias.unwrap_or(&none);
        if self.failed() {
            return out.fill(f32::NAN);
        }
        for block in &weight.blocks {
            let (first, block_n) = (block.first_row as u32, block.rows as u32);
            self.launched(1);
            unsafe {
                if rows <= 4 {
                    kernels::linear_few_rows::launch_unchecked::<R>(
                        &self.client,
                        Self::grid(block.rows),
                        CubeDim::new_1d(kernels::REDUCE_THREADS),
                        ArrayArg::from_raw_parts(x.clone(), rows * k),
                        ArrayArg::from_raw_parts(block.handle.clone(), block.rows * k),
                        ArrayArg::from_raw_parts(bias_arg.clone(), n),
                        ArrayArg::from_raw_parts(y.clone(), rows * n),
                        k as u32,
                        block_n,
                        n as u32,
                        first,
                        rows as u32,
                        bias.is_some(),
                    );
                } else {
                    let tile = kernels::TILE as usize;
                    kernels::linear_tiled::launch_unchecked::<R>(
                        &self.client,
                        CubeCount::Static(block.rows.div_ceil(tile) as u32, rows.div_ceil(tile) as u32, 1),
                        CubeDim::new_2d(kernels::TILE_THREADS, kernels::TILE_THREADS),
                        ArrayArg::from_raw_parts(x.clone(), rows * k),
                        ArrayArg::from_raw_parts(block.handle.clone(), block.rows * k),
                        ArrayArg::from_raw_parts(bias_arg.clone(), n),
                        ArrayArg::from_raw_parts(y.clone(), rows * n),
                        rows as u32,
                        k as u32,
                        block_n,
                        n as u32,
                        first,
                        bias.is_some(),
                    );
                }
            }
        }
        self.download(&format!("a linear layer ({rows} x {k} times {n} x {k})"), y, out);
    }

    /// RMSNorm (gated when `z` is given) in launches of whole rows that fit one buffer.
    fn norm(&self, x: &[f32], z: Option<&[f32]>, weight: &[f32], group: usize, eps: f32, out: &mut [f32]) {
        let block = (self.max_values / weight.len()).max(1) * weight.len();
        for (i, (x, out)) in x.chunks(block).zip(out.chunks_mut(block)).enumerate() {
            let z = z.map(|z| &z[i * block..i * block + x.len()]);
            self.norm_launch(x, z, weight, group, eps, out);
        }
    }

    fn norm_launch(&self, x: &[f32], z: Option<&[f32]>, weight: &[f32], group: usize, eps: f32, out: &mut [f32]) {
        let width = weight.len();
        let items = x.len() / group;
        let x_handle = self.upload("an RMSNorm's input", x);
        let w_handle = self.upload("an RMSNorm's weight", weight);
        let y_handle = self.empty("an RMSNorm's output", x.len());
        let z_handle = self.upload("a gated RMSNorm's gate", z.unwrap_or(&[]));
        if self.failed() {
            return out.fill(f32::NAN);
        }
        self.launched(1);
        unsafe {
            kernels::rms_norm::launch_unchecked::<R>(
                &self.client,
                Self::grid(items),
                CubeDim::new_1d(kernels::REDUCE_THREADS),
                ArrayArg::from_raw_parts(x_handle, x.len()),
                ArrayArg::from_raw_parts(z_handle, z.map_or(1, <[f32]>::len)),
                ArrayArg::from_raw_parts(w_handle, width),
                ArrayArg::from_raw_parts(y_handle.clone(), x.len()),
                items as u32,
                group as u32,
                width as u32,
                eps,
                z.is_some(),
            );
        }
        self.download(&format!("an RMSNorm of {} rows of {width}", x.len() / width), y_handle, out);
    }
}

impl<R: Runtime> Backend for Gpu<R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    fn device_failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        let (k, n) = (weight.cols(), weight.rows());
        assert_eq!(input.len() % k, 0, "input width");
        let rows = input.len() / k;
        assert_eq!(out.len(), rows * n, "output shape");
        if rows == 0 {
            return;
        }
        if self.failed() {
            return out.fill(f32::NAN);
        }
        if k > self.max_values {
            // Not one row of the weight fits a buffer: no split by rows helps.
            return Cpu.linear(input, weight, bias, out);
        }
        let w = self.matrix(weight);
        let bias = bias.map(|b| self.upload("a linear layer's bias", b));
        // Row blocks of the input whose input and output each fit one buffer.
        let block_rows = (self.max_values / n.max(k)).max(1);
        for (input, out) in input.chunks(block_rows * k).zip(out.chunks_mut(block_rows * n)) {
            self.linear_rows(input, &w, bias.as_ref(), k, n, out);
        }
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        self.norm(x, None, weight, weight.len(), eps, out);
    }

    fn gated_rms_norm(&self, y: &[f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32, out: &mut [f32]) {
        self.norm(y, Some(z), weight, group_size, eps, out);
    }

    fn causal_conv1d(&self, xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, channels: usize, out: &mut [f32]) {
        // The conv continues from its state, so a long input runs as consecutive launches.
        let block = (self.max_values / channels).max(1) * channels;
        for (xbc, out) in xbc.chunks(block).zip(out.chunks_mut(block)) {
            self.conv_launch(xbc, conv_state, weight, bias, channels, out);
        }
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], _chunk: usize, y: &mut [f32]) {
        let tokens = inputs.tokens(&shape);
        assert_eq!(y.len(), tokens * shape.inner(), "y length");
        assert_eq!(state.len(), shape.state_len(), "state length");
        // The scan continues from its state, so a long input runs as consecutive launches.
        let block = (self.max_values / shape.inner().max(shape.bc_width())).max(1);
        let mut start = 0;
        while start < tokens {
            let end = tokens.min(start + block);
            let y = &mut y[start * shape.inner()..end * shape.inner()];
            self.scan_launch(shape, recurrence, inputs.slice(&shape, start..end), state, y);
            start = end;
        }
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        self.ssd_scan(shape, recurrence, inputs, state, 1, y);
    }

    fn retract_inputs(&self, shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]) {
        Cpu.retract_inputs(shape, state, xdt, b, weights);
    }
}

impl<R: Runtime> Gpu<R> {
    fn conv_launch(&self, xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, channels: usize, out: &mut [f32]) {
        let taps = conv_state.len() / channels;
        let tokens = xbc.len() / channels;
        let x = self.upload("the conv's input", xbc);
        let state = self.upload("the conv state", conv_state);
        let w = self.upload("the conv weight", weight);
        let b = self.upload("the conv bias", bias.unwrap_or(&[]));
        let (y, new_state) = (self.empty("the conv's output", xbc.len()), self.empty("the conv state", conv_state.len()));
        if self.failed() {
            out.fill(f32::NAN);
            return conv_state.fill(f32::NAN);
        }
        let threads = 256u32;
        self.launched(2);
        unsafe {
            kernels::causal_conv1d::launch_unchecked::<R>(
                &self.client,
                Self::grid(xbc.len().div_ceil(threads as usize)),
                CubeDim::new_1d(threads),
                ArrayArg::from_raw_parts(x.clone(), xbc.len()),
                ArrayArg::from_raw_parts(state.clone(), conv_state.len()),
                ArrayArg::from_raw_parts(w, weight.len()),
                ArrayArg::from_raw_parts(b, channels),
                ArrayArg::from_raw_parts(y.clone(), xbc.len()),
                tokens as u32,
                channels as u32,
                taps as u32,
                bias.is_some(),
            );
            kernels::conv_state_update::launch_unchecked::<R>(
                &self.client,
                Self::grid(conv_state.len().div_ceil(threads as usize)),
                CubeDim::new_1d(threads),
                ArrayArg::from_raw_parts(x, xbc.len()),
                ArrayArg::from_raw_parts(state, conv_state.len()),
                ArrayArg::from_raw_parts(new_state.clone(), conv_state.len()),
                tokens as u32,
                channels as u32,
                taps as u32,
            );
        }
        let what = format!("the causal conv over {tokens} tokens of {channels} channels");
        self.download(&what, y, out);
        self.download(&what, new_state, conv_state);
    }

    fn scan_launch(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        let tokens = inputs.tokens(&shape);
        let named = [
            ("x", inputs.x),
            ("dt", inputs.dt),
            ("A", recurrence.a),
            ("the log-decay offset", recurrence.log_decay_offset),
            ("B", inputs.b),
            ("C", inputs.c),
            ("D", recurrence.d),
        ];
        let [x, dt, a, offset, b, c, d] = named.map(|(what, v)| (self.upload(&format!("the scan's {what}"), v), v.len()));
        let state_handle = self.upload("the ssm state", state);
        let y_handle = self.empty("the scan's output", y.len());
        if self.failed() {
            y.fill(f32::NAN);
            return state.fill(f32::NAN);
        }
        let arg = |(handle, len): &(Handle, usize)| unsafe { ArrayArg::from_raw_parts(handle.clone(), *len) };
        let block = (shape.head_dim as u32).clamp(1, 128);
        self.launched(1);
        unsafe {
            kernels::selective_scan::launch_unchecked::<R>(
                &self.client,
                CubeCount::Static((shape.head_dim as u32).div_ceil(block), shape.heads as u32, 1),
                CubeDim::new_1d(block),
                arg(&x),
                arg(&dt),
                arg(&a),
                arg(&offset),
                arg(&b),
                arg(&c),
                arg(&d),
                ArrayArg::from_raw_parts(state_handle.clone(), state.len()),
                ArrayArg::from_raw_parts(y_handle.clone(), y.len()),
                tokens as u32,
                shape.heads as u32,
                shape.head_dim as u32,
                shape.groups as u32,
                shape.d_state as u32,
                recurrence.d.len() != shape.heads,
                self.unroll,
            );
        }
        let what = format!("the selective scan over {tokens} tokens");
        self.download(&what, y_handle, y);
        self.download(&what, state_handle, state);
    }
}
