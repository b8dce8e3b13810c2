//! Matrix products: `linear` (every projection, weights f32, bf16 or f16) and a safe, bounds-checked
//! front to the `gemm` crate (also used by the chunked scan).

use gemm::Parallelism;

use super::simd::{self, Weight};

use crate::{Matrix, Values};

/// A strided matrix view: element `(i, j)` at `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub offset: usize,
}

impl Layout {
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout { rows, cols, row_stride: cols, col_stride: 1, offset: 0 }
    }

    pub fn at(self, offset: usize) -> Self {
        Layout { offset, ..self }
    }

    /// One past the largest index the view touches.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// `dst = keep * dst + lhs · rhs` (`keep = 0` ignores what `dst` held, NaNs included).
#[allow(clippy::too_many_arguments)] // three (slice, view) pairs
pub(crate) fn gemm(
    dst: &mut [f32],
    dst_layout: Layout,
    keep: f32,
    lhs: &[f32],
    lhs_layout: Layout,
    rhs: &[f32],
    rhs_layout: Layout,
    parallel: bool,
) {
    let (m, k, n) = (lhs_layout.rows, lhs_layout.cols, rhs_layout.cols);
    assert_eq!(rhs_layout.rows, k, "inner dimensions differ");
    assert_eq!((dst_layout.rows, dst_layout.cols), (m, n), "destination shape");
    assert!(dst_layout.extent() <= dst.len(), "destination view out of bounds");
    assert!(lhs_layout.extent() <= lhs.len(), "lhs view out of bounds");
    assert!(rhs_layout.extent() <= rhs.len(), "rhs view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst_fill(dst, dst_layout, keep);
        return;
    }
    let parallelism = if parallel { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the three views were checked above to lie inside their slices, and `dst` is borrowed
    // mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_layout.offset),
            dst_layout.col_stride as isize,
            dst_layout.row_stride as isize,
            keep != 0.0,
            lhs.as_ptr().add(lhs_layout.offset),
            lhs_layout.col_stride as isize,
            lhs_layout.row_stride as isize,
            rhs.as_ptr().add(rhs_layout.offset),
            rhs_layout.col_stride as isize,
            rhs_layout.row_stride as isize,
            keep,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn dst_fill(dst: &mut [f32], layout: Layout, keep: f32) {
    for i in 0..layout.rows {
        for j in 0..layout.cols {
            let v = &mut dst[layout.offset + i * layout.row_stride + j * layout.col_stride];
            *v = if keep == 0.0 { 0.0 } else { *v * keep };
        }
    }
}

/// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias)` for a matrix held in f32, bf16 or f16.
pub(crate) fn linear_matrix(input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (weight.cols(), weight.rows());
    match weight.values() {
        Values::F32(w) => linear(input, w, bias, k, n, out),
        Values::Bf16(w) => linear(input, w, bias, k, n, out),
        Values::F16(w) => linear(input, w, bias, k, n, out),
    }
}

/// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias)`, by the number of input rows:
/// - up to [`DOT_PRODUCT_MAX_ROWS`] (decode): dot products straight off the weight, which is
///   read once, in its own dtype (bf16 and f16 stream half the bytes);
/// - up to [`SMALL_BATCH_MAX_ROWS`] (batched decode): register tiles of input rows by weight
///   rows, the weight still read once in its own dtype;
/// - beyond (prefill): the `gemm` crate, bf16 and f16 weights widened first in blocks of up to
///   [`WIDEN_MAX_VALUES`] (widening costs one pass over the weight, the product `T` passes).
pub(crate) fn linear<W: Weight>(
    input: &[f32],
    weight: &[W],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
) {
    assert_eq!(weight.len(), in_features * out_features, "weight shape");
    assert_eq!(input.len() % in_features, 0, "input width");
    let rows = input.len() / in_features;
    assert_eq!(out.len(), rows * out_features, "output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), out_features, "bias length");
    }
    if rows <= DOT_PRODUCT_MAX_ROWS {
        return linear_few_rows(input, weight, bias, in_features, out_features, out);
    }
    if rows <= SMALL_BATCH_MAX_ROWS {
        return linear_small_batch(input, weight, bias, in_features, out_features, out);
    }
    linear_gemm(input, weight, bias, in_features, out_features, WIDEN_MAX_VALUES, out)
}

/// [`linear`] through the `gemm` crate, a 16-bit weight widened at most `widen_max_values` at a
/// time.
fn linear_gemm<W: Weight>(
    input: &[f32],
    weight: &[W],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
    widen_max_values: usize,
    out: &mut [f32],
) {
    let rows = input.len() / in_features;
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(out_features) {
            row.copy_from_slice(bias);
        }
    }
    let keep = if bias.is_some() { 1.0 } else { 0.0 };
    let parallel = rows * in_features * out_features >= super::PARALLEL_MIN_WORK;
    let product = |out: &mut [f32], weight: &[f32], first: usize| {
        let features = weight.len() / in_features;
        // weightᵀ as a view: element (k, j) = weight[j * in_features + k]; the block of output
        // columns first..first + features of the row-major output.
        let weight_t = Layout { rows: in_features, cols: features, row_stride: 1, col_stride: in_features, offset: 0 };
        let out_block = Layout { rows, cols: features, row_stride: out_features, col_stride: 1, offset: first };
        gemm(out, out_block, keep, input, Layout::row_major(rows, in_features), weight, weight_t, parallel);
    };
    if let Some(weight) = W::as_f32(weight) {
        return product(out, weight, 0);
    }
    let block = (widen_max_values / in_features).clamp(1, out_features);
    WIDENED.with(|cell| {
        // Taken, not borrowed, as in `feature_major`.
        let mut widened = cell.take();
        for (i, rows_of_weight) in weight.chunks(block * in_features).enumerate() {
            super::simd::widen(rows_of_weight, &mut widened);
            product(out, &widened, i * block);
        }
        cell.set(widened);
    });
}

/// Most weight values widened to f32 at once for a GEMM (16 MB of f32: one block for each of
/// 130m's projections): each block costs the GEMM one more packing of the input and a narrower
/// product, so fewer, larger blocks are faster (docs/performance.md).
const WIDEN_MAX_VALUES: usize = 1 << 22;

/// Rows at or below which `linear` runs as dot products (decode): a GEMM's packing costs more
/// than it saves when each weight is used only this many times.
pub(crate) const DOT_PRODUCT_MAX_ROWS: usize = 4;

/// `out[t, j] = input[t] · weight[j] (+ bias[j])` for a few rows, split over blocks of output
/// features so each thread streams its own part of the weight once.
fn linear_few_rows<W: Weight>(input: &[f32], weight: &[W], bias: Option<&[f32]>, in_features: usize, out_features: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let rows = input.len() / in_features;
    const BLOCK: usize = 64;
    let dot_row = |j: usize, t: usize| {
        simd::dot(&input[t * in_features..(t + 1) * in_features], &weight[j * in_features..(j + 1) * in_features]) + bias.map_or(0.0, |b| b[j])
    };
    if rows == 1 {
        // One token (decode): the output row is already feature-major; no scratch, no allocation.
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(block, chunk)| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = dot_row(block * BLOCK + i, 0);
            }
        });
        return;
    }
    feature_major(rows, out_features, BLOCK, true, out, |first, chunk| {
        for (i, out_j) in chunk.chunks_exact_mut(rows).enumerate() {
            for (t, o) in out_j.iter_mut().enumerate() {
                *o = dot_row(first + i, t);
            }
        }
    });
}

