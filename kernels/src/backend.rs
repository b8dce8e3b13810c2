use std::sync::Arc;

use crate::{DtLimit, Engine, Matrix, Recurrence, ScanInputs, SsmShape};

/// The ops of a Mamba-2 forward pass, on row-major f32 buffers in host memory. A model runs them
/// through an [`Engine`]: [`crate::HostEngine`] for a host backend, the backend's own
/// [`Backend::device_engine`] for a device.
///
/// Shapes are given in each method's doc; `T` is the number of tokens in the call. Implementations
/// may panic when a buffer's length disagrees with the sizes passed: that is a bug in the caller,
/// never a user error (the loader validates every shape before a backend sees it).
pub trait Backend: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &'static str;

    /// The engine a model runs on when its buffers live on a device: the model then holds its
    /// states and activations there and calls this engine's ops on them. `None` (the default, for
    /// host backends): the model runs these ops on host buffers ([`HostEngine`]).
    fn device_engine(&self) -> Option<Arc<dyn Engine>> {
        None
    }

    /// Runs `work` (a forward pass: many ops) where this backend's ops are cheapest to issue.
    /// The CPU backend moves it onto a thread of its pool, so each op's fork-join stays inside
    /// the pool; issued from an outside thread, every op would hand off to the pool and block
    /// on it, tens of microseconds each (a decode step issues about a hundred). Default: runs
    /// it on the calling thread.
    fn run(&self, work: &mut (dyn FnMut() + Send)) {
        work()
    }

    /// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias[n])`.
    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]);

    /// `out[t] = x[t] * rsqrt(mean(x[t]²) + eps) * weight` over rows of `weight.len()`.
    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]);

    /// Gated RMSNorm with `norm_before_gate = false`: `u = y * silu(z)`, then each row's
    /// contiguous groups of `group_size` channels are normalised on their own, times `weight`.
    fn gated_rms_norm(
        &self,
        y: &[f32],
        z: &[f32],
        weight: &[f32],
        group_size: usize,
        eps: f32,
        out: &mut [f32],
    );

    /// Causal depthwise conv over time plus SiLU, continuing from `conv_state`.
    ///
    /// `xbc: [T, C]` raw inputs; `conv_state: [C, K]` the last K raw inputs before this call,
    /// oldest first (only the last K-1 are read), updated in place to the last K raw inputs;
    /// `weight: [C, K]` (last tap on the current token); `bias: [C]`; `out: [T, C]`.
    fn causal_conv1d(
        &self,
        xbc: &[f32],
        conv_state: &mut [f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        channels: usize,
        out: &mut [f32],
    );

    /// `dt[T, H] = clamp(softplus(dt_raw + dt_bias))`.
    fn discretize_dt(&self, dt_raw: &[f32], dt_bias: &[f32], limit: DtLimit, dt: &mut [f32]) {
        let heads = dt_bias.len();
        for (row_out, row_in) in dt.chunks_exact_mut(heads).zip(dt_raw.chunks_exact(heads)) {
            for ((out, &raw), &bias) in row_out.iter_mut().zip(row_in).zip(dt_bias) {
                *out = limit.apply(crate::softplus(raw + bias));
            }
        }
    }

    /// The first failure of the device this backend computes on, if it has failed: an op cannot
    /// return an error (ops run deep inside a forward pass), so a backend that can fail (a GPU:
    /// an allocation, a compilation, a read) keeps the first failure, leaves NaN in the outputs
    /// of every op from then on, and names it here. The model asks after every pass and returns
    /// it as an error; the states that pass touched are then not to be trusted. Default: never
    /// fails.
    fn device_failure(&self) -> Option<String> {
        None
    }

    /// What this backend has launched and moved between host and device since it opened. Host
    /// backends compute where the data already is: they launch no kernels and move nothing, so
    /// the default is all zeros.
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// Whether the ops of independent sequences (a batch's convs and scans) may be called from
    /// several threads at once, each splitting its own work further. A device that runs ops in
    /// submission order gains nothing from it.
    fn concurrent_sequences(&self) -> bool {
        false
    }

    /// The SSD chunk length this backend's [`Backend::ssd_scan`] runs fastest at, for models
    /// whose chunk length was not set explicitly; `None` keeps the checkpoint's `chunk_size`.
    fn preferred_chunk(&self) -> Option<usize> {
        None
    }

    /// The selective scan over T tokens from `state`, leaving the final state in `state`:
    /// per head, `S = exp(dt*A + offset) S + (dt x) ⊗ B`, `y = S·C + D x`. `y: [T, H, P]`;
    /// `state: [H, P, N]`. `chunk` is the SSD chunk length, a tuning knob: every value gives the
    /// same result up to rounding.
    fn ssd_scan(
        &self,
        shape: SsmShape,
        recurrence: Recurrence,
        inputs: ScanInputs,
        state: &mut [f32],
        chunk: usize,
        y: &mut [f32],
    );

    /// One token's fused state update and output: [`Backend::ssd_scan`] with T = 1, without
    /// allocating.
    fn ssm_step(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]);

    /// State normalisation: each head's `[P, N]` state becomes `S * min(1, tau / ||S||_F)`.
    /// `thresholds: [H]` (infinite: untouched).
    fn clamp_state_norms(&self, shape: SsmShape, state: &mut [f32], thresholds: &[f32]) {
        let head_len = shape.head_dim * shape.d_state;
        for (head, &tau) in state.chunks_exact_mut(head_len).zip(thresholds) {
            let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > tau {
                let scale = tau / norm;
                head.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }

    /// Takes earlier inputs back out of a state (the sliding window):
    /// `S[h] -= Σ_k weights[k, h] * xdt[k, h, :] ⊗ B[k, g, :]` with `xdt: [K, H, P]` (dt times
    /// x), `b: [K, G, N]`, `weights: [K, H]` (each input's decay since it was written).
    fn retract_inputs(&self, shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]);
}


/// Counters of the work a backend handed to its device, for checking what crosses the bus on any
/// machine (lavapipe in CI counts the same launches and bytes as a real GPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Kernels launched.
    pub launches: u64,
    /// Times the host waited on the device (each read of a result is one).
    pub syncs: u64,
    /// Bytes sent to the device while running: inputs, states, per-op parameters.
    pub bytes_up: u64,
    /// Bytes read back from the device.
    pub bytes_down: u64,
    /// Bytes of weight matrices sent once, when first used (loading, counted apart).
    pub load_bytes_up: u64,
}
