use std::sync::atomic::{AtomicU64, Ordering};

use coil_kernels::{Backend, Cpu, Matrix, Recurrence, ScanInputs, SsmShape};
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::kernels;

/// The ops on one CubeCL device (`R`: CUDA or wgpu).
///
/// Each op uploads its inputs, launches its kernels and reads the result back; weight matrices
/// are uploaded once per matrix and kept ([`Matrix::resident`]); a matrix past 2^31 values (beyond
/// the kernels' 32-bit indexing) is multiplied on the CPU instead. Two mitigation ops, the state
/// norm clamp and the window's retraction, run on the CPU: they touch the state a few times per
/// window step, never per token and channel.
pub struct Gpu<R: Runtime> {
    client: ComputeClient<R>,
    /// Tags this instance's device copies of weight matrices.
    id: u64,
    name: &'static str,
    /// Unroll the scan's loop over the state row: right on real GPUs; lavapipe's shader
    /// compiler takes seconds over unrolled loops.
    unroll: bool,
}

/// The largest number of f32 values one launch indexes: kernels address with 32 bits, so
/// longer inputs are split into launches below this.
const MAX_LAUNCH_ELEMENTS: usize = 1 << 31;

impl<R: Runtime> Gpu<R> {
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    pub(crate) fn new(client: ComputeClient<R>, name: &'static str, unroll: bool) -> Gpu<R> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Gpu { client, id: NEXT_ID.fetch_add(1, Ordering::Relaxed), name, unroll }
    }

    fn upload(&self, data: &[f32]) -> Handle {
        // A zero-length buffer is not a valid binding everywhere: give empty inputs one element.
        if data.is_empty() {
            return self.client.create_from_slice(f32::as_bytes(&[0.0]));
        }
        self.client.create_from_slice(f32::as_bytes(data))
    }

    fn empty(&self, len: usize) -> Handle {
        self.client.empty(len.max(1) * std::mem::size_of::<f32>())
    }

    fn download(&self, handle: Handle, out: &mut [f32]) {
        let bytes = self
            .client
            .read_one(handle)
            .unwrap_or_else(|e| panic!("{}: reading a result back from the device failed: {e:?}", self.name));
        out.copy_from_slice(&f32::from_bytes(&bytes)[..out.len()]);
    }

    fn matrix(&self, weight: &Matrix) -> std::sync::Arc<Handle> {
        // Kept as f32 on the device (the kernels read f32); bf16 and f16 matrices are widened once
        // here.
        weight.resident(self.id, |matrix| match matrix.values() {
            coil_kernels::Values::F32(data) => self.upload(data),
            coil_kernels::Values::Bf16(_) | coil_kernels::Values::F16(_) => {
                let mut widened = Vec::new();
                matrix.rows_f32(0..matrix.rows(), &mut widened);
                self.upload(&widened)
            }
        })
    }

    /// A grid of `count` cubes spread over x and y (each at most 65535).
    fn grid(count: usize) -> CubeCount {
        let count = count.max(1) as u32;
        let x = count.min(65535);
        CubeCount::Static(x, count.div_ceil(x), 1)
    }

    fn linear_rows(&self, input: &[f32], weight: &Handle, bias: Option<&Handle>, k: usize, n: usize, out: &mut [f32]) {
        let rows = input.len() / k;
        let x = self.upload(input);
        let y = self.empty(rows * n);
        let none = self.upload(&[]);
        let bias_arg = bias.unwrap_or(&none);
        unsafe {
            if rows <= 4 {
                kernels::linear_few_rows::launch_unchecked::<R>(
                    &self.client,
                    Self::grid(n),
                    CubeDim::new_1d(kernels::REDUCE_THREADS),
                    ArrayArg::from_raw_parts(x, rows * k),
                    ArrayArg::from_raw_parts(weight.clone(), n * k),
                    ArrayArg::from_raw_parts(bias_arg.clone(), n),
                    ArrayArg::from_raw_parts(y.clone(), rows * n),
                    k as u32,
                    n as u32,
                    rows as u32,
                    bias.is_some(),
                );
            } else {
                let tile = kernels::TILE as usize;
                kernels::linear_tiled::launch_unchecked::<R>(
                    &self.client,
                    CubeCount::Static(n.div_ceil(tile) as u32, rows.div_ceil(tile) as u32, 1),
                    CubeDim::new_2d(kernels::TILE_THREADS, kernels::TILE_THREADS),
                    ArrayArg::from_raw_parts(x, rows * k),
                    ArrayArg::from_raw_parts(weight.clone(), n * k),
                    ArrayArg::from_raw_parts(bias_arg.clone(), n),
                    ArrayArg::from_raw_parts(y.clone(), rows * n),
                    rows as u32,
                    k as u32,
                    n as u32,
                    bias.is_some(),
                );
            }
        }
        self.download(y, out);
    }

