//! The kernels whose AVX2 and AVX-512 bodies differ only in how many lanes a vector holds,
//! written once over [`Lanes`]: `__m256` (8 lanes) and `__m512` (16). The `#[target_feature]`
//! entry points in `avx2` and `avx512` instantiate them; everything here is `#[inline(always)]`,
//! so it is compiled inside those entry points, with their features.

use std::arch::x86_64::*;

use super::{Weight, PREFETCH_BYTES};

/// A vector of f32 lanes.
///
/// # Safety
/// Every method needs the CPU features of its vector type (AVX2, FMA and F16C for `__m256`,
/// AVX-512F as well for `__m512`), and is only called from code compiled with them.
pub(super) trait Lanes: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(value: f32) -> Self;
    /// `LANES` values at `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// `LANES` weights at `p`, widened to f32.
    unsafe fn load_weight<W: Weight>(p: *const W) -> Self;
    /// Writes the lanes to `LANES` values at `p`.
    unsafe fn store(self, p: *mut f32);
    /// `a * b + c`, rounded once.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;
}

impl Lanes for __m256 {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        unsafe { _mm256_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_weight<W: Weight>(p: *const W) -> Self {
        unsafe { W::load8(p) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, self) }
    }

    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        unsafe { _mm256_mul_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        unsafe {
            let pair = _mm_add_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps(self, 1));
            let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
            _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)))
        }
    }
}

impl Lanes for __m512 {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        unsafe { _mm512_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_weight<W: Weight>(p: *const W) -> Self {
        unsafe { W::load16(p) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm512_storeu_ps(p, self) }
    }

    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        unsafe { _mm512_mul_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { _mm512_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        unsafe { _mm512_reduce_add_ps(self) }
    }
}

/// `out = weights` as f32.
///
/// # Safety
/// As for [`Lanes`]; `out` is as long as `weights`.
#[inline(always)]
pub(super) unsafe fn widen<V: Lanes, W: Weight>(weights: &[W], out: &mut [f32]) {
    let n = weights.len().min(out.len());
    let (pw, po) = (weights.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + V::LANES <= n {
        // SAFETY: i + LANES <= n values exist in both slices.
        unsafe { V::load_weight(pw.add(i)).store(po.add(i)) };
        i += V::LANES;
    }
    out[i..n].iter_mut().zip(&weights[i..n]).for_each(|(o, w)| *o = w.to_f32());
}

/// `Σ a_i b_i`: four vectors of products at a time, the weight asked for
/// [`PREFETCH_BYTES`] ahead.
///
/// # Safety
/// As for [`Lanes`]; `a` and `b` have equal lengths.
#[inline(always)]
pub(super) unsafe fn dot<V: Lanes, W: Weight>(a: &[f32], b: &[W]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let step = 4 * V::LANES;
    let mut acc = [unsafe { V::zero() }; 4];
    let mut i = 0;
    // SAFETY (all loads): every index read is below `n`, the length of both slices.
    while i + step <= n {
        // One request per cache line this step reads (the address may lie past the slice: a
        // prefetch never faults).
        let ahead = pb.wrapping_add(i).cast::<i8>().wrapping_add(PREFETCH_BYTES);
        for line in (0..step * std::mem::size_of::<W>()).step_by(64) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line)) };
        }
        for (u, acc) in acc.iter_mut().enumerate() {
            unsafe { *acc = V::mul_add(V::load(pa.add(i + V::LANES * u)), V::load_weight(pb.add(i + V::LANES * u)), *acc) };
        }
        i += step;
    }
    while i + V::LANES <= n {
        unsafe { acc[0] = V::mul_add(V::load(pa.add(i)), V::load_weight(pb.add(i)), acc[0]) };
        i += V::LANES;
    }
    let sum = unsafe { V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3])).sum() };
    sum + a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
}

/// One state row of the recurrent step: `s = decay * s + input * b`, returning `s · c`; the
/// state asked for [`PREFETCH_BYTES`] ahead, once per cache line.
///
/// # Safety
/// As for [`Lanes`]; `row`, `b` and `c` have equal lengths.
#[inline(always)]
pub(super) unsafe fn update_row<V: Lanes>(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    let n = row.len();
    let (ps, pb, pc) = (row.as_mut_ptr(), b.as_ptr(), c.as_ptr());
    let (vdecay, vinput) = unsafe { (V::splat(decay), V::splat(input)) };
    let mut acc = [unsafe { V::zero() }; 2];
    let mut i = 0;
    // SAFETY (all loads and stores): every index is below `n`, the length of all three.
    while i + V::LANES <= n {
        if i % 16 == 0 {
            // 16 f32 are one cache line (a prefetch never faults).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ps.wrapping_add(i).cast::<i8>().wrapping_add(PREFETCH_BYTES)) };
        }
        let lane = (i / V::LANES) % 2;
        unsafe {
            let s = V::mul_add(vdecay, V::load(ps.add(i)), V::mul(vinput, V::load(pb.add(i))));
            s.store(ps.add(i));
            acc[lane] = V::mul_add(s, V::load(pc.add(i)), acc[lane]);
        }
        i += V::LANES;
    }
    let mut rest = 0.0f32;
    for ((s, &b), &c) in row[i..].iter_mut().zip(&b[i..]).zip(&c[i..]) {
        *s = decay * *s + input * b;
        rest += *s * c;
    }
    unsafe { V::add(acc[0], acc[1]).sum() + rest }
}
