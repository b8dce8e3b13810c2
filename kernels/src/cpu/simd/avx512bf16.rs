//! The AVX512-BF16 bodies: activations rounded to bf16 pairs, and a register tile of bf16 pair
//! dot products (`vdpbf16ps`: 16 lanes, each adding two bf16 products to an f32 sum).

use std::arch::x86_64::*;

use super::{STRIP, TILE_ROWS};

/// The same 512 bits as 32 bf16 values.
#[inline(always)]
fn bf16s(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits; every bit pattern is valid in each.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The same 512 bits as 16 integers.
#[inline(always)]
fn bits(v: __m512bh) -> __m512i {
    // SAFETY: as in `bf16s`.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; `out` holds `input.len() / k` rows of
/// `k.div_ceil(2)` pairs and `input` whole rows of `k`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round_rows(input: &[f32], k: usize, out: &mut [u32]) {
    let pairs = k.div_ceil(2);
    for (row, packed) in input.chunks_exact(k).zip(out.chunks_exact_mut(pairs)) {
        let (pi, po) = (row.as_ptr(), packed.as_mut_ptr());
        let mut i = 0;
        while i < k {
            // 32 values (masked past the row's end: those lanes read nothing and round to zero,
            // which pads an odd row's last pair) become 16 pairs.
            let lanes = |from: usize| -> __mmask16 {
                let n = k.saturating_sub(from).min(16);
                ((1u32 << n) - 1) as __mmask16
            };
            // SAFETY: the masks admit only indices below `k`, inside `row`.
            let (lo, hi) = unsafe { (_mm512_maskz_loadu_ps(lanes(i), pi.add(i)), _mm512_maskz_loadu_ps(lanes(i + 16), pi.wrapping_add(i + 16))) };
            // Lanes 0..16 of the result are `lo`'s values, 16..32 `hi`'s: pair j is values 2j, 2j+1.
            let rounded = bits(_mm512_cvtne2ps_pbh(hi, lo));
            let count = (k - i).div_ceil(2).min(16);
            // SAFETY: pair i / 2 + count <= pairs, inside `packed`.
            unsafe { _mm512_mask_storeu_epi32(po.add(i / 2).cast(), ((1u32 << count) - 1) as __mmask16, rounded) };
            i += 32;
        }
    }
}

/// `out[t * out_stride + j] = bias[j] + Σ_p a[t * pairs + p] · strip[p * STRIP + j]` (bf16
/// pairs, f32 sums) for the first `rows` rows of `a` and the first `cols` columns of the strip.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; `1 <= rows <= TILE_ROWS`, `cols <= STRIP`;
/// `a` holds `rows` rows of `pairs`, `strip` `pairs` rows of `STRIP`, `bias` at least `cols`
/// values, and `out` reaches `(rows - 1) * out_stride + cols`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(a: &[u32], pairs: usize, rows: usize, strip: &[u32], bias: &[f32], cols: usize, out: &mut [f32], out_stride: usize) {
    // One body per row count, so each keeps its accumulators in registers.
    macro_rules! rows {
        ($($n:literal)*) => {
            match rows {
                $($n => unsafe { tile_of::<$n>(a, pairs, strip, bias, cols, out, out_stride) },)*
                _ => unreachable!("a tile has 1..={TILE_ROWS} rows"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[inline(always)]
unsafe fn tile_of<const R: usize>(a: &[u32], pairs: usize, strip: &[u32], bias: &[f32], cols: usize, out: &mut [f32], out_stride: usize) {
    let (pa, pb) = (a.as_ptr(), strip.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..pairs {
        // SAFETY: p < pairs: the strip's row p and each row's pair p are inside their slices.
        let (b0, b1) = unsafe { (bf16s(_mm512_loadu_si512(pb.add(p * STRIP).cast())), bf16s(_mm512_loadu_si512(pb.add(p * STRIP + 16).cast()))) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = bf16s(_mm512_set1_epi32(unsafe { *pa.add(r * pairs + p) } as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    let mask = |from: usize| ((1u32 << cols.saturating_sub(from).min(16)) - 1) as __mmask16;
    let (m0, m1) = (mask(0), mask(16));
    // SAFETY: the masks admit columns below `cols`, inside `bias` and inside each row of `out`.
    let (bias0, bias1) = unsafe { (_mm512_maskz_loadu_ps(m0, bias.as_ptr()), _mm512_maskz_loadu_ps(m1, bias.as_ptr().wrapping_add(16))) };
    let po = out.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        unsafe {
            _mm512_mask_storeu_ps(po.add(r * out_stride), m0, _mm512_add_ps(acc[0], bias0));
            _mm512_mask_storeu_ps(po.wrapping_add(r * out_stride + 16), m1, _mm512_add_ps(acc[1], bias1));
        }
    }
}

/// `steps` rounds of 24 independent pair dot products, in registers: their issue rate.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn dot_rate_probe(steps: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 24];
    let x = bf16s(_mm512_set1_epi32(std::hint::black_box(0x3f80_3f80)));
    for _ in 0..steps {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, x, x);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
}

/// `steps` rounds of 24 independent f32 FMAs, in registers: their issue rate.
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn fma_rate_probe(steps: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 24];
    let x = _mm512_set1_ps(std::hint::black_box(1.0));
    for _ in 0..steps {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(x, x, *a);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
}
