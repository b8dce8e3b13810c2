//! Causal depthwise conv1d + SiLU over a sequence, and its one-token update.

use rayon::prelude::*;

use super::simd;

/// `xbc: [T, C]`, `conv_state: [C, K]` (oldest first), `weight: [C, K]`, `out: [T, C]`.
pub(crate) fn causal_conv1d(
    xbc: &[f32],
    conv_state: &mut [f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    channels: usize,
    out: &mut [f32],
) {
    let kernel = weight.len() / channels;
    assert_eq!(weight.len(), channels * kernel);
    assert_eq!(conv_state.len(), channels * kernel);
    assert_eq!(xbc.len() % channels, 0);
    assert_eq!(out.len(), xbc.len());
    let tokens = xbc.len() / channels;
    if tokens == 0 {
        return;
    }

    // Time-major copies so the inner loop runs over contiguous channels:
    // taps[k, C] = weight[C, k]; history[K, C] = the state's columns as rows.
    let transpose = |src: &[f32]| -> Vec<f32> {
        let mut dst = vec![0.0; channels * kernel];
        for c in 0..channels {
            for k in 0..kernel {
                dst[k * channels + c] = src[c * kernel + k];
            }
        }
        dst
    };
    let taps = transpose(weight); // [K, C]
    let history = transpose(conv_state); // [K, C]
    // Raw input row at position `i` of (history ++ xbc).
    let row = |i: usize| -> &[f32] {
        if i < kernel {
            &history[i * channels..(i + 1) * channels]
        } else {
            &xbc[(i - kernel) * channels..(i - kernel + 1) * channels]
        }
    };

    let rows_per_task = (super::PARALLEL_MIN_WORK / (channels * kernel).max(1)).max(1);
    out.par_chunks_mut(channels).enumerate().with_min_len(rows_per_task).for_each(|(t, out_row)| {
        match bias {
            Some(bias) => out_row.copy_from_slice(bias),
            None => out_row.fill(0.0),
        }
        for k in 0..kernel {
            // Tap k multiplies token t-K+1+k, at position t+1+k of (history ++ xbc).
            simd::add_products(out_row, &taps[k * channels..(k + 1) * channels], row(t + 1 + k));
        }
        simd::silu_in_place(out_row);
    });

    // The new state is the last K raw rows of (history ++ xbc), stored [C, K].
    for k in 0..kernel {
        let source = row(tokens + k);
        for c in 0..channels {
            conv_state[c * kernel + k] = source[c];
        }
    }
}

/// One token: shift the state left by one column, append `xbc: [C]`, convolve, SiLU.
pub(crate) fn conv_step(
    xbc: &[f32],
    conv_state: &mut [f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let channels = xbc.len();
    let kernel = weight.len() / channels;
    assert_eq!(conv_state.len(), channels * kernel);
    assert_eq!(out.len(), channels);
    // The released checkpoints' kernel of 4 gets fixed-size rows, so the shift and the dot
    // product are a few register moves per channel instead of a memmove call and a loop.
    match kernel {
        4 => step_rows_4(xbc, conv_state, weight, bias, out),
        _ => step_rows_any(kernel, xbc, conv_state, weight, bias, out),
    }
    simd::silu_in_place(out);
}

simd::multiversioned! {
    /// [`step_rows`] for the released checkpoints' kernel of 4, built per instruction set (LLVM
    /// vectorises it across channels, the rows of 4 as interleaved groups).
    fn step_rows_4(xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        step_rows::<4>(xbc, conv_state, weight, bias, out)
    }
}

#[inline(always)]
fn step_rows<const K: usize>(xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let rows = conv_state.as_chunks_mut::<K>().0.iter_mut().zip(weight.as_chunks::<K>().0);
    for (c, ((row, taps), o)) in rows.zip(out.iter_mut()).enumerate() {
        let mut shifted = [0.0; K];
        shifted[..K - 1].copy_from_slice(&row[1..]);
        shifted[K - 1] = xbc[c];
        *row = shifted;
        let acc: f32 = shifted.iter().zip(taps).map(|(s, w)| s * w).sum();
        *o = acc + bias.map_or(0.0, |b| b[c]);
    }
}

fn step_rows_any(kernel: usize, xbc: &[f32], conv_state: &mut [f32], weight: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let rows = conv_state.chunks_exact_mut(kernel).zip(weight.chunks_exact(kernel));
    for (c, ((row, taps), o)) in rows.zip(out.iter_mut()).enumerate() {
        row.copy_within(1.., 0);
        row[kernel - 1] = xbc[c];
        let acc: f32 = row.iter().zip(taps).map(|(s, w)| s * w).sum();
        *o = acc + bias.map_or(0.0, |b| b[c]);
    }
}
