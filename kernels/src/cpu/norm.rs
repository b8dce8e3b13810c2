//! RMSNorm and the mixer's grouped gated RMSNorm, rows in parallel.

use rayon::prelude::*;

use super::simd;

fn rows_per_task(width: usize) -> usize {
    (super::PARALLEL_MIN_WORK / width.max(1)).max(1)
}

pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % width, 0);
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(rows_per_task(width))
        .for_each(|(row_out, row_in)| normalise(row_in, weight, eps, row_out));
}

#[inline]
fn normalise(row_in: &[f32], weight: &[f32], eps: f32, row_out: &mut [f32]) {
    simd::scale_by(row_out, row_in, inverse_rms(row_in, eps), weight);
}

/// `1 / sqrt(mean(v²) + eps)`, the mean through the vectorised dot product.
#[inline]
fn inverse_rms(values: &[f32], eps: f32) -> f32 {
    1.0 / (simd::dot(values, values) / values.len() as f32 + eps).sqrt()
}

pub(crate) fn gated_rms_norm(
    y: &[f32],
    z: &[f32],
    weight: &[f32],
    group_size: usize,
    eps: f32,
    out: &mut [f32],
) {
    let width = weight.len();
    assert!(group_size > 0 && width.is_multiple_of(group_size), "group size must divide the width");
    assert!(y.len() == z.len() && y.len() == out.len() && y.len().is_multiple_of(width));
    out.par_chunks_mut(width)
        .zip(y.par_chunks(width).zip(z.par_chunks(width)))
        .with_min_len(rows_per_task(width))
        .for_each(|(row_out, (row_y, row_z))| {
            simd::gate(row_y, row_z, row_out);
            for (group_out, group_weight) in
                row_out.chunks_exact_mut(group_size).zip(weight.chunks_exact(group_size))
            {
                let scale = inverse_rms(group_out, eps);
                simd::scale_in_place(group_out, scale, group_weight);
            }
        });
}
