//! A safe, bounds-checked front to the `gemm` crate.

use gemm::Parallelism;

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

/// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias)` for a matrix held in f32 or bf16.
///
/// bf16 weights: decode-sized inputs (up to 4 rows) read them directly, widening each lane
/// inside the dot product, so decode streams half the bytes; larger inputs widen blocks of
/// weight rows into an L2-sized scratch and run the f32 paths on each block.
pub(crate) fn linear_matrix(input: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (weight.cols(), weight.rows());
    match weight.values() {
        Values::F32(w) => linear(input, w, bias, k, n, out),
        Values::Bf16(w) => {
            assert_eq!(input.len() % k, 0, "input width");
            let rows = input.len() / k;
            assert_eq!(out.len(), rows * n, "output shape");
            if rows <= DOT_PRODUCT_MAX_ROWS {
                return few_rows(input, bias, k, n, out, |j, x| dot_bf16_dispatch(x, &w[j * k..(j + 1) * k]));
            }
            // Blocks of weight rows: 256 KB of widened weight per block.
            let block = ((1 << 16) / k).clamp(8, n.max(8));
            let (mut widened, mut partial) = (Vec::new(), Vec::new());
            for first in (0..n).step_by(block) {
                let last = (first + block).min(n);
                weight.rows_f32(first..last, &mut widened);
                partial.resize(rows * (last - first), 0.0);
                linear(input, &widened, bias.map(|b| &b[first..last]), k, last - first, &mut partial);
                for (out_row, part) in out.chunks_exact_mut(n).zip(partial.chunks_exact(last - first)) {
                    out_row[first..last].copy_from_slice(part);
                }
            }
        }
    }
}

/// `out[T, n] = input[T, k] · weight[n, k]ᵀ (+ bias)`.
pub(crate) fn linear(
    input: &[f32],
    weight: &[f32],
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
    let keep = match bias {
        Some(bias) => {
            assert_eq!(bias.len(), out_features, "bias length");
            for row in out.chunks_exact_mut(out_features) {
                row.copy_from_slice(bias);
            }
            1.0
        }
        None => 0.0,
    };
    // weightᵀ as a view: element (k, j) = weight[j * in_features + k].
    let weight_t = Layout { rows: in_features, cols: out_features, row_stride: 1, col_stride: in_features, offset: 0 };
    let work = rows * in_features * out_features;
    gemm(
        out,
        Layout::row_major(rows, out_features),
        keep,
        input,
        Layout::row_major(rows, in_features),
        weight,
        weight_t,
        work >= super::PARALLEL_MIN_WORK,
    );
}

/// Rows at or below which `linear` runs as dot products (decode): a GEMM's packing costs more
/// than it saves when each weight is used only this many times.
pub(crate) const DOT_PRODUCT_MAX_ROWS: usize = 4;

/// `out[t, j] = input[t] · weight[j] (+ bias[j])` for a few rows, split over blocks of output
/// features so each thread streams its own part of the weight once.
pub(crate) fn linear_few_rows(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
) {
    few_rows(input, bias, in_features, out_features, out, |j, x| dot_dispatch(x, &weight[j * in_features..(j + 1) * in_features]))
}

/// [`linear_few_rows`] for any weight storage: `dot(j, x)` is `x · weight[j]`.
fn few_rows(input: &[f32], bias: Option<&[f32]>, in_features: usize, out_features: usize, out: &mut [f32], dot: impl Fn(usize, &[f32]) -> f32 + Sync) {
    use rayon::prelude::*;
    let rows = input.len() / in_features;
    const BLOCK: usize = 64;
    let dot_row = |j: usize, t: usize| dot(j, &input[t * in_features..(t + 1) * in_features]) + bias.map_or(0.0, |b| b[j]);
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

super::simd::simd_dispatch!(fn dot_dispatch(a: &[f32], b: &[f32]) -> f32 => super::simd::dot);
super::simd::simd_dispatch!(fn dot_bf16_dispatch(a: &[f32], b: &[u16]) -> f32 => super::simd::dot_bf16);

/// Rows up to which `linear` streams the weight once through register-blocked dot products
/// instead of the GEMM (batched decode): at these sizes packing the weight for the GEMM costs as
/// much as the arithmetic.
pub(crate) const SMALL_BATCH_MAX_ROWS: usize = 64;

/// `linear` for 5..=64 rows: each task takes a block of output features and computes them for
/// every input row, four input rows by two weight rows at a time (eight vector accumulators), so
/// each weight row is read from memory once per call and from L1 for the other rows.
pub(crate) fn linear_small_batch(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
) {
    let rows = input.len() / in_features;
    const BLOCK: usize = 32;
    let parallel = rows * in_features * out_features >= super::PARALLEL_MIN_WORK;
    feature_major(rows, out_features, BLOCK, parallel, out, |first, chunk| {
        let features = chunk.len() / rows;
        block_dots_dispatch(input, &weight[first * in_features..(first + features) * in_features], in_features, chunk);
        if let Some(b) = bias {
            for (j, out_j) in chunk.chunks_exact_mut(rows).enumerate() {
                out_j.iter_mut().for_each(|o| *o += b[first + j]);
            }
        }
    });
}

super::simd::simd_dispatch!(fn block_dots_dispatch(input: &[f32], weight: &[f32], k: usize, out: &mut [f32]) => block_dots);

/// `out[j * rows + t] = input[t] · weight[j]` for every input row t and weight row j.
#[inline(always)]
fn block_dots(input: &[f32], weight: &[f32], k: usize, out: &mut [f32]) {
    const R: usize = 4; // input rows per block
    const C: usize = 2; // weight rows per block
    const W: usize = 8; // lanes
    let rows = input.len() / k;
    let features = weight.len() / k;
    let split = k / W * W;
    let row = |t: usize| &input[t * k..(t + 1) * k];
    let mut j = 0;
    while j + C <= features {
        let w: [&[f32]; C] = std::array::from_fn(|c| &weight[(j + c) * k..(j + c + 1) * k]);
        let mut t = 0;
        while t + R <= rows {
            let x: [&[f32]; R] = std::array::from_fn(|r| row(t + r));
            let mut acc = [[[0.0f32; W]; C]; R];
            for base in (0..split).step_by(W) {
                let wv: [&[f32; W]; C] = std::array::from_fn(|c| w[c][base..base + W].try_into().unwrap());
                for r in 0..R {
                    let xv: &[f32; W] = x[r][base..base + W].try_into().unwrap();
                    for c in 0..C {
                        for l in 0..W {
                            // mul_add: one FMA per lane under AVX2 (the dispatched build); the
                            // baseline build (CPUs without FMA) pays a libm call, correct but slow.
                            acc[r][c][l] = xv[l].mul_add(wv[c][l], acc[r][c][l]);
                        }
                    }
                }
            }
            for r in 0..R {
                for c in 0..C {
                    let tail: f32 = x[r][split..].iter().zip(&w[c][split..]).map(|(a, b)| a * b).sum();
                    out[(j + c) * rows + t + r] = acc[r][c].iter().sum::<f32>() + tail;
                }
            }
            t += R;
        }
        for t in t..rows {
            for c in 0..C {
                out[(j + c) * rows + t] = super::simd::dot(row(t), w[c]);
            }
        }
        j += C;
    }
    for j in j..features {
        for t in 0..rows {
            out[j * rows + t] = super::simd::dot(row(t), &weight[j * k..(j + 1) * k]);
        }
    }
}
