//! The innermost loops of the hot ops, written twice: with AVX2+FMA+F16C intrinsics (x86-64-v3,
//! picked at run time when the CPU has them) and as portable Rust (always compiled, always correct,
//! used elsewhere).
//!
//! Explicit intrinsics, not auto-vectorised lane arrays: LLVM's SLP vectoriser turned the lane
//! array loops into 2-wide `xmm` code, which held decode to ~60% of memory bandwidth.
//!
//! Each public function here is safe and dispatches; the `avx2` module holds the `unsafe`
//! target-feature bodies and the portable bodies sit beside the dispatchers.

use std::sync::OnceLock;

/// Whether this CPU has AVX2, FMA and F16C (all part of x86-64-v3).
#[inline]
pub(crate) fn has_avx2() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx2") && has!("fma") && has!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Runs `$avx2` (an `unsafe` AVX2+FMA+F16C function of the same arguments) when the CPU has
/// those features, else `$portable`.
macro_rules! dispatch {
    ($avx2:path, $portable:path, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: the CPU supports AVX2, FMA and F16C, the only requirement of `$avx2`.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $portable($($arg),*)
    }};
}

/// A weight element the dot-product kernels read directly: f32, bf16 bits (`u16`, as
/// [`crate::Matrix`] holds them) or IEEE half ([`half::f16`]), the last two widened as they are
/// loaded.
pub(crate) trait Weight: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// The weights as f32 when they already are.
    fn as_f32(weights: &[Self]) -> Option<&[f32]>;

    /// Eight weights at `p`, as f32 lanes.
    ///
    /// # Safety
    /// Eight values must be readable at `p`; only called (inlined) from AVX2 code.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn as_f32(weights: &[f32]) -> Option<&[f32]> {
        Some(weights)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable values at `p`.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::bf16_to_f32(self)
    }

    fn as_f32(_: &[u16]) -> Option<&[f32]> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable values at `p` and an AVX2 context. A bf16
        // is the top half of an f32: zero-extend each to 32 bits and shift it up.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())), 16)) }
    }
}

impl Weight for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    fn as_f32(_: &[half::f16]) -> Option<&[f32]> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable values at `p` and an AVX2+F16C context.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// `out = weights` as f32 (`out` is cleared and refilled): how the GEMM path widens a block of
/// bf16 or f16 weights (batched decode widens inside [`panel_dots`]).
pub(crate) fn widen<W: Weight>(weights: &[W], out: &mut Vec<f32>) {
    out.clear();
    if let Some(w) = W::as_f32(weights) {
        return out.extend_from_slice(w);
    }
    out.resize(weights.len(), 0.0);
    let out = out.as_mut_slice();
    dispatch!(avx2::widen::<W>, portable::widen::<W>, weights, out)
}

/// `Σ a_i b_i`.
pub(crate) fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    dispatch!(avx2::dot::<W>, portable::dot::<W>, a, b)
}

/// One state row of the recurrent step: `s = decay * s + input * b`, returning `s · c`.
pub(crate) fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    assert!(b.len() == row.len() && c.len() == row.len(), "update_row: lengths differ");
    dispatch!(avx2::update_row, portable::update_row, row, b, c, decay, input)
}

/// Input rows per panel of [`pack_panels`].
pub(crate) const PANEL: usize = 16;

/// Packs `input` (`[rows, k]`) for [`panel_dots`]: panels of [`PANEL`] rows, each stored k-major
/// (value `i` of row `t` at `(t / PANEL) * k * PANEL + i * PANEL + t % PANEL`), rows past the last
/// zero.
pub(crate) fn pack_panels(input: &[f32], k: usize, packed: &mut Vec<f32>) {
    assert!(k > 0 && input.len().is_multiple_of(k), "pack_panels: ragged rows");
    let rows = input.len() / k;
    packed.clear();
    packed.resize(rows.div_ceil(PANEL) * PANEL * k, 0.0);
    for (t, row) in input.chunks_exact(k).enumerate() {
        let panel = &mut packed[(t / PANEL) * k * PANEL..][..k * PANEL];
        for (i, &v) in row.iter().enumerate() {
            panel[i * PANEL + t % PANEL] = v;
        }
    }
}

