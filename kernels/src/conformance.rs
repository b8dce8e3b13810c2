//! The checks every backend must pass: each op against the naive [`Reference`] on awkward sizes
//! (1, chunk-1, chunk, chunk+1, primes, several groups, per-channel D, state rows longer than a
//! cube). Each function panics with the case that failed. The CPU backend's tests and the GPU
//! backend's tests call the same functions, so a new backend is checked by one line per op.
//!
//! Tolerances are relative to the magnitude of the values compared (`max |a - b| / (1 + max
//! |b|)`), since fast paths reassociate f32 sums.

use crate::{Backend, Matrix, Recurrence, Reference, ScanInputs, SsmShape};

/// A small deterministic generator (SplitMix64), so the checks need no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    /// `len` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(-scale, scale)).collect()
    }
}

/// `max |a - b| / (1 + max |b|)`; panics on a non-finite difference.
pub fn relative_error(fast: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(fast.len(), reference.len());
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = fast.iter().zip(reference).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "non-finite difference");
    diff / (1.0 + scale)
}

/// `linear` at 1 row (decode), 2-4 rows (small batches), and GEMM sizes around tile edges.
pub fn linear(backend: &dyn Backend) {
    let mut rng = Rng::new(1);
    for &(rows, k, n, with_bias) in &[
        (1, 1, 1, false),
        (1, 64, 97, true),
        (2, 13, 5, true),
        (3, 130, 67, false),
        (4, 31, 200, true),
        (5, 13, 5, true),
        (7, 13, 5, true),
        (33, 128, 257, false),
        (64, 16, 64, true),
        (65, 17, 63, false),
        (129, 31, 64, true),
        // Wide inputs: the small-batch path tiles 4 rows by 3 features with 8-lane tails. (The
        // CPU's GEMM path widens a 16-bit weight in blocks of 2^22 values; its unit test
        // `widened_blocks_tile_the_output` covers several blocks and a short last one.)
        (6, 700, 200, true),
        (70, 700, 100, false),
        (70, 1100, 1000, true),
    ] {
        let input = rng.vec(rows * k, 1.0);
        let weight = Matrix::new(rng.vec(n * k, 0.5), n, k);
        let bias = with_bias.then(|| rng.vec(n, 1.0));
        let mut fast = vec![f32::NAN; rows * n];
        let mut slow = vec![0.0; rows * n];
        backend.linear(&input, &weight, bias.as_deref(), &mut fast);
        Reference.linear(&input, &weight, bias.as_deref(), &mut slow);
        let err = relative_error(&fast, &slow);
        assert!(err < 1e-5, "{}: linear {rows}x{k}x{n}: {err}", backend.name());
        // The same matrix again (a backend may keep a copy of it): same result.
        let mut again = vec![f32::NAN; rows * n];
        backend.linear(&input, &weight, bias.as_deref(), &mut again);
        assert_eq!(again, fast, "{}: linear {rows}x{k}x{n} repeated", backend.name());
        // Held in bf16 or f16: the reference widens the same rounded values.
        for dtype in [crate::WeightDtype::Bf16, crate::WeightDtype::F16] {
            let weight = weight.to_dtype(dtype);
            backend.linear(&input, &weight, bias.as_deref(), &mut fast);
            Reference.linear(&input, &weight, bias.as_deref(), &mut slow);
            let err = relative_error(&fast, &slow);
            assert!(err < 1e-5, "{}: {dtype} linear {rows}x{k}x{n}: {err}", backend.name());
        }
    }
}

/// RMSNorm and gated RMSNorm, one group per row and several.
pub fn norms(backend: &dyn Backend) {
    let mut rng = Rng::new(2);
    for &(rows, width, group_size) in &[(1, 1, 1), (3, 96, 96), (5, 96, 24), (17, 130, 13), (2, 1000, 500)] {
        let x = rng.vec(rows * width, 3.0);
        let z = rng.vec(rows * width, 3.0);
        let weight = rng.vec(width, 1.5);
        let (mut fast, mut slow) = (vec![0.0; rows * width], vec![0.0; rows * width]);
        backend.rms_norm(&x, &weight, 1e-5, &mut fast);
        Reference.rms_norm(&x, &weight, 1e-5, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "{}: rms_norm {rows}x{width}", backend.name());
        backend.gated_rms_norm(&x, &z, &weight, group_size, 1e-5, &mut fast);
        Reference.gated_rms_norm(&x, &z, &weight, group_size, 1e-5, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "{}: gated_rms_norm {rows}x{width}/{group_size}", backend.name());
    }
}

