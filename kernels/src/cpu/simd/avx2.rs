//! The AVX2+FMA+F16C bodies (x86-64-v3).

use std::arch::x86_64::*;

use super::{lanes, Ahead, Weight, PANEL};

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `out` is as long as `weights`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn widen<W: Weight>(weights: &[W], out: &mut [f32]) {
    unsafe { lanes::widen::<__m256, W>(weights, out) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` and `b` have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    unsafe { lanes::dot::<__m256, W>(a, b) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row`, `b` and `c` have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    unsafe { lanes::update_row::<__m256>(row, b, c, decay, input) }
}

/// `e^x` in each lane: Cephes' `expf` (x = n ln 2 + r with |r| <= ln 2 / 2, e^r by a
/// polynomial, 2^n built in the exponent bits), relative error about 1e-7 where the result is
/// a normal float (the tests hold SiLU built on it to 1e-6 against f64); 0 below that range
/// (where the true value is subnormal), infinity above e^88.376 (a little early: f32
/// overflows at 88.72); NaN passes through.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    const LOW: f32 = -87.336_55; // 2^-126
    const HIGH: f32 = 88.376_26; // n = 127
    // `max_ps(a, b)` and `min_ps(a, b)` return `b` when either is NaN: `x` goes second.
    let clamped = _mm256_min_ps(_mm256_set1_ps(HIGH), _mm256_max_ps(_mm256_set1_ps(LOW), x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(clamped, _mm256_set1_ps(std::f32::consts::LOG2_E)));
    // ln 2 in two parts (the first exact in 9 bits), so r = x - n ln 2 loses nothing.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), clamped);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for coefficient in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coefficient));
    }
    let e_r = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    let e = _mm256_mul_ps(e_r, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)));
    // Outside the clamp: infinity above, zero below (comparisons with NaN keep the NaN).
    let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HIGH)));
    _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(LOW)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn silu8(x: __m256) -> __m256 {
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// `out[i] = f(a[i], b[i])` for `i < n`, eight lanes at a time, the tail through a padded copy
/// (so a value's result does not depend on where it sits). `out` may be `a` or `b`: each group
/// of lanes is read before it is written.
///
/// # Safety
/// `n` values must be readable at `a` and `b` and writable at `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn map2(n: usize, a: *const f32, b: *const f32, out: *mut f32, f: impl Fn(__m256, __m256) -> __m256) {
    let mut i = 0;
    // SAFETY: every index is below `n` (the caller's guarantee).
    while i + 8 <= n {
        unsafe { _mm256_storeu_ps(out.add(i), f(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)))) };
        i += 8;
    }
    if i < n {
        let (mut pad_a, mut pad_b, mut pad_out) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        // SAFETY: `n - i < 8` values remain at each pointer; the arrays hold eight.
        unsafe {
            std::ptr::copy_nonoverlapping(a.add(i), pad_a.as_mut_ptr(), n - i);
            std::ptr::copy_nonoverlapping(b.add(i), pad_b.as_mut_ptr(), n - i);
            _mm256_storeu_ps(pad_out.as_mut_ptr(), f(_mm256_loadu_ps(pad_a.as_ptr()), _mm256_loadu_ps(pad_b.as_ptr())));
            std::ptr::copy_nonoverlapping(pad_out.as_ptr(), out.add(i), n - i);
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn silu_in_place(values: &mut [f32]) {
    let p = values.as_mut_ptr();
    // SAFETY: `values.len()` values at `p`, read and written in place.
    unsafe { map2(values.len(), p, p, p, |x, _| silu8(x)) };
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; the three slices have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gate(y: &[f32], z: &[f32], out: &mut [f32]) {
    // SAFETY: the three slices hold `out.len()` values each (the caller's guarantee).
    unsafe { map2(out.len(), y.as_ptr(), z.as_ptr(), out.as_mut_ptr(), |y, z| _mm256_mul_ps(y, silu8(z))) };
}

/// Weight rows taken at a time by [`panel_dots`]. A panel of more than 8 rows (two vectors)
/// goes through register tiles of 16 x 6, a panel of at most 8 rows (a batch of 8, the last
/// panel of 40) through tiles of 8 x 12: twelve accumulators either way, no lanes spent on
/// absent rows.
const GROUP: usize = 12;

/// Values of each weight row that [`panel_dots`] widens at a time from a 16-bit type: the
/// group's widened block is 12 KB on the stack and stays in L1 while every panel uses it.
const SLICE: usize = 256;

/// # Safety
/// The CPU must support AVX2, FMA and F16C; the sizes are [`super::Isa::panel_dots`]'s (it checks them).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn panel_dots<W: Weight>(packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
    let features = weight.len() / k;
    let f32_weight = W::as_f32(weight);
    // f32 rows are read in place, whole; 16-bit rows are widened SLICE values at a time and
    // the tiles accumulate over the slices (through `out`).
    let slice = if f32_weight.is_some() { k } else { SLICE };
    let mut block = [0.0f32; GROUP * SLICE];
    let last = rows.div_ceil(PANEL) - 1;
    for j in (0..features).step_by(GROUP) {
        let cols = GROUP.min(features - j);
        for i0 in (0..k).step_by(slice) {
            let len = slice.min(k - i0);
            let (w, stride) = match f32_weight {
                Some(w) => (&w[j * k..(j + cols) * k], k),
                None => {
                    for c in 0..cols {
                        // SAFETY: the caller's CPU has AVX2+FMA+F16C; both slices hold `len` values.
                        unsafe { widen(&weight[(j + c) * k + i0..][..len], &mut block[c * SLICE..][..len]) };
                    }
                    (&block[..], SLICE)
                }
            };
            // The weight read next, asked for during the first tile of the slice.
            let mut ahead = Ahead::after_slice(weight, k, j, GROUP, i0, slice);
            // The tile at `first` rows of the panel at `a`, weight rows c0..c0 + c_len of the
            // group: sums start from zero on the first slice and from `out` after it.
            let mut tile_at = |a: &[f32], first: usize, valid: usize, c0: usize, c_len: usize, wide: bool| {
                let mut sums = [[0.0f32; PANEL]; GROUP];
                if i0 > 0 {
                    for (c, sums) in sums[..c_len].iter_mut().enumerate() {
                        sums[..valid].copy_from_slice(&out[(j + c0 + c) * rows + first..][..valid]);
                    }
                }
                let (a, w) = (a[i0 * PANEL..].as_ptr(), w[c0 * stride..].as_ptr());
                // SAFETY: `a` holds the panel's values from i0 on (len * PANEL of them), `w`
                // rows c0..c0 + c_len of `stride` values, each with `len` from its start.
                let ahead = std::mem::replace(&mut ahead, Ahead::NONE);
                unsafe {
                    if wide {
                        tiles::<2, 6>(a, w, stride, len, i0 > 0, &mut sums[..c_len], ahead);
                    } else {
                        tiles::<1, 12>(a, w, stride, len, i0 > 0, &mut sums[..c_len], ahead);
                    }
                }
                for (c, sums) in sums[..c_len].iter().enumerate() {
                    out[(j + c0 + c) * rows + first..][..valid].copy_from_slice(&sums[..valid]);
                }
            };
            // Panels of more than 8 rows six weight rows at a time (6 rows of the slice stay in
            // L1 from one panel to the next), a last panel of at most 8 rows all twelve at once.
            for (c0, c_len) in [(0, cols.min(6)), (6, cols.saturating_sub(6))] {
                for (panel, a) in packed.chunks_exact(k * PANEL).enumerate() {
                    let (first, valid) = (panel * PANEL, PANEL.min(rows - panel * PANEL));
                    if valid > 8 && c_len > 0 {
                        tile_at(a, first, valid, c0, c_len, true);
                    }
                }
            }
            let (first, valid) = (last * PANEL, rows - last * PANEL);
            if valid <= 8 {
                tile_at(&packed[last * k * PANEL..][..k * PANEL], first, valid, 0, cols, false);
            }
        }
    }
}

/// `sums[c][t] (+)= Σ_{i < len} a[i * PANEL + t] * w[c * stride + i]` for the first `8 * V`
/// rows `t` of the panel at `a` and every row `c` of `sums` (adding to what `sums` holds when
/// `accumulate`): tiles of `C` weight rows, then one at a time, asking for `ahead`'s lines as
/// they go.
///
/// # Safety
/// `len * PANEL` values readable at `a`, `sums.len()` rows of `stride` at `w`, each with `len`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const V: usize, const C: usize>(
    a: *const f32,
    w: *const f32,
    stride: usize,
    len: usize,
    accumulate: bool,
    sums: &mut [[f32; PANEL]],
    mut ahead: Ahead,
) {
    let mut c = 0;
    // SAFETY (both calls): rows c.. of `w` exist for every row of `sums` handed on.
    while c + C <= sums.len() {
        unsafe { tile::<V, C>(a, w.add(c * stride), stride, len, accumulate, &mut sums[c..c + C], &mut ahead) };
        c += C;
    }
    while c < sums.len() {
        unsafe { tile::<V, 1>(a, w.add(c * stride), stride, len, accumulate, &mut sums[c..c + 1], &mut ahead) };
        c += 1;
    }
}

/// One outer-product register tile: each step `V` vectors of the panel times `C` broadcast
/// weights, `V * C` accumulators, no horizontal sums.
///
/// # Safety
/// `len * PANEL` values readable at `a`, `C` rows of `stride` at `w`, each with `len`;
/// `sums` holds `C` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const V: usize, const C: usize>(
    a: *const f32,
    w: *const f32,
    stride: usize,
    len: usize,
    accumulate: bool,
    sums: &mut [[f32; PANEL]],
    ahead: &mut Ahead,
) {
    let mut acc = [[_mm256_setzero_ps(); V]; C];
    if accumulate {
        for (acc, sums) in acc.iter_mut().zip(sums.iter()) {
            // SAFETY: each row of `sums` holds PANEL = 16 >= 8 * V values.
            *acc = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(sums.as_ptr().add(8 * v)) });
        }
    }
    for i in 0..len {
        ahead.next();
        // SAFETY: i < len, so every read is inside the caller's bounds.
        let x: [__m256; V] = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(a.add(i * PANEL + 8 * v)) });
        for (c, acc) in acc.iter_mut().enumerate() {
            let b = unsafe { _mm256_broadcast_ss(&*w.add(c * stride + i)) };
            for v in 0..V {
                acc[v] = _mm256_fmadd_ps(x[v], b, acc[v]);
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: each row of `sums` holds PANEL = 16 >= 8 * V values.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(8 * v), *acc) };
        }
    }
}
