//! The innermost loops of the hot ops, written three times: with AVX-512 intrinsics (512-bit
//! vectors and masks; x86-64-v4), with AVX2+FMA+F16C intrinsics (x86-64-v3), and as portable Rust
//! (always compiled, always correct, the reference the others are tested against). The best set the
//! CPU has is picked once, at run time ([`Isa`]); a kernel without an AVX-512 body runs its AVX2 one
//! there.
//!
//! Explicit intrinsics, not auto-vectorised lane arrays: LLVM's SLP vectoriser turned the lane
//! array loops into 2-wide `xmm` code, which held decode to ~60% of memory bandwidth.
//!
//! Each public function here is safe and dispatches; `avx512` and `avx2` hold the `unsafe`
//! target-feature bodies, `portable` the plain ones.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod portable;

/// An instruction set the kernels have bodies for, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only x86-64 detects the SIMD levels
enum Level {
    Portable,
    Avx2,
    Avx512,
    /// AVX-512 with AVX512-BF16's pair dot products (`vdpbf16ps`): prefill's products with bf16
    /// weights round their activations to bf16 and multiply in 16 bits ([`Bf16Dots`]).
    Avx512Bf16,
}

/// An instruction set this CPU supports. Only this module makes one, from what the CPU reports,
/// so holding an `Isa` is the proof that its `unsafe` bodies may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Isa(Level);

impl Isa {
    /// The most capable set this CPU has.
    fn detected() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                return match (has!("avx512f"), has!("avx512bf16")) {
                    (true, true) => Level::Avx512Bf16,
                    (true, false) => Level::Avx512,
                    _ => Level::Avx2,
                };
            }
        }
        Level::Portable
    }

    /// What runs unless `COIL_SIMD` says otherwise: the most capable set, except that bf16 pair
    /// dot products run only where they multiply faster than f32 FMAs. Cores differ: on an
    /// Intel Xeon with AVX512-BF16 (docs/performance.md) `vdpbf16ps` issues at a quarter of the
    /// FMA rate, so its 32 products per instruction come to half the f32 rate, and rounding the
    /// activations would buy nothing; on AMD's Zen 4 it is the faster one.
    fn default_level() -> Level {
        let detected = Isa::detected();
        #[cfg(target_arch = "x86_64")]
        if detected == Level::Avx512Bf16 && !Bf16Dots(()).multiply_faster_than_fmas() {
            return Level::Avx512;
        }
        detected
    }

    /// What the kernels run: the most capable set the CPU has ([`Isa::default_level`]), or the
    /// one the environment variable `COIL_SIMD` names (`portable`, `avx2`, `avx512` or
    /// `avx512bf16`; to compare the bodies on one machine, or to pin bf16 weights' arithmetic:
    /// `avx512` keeps it in f32). A value above what the CPU has is lowered to it; an unknown one
    /// is reported once and ignored.
    pub(crate) fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let asked = match std::env::var("COIL_SIMD").as_deref() {
                Err(_) => Isa::default_level(),
                Ok("portable") => Level::Portable,
                Ok("avx2") => Level::Avx2,
                Ok("avx512") => Level::Avx512,
                Ok("avx512bf16") => Level::Avx512Bf16,
                Ok(other) => {
                    let default = Isa::default_level();
                    eprintln!("warning: COIL_SIMD={other:?} is not portable, avx2, avx512 or avx512bf16; using {default:?}");
                    default
                }
            };
            Isa(asked.min(Isa::detected()))
        })
    }

    /// Every set this CPU supports, least capable first (the tests run each).
    #[cfg(test)]
    pub(crate) fn supported() -> Vec<Isa> {
        [Level::Portable, Level::Avx2, Level::Avx512, Level::Avx512Bf16].into_iter().filter(|&l| l <= Isa::detected()).map(Isa).collect()
    }

    /// The set's name, as `COIL_SIMD` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
        }
    }
}

