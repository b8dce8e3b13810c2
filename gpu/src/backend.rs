use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use coil_kernels::{Backend, Cpu, Engine, Matrix, Recurrence, ScanInputs, SsmShape, Traffic, Values, WeightDtype};
use cubecl::features::TypeUsage;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::{fault, kernels};

/// The ops on one CubeCL device (`R`: CUDA or wgpu).
///
/// As a [`Backend`] (host slices in and out, the conformance suite's view of it) each op uploads
/// its inputs, launches its kernels and reads the result back. A model runs on its
/// [`Backend::device_engine`] instead ([`crate::engine`]): states, activations and the small
/// parameters stay on the device, and a pass brings back only its logits. Weight matrices are
/// uploaded once per matrix and kept ([`Matrix::resident`]), in blocks of rows that each fit the
/// device's largest buffer.
///
/// The device can fail where an op cannot say so (ops return nothing): an allocation past what
/// the driver grants, a shader it rejects. The first failure is kept; from then on every op
/// leaves NaN in its outputs, and [`Backend::device_failure`] names it, which the model checks
/// after every pass. A result is never computed from a buffer that was not filled.
pub struct Gpu<R: Runtime> {
    core: Arc<Core<R>>,
}

/// What the backend and its engine share: the device, its limits, failure and counters, and the
/// launches of every kernel on whole device buffers.
pub(crate) struct Core<R: Runtime> {
    pub(crate) client: ComputeClient<R>,
    /// Tags this instance's device copies of weight matrices.
    id: u64,
    pub(crate) name: &'static str,
    /// The device as messages name it (`wgpu:0 llvmpipe (…)`, `cuda:0`).
    device: String,
    /// Unroll the scan's loop over the state row: right on real GPUs; lavapipe's shader
    /// compiler takes seconds over unrolled loops.
    unroll: bool,
    /// The most f32 values one buffer holds: the device's largest allocation (on wgpu its
    /// storage-buffer binding limit, 128 MiB on lavapipe), and below the kernels' 32-bit
    /// indexing. Everything larger is split into blocks under it.
    pub(crate) max_values: usize,
    failure: Mutex<Option<String>>,
    /// Device-thread panics recorded before this backend opened: not its own.
    panics_before: usize,
    pub(crate) counters: Counters,
    /// The smallest plane (warp, subgroup) size, when plane sums were found to work here: decode's
    /// products then take a plane per output ([`kernels::linear_plane_rows`]).
    plane_size: Option<u32>,
}

/// Threads per cube of the plane-per-output product.
const PLANE_CUBE: u32 = 256;

/// Rows up to which a product runs as reductions (one plane or cube per output), not tiles:
/// decode's, and the only ones that can take an RMSNorm inside the product.
pub(crate) const FEW_ROWS: usize = 4;

/// The kernels index with 32 bits: no buffer holds more f32 values than this.
const MAX_INDEXED_VALUES: usize = 1 << 31;

/// [`Traffic`], counted as it happens.
#[derive(Default)]
pub(crate) struct Counters {
    launches: AtomicU64,
    syncs: AtomicU64,
    pub(crate) bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    pub(crate) load_bytes_up: AtomicU64,
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

/// A weight matrix on the device: consecutive blocks of whole rows, each its own buffer, in the
/// matrix's dtype where the device computes with it (f16 on most, bf16 on CUDA from sm_80),
/// else widened to f32.
pub(crate) struct DeviceMatrix {
    pub(crate) blocks: Vec<RowBlock>,
    pub(crate) dtype: WeightDtype,
}

pub(crate) struct RowBlock {
    pub(crate) handle: Handle,
    pub(crate) first_row: usize,
    pub(crate) rows: usize,
}

/// Values in a device buffer: `len` of them from `offset`.
pub(crate) struct Placed {
    pub handle: Handle,
    pub offset: usize,
    pub len: usize,
}

impl Placed {
    /// A whole buffer of `len` values.
    pub fn whole(handle: Handle, len: usize) -> Placed {
        Placed { handle, offset: 0, len }
    }

