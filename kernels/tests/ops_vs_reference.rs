//! Every fast CPU op against the naive reference, on awkward sizes: 1, chunk-1, chunk, chunk+1,
//! primes, several groups, per-channel D. Tolerances are relative to the magnitude of the values
//! compared, since the fast paths reassociate f32 sums (GEMM blocking, chunked SSD).

use coil_kernels::{Backend, Cpu, DtLimit, Recurrence, Reference, ScanInputs, SsmShape};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut SmallRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

/// max |a - b| / (1 + max |b|)
fn relative_error(fast: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(fast.len(), reference.len());
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = fast.iter().zip(reference).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "non-finite difference");
    diff / (1.0 + scale)
}

/// Rows 1 and 2-4 take the dot-product paths (decode, small batches), 5 and up the GEMM.
#[test]
fn linear_matches_reference() {
    let mut rng = SmallRng::seed_from_u64(1);
    for &(rows, k, n, with_bias) in
        &[(1, 1, 1, false), (1, 64, 97, true), (2, 13, 5, true), (3, 130, 67, false), (4, 31, 200, true), (5, 13, 5, true), (7, 13, 5, true), (33, 128, 257, false), (129, 31, 64, true)]
    {
        let input = random(&mut rng, rows * k, 1.0);
        let weight = random(&mut rng, n * k, 0.5);
        let bias = with_bias.then(|| random(&mut rng, n, 1.0));
        let mut fast = vec![f32::NAN; rows * n];
        let mut slow = vec![0.0; rows * n];
        Cpu.linear(&input, &weight, bias.as_deref(), k, n, &mut fast);
        Reference.linear(&input, &weight, bias.as_deref(), k, n, &mut slow);
        let err = relative_error(&fast, &slow);
        assert!(err < 1e-5, "linear {rows}x{k}x{n}: {err}");
    }
}

#[test]
fn norms_match_reference() {
    let mut rng = SmallRng::seed_from_u64(2);
    for &(rows, width, group_size) in &[(1, 1, 1), (3, 96, 96), (5, 96, 24), (17, 130, 13)] {
        let x = random(&mut rng, rows * width, 3.0);
        let z = random(&mut rng, rows * width, 3.0);
        let weight = random(&mut rng, width, 1.5);
        let (mut fast, mut slow) = (vec![0.0; rows * width], vec![0.0; rows * width]);
        Cpu.rms_norm(&x, &weight, 1e-5, &mut fast);
        Reference.rms_norm(&x, &weight, 1e-5, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "rms_norm {rows}x{width}");
        Cpu.gated_rms_norm(&x, &z, &weight, group_size, 1e-5, &mut fast);
        Reference.gated_rms_norm(&x, &z, &weight, group_size, 1e-5, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "gated_rms_norm {rows}x{width}/{group_size}");
    }
}

#[test]
fn causal_conv_matches_reference_and_steps() {
    let mut rng = SmallRng::seed_from_u64(3);
    for &(tokens, channels, kernel, with_bias) in
        &[(1, 5, 4, true), (2, 7, 4, false), (3, 7, 4, true), (4, 9, 4, true), (37, 11, 3, true), (9, 6, 1, false), (5, 3, 6, true)]
    {
        let xbc = random(&mut rng, tokens * channels, 2.0);
        let weight = random(&mut rng, channels * kernel, 1.0);
        let bias = with_bias.then(|| random(&mut rng, channels, 0.5));
        let initial = random(&mut rng, channels * kernel, 1.0);

        let (mut fast_state, mut slow_state) = (initial.clone(), initial.clone());
        let (mut fast, mut slow) = (vec![0.0; xbc.len()], vec![0.0; xbc.len()]);
        Cpu.causal_conv1d(&xbc, &mut fast_state, &weight, bias.as_deref(), channels, &mut fast);
        Reference.causal_conv1d(&xbc, &mut slow_state, &weight, bias.as_deref(), channels, &mut slow);
        assert!(relative_error(&fast, &slow) < 1e-6, "conv T={tokens} C={channels} K={kernel}");
        assert_eq!(fast_state, slow_state, "conv state T={tokens} C={channels} K={kernel}");

        // The same tokens one at a time through the step path.
        let mut step_state = initial.clone();
        let mut stepped = vec![0.0; xbc.len()];
        for t in 0..tokens {
            let range = t * channels..(t + 1) * channels;
            Cpu.causal_conv1d(&xbc[range.clone()], &mut step_state, &weight, bias.as_deref(), channels, &mut stepped[range]);
        }
        assert!(relative_error(&stepped, &slow) < 1e-6, "conv step T={tokens}");
        assert_eq!(step_state, slow_state);
    }
}

