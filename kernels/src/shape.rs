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
