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

/// With buffers capped at 128 KB every large operand is split: a weight matrix into blocks of
/// rows (each launch writing its columns of one output), long inputs into consecutive launches.
/// Every op still matches the reference.
#[test]
fn ops_split_under_a_small_buffer_limit_match_reference() {
    let device = std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into());
    let small = coil_gpu::open_with_max_buffer(device.parse().unwrap(), Some(128 << 10)).unwrap();
    conformance::linear(&*small);
    conformance::norms(&*small);
    conformance::causal_conv(&*small);
    conformance::ssd_scan(&*small);
    assert_eq!(small.device_failure(), None);
}

/// An input past the device's largest buffer that cannot be split (one weight row is wider than
/// the buffer) is computed elsewhere, not refused; a buffer the backend is asked to allocate past
/// the limit is a failure the backend names, with NaN (never stale values) in the outputs.
#[test]
fn a_refused_buffer_is_a_named_failure_and_never_a_result() {
    let device = std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into());
    let tiny = coil_gpu::open_with_max_buffer(device.parse().unwrap(), Some(256)).unwrap();
    let mut rng = conformance::Rng::new(3);
    // A norm row of 100 values fits 256 bytes (64 values) only in pieces it cannot be cut into.
    let (x, weight) = (rng.vec(200, 1.0), rng.vec(100, 1.0));
    let mut out = vec![0.0; 200];
    tiny.rms_norm(&x, &weight, 1e-5, &mut out);
    let failure = tiny.device_failure().expect("a 400-byte row in 256-byte buffers fails");
    assert!(failure.contains("400 bytes") && failure.contains("256 bytes") && failure.contains("RMSNorm"), "{failure}");
    assert!(out.iter().all(|v| v.is_nan()), "outputs of a failed op must be NaN");
    // Once failed, later ops fail too: their results cannot be trusted.
    let mut again = vec![0.0; 4];
    tiny.linear(&rng.vec(2, 1.0), &Matrix::new(rng.vec(8, 1.0), 4, 2), None, &mut again);
    assert!(again.iter().all(|v| v.is_nan()));
}

/// A row-wise split (in_proj's output into z, xBC and dt) writes each part's rows where its view
/// starts, on the device as on the host: source and parts at offsets inside larger buffers,
/// widths of 1 and off any vector width, one row and many.
#[test]
fn split_columns_puts_each_part_where_its_view_is() {
    use coil_kernels::{Engine, HostEngine};
    let engines: Vec<std::sync::Arc<dyn Engine>> = vec![device().device_engine().expect("a GPU backend has an engine"), std::sync::Arc::new(HostEngine::new(std::sync::Arc::new(coil_kernels::Cpu)))];
    for engine in engines {
        for (rows, widths) in [(1, [1, 1, 1]), (5, [3, 7, 2]), (37, [64, 130, 24]), (300, [5, 1, 9])] {
            let width: usize = widths.iter().sum();
            let values: Vec<f32> = (0..rows * width + 11).map(|i| i as f32 * 0.5 - 3.0).collect();
            let source = engine.upload(&values);
            // Each part lands at offset 3 of a buffer with room on both sides.
            let mut parts: Vec<coil_kernels::Buffer> = widths.iter().map(|w| engine.upload(&vec![f32::NAN; rows * w + 6])).collect();
            let [a, b, c] = &mut parts[..] else { unreachable!() };
            let views = [a.slice_mut(3..3 + rows * widths[0]), b.slice_mut(3..3 + rows * widths[1]), c.slice_mut(3..3 + rows * widths[2])];
            engine.split_columns(source.slice(7..7 + rows * width), rows, views);
            let mut first = 0;
            for (part, &w) in parts.iter().zip(&widths) {
                let mut got = vec![0.0; rows * w + 6];
                engine.download(part.view(), &mut got);
                assert!(got[..3].iter().chain(&got[3 + rows * w..]).all(|v| v.is_nan()), "{}: written outside the part", engine.name());
                for r in 0..rows {
                    assert_eq!(&got[3 + r * w..3 + (r + 1) * w], &values[7 + r * width + first..7 + r * width + first + w], "{}: row {r}", engine.name());
                }
                first += w;
            }
        }
    }
}