/// Runs the body for `$isa`: `avx512: $f` (optional; else the AVX2 body runs there too),
/// `avx2: $f`, `portable: $f`, each called with the same arguments, `(a, b, ..)`.
macro_rules! dispatch {
    ($isa:expr, $(avx512: $avx512:path,)? avx2: $avx2:path, portable: $portable:path, $args:tt) => {{
        match $isa.0 {
            $(
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 | Level::Avx512Bf16 => {
                    // SAFETY: an `Isa` of these levels exists only where the CPU has AVX-512F (and
                    // AVX2, FMA, F16C), all that `$avx512` requires.
                    unsafe { $avx512 $args }
                }
            )?
            #[cfg(target_arch = "x86_64")]
            #[allow(unreachable_patterns)] // `Avx512` when the kernel has a body of its own
            Level::Avx2 | Level::Avx512 | Level::Avx512Bf16 => {
                // SAFETY: an `Isa` of any of these levels exists only where the CPU has AVX2, FMA and
                // F16C, all that `$avx2` requires.
                unsafe { $avx2 $args }
            }
            #[allow(unreachable_patterns)] // every level but `Portable` is matched above on x86-64
            _ => $portable $args,
        }
    }};
}

/// Which of a [`multiversioned`] function's bodies runs: the one built for the current [`Isa`].
#[derive(Clone, Copy)]
pub(crate) enum Build {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    Baseline,
}

impl Build {
    pub(crate) fn current() -> Build {
        match Isa::current().0 {
            Level::Avx512 | Level::Avx512Bf16 => Build::Avx512,
            Level::Avx2 => Build::Avx2,
            Level::Portable => Build::Baseline,
        }
    }
}