/// `out[j * rows + t] = input[t] · weight[j]` for every input row `t` (packed by [`pack_panels`])
/// and weight row `j` of `k` values: the batched-decode product. Each weight row is read from
/// memory once and used for all rows; 16-bit rows are widened a block at a time on the stack (no
/// allocation, ever).
pub(crate) fn panel_dots<W: Weight>(packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
    assert!(k > 0 && weight.len().is_multiple_of(k), "panel_dots: ragged weight rows");
    assert_eq!(packed.len(), rows.div_ceil(PANEL) * PANEL * k, "panel_dots: packed input size");
    assert_eq!(out.len(), rows * (weight.len() / k), "panel_dots: output size");
    if rows == 0 {
        return;
    }
    dispatch!(avx2::panel_dots::<W>, portable::panel_dots::<W>, packed, rows, weight, k, out)
}

/// `values[i] = silu(values[i])` (the conv's activation).
pub(crate) fn silu_in_place(values: &mut [f32]) {
    dispatch!(avx2::silu_in_place, portable::silu_in_place, values)
}

/// `out[i] = y[i] * silu(z[i])` (the mixer's gate, before its norm).
pub(crate) fn gate(y: &[f32], z: &[f32], out: &mut [f32]) {
    assert!(y.len() == out.len() && z.len() == out.len(), "gate: lengths differ");
    dispatch!(avx2::gate, portable::gate, y, z, out)
}

mod portable {
    use super::Weight;

    pub fn silu_in_place(values: &mut [f32]) {
        for v in values {
            *v = crate::silu(*v);
        }
    }

    pub fn gate(y: &[f32], z: &[f32], out: &mut [f32]) {
        for ((o, &y), &z) in out.iter_mut().zip(y).zip(z) {
            *o = y * crate::silu(z);
        }
    }

    const LANES: usize = 16;

    pub fn widen<W: Weight>(weights: &[W], out: &mut [f32]) {
        out.iter_mut().zip(weights).for_each(|(o, w)| *o = w.to_f32());
    }

