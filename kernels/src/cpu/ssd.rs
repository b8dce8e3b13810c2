//! Chunked SSD ("state space duality", Mamba-2 paper §6) on the CPU, resuming from any state.
//!
//! Tokens are cut into chunks of Q. Within a chunk the scan is a masked quadratic form,
//! `Y_diag = (L ∘ C Bᵀ) (dt x)` with `L[l, s] = exp(Σ_{s<k≤l} dt_k A)`; the incoming state adds
//! `Y_off[l] = exp(Σ_{k≤l} dt_k A) C_l · S`; the state moves to the chunk's end as
//! `S ← exp(Σ_k dt_k A) S + Σ_s exp(Σ_{k>s} dt_k A) dt_s x_s ⊗ B_s`. All three are GEMMs.
//! Decays are summed over at most one chunk, from the right anchor, so no exponent is ever the
//! difference of two long cumulative sums (the cancellation the stable segsum avoids).

use rayon::prelude::*;

use super::matmul::{gemm, Layout};
use crate::{Recurrence, ScanInputs, SsmShape};

pub(crate) fn ssd_scan(
    shape: SsmShape,
    recurrence: Recurrence,
    inputs: ScanInputs,
    state: &mut [f32],
    chunk: usize,
    y: &mut [f32],
) {
    shape.assert_valid();
    recurrence.assert_consistent(&shape);
    let tokens = inputs.assert_consistent(&shape);
    assert!(chunk > 0, "chunk length must be positive");
    let (p_len, n_len) = (shape.head_dim, shape.d_state);
    let (inner, bc) = (shape.inner(), shape.bc_width());
    let ScanInputs { x, b, c, .. } = inputs;
    assert_eq!(y.len(), tokens * inner);
    assert_eq!(state.len(), shape.state_len());
    if tokens == 0 {
        return;
    }
    let chunk = chunk.min(tokens);
    let n_chunks = tokens.div_ceil(chunk);
    let chunk_len = |i: usize| chunk.min(tokens - i * chunk);

    // C Bᵀ per chunk and group, shared by the group's heads: [n_chunks, G, Q, Q].
    let mut cb = vec![0.0f32; n_chunks * shape.groups * chunk * chunk];
    cb.par_chunks_mut(chunk * chunk).enumerate().for_each(|(i, cb_block)| {
        let (ci, g) = (i / shape.groups, i % shape.groups);
        let (start, q) = (ci * chunk, chunk_len(ci));
        let c_rows = Layout { rows: q, cols: n_len, row_stride: bc, col_stride: 1, offset: start * bc + g * n_len };
        let b_cols = Layout { rows: n_len, cols: q, row_stride: 1, col_stride: bc, offset: start * bc + g * n_len };
        gemm(cb_block, Layout::row_major(q, q), 0.0, c, c_rows, b, b_cols, false);
    });

    // Each head scans its own state; its outputs come back as [T, P].
    let per_head: Vec<Vec<f32>> = state
        .par_chunks_mut(p_len * n_len)
        .enumerate()
        .map(|(h, state_head)| {
            let mut y_head = vec![0.0f32; tokens * p_len];
            let mut scratch = Scratch::new(chunk, p_len, n_len);
            for ci in 0..n_chunks {
                let (start, q) = (ci * chunk, chunk_len(ci));
                let block = &cb[(ci * shape.groups + shape.group_of(h)) * chunk * chunk..];
                scan_chunk(&shape, &recurrence, &inputs, h, start, q, block, state_head, &mut y_head, &mut scratch);
            }
            y_head
        })
        .collect();

    // Scatter heads back to [T, H, P], adding the D skip.
    y.par_chunks_mut(inner).enumerate().for_each(|(t, y_row)| {
        for (h, y_head) in per_head.iter().enumerate() {
            for p in 0..p_len {
                let i = h * p_len + p;
                y_row[i] = y_head[t * p_len + p] + recurrence.skip(&shape, h, p) * x[t * inner + i];
            }
        }
    });
}