/// The causal conv from a random state, over several tokens and token by token.
pub fn causal_conv(backend: &dyn Backend) {
    let mut rng = Rng::new(3);
    for &(tokens, channels, kernel, with_bias) in
        &[(1, 5, 4, true), (2, 7, 4, false), (3, 7, 4, true), (4, 9, 4, true), (37, 11, 3, true), (9, 6, 1, false), (5, 3, 6, true), (300, 257, 4, true)]
    {
        let xbc = rng.vec(tokens * channels, 2.0);
        let weight = rng.vec(channels * kernel, 1.0);
        let bias = with_bias.then(|| rng.vec(channels, 0.5));
        let initial = rng.vec(channels * kernel, 1.0);
        let case = format!("{}: conv T={tokens} C={channels} K={kernel}", backend.name());

        let (mut fast_state, mut slow_state) = (initial.clone(), initial.clone());
        let (mut fast, mut slow) = (vec![0.0; xbc.len()], vec![0.0; xbc.len()]);
        backend.causal_conv1d(&xbc, &mut fast_state, &weight, bias.as_deref(), channels, &mut fast);
        Reference.causal_conv1d(&xbc, &mut slow_state, &weight, bias.as_deref(), channels, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "{case}");
        assert_eq!(fast_state, slow_state, "{case}: state");

        let mut step_state = initial.clone();
        let mut stepped = vec![0.0; xbc.len()];
        for t in 0..tokens {
            let range = t * channels..(t + 1) * channels;
            backend.causal_conv1d(&xbc[range.clone()], &mut step_state, &weight, bias.as_deref(), channels, &mut stepped[range]);
        }
        assert!(relative_error(&stepped, &slow) < 1e-6, "{case}: token by token");
        assert_eq!(step_state, slow_state, "{case}: state token by token");
    }
}

/// One scan problem: sizes and whether `D` is per channel.
pub struct ScanCase {
    pub tokens: usize,
    pub shape: SsmShape,
    pub per_channel_d: bool,
}

/// Random scan inputs: x, dt, A, log-decay offset, B, C, D, initial state.
pub struct ScanData {
    pub x: Vec<f32>,
    pub dt: Vec<f32>,
    pub a: Vec<f32>,
    pub offset: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub d: Vec<f32>,
    pub state: Vec<f32>,
}

impl ScanData {
    pub fn new(rng: &mut Rng, case: &ScanCase) -> ScanData {
        let s = case.shape;
        ScanData {
            x: rng.vec(case.tokens * s.inner(), 1.0),
            // dt spans the range released models use (1e-3 .. ~1) and A from -1 to -16.
            dt: (0..case.tokens * s.heads).map(|_| 10f32.powf(rng.uniform(-3.0, 0.2))).collect(),
            a: (0..s.heads).map(|_| -rng.uniform(1.0, 16.0)).collect(),
            // ln(lambda) of retention rescaling, on some heads.
            offset: (0..s.heads).map(|h| if h % 2 == 0 { 0.0 } else { rng.uniform(-0.1, 0.0) }).collect(),
            b: rng.vec(case.tokens * s.bc_width(), 1.0),
            c: rng.vec(case.tokens * s.bc_width(), 1.0),
            d: rng.vec(if case.per_channel_d { s.inner() } else { s.heads }, 1.0),
            state: rng.vec(s.state_len(), 1.0),
        }
    }

    pub fn recurrence(&self) -> Recurrence<'_> {
        Recurrence { a: &self.a, log_decay_offset: &self.offset, d: &self.d }
    }

    pub fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs { x: &self.x, dt: &self.dt, b: &self.b, c: &self.c }
    }
}

/// Scan shapes: single everything, chunk edges, groups, odd sizes, per-channel D, a state row
/// (130) and a head (200 channels) longer than one cube's threads.
pub fn scan_cases() -> Vec<ScanCase> {
    let shape = |heads, head_dim, d_state, groups| SsmShape { heads, head_dim, d_state, groups };
    vec![
        ScanCase { tokens: 1, shape: shape(1, 1, 1, 1), per_channel_d: false },
        ScanCase { tokens: 15, shape: shape(4, 8, 16, 1), per_channel_d: false },
        ScanCase { tokens: 16, shape: shape(4, 8, 16, 2), per_channel_d: true },
        ScanCase { tokens: 17, shape: shape(6, 5, 7, 3), per_channel_d: false },
        ScanCase { tokens: 61, shape: shape(8, 16, 32, 4), per_channel_d: false },
        ScanCase { tokens: 131, shape: shape(3, 4, 3, 1), per_channel_d: true },
        ScanCase { tokens: 40, shape: shape(2, 64, 130, 1), per_channel_d: false },
        ScanCase { tokens: 9, shape: shape(2, 200, 8, 2), per_channel_d: true },
        // Longer than the CPU scan's 1024-token window: several windows, the last one partial.
        ScanCase { tokens: 2100, shape: shape(4, 3, 5, 2), per_channel_d: false },
    ]
}

