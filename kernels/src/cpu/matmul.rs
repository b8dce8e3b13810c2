//! Matrix products: `linear` (every projection, weights f32, bf16 or f16) and a safe, bounds-checked
//! front to the `gemm` crate (also used by the chunked scan).

use gemm::Parallelism;

use super::simd::{self, Bf16Dots, Weight, STRIP, TILE_ROWS};

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
    if let (Some(dots), Some(weight)) = (simd::Isa::current().bf16_dots(), W::as_bf16(weight)) {
        return linear_bf16(dots, input, weight, bias, in_features, out_features, out);
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

/// [`linear`] for bf16 weights in bf16 arithmetic (AVX512-BF16): the input rounded to bf16 pairs
/// once; the weight packed a block at a time into strips of [`STRIP`] output columns; each block
/// of input rows multiplied by every strip in register tiles of pair dot products, summed in f32.
/// Rounding the activations costs about 2⁻⁹ of each term (docs/performance.md has what it does
/// to the golden fixtures); `COIL_SIMD=avx512` keeps f32 products.
fn linear_bf16(dots: Bf16Dots, input: &[f32], weight: &[u16], bias: Option<&[f32]>, in_features: usize, out_features: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let (k, n, pairs) = (in_features, out_features, in_features.div_ceil(2));
    let rows = input.len() / k;
    let strip_len = pairs * STRIP;
    // Taken, not borrowed, as in `feature_major`.
    let (mut rounded, mut strips) = (ROUNDED.with(std::cell::Cell::take), STRIPS.with(std::cell::Cell::take));
    rounded.clear();
    rounded.resize(rows * pairs, 0);
    input.par_chunks(TILE_ROWS * k).zip(rounded.par_chunks_mut(TILE_ROWS * pairs)).for_each(|(input, rounded)| dots.round_rows(input, k, rounded));
    // Enough row blocks to balance the threads, each large enough to reuse a strip many times.
    let row_block = rows.div_ceil(4 * rayon::current_num_threads()).next_multiple_of(TILE_ROWS).clamp(TILE_ROWS, 16 * TILE_ROWS);
    let block_features = (PACKED_MAX_BYTES / (strip_len * 4)).max(1) * STRIP;
    let zeros = [0.0f32; STRIP];
    for first in (0..n).step_by(block_features) {
        let features = (n - first).min(block_features);
        strips.clear();
        strips.resize(features.div_ceil(STRIP) * strip_len, 0);
        strips.par_chunks_mut(strip_len).enumerate().for_each(|(s, strip)| {
            let j = first + s * STRIP;
            pack_strip(&weight[j * k..(j + (features - s * STRIP).min(STRIP)) * k], k, strip)
        });
        out.par_chunks_mut(row_block * n).zip(rounded.par_chunks(row_block * pairs)).for_each(|(out, a)| {
            let rows = a.len() / pairs;
            for (s, strip) in strips.chunks_exact(strip_len).enumerate() {
                let j = first + s * STRIP;
                let cols = (features - s * STRIP).min(STRIP);
                let bias = bias.map_or(&zeros[..cols], |b| &b[j..j + cols]);
                for t in (0..rows).step_by(TILE_ROWS) {
                    dots.tile(&a[t * pairs..], pairs, (rows - t).min(TILE_ROWS), strip, bias, cols, &mut out[t * n + j..], n);
                }
            }
        });
    }
    ROUNDED.with(|cell| cell.set(rounded));
    STRIPS.with(|cell| cell.set(strips));
}

/// Packs up to [`STRIP`] weight rows of `k` bf16 values (`weight`) as one strip for
/// [`Bf16Dots::tile`]: `strip[p * STRIP + c]` holds values `2p` and `2p + 1` of row `c` (low,
/// high half); columns past the last row and an odd row's last high half are zero.
fn pack_strip(weight: &[u16], k: usize, strip: &mut [u32]) {
    strip.fill(0);
    for (c, row) in weight.chunks_exact(k).enumerate() {
        for (p, pair) in row.chunks(2).enumerate() {
            strip[p * STRIP + c] = pair[0] as u32 | (pair.get(1).map_or(0, |&v| v as u32) << 16);
        }
    }
}

/// Most bytes of weight strips [`linear_bf16`] packs at once: a block every row block streams
/// from the core's L2 cache.
const PACKED_MAX_BYTES: usize = 1 << 20;

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

    /// [`linear_bf16`]'s input rounded to bf16 pairs, and its block of weight strips.
    static ROUNDED: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    static STRIPS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
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

    #[test]
    fn bf16_weights_multiply_in_bf16_where_the_cpu_has_it() {
        // With AVX512-BF16 the input is rounded to bf16 first and the sums are f32; without it
        // (and through `linear` where the CPU's default keeps f32) the weight is widened and the
        // input kept. Either way the result is the f64 sum of what was multiplied, within f32
        // summation error. Rows off the 12-row tile and the row blocks, odd widths (a zero-padded
        // last pair), outputs off the 16-lane and 32-column strips, and a width whose strips span
        // several packed blocks.
        let bf16_dots = simd::Isa::supported().into_iter().find_map(simd::Isa::bf16_dots);
        let by_default = simd::Isa::current().bf16_dots().is_some();
        for (rows, k, n, with_bias) in
            [(65, 1, 1, true), (65, 2, 17, false), (77, 7, 33, true), (100, 33, 32, true), (161, 64, 70, false), (300, 100, 5, true), (70, 4097, 300, true), (130, 768, 97, false)]
        {
            let input: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 313.0).collect();
            let weight: Vec<u16> = (0..n * k).map(|i| crate::f32_to_bf16(((i * 104729 % 1009) as f32 - 504.0) / 517.0)).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 / 7.0 - 2.0).collect();
            let bias = with_bias.then_some(&bias[..]);
            let check = |out: &[f32], rounds: bool| {
                let multiplied = |v: f32| if rounds { crate::bf16_to_f32(crate::f32_to_bf16(v)) } else { v } as f64;
                for t in 0..rows {
                    for j in 0..n {
                        let terms = (0..k).map(|i| (multiplied(input[t * k + i]), crate::bf16_to_f32(weight[j * k + i]) as f64));
                        let (sum, size) = terms.fold((0.0, 0.0), |(s, m), (a, w)| (s + a * w, m + (a * w).abs()));
                        let want = sum + bias.map_or(0.0, |b| b[j] as f64);
                        let got = out[t * n + j] as f64;
                        assert!((got - want).abs() <= 1e-6 * (size + want.abs()) + 1e-6, "{rows}x{k}x{n} at ({t}, {j}): {got} vs {want} (bf16 arithmetic: {rounds})");
                    }
                }
            };
            let mut out = vec![f32::NAN; rows * n];
            linear(&input, &weight, bias, k, n, &mut out);
            check(&out, by_default);
            if let Some(dots) = bf16_dots {
                out.fill(f32::NAN);
                linear_bf16(dots, &input, &weight, bias, k, n, &mut out);
                check(&out, true);
            }
        }
    }

    #[test]
    fn bf16_rounding_of_the_input_is_to_nearest_even_in_pairs() {
        // The tile's rounding agrees bit for bit with the scalar conversion the loaders use, on
        // ties, NaN, infinities and odd row lengths (the last pair's high half zero), except that
        // it flushes f32 subnormals to zero (the instruction treats them as zero).
        let Some(dots) = simd::Isa::supported().into_iter().find_map(simd::Isa::bf16_dots) else { return };
        let specials = [1.0f32 + f32::EPSILON * 64.0, 1.0 + f32::EPSILON * 192.0, -3.5, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, 3.0e38];
        for k in [1, 2, 15, 16, 17, 31, 32, 33, 70] {
            let input: Vec<f32> = (0..3 * k).map(|i| if i % 4 == 0 { specials[i % specials.len()] } else { i as f32 * 0.377 - 9.0 }).collect();
            let pairs = k.div_ceil(2);
            let mut got = vec![u32::MAX; 3 * pairs];
            dots.round_rows(&input, k, &mut got);
            for (t, row) in input.chunks_exact(k).enumerate() {
                for p in 0..pairs {
                    let rounded = |v: f32| if v.is_subnormal() { (v.to_bits() >> 16) as u16 & 0x8000 } else { crate::f32_to_bf16(v) };
                    let half = |i: usize| row.get(i).map_or(0, |&v| rounded(v)) as u32;
                    let want = half(2 * p) | half(2 * p + 1) << 16;
                    let g = got[t * pairs + p];
                    let same = |a: u32, b: u32| a == b || (a & 0x7f80 == 0x7f80 && a & 0x7f != 0 && b & 0x7f80 == 0x7f80 && b & 0x7f != 0);
                    assert!(same(g & 0xffff, want & 0xffff) && same(g >> 16, want >> 16), "k {k} row {t} pair {p}: {g:#010x} vs {want:#010x}");
                }
            }
        }
    }
}