/// Per-head working memory for one chunk, reused across chunks.
struct Scratch {
    dt: Vec<f32>,         // [Q] this head's dt
    log_decay: Vec<f32>,  // [Q] dt_l * A
    weights: Vec<f32>,    // [Q, Q] masked, decayed C Bᵀ times dt_s
    decay: Vec<f32>,      // [Q] exp(Σ_{s<k≤l} dt_k A) for the current row l
    c_scaled: Vec<f32>,   // [Q, N] C_l * exp(Σ_{k≤l} dt_k A)
    x_weighted: Vec<f32>, // [Q, P] x_s * dt_s * exp(Σ_{k>s} dt_k A)
}

impl Scratch {
    fn new(chunk: usize, p_len: usize, n_len: usize) -> Self {
        Scratch {
            dt: vec![0.0; chunk],
            log_decay: vec![0.0; chunk],
            weights: vec![0.0; chunk * chunk],
            decay: vec![0.0; chunk],
            c_scaled: vec![0.0; chunk * n_len],
            x_weighted: vec![0.0; chunk * p_len],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_chunk(
    shape: &SsmShape,
    recurrence: &Recurrence,
    inputs: &ScanInputs,
    h: usize,
    start: usize,
    q: usize,
    cb: &[f32],
    state: &mut [f32],
    y_head: &mut [f32],
    scratch: &mut Scratch,
) {
    let (heads, p_len, n_len) = (shape.heads, shape.head_dim, shape.d_state);
    let (inner, bc, g) = (shape.inner(), shape.bc_width(), shape.group_of(h));
    let ScanInputs { x, dt, b, c } = *inputs;
    for l in 0..q {
        scratch.dt[l] = dt[(start + l) * heads + h];
        scratch.log_decay[l] = recurrence.log_decay(h, scratch.dt[l]);
    }

    // weights[l, s] = C_l·B_s * exp(Σ_{s<k≤l} dt_k A) * dt_s for s ≤ l. Row by row, the decays
    // of all earlier columns are multiplied by this token's factor: each entry is a product of
    // at most Q factors in (0, 1] (relative error ≤ Q·ε, no cancellation), and the whole row is
    // one vectorised pass instead of one exp per entry.
    let weights = &mut scratch.weights[..q * q];
    let decay = &mut scratch.decay[..q];
    for l in 0..q {
        let step = scratch.log_decay[l].exp();
        for v in &mut decay[..l] {
            *v *= step;
        }
        decay[l] = 1.0;
        let row = &mut weights[l * q..(l + 1) * q];
        let cb_row = &cb[l * q..l * q + l + 1];
        for (((w, &cb_ls), &decay_s), &dt_s) in row[..=l].iter_mut().zip(cb_row).zip(&decay[..=l]).zip(&scratch.dt[..=l]) {
            *w = cb_ls * decay_s * dt_s;
        }
        row[l + 1..].fill(0.0);
    }

    // Y_diag = weights · x over the chunk. `weights` is lower triangular: each band of rows
    // multiplies only the columns up to its last row (about half the product at Q = 256).
    const BAND: usize = 64;
    for first in (0..q).step_by(BAND) {
        let rows = BAND.min(q - first);
        let cols = first + rows;
        let x_rows = Layout { rows: cols, cols: p_len, row_stride: inner, col_stride: 1, offset: start * inner + h * p_len };
        let y_rows = Layout::row_major(rows, p_len).at((start + first) * p_len);
        let band = Layout { rows, cols, row_stride: q, col_stride: 1, offset: first * q };
        gemm(y_head, y_rows, 0.0, weights, band, x, x_rows, false);
    }
    let y_rows = Layout::row_major(q, p_len).at(start * p_len);

    // Y_off = (C_l scaled by the decay since the chunk start) · Sᵀ, added on.
    let mut from_start = 0.0f32;
    for l in 0..q {
        from_start += scratch.log_decay[l];
        let scale = from_start.exp();
        let c_row = &c[(start + l) * bc + g * n_len..][..n_len];
        for (o, &v) in scratch.c_scaled[l * n_len..(l + 1) * n_len].iter_mut().zip(c_row) {
            *o = v * scale;
        }
    }
    let state_t = Layout { rows: n_len, cols: p_len, row_stride: 1, col_stride: n_len, offset: 0 };
    gemm(y_head, y_rows, 1.0, &scratch.c_scaled, Layout::row_major(q, n_len), state, state_t, false);
    let chunk_decay = from_start.exp();

    // S ← exp(Σ dt A) S + Σ_s (x_s dt_s exp(Σ_{k>s} dt_k A)) ⊗ B_s.
    let mut to_end = 0.0f32;
    for s in (0..q).rev() {
        let scale = to_end.exp() * scratch.dt[s];
        let x_row = &x[(start + s) * inner + h * p_len..][..p_len];
        for (o, &v) in scratch.x_weighted[s * p_len..(s + 1) * p_len].iter_mut().zip(x_row) {
            *o = v * scale;
        }
        to_end += scratch.log_decay[s];
    }
    let x_weighted_t = Layout { rows: p_len, cols: q, row_stride: 1, col_stride: p_len, offset: 0 };
    let b_rows = Layout { rows: q, cols: n_len, row_stride: bc, col_stride: 1, offset: start * bc + g * n_len };
    gemm(state, Layout::row_major(p_len, n_len), chunk_decay, &scratch.x_weighted, x_weighted_t, b, b_rows, false);
}

/// `S[h] -= Σ_k weights[k, h] xdt[k, h] ⊗ B[k, g]`: one GEMM per head (`[P, K] · [K, N]`).
pub(crate) fn retract_inputs(shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]) {
    let (heads, p_len, n_len) = (shape.heads, shape.head_dim, shape.d_state);
    let (inner, bc) = (shape.inner(), shape.bc_width());
    let count = weights.len() / heads;
    assert_eq!(weights.len(), count * heads);
    assert_eq!(xdt.len(), count * inner);
    assert_eq!(b.len(), count * bc);
    assert_eq!(state.len(), shape.state_len());
    if count == 0 {
        return;
    }
    // A few inputs (the sliding window at granularity 1 retracts one per token) are rank-one
    // updates: plain loops beat a GEMM's setup there.
    const DIRECT_MAX: usize = 4;
    state.par_chunks_mut(p_len * n_len).enumerate().for_each(|(h, state_head)| {
        let g = shape.group_of(h);
        if count <= DIRECT_MAX {
            for k in 0..count {
                let w = weights[k * heads + h];
                let b_k = &b[k * bc + g * n_len..][..n_len];
                for (row, &x) in state_head.chunks_exact_mut(n_len).zip(&xdt[k * inner + h * p_len..][..p_len]) {
                    let v = w * x;
                    for (s, &b_n) in row.iter_mut().zip(b_k) {
                        *s -= v * b_n;
                    }
                }
            }
            return;
        }
        // lhs[p, k] = -weights[k, h] * xdt[k, h, p], stored [K, P].
        let mut lhs = vec![0.0f32; count * p_len];
        for k in 0..count {
            let w = -weights[k * heads + h];
            for (o, &v) in lhs[k * p_len..(k + 1) * p_len].iter_mut().zip(&xdt[k * inner + h * p_len..][..p_len]) {
                *o = w * v;
            }
        }
        let lhs_t = Layout { rows: p_len, cols: count, row_stride: 1, col_stride: p_len, offset: 0 };
        let b_rows = Layout { rows: count, cols: n_len, row_stride: bc, col_stride: 1, offset: g * n_len };
        gemm(state_head, Layout::row_major(p_len, n_len), 1.0, &lhs, lhs_t, b, b_rows, false);
    });
}