    pub fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let split = a.len() / LANES * LANES;
        for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += ca[i] * cb[i].to_f32();
            }
        }
        let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y.to_f32()).sum();
        acc.iter().sum::<f32>() + tail
    }

    pub fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
        let mut sum = 0.0f32;
        for ((s, &b), &c) in row.iter_mut().zip(b).zip(c) {
            *s = decay * *s + input * b;
            sum += *s * c;
        }
        sum
    }

    pub fn panel_dots<W: Weight>(packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
        for (j, w) in weight.chunks_exact(k).enumerate() {
            for t in 0..rows {
                let panel = &packed[(t / super::PANEL) * k * super::PANEL..][..k * super::PANEL];
                out[j * rows + t] = w.iter().enumerate().map(|(i, w)| panel[i * super::PANEL + t % super::PANEL] * w.to_f32()).sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Weight, PANEL};

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `out` is as long as `weights`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen<W: Weight>(weights: &[W], out: &mut [f32]) {
        let n = weights.len().min(out.len());
        let (pw, po) = (weights.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n values exist in both slices.
            unsafe { _mm256_storeu_ps(po.add(i), W::load8(pw.add(i))) };
            i += 8;
        }
        out[i..n].iter_mut().zip(&weights[i..n]).for_each(|(o, w)| *o = w.to_f32());
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `a` and `b` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): every index read is below `n`, the length of both slices.
        while i + 32 <= n {
            for (u, acc) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * u)), W::load8(pb.add(i + 8 * u))) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), W::load8(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row`, `b` and `c` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
        let n = row.len();
        let (ps, pb, pc) = (row.as_mut_ptr(), b.as_ptr(), c.as_ptr());
        let (vdecay, vinput) = (_mm256_set1_ps(decay), _mm256_set1_ps(input));
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (all loads and stores): every index is below `n`, the length of all three.
        while i + 8 <= n {
            let lane = (i / 8) % 2;
            unsafe {
                let s = _mm256_fmadd_ps(vdecay, _mm256_loadu_ps(ps.add(i)), _mm256_mul_ps(vinput, _mm256_loadu_ps(pb.add(i))));
                _mm256_storeu_ps(ps.add(i), s);
                acc[lane] = _mm256_fmadd_ps(s, _mm256_loadu_ps(pc.add(i)), acc[lane]);
            }
            i += 8;
        }
        let mut rest = 0.0f32;
        for ((s, &b), &c) in row[i..].iter_mut().zip(&b[i..]).zip(&c[i..]) {
            *s = decay * *s + input * b;
            rest += *s * c;
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + rest
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
    /// The CPU must support AVX2, FMA and F16C; the sizes are [`super::panel_dots`]'s (it checks them).
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
                    unsafe {
                        if wide {
                            tiles::<2, 6>(a, w, stride, len, i0 > 0, &mut sums[..c_len]);
                        } else {
                            tiles::<1, 12>(a, w, stride, len, i0 > 0, &mut sums[..c_len]);
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
    /// `accumulate`): tiles of `C` weight rows, then one at a time.
    ///
    /// # Safety
    /// `len * PANEL` values readable at `a`, `sums.len()` rows of `stride` at `w`, each with `len`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiles<const V: usize, const C: usize>(a: *const f32, w: *const f32, stride: usize, len: usize, accumulate: bool, sums: &mut [[f32; PANEL]]) {
        let mut c = 0;
        // SAFETY (both calls): rows c.. of `w` exist for every row of `sums` handed on.
        while c + C <= sums.len() {
            unsafe { tile::<V, C>(a, w.add(c * stride), stride, len, accumulate, &mut sums[c..c + C]) };
            c += C;
        }
        while c < sums.len() {
            unsafe { tile::<V, 1>(a, w.add(c * stride), stride, len, accumulate, &mut sums[c..c + 1]) };
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
    unsafe fn tile<const V: usize, const C: usize>(a: *const f32, w: *const f32, stride: usize, len: usize, accumulate: bool, sums: &mut [[f32; PANEL]]) {
        let mut acc = [[_mm256_setzero_ps(); V]; C];
        if accumulate {
            for (acc, sums) in acc.iter_mut().zip(sums.iter()) {
                // SAFETY: each row of `sums` holds PANEL = 16 >= 8 * V values.
                *acc = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(sums.as_ptr().add(8 * v)) });
            }
        }
        for i in 0..len {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32 * 2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// Lengths around every unroll boundary (8, 32) and a few long ones.
    const LENGTHS: [usize; 12] = [0, 1, 7, 8, 9, 31, 32, 33, 63, 100, 768, 1001];

    #[test]
    fn dots_match_f64_sums() {
        for len in LENGTHS {
            let (a, b) = (values(len, 1), values(len, 2));
            let want = naive_dot(&a, &b);
            for got in [dot(&a, &b), portable::dot(&a, &b)] {
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "len {len}: {got} vs {want}");
            }
            let bits: Vec<u16> = b.iter().map(|&v| crate::f32_to_bf16(v)).collect();
            let widened: Vec<f32> = bits.iter().map(|&v| crate::bf16_to_f32(v)).collect();
            let want = naive_dot(&a, &widened);
            for got in [dot(&a, &bits), portable::dot(&a, &bits)] {
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "bf16 len {len}: {got} vs {want}");
            }
            let halves: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
            let widened: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
            let want = naive_dot(&a, &widened);
            for got in [dot(&a, &halves), portable::dot(&a, &halves)] {
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "f16 len {len}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        // f16 specials and edges (subnormals, ±65504, ±inf, NaN) and bf16 bit patterns across
        // the range, at lengths off the 8-lane step.
        let f16_edges = [0.0f32, -0.0, 6.0e-8, -6.1e-5, 1.0, -2.5, 65504.0, -65504.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        for len in LENGTHS {
            let halves: Vec<half::f16> = (0..len).map(|i| half::f16::from_f32(if i % 3 == 0 { f16_edges[i % f16_edges.len()] } else { (i as f32 - 500.0) * 0.37 })).collect();
            let bits: Vec<u16> = (0..len).map(|i| (i as u16).wrapping_mul(40503)).collect();
            let mut out = vec![f32::NAN; 3];
            widen(&halves, &mut out);
            assert_eq!(out.len(), len);
            for (got, want) in out.iter().zip(&halves) {
                assert!(got.to_bits() == want.to_f32().to_bits() || (got.is_nan() && want.is_nan()), "f16 {want}: {got}");
            }
            widen(&bits, &mut out);
            for (got, &want) in out.iter().zip(&bits) {
                assert_eq!(got.to_bits(), (want as u32) << 16, "bf16 {want:#x}");
            }
            let floats = values(len, 9);
            widen(&floats, &mut out);
            assert_eq!(out, floats);
        }
    }

    #[test]
    fn update_row_matches_scalar() {
        for len in LENGTHS {
            let (b, c) = (values(len, 3), values(len, 4));
            let mut fast = values(len, 5);
            let mut slow = fast.clone();
            let got = update_row(&mut fast, &b, &c, 0.9, 0.3);
            let want = portable::update_row(&mut slow, &b, &c, 0.9, 0.3);
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "len {len}");
            for (x, y) in fast.iter().zip(&slow) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "len {len}: state {x} vs {y}");
            }
        }
    }

    /// Awkward arguments: both signs, both edges of exp's normal range, far outside them, zero,
    /// NaN. (Below e^-87.34 exp gives 0 where the true value is subnormal: the 1e-35 slack.)
    fn activation_inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        v.extend([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 87.3, -87.3, 88.4, -88.4, 100.0, -100.0, 1e30, -1e30, f32::INFINITY, f32::NAN]);
        v
    }

    fn silu_f64(x: f32) -> f64 {
        let x = x as f64;
        x / (1.0 + (-x).exp())
    }

    #[test]
    fn silu_and_gate_match_f64() {
        let xs = activation_inputs();
        let ys = values(xs.len(), 8);
        for len in [xs.len(), 7, 8, 9, 15, 1] {
            let xs = &xs[xs.len() - len..];
            let ys = &ys[..len];
            let mut fast = xs.to_vec();
            silu_in_place(&mut fast);
            let mut slow = xs.to_vec();
            portable::silu_in_place(&mut slow);
            let (mut gated, mut gated_slow) = (vec![0.0; len], vec![0.0; len]);
            gate(ys, xs, &mut gated);
            portable::gate(ys, xs, &mut gated_slow);
            for i in 0..len {
                let want = silu_f64(xs[i]);
                if want.is_nan() {
                    assert!(fast[i].is_nan() && slow[i].is_nan() && gated[i].is_nan(), "NaN must pass through");
                    continue;
                }
                let close = |got: f32, want: f64| got as f64 == want || (got as f64 - want).abs() <= 1e-6 * want.abs() + 1e-35;
                for (got, name) in [(fast[i], "silu"), (slow[i], "portable silu")] {
                    assert!(close(got, want), "{name}({}) = {got}, want {want}", xs[i]);
                }
                let want = ys[i] as f64 * want;
                for (got, name) in [(gated[i], "gate"), (gated_slow[i], "portable gate")] {
                    assert!(close(got, want), "{name}({}, {}) = {got}, want {want}", ys[i], xs[i]);
                }
            }
        }
    }

    #[test]
    fn panel_dots_cover_every_pair() {
        // No rows, row counts off the 16-row panel and 8-row half panels, feature counts off the
        // 6- and 12-row tiles, odd widths, widths over one or several 256-value slices of a
        // widened 16-bit row; f32, bf16 and f16; the dispatched (AVX2 here) and the
        // portable kernel.
        for (rows, features, k) in [(0, 3, 4), (1, 1, 1), (5, 7, 13), (8, 25, 9), (16, 6, 8), (17, 13, 33), (32, 12, 64), (40, 30, 16), (33, 5, 3), (17, 13, 600), (8, 14, 513), (24, 7, 256)] {
            let input = values(rows * k, 6);
            let bits: Vec<u16> = values(features * k, 7).iter().map(|&v| crate::f32_to_bf16(v)).collect();
            let weight: Vec<f32> = bits.iter().map(|&v| crate::bf16_to_f32(v)).collect();
            let mut packed = Vec::new();
            pack_panels(&input, k, &mut packed);
            // Every value of `weight` is exact in f16 too (8 significant bits, 2^-9 <= |v| <= 1 or 0).
            let halves: Vec<half::f16> = weight.iter().map(|&v| half::f16::from_f32(v)).collect();
            assert!(halves.iter().zip(&weight).all(|(h, &w)| h.to_f32() == w));
            let mut results = [(); 6].map(|_| vec![f32::NAN; rows * features]);
            panel_dots(&packed, rows, &weight, k, &mut results[0]);
            panel_dots(&packed, rows, &bits, k, &mut results[1]);
            panel_dots(&packed, rows, &halves, k, &mut results[2]);
            portable::panel_dots(&packed, rows, &weight, k, &mut results[3]);
            portable::panel_dots(&packed, rows, &bits, k, &mut results[4]);
            portable::panel_dots(&packed, rows, &halves, k, &mut results[5]);
            for j in 0..features {
                for t in 0..rows {
                    let want = naive_dot(&input[t * k..(t + 1) * k], &weight[j * k..(j + 1) * k]);
                    for got in results.iter().map(|r| r[j * rows + t]) {
                        assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{rows}x{features}x{k} at ({t}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