/// The scan at several chunk lengths against the sequential reference.
pub fn ssd_scan(backend: &dyn Backend) {
    let mut rng = Rng::new(4);
    for case in scan_cases() {
        let data = ScanData::new(&mut rng, &case);
        let mut slow_state = data.state.clone();
        let mut slow = vec![0.0; data.x.len()];
        Reference.ssd_scan(case.shape, data.recurrence(), data.inputs(), &mut slow_state, 1, &mut slow);
        for chunk in [1, 2, 15, 16, 17, 64, 1000] {
            let mut state = data.state.clone();
            let mut y = vec![f32::NAN; data.x.len()];
            backend.ssd_scan(case.shape, data.recurrence(), data.inputs(), &mut state, chunk, &mut y);
            let (err_y, err_s) = (relative_error(&y, &slow), relative_error(&state, &slow_state));
            assert!(
                err_y < 2e-5 && err_s < 2e-5,
                "{}: scan T={} {:?} chunk {chunk}: y {err_y} state {err_s}",
                backend.name(),
                case.tokens,
                case.shape
            );
        }
    }
}

/// The fused step, token by token, against the reference's.
pub fn ssm_step(backend: &dyn Backend) {
    let mut rng = Rng::new(5);
    for case in scan_cases() {
        let data = ScanData::new(&mut rng, &case);
        let s = case.shape;
        let (mut fast_state, mut slow_state) = (data.state.clone(), data.state.clone());
        for t in 0..case.tokens.min(20) {
            let one = data.inputs().slice(&s, t..t + 1);
            let (mut fast, mut slow) = (vec![0.0; s.inner()], vec![0.0; s.inner()]);
            backend.ssm_step(s, data.recurrence(), one, &mut fast_state, &mut fast);
            Reference.ssm_step(s, data.recurrence(), one, &mut slow_state, &mut slow);
            assert!(relative_error(&fast, &slow) < 1e-5, "{}: step t={t} {s:?}", backend.name());
        }
        assert!(relative_error(&fast_state, &slow_state) < 1e-5, "{}: step state {s:?}", backend.name());
    }
}

/// The window's retraction, and that retracting a just-written input gives the old state back.
pub fn retract_inputs(backend: &dyn Backend) {
    let mut rng = Rng::new(6);
    for case in scan_cases() {
        let s = case.shape;
        let data = ScanData::new(&mut rng, &case);
        let xdt: Vec<f32> = data.x.iter().enumerate().map(|(i, v)| v * data.dt[i / s.inner() * s.heads + (i % s.inner()) / s.head_dim]).collect();
        let weights: Vec<f32> = (0..case.tokens * s.heads).map(|_| rng.uniform(0.0, 1.0)).collect();
        let (mut fast, mut slow) = (data.state.clone(), data.state.clone());
        backend.retract_inputs(s, &mut fast, &xdt, &data.b, &weights);
        Reference.retract_inputs(s, &mut slow, &xdt, &data.b, &weights);
        assert!(relative_error(&fast, &slow) < 1e-5, "{}: retract {s:?}", backend.name());
    }
    let case = &scan_cases()[3];
    let s = case.shape;
    let data = ScanData::new(&mut rng, case);
    let one = data.inputs().slice(&s, 0..1);
    let mut state = vec![0.0; s.state_len()];
    let mut y = vec![0.0; s.inner()];
    backend.ssm_step(s, data.recurrence(), one, &mut state, &mut y);
    let xdt: Vec<f32> = (0..s.inner()).map(|i| one.x[i] * one.dt[i / s.head_dim]).collect();
    backend.retract_inputs(s, &mut state, &xdt, one.b, &vec![1.0; s.heads]);
    assert!(state.iter().all(|v| v.abs() < 1e-6), "{}: a retracted write leaves a residue", backend.name());
}

/// The state-norm clamp shrinks exactly the heads above their threshold.
pub fn clamp_state_norms(backend: &dyn Backend) {
    let s = SsmShape { heads: 3, head_dim: 2, d_state: 2, groups: 1 };
    let mut state = vec![3.0, 4.0, 0.0, 0.0, /* head 1 */ 0.3, 0.4, 0.0, 0.0, /* head 2 */ 6.0, 8.0, 0.0, 0.0];
    backend.clamp_state_norms(s, &mut state, &[1.0, 1.0, f32::INFINITY]);
    assert!((state[0] - 0.6).abs() < 1e-6 && (state[1] - 0.8).abs() < 1e-6, "{}: clamped head", backend.name());
    assert_eq!(&state[4..6], &[0.3, 0.4], "{}: below the threshold: untouched", backend.name());
    assert_eq!(&state[8..10], &[6.0, 8.0], "{}: infinite threshold: untouched", backend.name());
}

/// Every check above.
pub fn all(backend: &dyn Backend) {
    linear(backend);
    norms(backend);
    causal_conv(backend);
    ssd_scan(backend);
    ssm_step(backend);
    retract_inputs(backend);
    clamp_state_norms(backend);
}
