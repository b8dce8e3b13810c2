//! The fused one-token state update: decay, write, read and skip in one pass per head.

use rayon::prelude::*;

use crate::backend::{assert_skip_len, skip_weight};
use crate::SsmShape;

#[allow(clippy::too_many_arguments)]
pub(crate) fn ssm_step(
    shape: SsmShape,
    x: &[f32],
    dt: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    state: &mut [f32],
    y: &mut [f32],
) {
    shape.assert_valid();
    assert_skip_len(d, &shape);
    let (p_len, n_len) = (shape.head_dim, shape.d_state);
    assert_eq!(x.len(), shape.inner());
    assert_eq!(y.len(), shape.inner());
    assert_eq!(dt.len(), shape.heads);
    assert_eq!(b.len(), shape.bc_width());
    assert_eq!(c.len(), shape.bc_width());
    assert_eq!(state.len(), shape.state_len());

    let heads_per_task = (super::PARALLEL_MIN_WORK / (p_len * n_len)).max(1);
    y.par_chunks_mut(p_len)
        .zip(state.par_chunks_mut(p_len * n_len))
        .enumerate()
        .with_min_len(heads_per_task)
        .for_each(|(h, (y_head, state_head))| {
            let g = shape.group_of(h);
            let b_g = &b[g * n_len..(g + 1) * n_len];
            let c_g = &c[g * n_len..(g + 1) * n_len];
            let decay = (dt[h] * a[h]).exp();
            for (p, (y_p, row)) in y_head.iter_mut().zip(state_head.chunks_exact_mut(n_len)).enumerate() {
                let x_hp = x[h * p_len + p];
                let input = dt[h] * x_hp;
                let mut out = 0.0f32;
                for ((s, &b_n), &c_n) in row.iter_mut().zip(b_g).zip(c_g) {
                    *s = decay * *s + input * b_n;
                    out += *s * c_n;
                }
                *y_p = out + skip_weight(d, &shape, h, p) * x_hp;
            }
        });
}
