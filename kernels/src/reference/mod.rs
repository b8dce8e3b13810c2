//! The naive reference: every op written as the plain loop of its definition, in the order the
//! maths reads, with no blocking, chunking or threads. Slow; it is the oracle the fast paths are
//! tested against and is kept that way.

use crate::{silu, Backend, Matrix, Recurrence, ScanInputs, SsmShape};

/// The naive reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Backend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn linear(&self, input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
        let (in_features, out_features) = (weight.cols(), weight.rows());
        let mut widened = Vec::new();
        weight.rows_f32(0..out_features, &mut widened);
        let weight = &widened;
        let rows = input.len() / in_features;
        assert_eq!(out.len(), rows * out_features);
        for t in 0..rows {
            for j in 0..out_features {
                // f64 accumulation keeps the oracle's own rounding far below what is tested.
                let mut acc = bias.map_or(0.0, |b| b[j] as f64);
                for k in 0..in_features {
                    acc += input[t * in_features + k] as f64 * weight[j * in_features + k] as f64;
                }
                out[t * out_features + j] = acc as f32;
            }
        }
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let width = weight.len();
        for (row_in, row_out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean_square = row_in.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            let scale = 1.0 / (mean_square + eps as f64).sqrt();
            for ((o, &v), &w) in row_out.iter_mut().zip(row_in).zip(weight) {
                *o = (v as f64 * scale) as f32 * w;
            }
        }
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
        let width = weight.len();
        assert_eq!(width % group_size, 0);
        for row in 0..y.len() / width {
            for group in 0..width / group_size {
                let start = row * width + group * group_size;
                let gated: Vec<f64> = (start..start + group_size)
                    .map(|i| y[i] as f64 * silu(z[i]) as f64)
                    .collect();
                let mean_square = gated.iter().map(|v| v * v).sum::<f64>() / group_size as f64;
                let scale = 1.0 / (mean_square + eps as f64).sqrt();
                for (k, u) in gated.iter().enumerate() {
                    out[start + k] = (u * scale) as f32 * weight[group * group_size + k];
                }
            }
        }
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
        let kernel = weight.len() / channels;
        let tokens = xbc.len() / channels;
        // Raw inputs seen so far: the K state columns, then this call's tokens.
        let input_at = |c: usize, position: usize| -> f32 {
            if position < kernel {
                conv_state[c * kernel + position]
            } else {
                xbc[(position - kernel) * channels + c]
            }
        };
        for t in 0..tokens {
            for c in 0..channels {
                let mut acc = bias.map_or(0.0, |b| b[c] as f64);
                for k in 0..kernel {
                    // Tap k multiplies token t-K+1+k; position of token t is K + t.
                    acc += weight[c * kernel + k] as f64 * input_at(c, t + 1 + k) as f64;
                }
                out[t * channels + c] = silu(acc as f32);
            }
        }
        let new_state: Vec<f32> = (0..channels)
            .flat_map(|c| (tokens..tokens + kernel).map(move |p| (c, p)))
            .map(|(c, p)| input_at(c, p))
            .collect();
        conv_state.copy_from_slice(&new_state);
    }

    fn ssd_scan(
        &self,
        shape: SsmShape,
        recurrence: Recurrence,
        inputs: ScanInputs,
        state: &mut [f32],
        _chunk: usize,
        y: &mut [f32],
    ) {
        let inner = shape.inner();
        for t in 0..inputs.tokens(&shape) {
            let one = inputs.slice(&shape, t..t + 1);
            self.ssm_step(shape, recurrence, one, state, &mut y[t * inner..(t + 1) * inner]);
        }
    }

    fn ssm_step(&self, shape: SsmShape, recurrence: Recurrence, inputs: ScanInputs, state: &mut [f32], y: &mut [f32]) {
        shape.assert_valid();
        recurrence.assert_consistent(&shape);
        assert_eq!(inputs.assert_consistent(&shape), 1, "one token");
        let (p_len, n_len) = (shape.head_dim, shape.d_state);
        let ScanInputs { x, dt, b, c } = inputs;
        for h in 0..shape.heads {
            let g = shape.group_of(h);
            let decay = recurrence.log_decay(h, dt[h]).exp();
            for p in 0..p_len {
                let x_hp = x[h * p_len + p];
                let mut out = 0.0f64;
                for n in 0..n_len {
                    let s = &mut state[(h * p_len + p) * n_len + n];
                    *s = decay * *s + dt[h] * x_hp * b[g * n_len + n];
                    out += *s as f64 * c[g * n_len + n] as f64;
                }
                y[h * p_len + p] = out as f32 + recurrence.skip(&shape, h, p) * x_hp;
            }
        }
    }

    fn retract_inputs(&self, shape: SsmShape, state: &mut [f32], xdt: &[f32], b: &[f32], weights: &[f32]) {
        let (p_len, n_len, bc) = (shape.head_dim, shape.d_state, shape.bc_width());
        for k in 0..weights.len() / shape.heads {
            for h in 0..shape.heads {
                let g = shape.group_of(h);
                let w = weights[k * shape.heads + h];
                for p in 0..p_len {
                    let v = w * xdt[k * shape.inner() + h * p_len + p];
                    for n in 0..n_len {
                        state[(h * p_len + p) * n_len + n] -= v * b[k * bc + g * n_len + n];
                    }
                }
            }
        }
    }
}