thread_local! {
    /// [`feature_major`]'s scratch, kept per calling thread so decode steps allocate nothing
    /// (it holds the largest `rows x out_features` product seen on the thread).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };

    /// A GEMM block of bf16 or f16 weight rows widened for [`linear`], kept per thread.
    static WIDENED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };

    /// Batched decode's input, packed into panels once per product, kept per calling thread.
    static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Computes `out[rows, out_features]` through a feature-major scratch, so each task owns a
/// contiguous slice: `fill(first, chunk)` writes features `first..` into `chunk`, `rows` values
/// per feature, in blocks of `block` features (over rayon when `parallel`); then transposes.
fn feature_major(rows: usize, out_features: usize, block: usize, parallel: bool, out: &mut [f32], fill: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    // Taken, not borrowed: a nested call (rayon may run another job here meanwhile) gets an
    // empty vector instead of a borrow conflict.
    let mut scratch = SCRATCH.with(std::cell::Cell::take);
    scratch.clear();
    scratch.resize(rows * out_features, 0.0);
    let task = |(i, chunk): (usize, &mut [f32])| fill(i * block, chunk);
    if parallel {
        scratch.par_chunks_mut(block * rows).enumerate().for_each(task);
    } else {
        scratch.chunks_mut(block * rows).enumerate().for_each(task);
    }
    for (j, values) in scratch.chunks_exact(rows).enumerate() {
        for (t, &v) in values.iter().enumerate() {
            out[t * out_features + j] = v;
        }
    }
    SCRATCH.with(|cell| cell.set(scratch));
}