    /// RMSNorm (gated when `z` is given) in launches of whole rows below the 32-bit index limit.
    fn norm(&self, x: &[f32], z: Option<&[f32]>, weight: &[f32], group: usize, eps: f32, out: &mut [f32]) {
        let block = (MAX_LAUNCH_ELEMENTS / weight.len()).max(1) * weight.len();
        for (i, (x, out)) in x.chunks(block).zip(out.chunks_mut(block)).enumerate() {
            let z = z.map(|z| &z[i * block..i * block + x.len()]);
            self.norm_launch(x, z, weight, group, eps, out);
        }
    }

    fn norm_launch(&self, x: &[f32], z: Option<&[f32]>, weight: &[f32], group: usize, eps: f32, out: &mut [f32]) {
        let width = weight.len();
        let items = x.len() / group;
        let (x_handle, w_handle, y_handle) = (self.upload(x), self.upload(weight), self.empty(x.len()));
        let z_handle = self.upload(z.unwrap_or(&[]));
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
        self.download(y_handle, out);
    }
}

impl<R: Runtime> Backend for Gpu<R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        let (k, n) = (weight.cols(), weight.rows());
        assert_eq!(input.len() % k, 0, "input width");
        let rows = input.len() / k;
        assert_eq!(out.len(), rows * n, "output shape");
        if rows == 0 {
            return;
        }
        if n * k >= MAX_LAUNCH_ELEMENTS {
            // One buffer this size is past the kernels' 32-bit indexing (a vocabulary of 256K x
            // 8192, say): that product runs on the CPU rather than failing.
            return Cpu.linear(input, weight, bias, out);
        }
        let w = self.matrix(weight);
        let bias = bias.map(|b| self.upload(b));
        // Row blocks small enough that no launch indexes past 2^31 values.
        let block_rows = (MAX_LAUNCH_ELEMENTS / n.max(k)).max(1);
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
        let block = (MAX_LAUNCH_ELEMENTS / channels).max(1) * channels;
        for (xbc, out) in xbc.chunks(block).zip(out.chunks_mut(block)) {
            self.conv_launch(xbc, conv_state, weight, bias, channels, out);
        }
    }

    fn ssd_scan(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], _chunk: usize, y: &mut [f32]) {
        let tokens = inputs.tokens(&shape);
        assert_eq!(y.len(), tokens * shape.inner(), "y length");
        assert_eq!(state.len(), shape.state_len(), "state length");
        // The scan continues from its state, so a long input runs as consecutive launches.
        let block = (MAX_LAUNCH_ELEMENTS / shape.inner().max(shape.bc_width())).max(1);
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
        let (x, state, w) = (self.upload(xbc), self.upload(conv_state), self.upload(weight));
        let b = self.upload(bias.unwrap_or(&[]));
        let (y, new_state) = (self.empty(xbc.len()), self.empty(conv_state.len()));
        let threads = 256u32;
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
        self.download(y, out);
        self.download(new_state, conv_state);
    }

    fn scan_launch(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        let tokens = inputs.tokens(&shape);
        let handles = [inputs.x, inputs.dt, recurrence.a, recurrence.log_decay_offset, inputs.b, inputs.c, recurrence.d].map(|v| (self.upload(v), v.len()));
        let state_handle = self.upload(state);
        let y_handle = self.empty(y.len());
        let [x, dt, a, offset, b, c, d] = handles;
        let arg = |(handle, len): &(Handle, usize)| unsafe { ArrayArg::from_raw_parts(handle.clone(), *len) };
        let block = (shape.head_dim as u32).clamp(1, 128);
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
        self.download(y_handle, y);
        self.download(state_handle, state);
    }
}