    /// The kernel argument: the buffer as far as these values reach.
    fn arg<R: Runtime>(&self) -> ArrayArg<R> {
        // SAFETY: the buffer holds `offset + len` values (a view lies inside its buffer).
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.offset + self.len) }
    }
}

/// The per-head parameters and per-token inputs of a scan, where they are on the device.
pub(crate) struct ScanArgs {
    pub x: Placed,
    pub dt: Placed,
    pub a: Placed,
    pub offset: Placed,
    pub b: Placed,
    pub c: Placed,
    pub d: Placed,
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
        let mut core = Core {
            client,
            id: NEXT_ID.fetch_add(1, Relaxed),
            name,
            device,
            unroll,
            max_values,
            failure: Mutex::new(None),
            panics_before: fault::seen(),
            counters: Counters::default(),
            plane_size: None,
        };
        core.plane_size = core.probe_plane_sums();
        // What the probe did is not the model's traffic, and a failure of it only rules planes out.
        (core.counters, core.panics_before) = (Counters::default(), fault::seen());
        *core.failure.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        Gpu { core: Arc::new(core) }
    }

    /// The most f32 values one device buffer holds.
    pub fn max_buffer_values(&self) -> usize {
        self.core.max_values
    }
}

impl<R: Runtime> Core<R> {
    /// Whether plane sums give the right products here (WGSL reports no plane support on some
    /// drivers that have it, and a driver without subgroups rejects the shader): a 3 x 37 by
    /// 70-output product against the CPU. The plane size to launch with when they do.
    fn probe_plane_sums(&mut self) -> Option<u32> {
        let plane = self.client.properties().hardware.plane_size_min;
        if plane == 0 || !PLANE_CUBE.is_multiple_of(plane) {
            return None;
        }
        self.plane_size = Some(plane);
        let (rows, k, n) = (3, 37, 70);
        let input: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let weight = Matrix::new((0..n * k).map(|i| ((i * 104_729) % 31) as f32 / 15.0 - 1.0).collect(), n, k);
        let mut expected = vec![0.0; rows * n];
        Cpu.linear(&input, &weight, None, &mut expected);
        let (x, y) = (self.upload("the plane probe", &input), self.alloc("the plane probe", rows * n));
        let w = self.matrix(&weight);
        self.linear(&x, rows, &w, None, k, n, &y, false, None);
        let mut got = vec![0.0; rows * n];
        self.read("the plane probe", &y, 0, &mut got);
        let right = !self.failed() && got.iter().zip(&expected).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
        right.then_some(plane)
    }

    pub(crate) fn launched(&self, kernels: usize) {
        Counters::add(&self.counters.launches, kernels);
    }

