//! The fused one-token state update: decay, write, read and skip in one pass per head.

use rayon::prelude::*;

use super::simd::{lane_sum, simd_dispatch, LANES};
use crate::{Recurrence, ScanInputs, SsmShape};

pub(crate) fn ssm_step(shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
    shape.assert_valid();
    recurrence.assert_consistent(&shape);
    assert_eq!(inputs.assert_consistent(&shape), 1, "one token");
    assert_eq!(y.len(), shape.inner());
    assert_eq!(state.len(), shape.state_len());
    let (p_len, n_len) = (shape.head_dim, shape.d_state);
    let ScanInputs { x, dt, b, c } = inputs;

    let heads_per_task = (super::PARALLEL_MIN_WORK / (p_len * n_len)).max(1);
    y.par_chunks_mut(p_len)
        .zip(state.par_chunks_mut(p_len * n_len))
        .enumerate()
        .with_min_len(heads_per_task)
        .for_each(|(h, (y_head, state_head))| {
            let g = shape.group_of(h);
            let b_g = &b[g * n_len..(g + 1) * n_len];
            let c_g = &c[g * n_len..(g + 1) * n_len];
            let decay = recurrence.log_decay(h, dt[h]).exp();
            for (p, (y_p, row)) in y_head.iter_mut().zip(state_head.chunks_exact_mut(n_len)).enumerate() {
                let x_hp = x[h * p_len + p];
                *y_p = update_row(row, b_g, c_g, decay, dt[h] * x_hp) + recurrence.skip(&shape, h, p) * x_hp;
            }
        });
}

simd_dispatch!(
    /// One state row: `s = decay * s + input * b`, returning `s · c`.
    fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 => update_row_lanes
);

#[inline(always)]
fn update_row_lanes(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let split = row.len() / LANES * LANES;
    let (head, tail) = row.split_at_mut(split);
    for ((s, b), c) in head.chunks_exact_mut(LANES).zip(b.chunks_exact(LANES)).zip(c.chunks_exact(LANES)) {
        for i in 0..LANES {
            s[i] = decay * s[i] + input * b[i];
            acc[i] += s[i] * c[i];
        }
    }
    let mut rest = 0.0f32;
    for ((s, &b), &c) in tail.iter_mut().zip(&b[split..]).zip(&c[split..]) {
        *s = decay * *s + input * b;
        rest += *s * c;
    }
    lane_sum(acc) + rest
}
