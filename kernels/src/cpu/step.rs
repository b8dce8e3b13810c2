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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Reference};

    /// A head whose one-token decay is e⁻⁵⁰ (below the negligible factor) and a second at e⁻¹,
    /// no input (x = 0): the step clears the first head's state exactly, where the reference
    /// keeps it scaled by e⁻⁵⁰; both agree to f32 resolution of the largest value, and the
    /// second head is decayed alike.
    #[test]
    fn a_negligible_decay_clears_the_state() {
        let shape = SsmShape { heads: 2, head_dim: 3, d_state: 5, groups: 1 };
        let (a, offset, d) = ([-50.0, -1.0], [0.0; 2], [0.25; 2]);
        let recurrence = Recurrence { a: &a, log_decay_offset: &offset, d: &d };
        let x = vec![0.0; shape.inner()];
        let (dt, b) = ([1.0; 2], vec![0.5; shape.bc_width()]);
        let c: Vec<f32> = (0..shape.bc_width()).map(|i| 1.0 - i as f32 * 0.125).collect();
        let inputs = ScanInputs { x: &x, dt: &dt, b: &b, c: &c };
        let start: Vec<f32> = (0..shape.state_len()).map(|i| 1.0 + i as f32 * 0.01).collect();

        let (mut slow_state, mut slow) = (start.clone(), vec![0.0; shape.inner()]);
        Reference.ssm_step(shape, recurrence, inputs, &mut slow_state, &mut slow);
        let (mut state, mut y) = (start, vec![f32::NAN; shape.inner()]);
        ssm_step(shape, recurrence, inputs, &mut state, &mut y);

        let head = shape.head_dim * shape.d_state;
        assert!(slow_state[..head].iter().all(|&v| v > 0.0), "the reference keeps the decayed state");
        assert!(state[..head].iter().all(|&v| v == 0.0), "the step drops it");
        let scale = slow.iter().chain(&slow_state).fold(0.0f32, |m, v| m.max(v.abs()));
        for (fast, slow) in y.iter().zip(&slow).chain(state.iter().zip(&slow_state)) {
            assert!((fast - slow).abs() <= 1e-6 * scale, "{fast} against {slow}");
        }
    }
}