/// The residual add as a product's epilogue: `out += input · weightᵀ (+ bias)` on the device, for
/// decode's row counts (the plane and cube reductions) and prefill's (the tiled product), with and
/// without a bias, and with the weight split into blocks of rows under a small buffer limit, each
/// against the host engine.
#[test]
fn linear_add_adds_the_product_to_what_out_holds() {
    use coil_kernels::{Engine, HostEngine};
    let device = std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into());
    let host = HostEngine::new(std::sync::Arc::new(coil_kernels::Reference));
    let mut rng = conformance::Rng::new(17);
    for (limit, rows, k, n) in [(None, 1, 64, 48), (None, 3, 100, 33), (None, 70, 37, 129), (Some(8 << 10), 5, 64, 300), (Some(8 << 10), 8, 64, 200)] {
        let backend = coil_gpu::open_with_max_buffer(device.parse().unwrap(), limit).unwrap();
        let engine = backend.device_engine().expect("a GPU backend has an engine");
        let weight = Matrix::new(rng.vec(n * k, 0.5), n, k);
        let (input, start) = (rng.vec(rows * k, 1.0), rng.vec(rows * n, 2.0));
        let mut want = start.clone();
        let mut scratch = vec![0.0; rows * n];
        let bias = rng.vec(n, 1.0);
        let host_bias = (rows == 3).then_some(bias.as_slice().into());
        host.linear_add(input.as_slice().into(), &weight, host_bias, scratch.as_mut_slice().into(), want.as_mut_slice().into());
        let x = engine.upload(&input);
        let mut out = engine.upload(&start);
        let mut scratch = engine.zeros(rows * n);
        let device_bias = engine.upload(&bias);
        engine.linear_add(x.view(), &weight, (rows == 3).then(|| device_bias.view()), scratch.view_mut(), out.view_mut());
        let mut got = vec![0.0; rows * n];
        engine.download(out.view(), &mut got);
        assert!(conformance::relative_error(&got, &want) < 1e-5, "limit {limit:?}, {rows} x {k} x {n}");
        assert_eq!(backend.device_failure(), None);
    }
}

/// A product with the RMSNorm in front (with and without a bias): inside the product for decode's
/// row counts, through a separate norm for more rows, against the host engine (which always
/// normalises first).
#[test]
fn linear_after_norm_matches_norm_then_product() {
    use coil_kernels::{Engine, HostEngine};
    let host = HostEngine::new(std::sync::Arc::new(coil_kernels::Reference));
    let engine = device().device_engine().expect("a GPU backend has an engine");
    let mut rng = conformance::Rng::new(23);
    for (rows, k, n) in [(1, 64, 48), (2, 100, 33), (4, 37, 129), (6, 64, 70)] {
        let weight = Matrix::new(rng.vec(n * k, 0.5), n, k);
        let (input, norm) = (rng.vec(rows * k, 3.0), rng.vec(k, 1.0));
        let (mut want, mut normed) = (vec![0.0; rows * n], vec![0.0; rows * k]);
        let bias = rng.vec(n, 1.0);
        let host_bias = (rows == 2).then_some(bias.as_slice().into());
        host.linear_after_norm(input.as_slice().into(), norm.as_slice().into(), 1e-5, &weight, host_bias, normed.as_mut_slice().into(), want.as_mut_slice().into());
        let (x, w) = (engine.upload(&input), engine.upload(&norm));
        let (mut normed, mut out) = (engine.zeros(rows * k), engine.zeros(rows * n));
        let device_bias = engine.upload(&bias);
        engine.linear_after_norm(x.view(), w.view(), 1e-5, &weight, (rows == 2).then(|| device_bias.view()), normed.view_mut(), out.view_mut());
        let mut got = vec![0.0; rows * n];
        engine.download(out.view(), &mut got);
        assert!(conformance::relative_error(&got, &want) < 1e-5, "{rows} x {k} x {n}");
    }
}
