use crate::{DtLimit, SsmShape};

/// The ops of a Mamba-2 forward pass, on row-major f32 buffers in host memory.
///
/// Shapes are given in each method's doc; `T` is the number of tokens in the call. Implementations
/// may panic when a buffer's length disagrees with the sizes passed: that is a bug in the caller,
/// never a user error (the loader validates every shape before a backend sees it).
pub trait Backend: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &'static str;

    /// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias[n])`.
    fn linear(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        in_features: usize,
        out_features: usize,
        out: &mut [f32],
    );

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

    /// The selective scan over T tokens from `state`, leaving the final state in `state`:
    /// per head, `S = exp(dt*A) S + (dt x) ⊗ B`, `y = S·C + D x`.
    ///
    /// `x: [T, H, P]`, `dt: [T, H]`, `a: [H]` (A = -exp(A_log)), `b, c: [T, G, N]`,
    /// `d: [H]` or `[H*P]`, `state: [H, P, N]`, `y: [T, H, P]`. `chunk` is the SSD chunk length,
    /// a tuning knob: every value gives the same result up to rounding.
    #[allow(clippy::too_many_arguments)]
    fn ssd_scan(
        &self,
        shape: SsmShape,
        x: &[f32],
        dt: &[f32],
        a: &[f32],
        b: &[f32],
        c: &[f32],
        d: &[f32],
        state: &mut [f32],
        chunk: usize,
        y: &mut [f32],
    );

    /// One token's fused state update and output: [`Backend::ssd_scan`] with T = 1, without
    /// allocating. `x: [H, P]`, `dt: [H]`, `b, c: [G, N]`, `y: [H, P]`.
    #[allow(clippy::too_many_arguments)]
    fn ssm_step(
        &self,
        shape: SsmShape,
        x: &[f32],
        dt: &[f32],
        a: &[f32],
        b: &[f32],
        c: &[f32],
        d: &[f32],
        state: &mut [f32],
        y: &mut [f32],
    );
}

/// `D` is per head or, for checkpoints with `D_has_hdim`, per channel.
#[inline]
pub(crate) fn skip_weight(d: &[f32], shape: &SsmShape, head: usize, channel: usize) -> f32 {
    if d.len() == shape.heads {
        d[head]
    } else {
        d[head * shape.head_dim + channel]
    }
}

pub(crate) fn assert_skip_len(d: &[f32], shape: &SsmShape) {
    assert!(
        d.len() == shape.heads || d.len() == shape.inner(),
        "D has {} elements, expected {} (per head) or {} (per channel)",
        d.len(),
        shape.heads,
        shape.inner()
    );
}
