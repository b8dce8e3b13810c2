//! One residual block: pre-norm, the Mamba-2 mixer, residual add (mamba2.md, "One layer").

use coil_checkpoints::LayerWeights;
use coil_kernels::{Backend, DtLimit, SsmShape};

use crate::Config;

/// A block's weights, arranged for the ops: in_proj split into its `z | xBC | dt` row blocks,
/// A precomputed from A_log.
pub(crate) struct Block {
    norm: Vec<f32>,
    in_proj: Vec<f32>,              // [I + C + H, D]
    in_proj_bias: Option<Vec<f32>>, // [I + C + H]
    conv_weight: Vec<f32>,          // [C, K]
    conv_bias: Option<Vec<f32>>,
    dt_bias: Vec<f32>,
    a: Vec<f32>, // [H] = -exp(A_log), in f32 as the references compute it
    d: Vec<f32>,
    mixer_norm: Vec<f32>,
    out_proj: Vec<f32>, // [D, I]
    out_proj_bias: Option<Vec<f32>>,
}

/// Sizes every block shares.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub d_model: usize,
    pub conv_dim: usize,
    pub ssm: SsmShape,
    pub eps: f32,
    pub dt_limit: DtLimit,
}

impl Dims {
    pub fn of(config: &Config) -> Dims {
        Dims {
            d_model: config.d_model,
            conv_dim: config.conv_dim(),
            ssm: SsmShape { heads: config.n_heads, head_dim: config.head_dim, d_state: config.d_state, groups: config.n_groups },
            eps: config.norm_eps,
            dt_limit: DtLimit { min: config.time_step_limit.0, max: config.time_step_limit.1 },
        }
    }

    fn inner(&self) -> usize {
        self.ssm.inner()
    }
}

/// Per-call activations for T tokens, reused across blocks.
pub(crate) struct Activations {
    normed: Vec<f32>, // [T, D]
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
}

impl Block {
    pub fn new(w: LayerWeights) -> Block {
        Block {
            norm: w.norm,
            in_proj: w.in_proj,
            in_proj_bias: w.in_proj_bias,
            conv_weight: w.conv_weight,
            conv_bias: w.conv_bias,
            dt_bias: w.dt_bias,
            a: w.a_log.iter().map(|v| -v.exp()).collect(),
            d: w.d,
            mixer_norm: w.mixer_norm,
            out_proj: w.out_proj,
            out_proj_bias: w.out_proj_bias,
        }
    }

    /// Runs the block over `hidden: [T, D]` in place. One token goes through the fused step;
    /// more go through chunked SSD with chunk length `chunk`. Both continue from and update
    /// `conv_state` and `ssm_state`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        backend: &dyn Backend,
        dims: &Dims,
        hidden: &mut [f32],
        conv_state: &mut [f32],
        ssm_state: &mut [f32],
        chunk: usize,
        act: &mut Activations,
    ) {
        let (d_model, inner, conv_dim, heads) = (dims.d_model, dims.inner(), dims.conv_dim, dims.ssm.heads);
        let tokens = hidden.len() / d_model;
        debug_assert_eq!(act.tokens(dims), tokens);

        backend.rms_norm(hidden, &self.norm, dims.eps, &mut act.normed);

        // in_proj, one GEMM per row block so each output is contiguous: z | xBC | dt.
        let bias = |range: std::ops::Range<usize>| self.in_proj_bias.as_ref().map(|b| &b[range]);
        let w = |rows: std::ops::Range<usize>| &self.in_proj[rows.start * d_model..rows.end * d_model];
        let (z_rows, xbc_rows, dt_rows) = (0..inner, inner..inner + conv_dim, inner + conv_dim..inner + conv_dim + heads);
        backend.linear(&act.normed, w(z_rows.clone()), bias(z_rows), d_model, inner, &mut act.z);
        backend.linear(&act.normed, w(xbc_rows.clone()), bias(xbc_rows), d_model, conv_dim, &mut act.xbc_raw);
        backend.linear(&act.normed, w(dt_rows.clone()), bias(dt_rows), d_model, heads, &mut act.dt_raw);

        backend.causal_conv1d(&act.xbc_raw, conv_state, &self.conv_weight, self.conv_bias.as_deref(), conv_dim, &mut act.xbc);
        split_xbc(&act.xbc, conv_dim, inner, dims.ssm.bc_width(), &mut act.x, &mut act.b, &mut act.c);
        backend.discretize_dt(&act.dt_raw, &self.dt_bias, dims.dt_limit, &mut act.dt);

        if tokens == 1 {
            backend.ssm_step(dims.ssm, &act.x, &act.dt, &self.a, &act.b, &act.c, &self.d, ssm_state, &mut act.y);
        } else {
            backend.ssd_scan(dims.ssm, &act.x, &act.dt, &self.a, &act.b, &act.c, &self.d, ssm_state, chunk, &mut act.y);
        }

        // Gated RMSNorm per group of I/G channels (mamba_ssm and HF >= 5; not over all of I).
        backend.gated_rms_norm(&act.y, &act.z, &self.mixer_norm, inner / dims.ssm.groups, dims.eps, &mut act.u);
        backend.linear(&act.u, &self.out_proj, self.out_proj_bias.as_deref(), inner, d_model, &mut act.out);
        for (h, o) in hidden.iter_mut().zip(&act.out) {
            *h += o;
        }
    }
}

/// Splits conv output rows `[x | B | C]` into three contiguous buffers.
fn split_xbc(xbc: &[f32], conv_dim: usize, inner: usize, bc: usize, x: &mut [f32], b: &mut [f32], c: &mut [f32]) {
    for (t, row) in xbc.chunks_exact(conv_dim).enumerate() {
        x[t * inner..(t + 1) * inner].copy_from_slice(&row[..inner]);
        b[t * bc..(t + 1) * bc].copy_from_slice(&row[inner..inner + bc]);
        c[t * bc..(t + 1) * bc].copy_from_slice(&row[inner + bc..]);
    }
}
