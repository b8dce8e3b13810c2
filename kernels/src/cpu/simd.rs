//! CPU feature detection, done once, and the portable lane-parallel loops the hot ops share.
//!
//! Hot loops are written once as plain Rust over fixed-width lane arrays, which LLVM turns into
//! vector code for whatever target features the calling function enables. `simd_dispatch!`
//! compiles each such loop twice, for the baseline target and with AVX2+FMA, and picks one at
//! run time; the baseline path is always compiled and always correct.

use std::sync::OnceLock;

/// Whether this CPU has AVX2 and FMA (x86-64-v3).
#[inline]
pub(crate) fn has_avx2() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Defines `$name` calling `$inner` (an `#[inline(always)]` fn with the same arguments), compiled
/// for AVX2+FMA when the CPU has them.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// Only called after `has_avx2()` confirmed the CPU supports AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn with_avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if $crate::cpu::simd::has_avx2() {
                    // SAFETY: the CPU supports the features `with_avx2` is compiled for.
                    return unsafe { with_avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Lanes of the portable loops: two AVX2 registers, four SSE registers.
pub(crate) const LANES: usize = 32;

/// `Σ a_i b_i` with LANES independent partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let split = a.len() / LANES * LANES;
    for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        tail += x * y;
    }
    lane_sum(acc) + tail
}

/// `Σ a_i bf16(b_i)`: [`dot`] with the second operand widened from bf16 bits lane by lane.
#[inline(always)]
pub(crate) fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let split = a.len() / LANES * LANES;
    for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * crate::bf16_to_f32(cb[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, &y) in a[split..].iter().zip(&b[split..]) {
        tail += x * crate::bf16_to_f32(y);
    }
    lane_sum(acc) + tail
}

/// Pairwise sum of the lanes.
#[inline(always)]
pub(crate) fn lane_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}
