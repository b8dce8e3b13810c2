//! The fused one-token state update: decay, write, read and skip in one pass per head.

use rayon::prelude::*;

use super::decay_factor;
use super::simd::update_row;
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
            let decay = decay_factor(recurrence.log_decay(h, dt[h]));
            for (p, (y_p, row)) in y_head.iter_mut().zip(state_head.chunks_exact_mut(n_len)).enumerate() {
                let x_hp = x[h * p_len + p];
                *y_p = update_row(row, b_g, c_g, decay, dt[h] * x_hp) + recurrence.skip(&shape, h, p) * x_hp;
            }
        });
}
