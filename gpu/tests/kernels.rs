//! Every GPU kernel against the naive reference, through the same conformance checks the CPU
//! backend passes. The device is `COIL_TEST_DEVICE` (default `wgpu`: Mesa's lavapipe on a machine
//! without a GPU, installed by `scripts/install-lavapipe.sh`; `cuda` on an NVIDIA machine).
//! A missing device fails the tests: they never pass by skipping.

use coil_gpu::{Backend, Device};
use coil_kernels::{conformance, Matrix};

fn device() -> std::sync::Arc<dyn Backend> {
    coil_gpu::test_backend()
}

#[test]
fn linear_matches_reference() {
    conformance::linear(&*device());
}

#[test]
fn norms_match_reference() {
    conformance::norms(&*device());
}

#[test]
fn causal_conv_matches_reference_and_steps() {
    conformance::causal_conv(&*device());
}

#[test]
fn scan_matches_sequential_reference() {
    conformance::ssd_scan(&*device());
}

#[test]
fn step_matches_reference() {
    conformance::ssm_step(&*device());
}

#[test]
fn mitigation_ops_match_reference() {
    conformance::retract_inputs(&*device());
    conformance::clamp_state_norms(&*device());
}

/// A matrix's device copy belongs to the backend that made it: a second device instance (or the
/// CPU) using the same matrix computes from the values, not from the other's buffer.
#[test]
fn a_matrix_used_by_two_backends_gives_both_the_right_result() {
    // test_backend() is one instance per process; open() makes another on the same device.
    let second = coil_gpu::open(Device::Wgpu(None)).or_else(|_| coil_gpu::open(Device::Cuda(0))).unwrap();
    let mut rng = conformance::Rng::new(9);
    let weight = Matrix::new(rng.vec(40 * 24, 1.0), 40, 24);
    let input = rng.vec(3 * 24, 1.0);
    let (mut first_out, mut second_out, mut cpu_out) = (vec![0.0; 120], vec![0.0; 120], vec![0.0; 120]);
    device().linear(&input, &weight, None, &mut first_out);
    second.linear(&input, &weight, None, &mut second_out);
    coil_kernels::Cpu.linear(&input, &weight, None, &mut cpu_out);
    assert_eq!(first_out, second_out);
    assert!(conformance::relative_error(&first_out, &cpu_out) < 1e-5);
}

#[test]
fn a_missing_device_is_an_error_not_a_panic() {
    let err = coil_gpu::open(Device::Wgpu(Some(99))).err().expect("there is no adapter 99");
    assert!(err.to_string().contains("wgpu:99"), "{err}");
    let err = coil_gpu::open(Device::Cuda(99)).err().expect("there is no CUDA device 99");
    assert!(err.to_string().contains("CUDA device 99"), "{err}");
}
