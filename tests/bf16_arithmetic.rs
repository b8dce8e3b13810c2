//! What bf16 arithmetic costs: prefill's products with bf16 weights computed as AVX512-BF16 pair
//! dot products (activations rounded to bf16, f32 sums) against the same weights widened to f32
//! (exact, and within 1e-4 of HF on the golden fixtures). A test binary of its own: the
//! instruction set is chosen once per process, here forced by `COIL_SIMD=avx512bf16`. On a CPU
//! without AVX512-BF16 both models compute in f32 and agree exactly.

use std::path::Path;

use coil_ssm::{Checkpoint, LogitRows, Model, WeightDtype};

#[test]
fn bf16_arithmetic_stays_within_its_rounding_of_the_f32_path() {
    // Before any kernel runs: the choice is made at first use.
    std::env::set_var("COIL_SIMD", "avx512bf16");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bf16_weights");
    let load = |dtype| Model::from_checkpoint(Checkpoint::open_dir(&dir).unwrap()).with_weight_dtype(dtype).unwrap();
    let (exact, rounded) = (load(WeightDtype::F32), load(WeightDtype::Bf16));
    // 300 tokens: prefill's products run on the GEMM path (more than 64 rows), in pieces.
    let vocab = exact.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 11) % vocab).collect();
    let logits = |model: &Model| model.forward(&mut model.new_state(), &tokens, LogitRows::All).unwrap();
    let (want, got) = (logits(&exact), logits(&rounded));
    let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let mean = want.iter().zip(&got).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / want.len() as f64;
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    let rows = || want.chunks_exact(vocab as usize).zip(got.chunks_exact(vocab as usize));
    let same_top = rows().filter(|(a, b)| argmax(a) == argmax(b)).count();
    eprintln!(
        "cpu kernels: {}; |logit diff| max {diff:e}, mean {mean:e} on logits up to {scale}; same top token at {same_top} of {} positions",
        coil_ssm::Cpu::simd(),
        tokens.len()
    );
    if coil_ssm::Cpu::simd() != "avx512bf16" {
        assert_eq!(diff, 0.0, "f32 arithmetic on both sides must agree exactly");
        return;
    }
    // Each activation is rounded by at most 2^-9 of itself; through two layers and the lm_head
    // that moved these logits (magnitude 8-22) by at most 0.16 and 0.02 on average when measured
    // (Intel Xeon, 2026-12-07), where a wrong tile, strip or pair moves them by whole units.
    assert!(diff > 0.0, "the activations were not rounded: the bf16 path did not run");
    assert!(diff <= 0.5 && mean <= 0.05, "|logit diff| max {diff}, mean {mean} between bf16 and f32 arithmetic");
}
