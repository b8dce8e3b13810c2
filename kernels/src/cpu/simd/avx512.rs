//! The AVX-512 bodies (AVX-512F on top of x86-64-v3): 16-lane vectors, 32 registers, and masks
//! for the ragged edges. Only the kernels that gain from the width have one; the rest run their
//! AVX2 body.

use std::arch::x86_64::*;

use super::{lanes, Ahead, Weight, PANEL};

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; `out` is as long as `weights`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn widen<W: Weight>(weights: &[W], out: &mut [f32]) {
    unsafe { lanes::widen::<__m512, W>(weights, out) }
}

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; `a` and `b` have equal lengths.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    unsafe { lanes::dot::<__m512, W>(a, b) }
}

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; `row`, `b` and `c` have equal lengths.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    unsafe { lanes::update_row::<__m512>(row, b, c, decay, input) }
}

/// `e^x` in each lane: the AVX2 body's Cephes `expf` on sixteen lanes (same constants, same
/// polynomial, so the same results lane for lane).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn exp16(x: __m512) -> __m512 {
    const LOW: f32 = -87.336_55; // 2^-126
    const HIGH: f32 = 88.376_26; // n = 127
    // `max_ps(a, b)` and `min_ps(a, b)` return `b` when either is NaN: `x` goes second.
    let clamped = _mm512_min_ps(_mm512_set1_ps(HIGH), _mm512_max_ps(_mm512_set1_ps(LOW), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(clamped, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    // ln 2 in two parts (the first exact in 9 bits), so r = x - n ln 2 loses nothing.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), clamped);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for coefficient in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficient));
    }
    let e_r = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    let e = _mm512_mul_ps(e_r, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)));
    // Outside the clamp: infinity above, zero below (comparisons with NaN keep the NaN).
    let e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(HIGH)), _mm512_set1_ps(f32::INFINITY));
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(LOW)), e)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn silu16(x: __m512) -> __m512 {
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// `out[i] = f(a[i], b[i])` for `i < n`, sixteen lanes at a time, the tail through masked
/// loads and stores (the masked-off lanes compute on zeros and are never stored). `out` may be
/// `a` or `b`: each group of lanes is read before it is written.
///
/// # Safety
/// `n` values must be readable at `a` and `b` and writable at `out`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn map2(n: usize, a: *const f32, b: *const f32, out: *mut f32, f: impl Fn(__m512, __m512) -> __m512) {
    let mut i = 0;
    // SAFETY: every index is below `n` (the caller's guarantee); the tail's mask covers only
    // the `n - i < 16` values left.
    while i + 16 <= n {
        unsafe { _mm512_storeu_ps(out.add(i), f(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)))) };
        i += 16;
    }
    if i < n {
        let mask = ((1u32 << (n - i)) - 1) as __mmask16;
        unsafe {
            let value = f(_mm512_maskz_loadu_ps(mask, a.add(i)), _mm512_maskz_loadu_ps(mask, b.add(i)));
            _mm512_mask_storeu_ps(out.add(i), mask, value);
        }
    }
}

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn silu_in_place(values: &mut [f32]) {
    let p = values.as_mut_ptr();
    // SAFETY: `values.len()` values at `p`, read and written in place.
    unsafe { map2(values.len(), p, p, p, |x, _| silu16(x)) };
}

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; the three slices have equal lengths.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn gate(y: &[f32], z: &[f32], out: &mut [f32]) {
    // SAFETY: the three slices hold `out.len()` values each (the caller's guarantee).
    unsafe { map2(out.len(), y.as_ptr(), z.as_ptr(), out.as_mut_ptr(), |y, z| _mm512_mul_ps(y, silu16(z))) };
}

/// Weight rows taken at a time by [`panel_dots`]: a tile of two panels (32 input rows, two
/// vectors) by twelve weight rows holds 24 accumulators of the 32 registers.
const GROUP: usize = 12;