    pub(crate) fn failed(&self) -> bool {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Keeps the first failure (later ones are usually its consequences).
    pub(crate) fn fail(&self, message: String) {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(message);
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    /// Records a device-thread panic that happened since this backend opened, naming `what`
    /// was running.
    fn check_device(&self, what: &str) {
        if let Some(panic) = fault::first_since(self.panics_before) {
            self.fail(format!("{}: the device failed during {what}: {panic}", self.device));
        }
    }

    /// A buffer holding `data`, or a failure naming `what` when the device cannot hold it.
    pub(crate) fn upload(&self, what: &str, data: &[f32]) -> Handle {
        self.send(what, data, &self.counters.bytes_up)
    }

    /// [`Core::upload`], counting the bytes in `counter`.
    pub(crate) fn send(&self, what: &str, data: &[f32], counter: &AtomicU64) -> Handle {
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

    /// Token ids (or any u32 values) on the device.
    pub(crate) fn upload_ids(&self, ids: &[u32]) -> Handle {
        Counters::add(&self.counters.bytes_up, std::mem::size_of_val(ids));
        self.client.create_from_slice(u32::as_bytes(if ids.is_empty() { &[0] } else { ids }))
    }

    /// An uninitialised buffer of `len` values.
    pub(crate) fn alloc(&self, what: &str, len: usize) -> Handle {
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

    /// Reads values `offset..offset + out.len()` of `handle` into `out`; NaN instead when the
    /// device failed (now or before), so no result is ever taken from a buffer that was not
    /// filled.
    pub(crate) fn read(&self, what: &str, handle: &Handle, offset: usize, out: &mut [f32]) {
        if !self.failed() && !out.is_empty() {
            Counters::add(&self.counters.syncs, 1);
            // From the offset to the buffer's end (CubeCL 0.10 sizes a trimmed end from its own
            // page slice, not the handle: cut only the start).
            let range = if offset > 0 { handle.clone().offset_start(offset as u64 * 4) } else { handle.clone() };
            // A read whose task fails on the device thread panics here (CubeCL unwraps the
            // channel's error): recorded as the device's failure.
            let read = fault::guarded(|| self.client.read_one(range))
                .unwrap_or_else(|| Err(cubecl::server::ServerError::Generic { reason: "the read's task failed".into(), backtrace: Default::default() }));
            match read {
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

    /// Reads each `(buffer, offset, out)` in one wait (see [`Core::read`]).
    pub(crate) fn read_all(&self, what: &str, reads: &mut [(Handle, usize, &mut [f32])]) {
        if reads.is_empty() {
            return;
        }
        if !self.failed() {
            Counters::add(&self.counters.syncs, 1);
            let handles: Vec<Handle> =
                reads.iter().map(|(handle, offset, _)| if *offset > 0 { handle.clone().offset_start(*offset as u64 * 4) } else { handle.clone() }).collect();
            let read = fault::guarded(|| cubecl::future::block_on(self.client.read_async(handles)));
            match read {
                Some(Ok(all)) => {
                    self.check_device(what);
                    for ((_, _, out), bytes) in reads.iter_mut().zip(all) {
                        Counters::add(&self.counters.bytes_down, bytes.len());
                        let values = f32::from_bytes(&bytes);
                        if values.len() >= out.len() {
                            out.copy_from_slice(&values[..out.len()]);
                        } else {
                            self.fail(format!("{}: reading {what} back gave {} values, expected {}", self.device, values.len(), out.len()));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.check_device(what);
                    self.fail(format!("{}: reading {what} back from the device failed: {e:?}", self.device));
                }
                None => {
                    self.check_device(what);
                    self.fail(format!("{}: reading {what} back from the device failed", self.device));
                }
            }
        }
        if self.failed() {
            reads.iter_mut().for_each(|(_, _, out)| out.fill(f32::NAN));
        }
    }

    /// Whether the device holds and reads `dtype` in buffers.
    fn computes_with(&self, dtype: WeightDtype) -> bool {
        match dtype {
            WeightDtype::F32 => true,
            WeightDtype::F16 => half::f16::supported_uses(&self.client).contains(TypeUsage::Buffer),
            WeightDtype::Bf16 => half::bf16::supported_uses(&self.client).contains(TypeUsage::Buffer),
        }
    }

    pub(crate) fn matrix(&self, weight: &Matrix) -> Arc<DeviceMatrix> {
        weight.resident(self.id, |matrix| {
            let (rows, cols) = (matrix.rows(), matrix.cols());
            let dtype = Some(matrix.dtype()).filter(|&d| self.computes_with(d)).unwrap_or(WeightDtype::F32);
            let width = if dtype == WeightDtype::F32 { 4 } else { 2 };
            // As many rows as fit the largest buffer (its limit is counted in f32 values).
            let block_rows = (self.max_values * 4 / (cols.max(1) * width)).max(1);
            let mut widened = Vec::new();
            let blocks = (0..rows)
                .step_by(block_rows)
                .map(|first_row| {
                    let end = rows.min(first_row + block_rows);
                    let what = format!("rows {first_row}..{end} of a {rows} x {cols} weight matrix");
                    let span = first_row * cols..end * cols;
                    let handle = match (dtype, matrix.values()) {
                        (WeightDtype::F16, Values::F16(values)) => self.send_raw(bytemuck::cast_slice(&values[span])),
                        (WeightDtype::Bf16, Values::Bf16(values)) => self.send_raw(bytemuck::cast_slice(&values[span])),
                        _ => {
                            matrix.rows_f32(first_row..end, &mut widened);
                            self.send(&what, &widened, &self.counters.load_bytes_up)
                        }
                    };
                    RowBlock { handle, first_row, rows: end - first_row }
                })
                .collect();
            DeviceMatrix { blocks, dtype }
        })
    }

    /// 16-bit weights as they are (sized by the caller under the limit), counted as loading.
    fn send_raw(&self, bytes: &[u8]) -> Handle {
        Counters::add(&self.counters.load_bytes_up, bytes.len());
        self.client.create_from_slice(if bytes.is_empty() { &[0, 0, 0, 0] } else { bytes })
    }

    /// A grid of `count` cubes spread over x and y (each at most 65535).
    pub(crate) fn grid(count: usize) -> CubeCount {
        let count = count.max(1) as u32;
        let x = count.min(65535);
        CubeCount::Static(x, count.div_ceil(x), 1)
    }

    /// One thread per item, 256 to a cube.
    pub(crate) fn elementwise(count: usize) -> (CubeCount, CubeDim) {
        (Self::grid(count.div_ceil(256)), CubeDim::new_1d(256))
    }

    /// `dst[dst_offset..][..len] = src[src_offset..][..len]` on the device.
    pub(crate) fn copy(&self, src: &Handle, src_offset: usize, dst: &Handle, dst_offset: usize, len: usize) {
        if len == 0 || self.failed() {
            return;
        }
        let (count, dim) = Self::elementwise(len);
        self.launched(1);
        unsafe {
            kernels::copy::launch_unchecked::<R>(
                &self.client,
                count,
                dim,
                ArrayArg::from_raw_parts(src.clone(), src_offset + len),
                ArrayArg::from_raw_parts(dst.clone(), dst_offset + len),
                src_offset as u32,
                dst_offset as u32,
                len as u32,
            );
        }
    }

    /// `y[rows, n] = x[rows, k] · weightᵀ (+ bias)`, or `y +=` that when `accumulate`, one launch
    /// per block of weight rows, each writing its columns of `y`. Both buffers must fit the device.
    /// `norm` (weight, eps; at most [`FEW_ROWS`] rows) takes `x` through an RMSNorm first, inside
    /// the product.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(&self, x: &Handle, rows: usize, weight: &DeviceMatrix, bias: Option<&Handle>, k: usize, n: usize, y: &Handle, accumulate: bool, norm: Option<(&Handle, f32)>) {
        if self.failed() || rows == 0 {
            return;
        }
        assert!(norm.is_none() || rows <= FEW_ROWS, "a product normalises its input only for a few rows");
        match weight.dtype {
            WeightDtype::F32 => self.linear_as::<f32>(x, rows, weight, bias, k, n, y, accumulate, norm),
            WeightDtype::F16 => self.linear_as::<half::f16>(x, rows, weight, bias, k, n, y, accumulate, norm),
            WeightDtype::Bf16 => self.linear_as::<half::bf16>(x, rows, weight, bias, k, n, y, accumulate, norm),
        }
    }

    /// [`Core::linear`] with weights held as `W`.
    #[allow(clippy::too_many_arguments)]
    fn linear_as<W: Float>(&self, x: &Handle, rows: usize, weight: &DeviceMatrix, bias: Option<&Handle>, k: usize, n: usize, y: &Handle, accumulate: bool, norm: Option<(&Handle, f32)>) {
        let none = self.client.empty(4);
        let bias_arg = bias.unwrap_or(&none);
        let (norm_arg, eps) = norm.unwrap_or((&none, 0.0));
        let norm_len = if norm.is_some() { k } else { 1 };
        for block in &weight.blocks {
            let (first, block_n) = (block.first_row as u32, block.rows as u32);
            self.launched(1);
            unsafe {
                if let (true, Some(plane)) = (rows <= FEW_ROWS, self.plane_size) {
                    kernels::linear_plane_rows::launch_unchecked::<W, R>(
                        &self.client,
                        Self::grid(block.rows.div_ceil((PLANE_CUBE / plane) as usize)),
                        CubeDim::new_1d(PLANE_CUBE),
                        ArrayArg::from_raw_parts(x.clone(), rows * k),
                        ArrayArg::from_raw_parts(block.handle.clone(), block.rows * k),
                        ArrayArg::from_raw_parts(bias_arg.clone(), n),
                        ArrayArg::from_raw_parts(norm_arg.clone(), norm_len),
                        ArrayArg::from_raw_parts(y.clone(), rows * n),
                        k as u32,
                        block_n,
                        n as u32,
                        first,
                        eps,
                        rows as u32,
                        bias.is_some(),
                        accumulate,
                        norm.is_some(),
                    );
                } else if rows <= FEW_ROWS {
                    kernels::linear_few_rows::launch_unchecked::<W, R>(
                        &self.client,
                        Self::grid(block.rows),
                        CubeDim::new_1d(kernels::REDUCE_THREADS),
                        ArrayArg::from_raw_parts(x.clone(), rows * k),
                        ArrayArg::from_raw_parts(block.handle.clone(), block.rows * k),
                        ArrayArg::from_raw_parts(bias_arg.clone(), n),
                        ArrayArg::from_raw_parts(norm_arg.clone(), norm_len),
                        ArrayArg::from_raw_parts(y.clone(), rows * n),
                        k as u32,
                        block_n,
                        n as u32,
                        first,
                        eps,
                        rows as u32,
                        bias.is_some(),
                        accumulate,
                        norm.is_some(),
                    );
                } else {
                    let tile = kernels::TILE as usize;
                    kernels::linear_tiled::launch_unchecked::<W, R>(
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
                        accumulate,
                    );
                }
            }
        }
    }

    /// RMSNorm (gated when `z` is given) over `len` values in rows of `width`, groups of `group`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm(&self, x: &Handle, z: Option<&Handle>, weight: &Handle, y: &Handle, len: usize, group: usize, width: usize, eps: f32) {
        if self.failed() || len == 0 {
            return;
        }
        let none = self.client.empty(4);
        let items = len / group;
        self.launched(1);
        unsafe {
            kernels::rms_norm::launch_unchecked::<R>(
                &self.client,
                Self::grid(items),
                CubeDim::new_1d(kernels::REDUCE_THREADS),
                ArrayArg::from_raw_parts(x.clone(), len),
                ArrayArg::from_raw_parts(z.unwrap_or(&none).clone(), if z.is_some() { len } else { 1 }),
                ArrayArg::from_raw_parts(weight.clone(), width),
                ArrayArg::from_raw_parts(y.clone(), len),
                items as u32,
                group as u32,
                width as u32,
                eps,
                z.is_some(),
            );
        }
    }

    /// The causal conv over `tokens` from `state` (`[channels, taps]` from `state_offset`),
    /// updated in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv(
        &self,
        (x, x_offset): (&Handle, usize),
        (state, state_offset): (&Handle, usize),
        weight: &Handle,
        bias: Option<&Handle>,
        (y, y_offset): (&Handle, usize),
        tokens: usize,
        channels: usize,
        taps: usize,
    ) {
        if self.failed() || tokens == 0 {
            return;
        }
        let none = self.client.empty(4);
        let threads = 256u32;
        self.launched(1);
        unsafe {
            kernels::causal_conv1d::launch_unchecked::<R>(
                &self.client,
                Self::grid(channels.div_ceil(threads as usize)),
                CubeDim::new_1d(threads),
                ArrayArg::from_raw_parts(x.clone(), x_offset + tokens * channels),
                ArrayArg::from_raw_parts(state.clone(), state_offset + channels * taps),
                ArrayArg::from_raw_parts(weight.clone(), channels * taps),
                ArrayArg::from_raw_parts(bias.unwrap_or(&none).clone(), channels),
                ArrayArg::from_raw_parts(y.clone(), y_offset + tokens * channels),
                x_offset as u32,
                y_offset as u32,
                state_offset as u32,
                tokens as u32,
                channels as u32,
                taps as u32,
                bias.is_some(),
            );
        }
    }

    /// The selective scan over `tokens` from `state` (`[H, P, N]` from `state_offset`), updated
    /// in place.
    pub(crate) fn scan(&self, shape: SsmShape, args: &ScanArgs, (state, state_offset): (&Handle, usize), (y, y_offset): (&Handle, usize), tokens: usize) {
        if self.failed() || tokens == 0 {
            return;
        }
        let arg = |placed: &Placed| placed.arg::<R>();
        let block = (shape.head_dim as u32).clamp(1, 128);
        self.launched(1);
        unsafe {
            kernels::selective_scan::launch_unchecked::<R>(
                &self.client,
                CubeCount::Static((shape.head_dim as u32).div_ceil(block), shape.heads as u32, 1),
                CubeDim::new_1d(block),
                arg(&args.x),
                arg(&args.dt),
                arg(&args.a),
                arg(&args.offset),
                arg(&args.b),
                arg(&args.c),
                arg(&args.d),
                ArrayArg::from_raw_parts(state.clone(), state_offset + shape.state_len()),
                ArrayArg::from_raw_parts(y.clone(), y_offset + tokens * shape.inner()),
                args.x.offset as u32,
                args.dt.offset as u32,
                args.b.offset as u32,
                args.c.offset as u32,
                y_offset as u32,
                state_offset as u32,
                tokens as u32,
                shape.heads as u32,
                shape.head_dim as u32,
                shape.groups as u32,
                shape.d_state as u32,
                args.d.len != shape.heads,
                self.unroll,
            );
        }
    }
}

impl<R: Runtime> Backend for Gpu<R> {
    fn name(&self) -> &'static str {
        self.core.name
    }

    fn device_engine(&self) -> Option<Arc<dyn Engine>> {
        Some(Arc::new(crate::engine::GpuEngine::new(self.core.clone())))
    }

    fn traffic(&self) -> Traffic {
        self.core.traffic()
    }

    fn device_failure(&self) -> Option<String> {
        self.core.failure()
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        let core = &*self.core;
        let (k, n) = (weight.cols(), weight.rows());
        assert_eq!(input.len() % k, 0, "input width");
        let rows = input.len() / k;
        assert_eq!(out.len(), rows * n, "output shape");
        if rows == 0 {
            return;
        }
        if core.failed() {
            return out.fill(f32::NAN);
        }
        if k > core.max_values {
            // Not one row of the weight fits a buffer: no split by rows helps.
            return Cpu.linear(input, weight, bias, out);
        }
        let w = core.matrix(weight);
        let bias = bias.map(|b| core.upload("a linear layer's bias", b));
        // Row blocks of the input whose input and output each fit one buffer.
        let block_rows = (core.max_values / n.max(k)).max(1);
        for (input, out) in input.chunks(block_rows * k).zip(out.chunks_mut(block_rows * n)) {
            let rows = input.len() / k;
            let x = core.upload("a linear layer's input", input);
            let y = core.alloc("a linear layer's output", rows * n);
            core.linear(&x, rows, &w, bias.as_ref(), k, n, &y, false, None);
            core.read(&format!("a linear layer ({rows} x {k} times {n} x {k})"), &y, 0, out);
        }
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        self.norm(x, None, weight, weight.len(), eps, out);
    }

    fn gated_rms_norm(&self, y: &[f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32, out: &mut [f32]) {
        self.norm(y, Some(z), weight, group_size, eps, out);
    }

    fn causal_conv1d(&self, xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, channels: usize, out: &mut [f32]) {
        let core = &*self.core;
        let taps = conv_state.len() / channels;
        let w = core.upload("the conv weight", weight);
        let b = bias.map(|b| core.upload("the conv bias", b));
        // The conv continues from its state, so a long input runs as consecutive launches.
        let block = (core.max_values / channels).max(1) * channels;
        for (xbc, out) in xbc.chunks(block).zip(out.chunks_mut(block)) {
            let tokens = xbc.len() / channels;
            let x = core.upload("the conv's input", xbc);
            let state = core.upload("the conv state", conv_state);
            let y = core.alloc("the conv's output", xbc.len());
            core.conv((&x, 0), (&state, 0), &w, b.as_ref(), (&y, 0), tokens, channels, taps);
            let what = format!("the causal conv over {tokens} tokens of {channels} channels");
            core.read(&what, &y, 0, out);
            core.read(&what, &state, 0, conv_state);
        }
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], _chunk: usize, y: &mut [f32]) {
        let core = &*self.core;
        let tokens = inputs.tokens(&shape);
        assert_eq!(y.len(), tokens * shape.inner(), "y length");
        assert_eq!(state.len(), shape.state_len(), "state length");
        // The scan continues from its state, so a long input runs as consecutive launches.
        let block = (core.max_values / shape.inner().max(shape.bc_width())).max(1);
        let mut start = 0;
        while start < tokens {
            let end = tokens.min(start + block);
            let inputs = inputs.slice(&shape, start..end);
            let up = |what: &str, values: &[f32]| Placed::whole(core.upload(&format!("the scan's {what}"), values), values.len());
            let args = ScanArgs {
                x: up("x", inputs.x),
                dt: up("dt", inputs.dt),
                a: up("A", recurrence.a),
                offset: up("log-decay offset", recurrence.log_decay_offset),
                b: up("B", inputs.b),
                c: up("C", inputs.c),
                d: up("D", recurrence.d),
            };
            let state_handle = core.upload("the ssm state", state);
            let y = &mut y[start * shape.inner()..end * shape.inner()];
            let y_handle = core.alloc("the scan's output", y.len());
            core.scan(shape, &args, (&state_handle, 0), (&y_handle, 0), end - start);
            let what = format!("the selective scan over {} tokens", end - start);
            core.read(&what, &y_handle, 0, y);
            core.read(&what, &state_handle, 0, state);
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
    /// RMSNorm (gated when `z` is given) in launches of whole rows that fit one buffer.
    fn norm(&self, x: &[f32], z: Option<&[f32]>, weight: &[f32], group: usize, eps: f32, out: &mut [f32]) {
        let core = &*self.core;
        let width = weight.len();
        let w = core.upload("an RMSNorm's weight", weight);
        let block = (core.max_values / width).max(1) * width;
        for (i, (x, out)) in x.chunks(block).zip(out.chunks_mut(block)).enumerate() {
            let z = z.map(|z| core.upload("a gated RMSNorm's gate", &z[i * block..i * block + x.len()]));
            let x_handle = core.upload("an RMSNorm's input", x);
            let y = core.alloc("an RMSNorm's output", x.len());
            core.norm(&x_handle, z.as_ref(), &w, &y, x.len(), group, width, eps);
            core.read(&format!("an RMSNorm of {} rows of {width}", x.len() / width), &y, 0, out);
        }
    }
}