struct ScanCase {
    tokens: usize,
    shape: SsmShape,
    per_channel_d: bool,
}

/// Random scan inputs: x, dt, A, log-decay offset, B, C, D, initial state.
struct ScanData {
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    offset: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    state: Vec<f32>,
}

impl ScanData {
    fn new(rng: &mut SmallRng, case: &ScanCase) -> ScanData {
        let s = case.shape;
        ScanData {
            x: random(rng, case.tokens * s.inner(), 1.0),
            // dt spans the range released models use (1e-3 .. ~1) and A from -1 to -16.
            dt: (0..case.tokens * s.heads).map(|_| 10f32.powf(rng.random_range(-3.0..0.2))).collect(),
            a: (0..s.heads).map(|_| -rng.random_range(1.0f32..16.0)).collect(),
            // ln(lambda) of retention rescaling, on some heads.
            offset: (0..s.heads).map(|h| if h % 2 == 0 { 0.0 } else { rng.random_range(-0.1f32..0.0) }).collect(),
            b: random(rng, case.tokens * s.bc_width(), 1.0),
            c: random(rng, case.tokens * s.bc_width(), 1.0),
            d: random(rng, if case.per_channel_d { s.inner() } else { s.heads }, 1.0),
            state: random(rng, s.state_len(), 1.0),
        }
    }

    fn recurrence(&self) -> Recurrence<'_> {
        Recurrence { a: &self.a, log_decay_offset: &self.offset, d: &self.d }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs { x: &self.x, dt: &self.dt, b: &self.b, c: &self.c }
    }
}

fn cases() -> Vec<ScanCase> {
    let shape = |heads, head_dim, d_state, groups| SsmShape { heads, head_dim, d_state, groups };
    vec![
        ScanCase { tokens: 1, shape: shape(1, 1, 1, 1), per_channel_d: false },
        ScanCase { tokens: 15, shape: shape(4, 8, 16, 1), per_channel_d: false },
        ScanCase { tokens: 16, shape: shape(4, 8, 16, 2), per_channel_d: true },
        ScanCase { tokens: 17, shape: shape(6, 5, 7, 3), per_channel_d: false },
        ScanCase { tokens: 61, shape: shape(8, 16, 32, 4), per_channel_d: false },
        ScanCase { tokens: 131, shape: shape(3, 4, 3, 1), per_channel_d: true },
        ScanCase { tokens: 40, shape: shape(2, 64, 130, 1), per_channel_d: false },
    ]
}

#[test]
fn chunked_scan_matches_sequential_reference() {
    let mut rng = SmallRng::seed_from_u64(4);
    for case in cases() {
        let data = ScanData::new(&mut rng, &case);
        let mut slow_state = data.state.clone();
        let mut slow = vec![0.0; data.x.len()];
        Reference.ssd_scan(case.shape, data.recurrence(), data.inputs(), &mut slow_state, 1, &mut slow);
        for chunk in [1, 2, 15, 16, 17, 64, 1000] {
            let mut state = data.state.clone();
            let mut y = vec![f32::NAN; data.x.len()];
            Cpu.ssd_scan(case.shape, data.recurrence(), data.inputs(), &mut state, chunk, &mut y);
            let (err_y, err_s) = (relative_error(&y, &slow), relative_error(&state, &slow_state));
            assert!(err_y < 2e-5 && err_s < 2e-5, "T={} {:?} chunk {chunk}: y {err_y} state {err_s}", case.tokens, case.shape);
        }
    }
}

