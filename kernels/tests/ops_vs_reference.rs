//! The fast CPU backend against the naive reference: the shared conformance checks
//! (`coil_kernels::conformance`, the same ones the GPU backend passes), plus the CPU-only details.

use coil_kernels::{conformance, Backend, Cpu, DtLimit};

#[test]
fn linear_matches_reference() {
    conformance::linear(&Cpu);
}

#[test]
fn norms_match_reference() {
    conformance::norms(&Cpu);
}

#[test]
fn causal_conv_matches_reference_and_steps() {
    conformance::causal_conv(&Cpu);
}

#[test]
fn chunked_scan_matches_sequential_reference() {
    conformance::ssd_scan(&Cpu);
}

#[test]
fn fused_step_matches_reference() {
    conformance::ssm_step(&Cpu);
}

#[test]
fn retracting_inputs_matches_reference_and_undoes_a_write() {
    conformance::retract_inputs(&Cpu);
}

#[test]
fn state_norm_clamp_only_shrinks_heads_above_threshold() {
    conformance::clamp_state_norms(&Cpu);
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