/// Values of each weight row that [`panel_dots`] widens at a time from a 16-bit type: the
/// group's widened block is 12 KB on the stack and stays in L1 while every panel uses it.
const SLICE: usize = 256;

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; the sizes are [`super::Isa::panel_dots`]'s
/// (it checks them).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn panel_dots<W: Weight>(packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
    let features = weight.len() / k;
    let f32_weight = W::as_f32(weight);
    // f32 rows are read in place, whole; 16-bit rows are widened SLICE values at a time and the
    // tiles accumulate over the slices (through `out`).
    let slice = if f32_weight.is_some() { k } else { SLICE };
    let mut block = [0.0f32; GROUP * SLICE];
    let panels = rows.div_ceil(PANEL);
    // Each panel's rows in `out` (feature-major: `rows` values per weight row) and the mask of
    // its rows that exist (the last panel may be short).
    let mask = |panel: usize| -> __mmask16 {
        let valid = PANEL.min(rows - panel * PANEL);
        ((1u32 << valid) - 1) as __mmask16
    };
    for j in (0..features).step_by(GROUP) {
        let cols = GROUP.min(features - j);
        for i0 in (0..k).step_by(slice) {
            let len = slice.min(k - i0);
            let (w, stride) = match f32_weight {
                Some(w) => (&w[j * k..(j + cols) * k], k),
                None => {
                    for c in 0..cols {
                        // SAFETY: the caller's CPU has AVX-512F; both slices hold `len` values.
                        unsafe { widen(&weight[(j + c) * k + i0..][..len], &mut block[c * SLICE..][..len]) };
                    }
                    (&block[..], SLICE)
                }
            };
            // Where row 0 of the slice starts: at i0 in an f32 row read in place, at 0 in the block.
            let offset = if f32_weight.is_some() { i0 } else { 0 };
            let ahead = Ahead::after_slice(weight, k, j, GROUP, i0, slice);
            assert!((cols - 1) * stride + offset + len <= w.len());
            let w = w[offset..].as_ptr();
            // Two panels at a time, then the last one alone.
            let mut panel = 0;
            while panel < panels {
                let pair = panel + 1 < panels;
                let at = |p: usize| (packed[(p * k + i0) * PANEL..].as_ptr(), j * rows + p * PANEL, mask(p));
                // SAFETY: panel `p`'s values from i0 on are `len * PANEL` of `packed`; `cols` rows
                // of `stride` at `w` each hold `len` values (checked above); `out` holds `cols`
                // feature rows of `rows` values from `j * rows`, and each masked lane is a row of
                // the panel that exists.
                let ahead = if panel == 0 { ahead } else { Ahead::NONE };
                unsafe {
                    if pair {
                        tiles::<2>([at(panel), at(panel + 1)], w, stride, len, i0 > 0, cols, out.as_mut_ptr(), rows, ahead);
                    } else {
                        tiles::<1>([at(panel)], w, stride, len, i0 > 0, cols, out.as_mut_ptr(), rows, ahead);
                    }
                }
                panel += if pair { 2 } else { 1 };
            }
        }
    }
}

/// For each of `V` panels `(a, first, mask)` and each weight row `c < cols`:
/// `out[first + c * rows + t] (+)= Σ_{i < len} a[i * PANEL + t] * w[c * stride + i]` for the
/// panel's rows `t` in `mask` (adding to what `out` holds when `accumulate`): tiles of
/// [`GROUP`] weight rows, then one at a time, asking for `ahead`'s lines as they go.
///
/// # Safety
/// Each `a` has `len * PANEL` readable values; `cols` rows of `stride` at `w`, each with `len`;
/// `out` is writable at `first + c * rows + t` for every `c < cols` and every `t` in the mask.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const V: usize>(
    panels: [(*const f32, usize, __mmask16); V],
    w: *const f32,
    stride: usize,
    len: usize,
    accumulate: bool,
    cols: usize,
    out: *mut f32,
    rows: usize,
    mut ahead: Ahead,
) {
    let mut c = 0;
    // SAFETY (both calls): rows c.. of `w` and of the output exist for every row handed on.
    while c + GROUP <= cols {
        unsafe { tile::<V, GROUP>(panels, w.add(c * stride), stride, len, accumulate, out.add(c * rows), rows, &mut ahead) };
        c += GROUP;
    }
    while c < cols {
        unsafe { tile::<V, 1>(panels, w.add(c * stride), stride, len, accumulate, out.add(c * rows), rows, &mut ahead) };
        c += 1;
    }
}

/// One outer-product register tile: each step `V` panel vectors times `C` broadcast weights,
/// `V * C` accumulators, no horizontal sums; results stored (or added) through each panel's mask.
///
/// # Safety
/// As [`tiles`], for `C` weight rows.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const V: usize, const C: usize>(
    panels: [(*const f32, usize, __mmask16); V],
    w: *const f32,
    stride: usize,
    len: usize,
    accumulate: bool,
    out: *mut f32,
    rows: usize,
    ahead: &mut Ahead,
) {
    // SAFETY (every access): the caller's bounds; masked lanes only touch rows that exist.
    let mut acc = [[_mm512_setzero_ps(); V]; C];
    if accumulate {
        for (c, acc) in acc.iter_mut().enumerate() {
            for (v, &(_, first, mask)) in panels.iter().enumerate() {
                acc[v] = unsafe { _mm512_maskz_loadu_ps(mask, out.add(first + c * rows)) };
            }
        }
    }
    for i in 0..len {
        ahead.next();
        let x: [__m512; V] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(panels[v].0.add(i * PANEL)) });
        for (c, acc) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(unsafe { *w.add(c * stride + i) });
            for v in 0..V {
                acc[v] = _mm512_fmadd_ps(x[v], b, acc[v]);
            }
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        for (v, &(_, first, mask)) in panels.iter().enumerate() {
            unsafe { _mm512_mask_storeu_ps(out.add(first + c * rows), mask, acc[v]) };
        }
    }
}