/// Rows up to which `linear` streams the weight once through register-blocked dot products
/// instead of the GEMM (batched decode): at these sizes packing the weight for the GEMM costs as
/// much as the arithmetic.
pub(crate) const SMALL_BATCH_MAX_ROWS: usize = 64;

/// `linear` for 5..=64 rows: the input packed once into panels of 16 rows, then each task takes a
/// block of output features and computes them for every row, in register tiles of twelve vector
/// accumulators (a panel by 6 weight rows, or half a panel by 12), so each weight row is read
/// from memory once per call.
fn linear_small_batch<W: Weight>(input: &[f32], weight: &[W], bias: Option<&[f32]>, in_features: usize, out_features: usize, out: &mut [f32]) {
    let rows = input.len() / in_features;
    const BLOCK: usize = 48; // a multiple of the twelve-row group
    let parallel = rows * in_features * out_features >= super::PARALLEL_MIN_WORK;
    // Taken, not borrowed, as in `feature_major`.
    let mut packed = PACKED.with(std::cell::Cell::take);
    simd::pack_panels(input, in_features, &mut packed);
    feature_major(rows, out_features, BLOCK, parallel, out, |first, chunk| {
        let features = chunk.len() / rows;
        simd::panel_dots(&packed, rows, &weight[first * in_features..(first + features) * in_features], in_features, chunk);
        if let Some(b) = bias {
            for (j, out_j) in chunk.chunks_exact_mut(rows).enumerate() {
                out_j.iter_mut().for_each(|o| *o += b[first + j]);
            }
        }
    });
    PACKED.with(|cell| cell.set(packed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widened_blocks_tile_the_output() {
        // 70 rows (the GEMM path), a bf16 weight of 50 rows widened 7 rows at a time: seven full
        // blocks and a last one of a single row, each landing in its own output columns.
        let (rows, k, n) = (70, 33, 50);
        let input: Vec<f32> = (0..rows * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let weight: Vec<u16> = (0..n * k).map(|i| crate::f32_to_bf16(((i * 53 % 97) as f32 - 48.0) / 96.0)).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 / 10.0).collect();
        let mut out = vec![f32::NAN; rows * n];
        linear_gemm(&input, &weight, Some(&bias), k, n, 7 * k, &mut out);
        for t in 0..rows {
            for j in 0..n {
                let expected: f64 = bias[j] as f64
                    + (0..k).map(|i| input[t * k + i] as f64 * crate::bf16_to_f32(weight[j * k + i]) as f64).sum::<f64>();
                let got = out[t * n + j] as f64;
                assert!((got - expected).abs() < 1e-4 * (1.0 + expected.abs()), "row {t} feature {j}: {got} vs {expected}");
            }
        }
    }
}
