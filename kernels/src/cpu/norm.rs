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
    let sum_square: f32 = row_in.iter().map(|v| v * v).sum();
    let scale = 1.0 / (sum_square / row_in.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in row_out.iter_mut().zip(row_in).zip(weight) {
        *o = v * scale * w;
    }
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
                let sum_square: f32 = group_out.iter().map(|v| v * v).sum();
                let scale = 1.0 / (sum_square / group_size as f32 + eps).sqrt();
                for (o, &w) in group_out.iter_mut().zip(group_weight) {
                    *o = *o * scale * w;
                }
            }
        });
}