/// `fn name(args) { body }`, with the body compiled three times: with AVX-512 enabled, with
/// AVX2+FMA+F16C, and for the baseline target; the one for the current [`Isa`] runs. For the
/// plain loops around the hand-written kernels (elementwise maps, scaling, the scan's decay
/// rows) that LLVM vectorises by itself, but only 4 lanes wide without the target features.
/// Rust never reorders or contracts float arithmetic, so every build gives the same bits (a
/// float sum stays a serial chain in each: reductions go through [`Isa::dot`] and its kin).
macro_rules! multiversioned {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma,f16c")]
            unsafe fn avx512($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2($($arg: $ty),*) {
                body($($arg),*)
            }
            match $crate::cpu::simd::Build::current() {
                // SAFETY: `Build::current` names a build only where the CPU has its features.
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Build::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Build::Avx2 => unsafe { avx2($($arg),*) },
                #[allow(unreachable_patterns)]
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversioned;

multiversioned! {
    /// `out[i] += a[i] * b[i]` (rounded after the product and after the sum, as written).
    pub(crate) fn add_products(out: &mut [f32], a: &[f32], b: &[f32]) {
        assert!(a.len() == out.len() && b.len() == out.len(), "add_products: lengths differ");
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o += a * b;
        }
    }
}

multiversioned! {
    /// `out[i] += scale * x[i]`.
    pub(crate) fn add_scaled(out: &mut [f32], scale: f32, x: &[f32]) {
        assert_eq!(x.len(), out.len(), "add_scaled: lengths differ");
        for (o, &v) in out.iter_mut().zip(x) {
            *o += scale * v;
        }
    }
}

multiversioned! {
    /// `values[i] *= factor`.
    pub(crate) fn scale(values: &mut [f32], factor: f32) {
        for v in values {
            *v *= factor;
        }
    }
}

multiversioned! {
    /// `out[i] = x[i] * scale * weight[i]` (a norm's last step).
    pub(crate) fn scale_by(out: &mut [f32], x: &[f32], scale: f32, weight: &[f32]) {
        assert!(x.len() == out.len() && weight.len() == out.len(), "scale_by: lengths differ");
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * scale * w;
        }
    }
}

multiversioned! {
    /// `values[i] *= scale * weight[i]`, as `values[i] * scale * weight[i]` (the gated norm's last step).
    pub(crate) fn scale_in_place(values: &mut [f32], scale: f32, weight: &[f32]) {
        assert_eq!(weight.len(), values.len(), "scale_in_place: lengths differ");
        for (v, &w) in values.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// A weight element the dot-product kernels read directly: f32, bf16 bits (`u16`, as
/// [`crate::Matrix`] holds them) or IEEE half ([`half::f16`]), the last two widened as they are
/// loaded.
pub(crate) trait Weight: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// The weights as f32 when they already are.
    fn as_f32(weights: &[Self]) -> Option<&[f32]>;

    /// The weights as bf16 bits when they are bf16.
    fn as_bf16(_weights: &[Self]) -> Option<&[u16]> {
        None
    }

    /// Eight weights at `p`, as f32 lanes.
    ///
    /// # Safety
    /// Eight values must be readable at `p`; only called (inlined) from AVX2 code.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen weights at `p`, as f32 lanes.
    ///
    /// # Safety
    /// Sixteen values must be readable at `p`; only called (inlined) from AVX-512 code.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees sixteen readable values at `p` and an AVX-512 context.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
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

    fn as_bf16(weights: &[u16]) -> Option<&[u16]> {
        Some(weights)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable values at `p` and an AVX2 context. A bf16
        // is the top half of an f32: zero-extend each to 32 bits and shift it up.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())), 16)) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable values at `p` and an AVX-512 context.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())), 16)) }
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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable values at `p` and an AVX-512 context.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl Isa {
    /// `out = weights` as f32 (`out` is cleared and refilled).
    pub(crate) fn widen<W: Weight>(self, weights: &[W], out: &mut Vec<f32>) {
        out.clear();
        if let Some(w) = W::as_f32(weights) {
            return out.extend_from_slice(w);
        }
        out.resize(weights.len(), 0.0);
        let out = out.as_mut_slice();
        dispatch!(self, avx512: avx512::widen::<W>, avx2: avx2::widen::<W>, portable: portable::widen::<W>, (weights, out))
    }

    /// `Σ a_i b_i`.
    pub(crate) fn dot<W: Weight>(self, a: &[f32], b: &[W]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot: lengths differ");
        dispatch!(self, avx512: avx512::dot::<W>, avx2: avx2::dot::<W>, portable: portable::dot::<W>, (a, b))
    }

    /// One state row of the recurrent step: `s = decay * s + input * b`, returning `s · c`.
    pub(crate) fn update_row(self, row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
        assert!(b.len() == row.len() && c.len() == row.len(), "update_row: lengths differ");
        dispatch!(self, avx512: avx512::update_row, avx2: avx2::update_row, portable: portable::update_row, (row, b, c, decay, input))
    }

    /// `out[j * rows + t] = input[t] · weight[j]` for every input row `t` (packed by
    /// [`pack_panels`]) and weight row `j` of `k` values: the batched-decode product. Each weight
    /// row is read from memory once and used for all rows; 16-bit rows are widened a block at a
    /// time on the stack (no allocation, ever).
    pub(crate) fn panel_dots<W: Weight>(self, packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
        assert!(k > 0 && weight.len().is_multiple_of(k), "panel_dots: ragged weight rows");
        assert_eq!(packed.len(), rows.div_ceil(PANEL) * PANEL * k, "panel_dots: packed input size");
        assert_eq!(out.len(), rows * (weight.len() / k), "panel_dots: output size");
        if rows == 0 {
            return;
        }
        dispatch!(self, avx512: avx512::panel_dots::<W>, avx2: avx2::panel_dots::<W>, portable: portable::panel_dots::<W>, (packed, rows, weight, k, out))
    }

    /// `values[i] = silu(values[i])` (the conv's activation).
    pub(crate) fn silu_in_place(self, values: &mut [f32]) {
        dispatch!(self, avx512: avx512::silu_in_place, avx2: avx2::silu_in_place, portable: portable::silu_in_place, (values))
    }

    /// `out[i] = y[i] * silu(z[i])` (the mixer's gate, before its norm).
    pub(crate) fn gate(self, y: &[f32], z: &[f32], out: &mut [f32]) {
        assert!(y.len() == out.len() && z.len() == out.len(), "gate: lengths differ");
        dispatch!(self, avx512: avx512::gate, avx2: avx2::gate, portable: portable::gate, (y, z, out))
    }
}

/// Output columns of one [`Bf16Dots::tile`]: two vectors of 16 lanes.
pub(crate) const STRIP: usize = 32;

/// Most input rows of one [`Bf16Dots::tile`]: twelve rows by two vectors are 24 accumulators,
/// with room in the 32 registers for the strip's two vectors and a broadcast.
pub(crate) const TILE_ROWS: usize = 12;

/// AVX512-BF16's pair dot products. Only [`Isa::bf16_dots`] makes one, where the CPU has them
/// and `COIL_SIMD` allows them, so holding one is the proof that their `unsafe` bodies may run.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Dots(());

impl Isa {
    pub(crate) fn bf16_dots(self) -> Option<Bf16Dots> {
        (self.0 == Level::Avx512Bf16).then_some(Bf16Dots(()))
    }
}

impl Bf16Dots {
    /// Whether this core's pair dot products multiply faster than its f32 FMAs (per product,
    /// in registers, best of several short runs: under a millisecond, once per process). The two
    /// kinds measured so far lie a factor of four apart, 0.5x and about 2x, so noise cannot flip
    /// the answer.
    #[cfg(target_arch = "x86_64")]
    fn multiply_faster_than_fmas(self) -> bool {
        let best = |run: &dyn Fn() -> f32| {
            (0..7)
                .map(|_| {
                    let start = std::time::Instant::now();
                    std::hint::black_box(run());
                    start.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        const STEPS: usize = 2000;
        // SAFETY: a `Bf16Dots` exists only where the CPU has AVX-512F and AVX512-BF16, and an
        // AVX-512 CPU has FMA.
        let (dots, fmas) = (best(&|| unsafe { avx512bf16::dot_rate_probe(STEPS) }), best(&|| unsafe { avx512bf16::fma_rate_probe(STEPS) }));
        // A pair dot product is 32 products; an FMA 16.
        dots.as_secs_f64() / 32.0 < fmas.as_secs_f64() / 16.0
    }

    /// Rounds each row of `input` (`[rows, k]`) to bf16 (to nearest, ties to even) in pairs:
    /// `out[t * k.div_ceil(2) + i]` holds values `2i` (low half) and `2i + 1` (high half) of row
    /// `t`; an odd row's last pair has a zero high half.
    pub(crate) fn round_rows(self, input: &[f32], k: usize, out: &mut [u32]) {
        assert!(k > 0 && input.len().is_multiple_of(k), "round_rows: ragged rows");
        assert_eq!(out.len(), input.len() / k * k.div_ceil(2), "round_rows: output size");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Bf16Dots` exists only where the CPU has AVX-512F and AVX512-BF16; the
        // lengths were checked above.
        unsafe {
            avx512bf16::round_rows(input, k, out)
        }
    }

    /// `out[t * out_stride + j] = bias[j] + Σ_p a[t][p] · strip[p][j]` for `t < rows`, `j < cols`:
    /// `a` holds `rows` rows of `pairs` bf16 pairs (from [`Bf16Dots::round_rows`]), `strip` is
    /// `pairs` rows of [`STRIP`] pairs (one column per output), sums in f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tile(self, a: &[u32], pairs: usize, rows: usize, strip: &[u32], bias: &[f32], cols: usize, out: &mut [f32], out_stride: usize) {
        assert!((1..=TILE_ROWS).contains(&rows) && cols <= STRIP && pairs > 0, "tile: {rows} rows, {cols} columns");
        assert!(a.len() >= rows * pairs && strip.len() >= pairs * STRIP && bias.len() >= cols, "tile: inputs too short");
        assert!(out.len() >= (rows - 1) * out_stride + cols && out_stride >= cols, "tile: output too short");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `round_rows`; the sizes were checked above.
        unsafe {
            avx512bf16::tile(a, pairs, rows, strip, bias, cols, out, out_stride)
        }
    }
}

/// [`Isa::widen`] on the current set: how the GEMM path widens a block of bf16 or f16 weights
/// (batched decode widens inside [`panel_dots`]).
pub(crate) fn widen<W: Weight>(weights: &[W], out: &mut Vec<f32>) {
    Isa::current().widen(weights, out)
}

/// [`Isa::dot`] on the current set.
pub(crate) fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    Isa::current().dot(a, b)
}

/// [`Isa::update_row`] on the current set.
pub(crate) fn update_row(row: &mut [f32], b: &[f32], c: &[f32], decay: f32, input: f32) -> f32 {
    Isa::current().update_row(row, b, c, decay, input)
}

/// [`Isa::panel_dots`] on the current set.
pub(crate) fn panel_dots<W: Weight>(packed: &[f32], rows: usize, weight: &[W], k: usize, out: &mut [f32]) {
    Isa::current().panel_dots(packed, rows, weight, k, out)
}

/// [`Isa::silu_in_place`] on the current set.
pub(crate) fn silu_in_place(values: &mut [f32]) {
    Isa::current().silu_in_place(values)
}

/// [`Isa::gate`] on the current set.
pub(crate) fn gate(y: &[f32], z: &[f32], out: &mut [f32]) {
    Isa::current().gate(y, z, out)
}

/// How far ahead of its loads [`Isa::dot`] asks for the weight it streams, and
/// [`Isa::update_row`] for the state: decode reads every weight and state value once per token
/// from memory, and the hardware prefetchers alone fall well short of the bandwidth
/// (docs/performance.md has the measurements behind 4 KB).
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// Cache lines a batched product's register tile asks for while it runs, one per step of its
/// loop: `runs` runs of `bytes` bytes, `stride` bytes apart, from `at`. So the weight a tile reads
/// next arrives from memory while the current one is multiplied (the hardware's prefetcher
/// only starts on a row once the tile has missed on it).
#[derive(Clone, Copy)]
pub(crate) struct Ahead {
    at: *const i8,
    runs: usize,
    bytes: usize,
    stride: usize,
    /// Where the next request goes within the current run.
    offset: usize,
}

impl Ahead {
    pub(crate) const NONE: Ahead = Ahead { at: std::ptr::null(), runs: 0, bytes: 0, stride: 0, offset: 0 };

    /// What `panel_dots` reads after weight rows `j..j + group`, values `i0..i0 + slice`: the
    /// group's next slice, else the next group's first (past the last group, the rows after
    /// `weight`: the next block of features, which the same thread usually takes next).
    pub(crate) fn after_slice<W: Weight>(weight: &[W], k: usize, j: usize, group: usize, i0: usize, slice: usize) -> Ahead {
        let size = std::mem::size_of::<W>();
        let features = weight.len() / k;
        let (next_j, next_i0) = if i0 + slice < k { (j, i0 + slice) } else { (j + group, 0) };
        let (rows, len) = (group.min(features.saturating_sub(next_j)).max(1), slice.min(k - next_i0));
        let at = weight.as_ptr().wrapping_add(next_j * k + next_i0).cast::<i8>();
        if len == k {
            Ahead { at, runs: 1, bytes: rows * k * size, stride: 0, offset: 0 }
        } else {
            Ahead { at, runs: rows, bytes: len * size, stride: k * size, offset: 0 }
        }
    }

    /// Asks for the next line, to L2.
    #[inline(always)]
    pub(crate) fn next(&mut self) {
        if self.runs == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint: it never faults and reads nothing the program sees.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(self.at.wrapping_add(self.offset))
        };
        self.offset += 64;
        if self.offset >= self.bytes {
            self.offset = 0;
            self.runs -= 1;
            self.at = self.at.wrapping_add(self.stride);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32 * 2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// Lengths around every vector width and unroll boundary (8, 16, 32, 64) and a few long ones.
    const LENGTHS: [usize; 17] = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 768, 1001];

    #[test]
    fn dots_match_f64_sums() {
        for len in LENGTHS {
            let (a, b) = (values(len, 1), values(len, 2));
            let want = naive_dot(&a, &b);
            for isa in Isa::supported() {
                let got = isa.dot(&a, &b);
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} len {len}: {got} vs {want}", isa.name());
            }
            let bits: Vec<u16> = b.iter().map(|&v| crate::f32_to_bf16(v)).collect();
            let widened: Vec<f32> = bits.iter().map(|&v| crate::bf16_to_f32(v)).collect();
            let want = naive_dot(&a, &widened);
            for isa in Isa::supported() {
                let got = isa.dot(&a, &bits);
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} bf16 len {len}: {got} vs {want}", isa.name());
            }
            let halves: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
            let widened: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
            let want = naive_dot(&a, &widened);
            for isa in Isa::supported() {
                let got = isa.dot(&a, &halves);
                assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} f16 len {len}: {got} vs {want}", isa.name());
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        // f16 specials and edges (subnormals, ±65504, ±inf, NaN) and bf16 bit patterns across
        // the range, at lengths off the 8-lane step.
        let f16_edges = [0.0f32, -0.0, 6.0e-8, -6.1e-5, 1.0, -2.5, 65504.0, -65504.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        for (isa, len) in Isa::supported().into_iter().flat_map(|isa| LENGTHS.map(|len| (isa, len))) {
            let name = isa.name();
            let halves: Vec<half::f16> = (0..len).map(|i| half::f16::from_f32(if i % 3 == 0 { f16_edges[i % f16_edges.len()] } else { (i as f32 - 500.0) * 0.37 })).collect();
            let bits: Vec<u16> = (0..len).map(|i| (i as u16).wrapping_mul(40503)).collect();
            let mut out = vec![f32::NAN; 3];
            isa.widen(&halves, &mut out);
            assert_eq!(out.len(), len);
            for (got, want) in out.iter().zip(&halves) {
                assert!(got.to_bits() == want.to_f32().to_bits() || (got.is_nan() && want.is_nan()), "{name} f16 {want}: {got}");
            }
            isa.widen(&bits, &mut out);
            for (got, &want) in out.iter().zip(&bits) {
                assert_eq!(got.to_bits(), (want as u32) << 16, "{name} bf16 {want:#x}");
            }
            let floats = values(len, 9);
            isa.widen(&floats, &mut out);
            assert_eq!(out, floats);
        }
    }

    #[test]
    fn update_row_matches_scalar() {
        for (isa, len) in Isa::supported().into_iter().flat_map(|isa| LENGTHS.map(|len| (isa, len))) {
            let (b, c, start) = (values(len, 3), values(len, 4), values(len, 5));
            let mut fast = start.clone();
            let got = isa.update_row(&mut fast, &b, &c, 0.9, 0.3);
            let state: Vec<f64> = (0..len).map(|i| 0.9 * start[i] as f64 + 0.3 * b[i] as f64).collect();
            let want: f64 = state.iter().zip(&c).map(|(&s, &c)| s * c as f64).sum();
            assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} len {len}: {got} vs {want}", isa.name());
            for (&x, &y) in fast.iter().zip(&state) {
                assert!((x as f64 - y).abs() <= 1e-6 * (1.0 + y.abs()), "{} len {len}: state {x} vs {y}", isa.name());
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
        for len in [xs.len(), 1, 7, 8, 9, 15, 16, 17, 31, 33] {
            let xs = &xs[xs.len() - len..];
            let ys = &ys[..len];
            for isa in Isa::supported() {
                let name = isa.name();
                let mut silu = xs.to_vec();
                isa.silu_in_place(&mut silu);
                let mut gated = vec![0.0; len];
                isa.gate(ys, xs, &mut gated);
                for i in 0..len {
                    let want = silu_f64(xs[i]);
                    if want.is_nan() {
                        assert!(silu[i].is_nan() && gated[i].is_nan(), "{name}: NaN must pass through");
                        continue;
                    }
                    let close = |got: f32, want: f64| got as f64 == want || (got as f64 - want).abs() <= 1e-6 * want.abs() + 1e-35;
                    assert!(close(silu[i], want), "{name} silu({}) = {}, want {want}", xs[i], silu[i]);
                    let want = ys[i] as f64 * want;
                    assert!(close(gated[i], want), "{name} gate({}, {}) = {}, want {want}", ys[i], xs[i], gated[i]);
                }
            }
        }
    }

    #[test]
    fn multiversioned_maps_compute_each_value_as_written() {
        // Lengths off every vector width; the expected values computed here in the same order
        // (the builds may not reorder or fuse), so equality is exact.
        for len in LENGTHS {
            let (a, b, c) = (values(len, 10), values(len, 11), values(len, 12));
            let mut sums = c.clone();
            add_products(&mut sums, &a, &b);
            let mut scaled = vec![f32::NAN; len];
            scale_by(&mut scaled, &a, 0.37, &b);
            let mut in_place = a.clone();
            scale_in_place(&mut in_place, 0.37, &b);
            let mut accumulated = c.clone();
            add_scaled(&mut accumulated, -1.5, &a);
            let mut multiplied = a.clone();
            scale(&mut multiplied, 0.37);
            for i in 0..len {
                assert_eq!(sums[i].to_bits(), (c[i] + a[i] * b[i]).to_bits(), "add_products len {len} at {i}");
                assert_eq!(scaled[i].to_bits(), (a[i] * 0.37 * b[i]).to_bits(), "scale_by len {len} at {i}");
                assert_eq!(in_place[i].to_bits(), scaled[i].to_bits(), "scale_in_place len {len} at {i}");
                assert_eq!(accumulated[i].to_bits(), (c[i] + -1.5 * a[i]).to_bits(), "add_scaled len {len} at {i}");
                assert_eq!(multiplied[i].to_bits(), (a[i] * 0.37).to_bits(), "scale len {len} at {i}");
            }
        }
    }

    #[test]
    fn panel_dots_cover_every_pair() {
        // No rows, row counts off the 16-row panel and 8-row half panels, odd and even panel
        // counts (AVX-512 takes panels in pairs), feature counts off the 6- and 12-row tiles, odd
        // widths, widths over one or several 256-value slices of a widened 16-bit row; f32, bf16
        // and f16; every instruction set this CPU has.
        for (rows, features, k) in [(0, 3, 4), (1, 1, 1), (5, 7, 13), (8, 25, 9), (16, 6, 8), (17, 13, 33), (32, 12, 64), (40, 30, 16), (33, 5, 3), (17, 13, 600), (8, 14, 513), (24, 7, 256), (64, 26, 300), (49, 12, 17)] {
            let input = values(rows * k, 6);
            let bits: Vec<u16> = values(features * k, 7).iter().map(|&v| crate::f32_to_bf16(v)).collect();
            let weight: Vec<f32> = bits.iter().map(|&v| crate::bf16_to_f32(v)).collect();
            let mut packed = Vec::new();
            pack_panels(&input, k, &mut packed);
            // Every value of `weight` is exact in f16 too (8 significant bits, 2^-9 <= |v| <= 1 or 0).
            let halves: Vec<half::f16> = weight.iter().map(|&v| half::f16::from_f32(v)).collect();
            assert!(halves.iter().zip(&weight).all(|(h, &w)| h.to_f32() == w));
            for isa in Isa::supported() {
                let mut results = [(); 3].map(|_| vec![f32::NAN; rows * features]);
                isa.panel_dots(&packed, rows, &weight, k, &mut results[0]);
                isa.panel_dots(&packed, rows, &bits, k, &mut results[1]);
                isa.panel_dots(&packed, rows, &halves, k, &mut results[2]);
                for j in 0..features {
                    for t in 0..rows {
                        let want = naive_dot(&input[t * k..(t + 1) * k], &weight[j * k..(j + 1) * k]);
                        for (got, dtype) in results.iter().map(|r| r[j * rows + t]).zip(["f32", "bf16", "f16"]) {
                            let name = isa.name();
                            assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name} {dtype} {rows}x{features}x{k} at ({t}, {j}): {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