#[test]
fn fused_step_matches_reference() {
    let mut rng = SmallRng::seed_from_u64(5);
    for case in cases() {
        let data = ScanData::new(&mut rng, &case);
        let s = case.shape;
        let (mut fast_state, mut slow_state) = (data.state.clone(), data.state.clone());
        for t in 0..case.tokens {
            let one = data.inputs().slice(&s, t..t + 1);
            let (mut fast, mut slow) = (vec![0.0; s.inner()], vec![0.0; s.inner()]);
            Cpu.ssm_step(s, data.recurrence(), one, &mut fast_state, &mut fast);
            Reference.ssm_step(s, data.recurrence(), one, &mut slow_state, &mut slow);
            assert!(relative_error(&fast, &slow) < 1e-5, "step T={t} {s:?}");
        }
        assert!(relative_error(&fast_state, &slow_state) < 1e-5);
    }
}

#[test]
fn retracting_inputs_matches_reference_and_undoes_a_write() {
    let mut rng = SmallRng::seed_from_u64(6);
    for case in cases() {
        let s = case.shape;
        let data = ScanData::new(&mut rng, &case);
        let xdt: Vec<f32> = data.x.iter().enumerate().map(|(i, v)| v * data.dt[i / s.inner() * s.heads + (i % s.inner()) / s.head_dim]).collect();
        let weights: Vec<f32> = (0..case.tokens * s.heads).map(|_| rng.random_range(0.0f32..1.0)).collect();
        let (mut fast, mut slow) = (data.state.clone(), data.state.clone());
        Cpu.retract_inputs(s, &mut fast, &xdt, &data.b, &weights);
        Reference.retract_inputs(s, &mut slow, &xdt, &data.b, &weights);
        assert!(relative_error(&fast, &slow) < 1e-5, "retract {s:?}");
    }
    // From a zero state, scanning one token with zero decay offset then retracting it (weight 1)
    // gives the zero state back.
    let case = &cases()[3];
    let s = case.shape;
    let data = ScanData::new(&mut rng, case);
    let one = data.inputs().slice(&s, 0..1);
    let mut state = vec![0.0; s.state_len()];
    let mut y = vec![0.0; s.inner()];
    Cpu.ssm_step(s, data.recurrence(), one, &mut state, &mut y);
    let xdt: Vec<f32> = (0..s.inner()).map(|i| one.x[i] * one.dt[i / s.head_dim]).collect();
    Cpu.retract_inputs(s, &mut state, &xdt, one.b, &vec![1.0; s.heads]);
    assert!(state.iter().all(|v| v.abs() < 1e-6));
}

#[test]
fn state_norm_clamp_only_shrinks_heads_above_threshold() {
    let s = SsmShape { heads: 3, head_dim: 2, d_state: 2, groups: 1 };
    let mut state = vec![3.0, 4.0, 0.0, 0.0, /* head 1 */ 0.3, 0.4, 0.0, 0.0, /* head 2 */ 6.0, 8.0, 0.0, 0.0];
    Cpu.clamp_state_norms(s, &mut state, &[1.0, 1.0, f32::INFINITY]);
    assert_eq!(&state[..2], &[0.6, 0.8]);
    assert_eq!(&state[4..6], &[0.3, 0.4], "below the threshold: untouched");
    assert_eq!(&state[8..10], &[6.0, 8.0], "infinite threshold: untouched");
}

#[test]
fn dt_discretisation_follows_torch_softplus_and_clamps() {
    let raw = [-30.0f32, -1.0, 0.0, 19.0, 21.0, 50.0];
    let bias = [0.5f32];
    let mut dt = [0.0f32; 6];
    Cpu.discretize_dt(&raw, &bias, DtLimit::default(), &mut dt);
    assert_eq!(dt[4], 21.5, "softplus passes arguments above 20 through unchanged");
    assert!((dt[2] - (1.0f32 + 0.5f32.exp()).ln()).abs() < 1e-6);
    assert!(dt[0] > 0.0 && dt[0] < 1e-12);
    Cpu.discretize_dt(&raw, &bias, DtLimit { min: 0.01, max: 0.2 }, &mut dt);
    assert_eq!(dt[0], 0.01);
    assert_eq!(dt[5], 0.2);
}
