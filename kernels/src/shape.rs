/// Sizes of one Mamba-2 mixer's selective state space: H heads of P channels, each head holding a
/// `[P, N]` state, reading `B` and `C` from its group (`G` groups of `N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsmShape {
    /// H.
    pub heads: usize,
    /// P, channels per head.
    pub head_dim: usize,
    /// N, state size per channel.
    pub d_state: usize,
    /// G, groups sharing one `B` and `C`.
    pub groups: usize,
}

impl SsmShape {
    /// I = H * P, the mixer's inner width.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// G * N, the width of `B` (and of `C`) per token.
    pub fn bc_width(&self) -> usize {
        self.groups * self.d_state
    }

    /// Elements of one layer's ssm state, H * P * N.
    pub fn state_len(&self) -> usize {
        self.heads * self.head_dim * self.d_state
    }

    /// The group head `h` reads. Heads are repeat-interleaved over groups (`h / (H/G)`), as in
    /// mamba_ssm and HF; `h % G` would be wrong for G > 1.
    #[inline]
    pub fn group_of(&self, head: usize) -> usize {
        head / (self.heads / self.groups)
    }

    /// Panics unless the shape is usable; the loader validates user input long before this.
    pub(crate) fn assert_valid(&self) {
        assert!(
            self.heads > 0 && self.head_dim > 0 && self.d_state > 0 && self.groups > 0,
            "empty ssm shape {self:?}"
        );
        assert_eq!(self.heads % self.groups, 0, "heads must divide into groups: {self:?}");
    }
}

/// The clamp applied to `dt` after softplus (`time_step_limit`). The default, `(0, inf)`, changes
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DtLimit {
    pub min: f32,
    pub max: f32,
}

impl Default for DtLimit {
    fn default() -> Self {
        DtLimit { min: 0.0, max: f32::INFINITY }
    }
}

impl DtLimit {
    #[inline]
    pub fn apply(&self, dt: f32) -> f32 {
        dt.max(self.min).min(self.max)
    }
}

/// Per-head parameters of one layer's recurrence, after any mitigation has transformed them.
#[derive(Clone, Copy, Debug)]
pub struct Recurrence<'a> {
    /// `[H]` A (negative).
    pub a: &'a [f32],
    /// `[H]` added to `dt * A` in log space: `ln(lambda)` of retention rescaling, zero otherwise.
    pub log_decay_offset: &'a [f32],
    /// `[H]`, or `[H*P]` with `D_has_hdim`: the skip connection.
    pub d: &'a [f32],
}

/// Per-token inputs of a scan over T tokens.
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<'a> {
    /// `[T, H, P]`.
    pub x: &'a [f32],
    /// `[T, H]`, after softplus and any clamp or scaling.
    pub dt: &'a [f32],
    /// `[T, G, N]`, as written into the state.
    pub b: &'a [f32],
    /// `[T, G, N]`, as read from it.
    pub c: &'a [f32],
}

impl<'a> ScanInputs<'a> {
    pub fn tokens(&self, shape: &SsmShape) -> usize {
        self.dt.len() / shape.heads
    }

    /// The inputs of tokens `range` only.
    pub fn slice(&self, shape: &SsmShape, range: std::ops::Range<usize>) -> ScanInputs<'a> {
        let (inner, bc, h) = (shape.inner(), shape.bc_width(), shape.heads);
        ScanInputs {
            x: &self.x[range.start * inner..range.end * inner],
            dt: &self.dt[range.start * h..range.end * h],
            b: &self.b[range.start * bc..range.end * bc],
            c: &self.c[range.start * bc..range.end * bc],
        }
    }

    /// Panics unless the buffers agree with `shape` and each other (a caller bug).
    pub(crate) fn assert_consistent(&self, shape: &SsmShape) -> usize {
        let tokens = self.tokens(shape);
        assert_eq!(self.dt.len(), tokens * shape.heads, "dt length");
        assert_eq!(self.x.len(), tokens * shape.inner(), "x length");
        assert_eq!(self.b.len(), tokens * shape.bc_width(), "B length");
        assert_eq!(self.c.len(), tokens * shape.bc_width(), "C length");
        tokens
    }
}

impl Recurrence<'_> {
    pub(crate) fn assert_consistent(&self, shape: &SsmShape) {
        assert_eq!(self.a.len(), shape.heads, "A length");
        assert_eq!(self.log_decay_offset.len(), shape.heads, "log-decay offset length");
        assert!(
            self.d.len() == shape.heads || self.d.len() == shape.inner(),
            "D has {} elements, expected {} (per head) or {} (per channel)",
            self.d.len(),
            shape.heads,
            shape.inner()
        );
    }

    /// `D` is per head or, for checkpoints with `D_has_hdim`, per channel.
    #[inline]
    pub(crate) fn skip(&self, shape: &SsmShape, head: usize, channel: usize) -> f32 {
        if self.d.len() == shape.heads {
            self.d[head]
        } else {
            self.d[head * shape.head_dim + channel]
        }
    }

    /// `log(alpha) = dt * A + offset` for head `h`.
    #[inline]
    pub fn log_decay(&self, head: usize, dt: f32) -> f32 {
        dt * self.a[head] + self.log_decay_offset[head]
    }
}
