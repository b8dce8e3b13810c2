//! The fast CPU backend: GEMM-shaped work through the `gemm` crate (runtime-detected SIMD),
//! everything else as cache-friendly loops split over rayon's pool (heads, rows or channels).
//! Each op here is tested against [`crate::Reference`] on awkward shapes.

mod conv;
mod matmul;
mod norm;
pub(crate) mod simd;
mod ssd;
mod step;

use crate::{Backend, Matrix, Recurrence, ScanInputs, SsmShape};

/// The CPU backend. Threads come from rayon's global pool (`RAYON_NUM_THREADS`, or the CLI's
/// `--threads`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Cpu {
    /// The instruction set the hand-written kernels run on this machine: `avx512`, `avx2` or
    /// `portable` (the best the CPU has, lowered by the environment variable `COIL_SIMD`). The
    /// `gemm` crate picks its own, by the same detection.
    pub fn simd() -> &'static str {
        simd::Isa::current().name()
    }
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, work: &mut (dyn FnMut() + Send)) {
        // On a pool thread already (a caller's own par_iter, say), `scope` runs it in place.
        rayon::scope(|_| work());
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        matmul::linear_matrix(input, weight, bias, out);
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        norm::rms_norm(x, weight, eps, out);
    }

    fn gated_rms_norm(
        &self,
        y: &[f32],
        z: &[f32],
        weight: &[f32],
        group_size: usize,
        eps: f32,
        out: &mut [f32],
    ) {
        norm::gated_rms_norm(y, z, weight, group_size, eps, out);
    }

    fn causal_conv1d(
        &self,
        xbc: &[f32],
        conv_state: &mut [f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        channels: usize,
        out: &mut [f32],
    ) {
        if xbc.len() == channels {
            conv::conv_step(xbc, conv_state, weight, bias, out);
        } else {
            conv::causal_conv1d(xbc, conv_state, weight, bias, channels, out);
        }
    }

    fn concurrent_sequences(&self) -> bool {
        true
    }

    /// 64: the state's two products per chunk cost the same at any Q, while the intra-chunk
    /// ones grow with Q; below 64 the products get too small for the GEMM to run at speed
    /// (docs/performance.md, "The measurements behind the CPU kernels' constants").
    fn preferred_chunk(&self) -> Option<usize> {
        Some(64)
    }

    fn ssd_scan(
        &self,
        shape: SsmShape,
        recurrence: Recurrence,
        inputs: ScanInputs,
        state: &mut [f32],
        chunk: usize,
        y: &mut [f32],
    ) {
        ssd::ssd_scan(shape, recurrence, inputs, state, chunk, y);
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        step::ssm_step(shape, recurrence, inputs, state, y);
    }

    fn retract_inputs(&self, shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]) {
        ssd::retract_inputs(shape, state, xdt, b, weights);
    }
}

/// Below this many multiply-adds an op runs on the calling thread: rayon's fork/join costs
/// microseconds, more than tiny work takes.
pub(crate) const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Decay factors below this (2⁻⁶⁴) are taken as zero by the scan and the step: a strongly
/// decaying head reaches subnormal factors within a chunk, and x86 cores run products with
/// subnormals through a slow microcode assist (docs/performance.md has what it cost). Such a term
/// sits 2⁻⁴⁰ below the f32 resolution of the same sum's undecayed term, so dropping it changes
/// nothing representable. A NaN factor stays NaN.
pub(crate) const NEGLIGIBLE_DECAY: f32 = f32::from_bits(63 << 23); // 2⁻⁶⁴: biased exponent 63

/// `exp(log_decay)`, or zero below [`NEGLIGIBLE_DECAY`].
pub(crate) fn decay_factor(log_decay: f32) -> f32 {
    let factor = log_decay.exp();
    if factor < NEGLIGIBLE_DECAY { 0.0 } else { factor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_factor_is_zero_below_two_to_the_minus_64_and_keeps_nan() {
        assert_eq!(NEGLIGIBLE_DECAY, 2f32.powi(-64));
        assert_eq!(decay_factor(0.0), 1.0);
        assert_eq!(decay_factor(-44.0), (-44.0f32).exp());
        assert_eq!(decay_factor(-44.5), 0.0);
        assert_eq!(decay_factor(f32::NEG_INFINITY), 0.0);
        assert!(decay_factor(f32::NAN).is_nan());
    }
}
