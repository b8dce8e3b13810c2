//! The CubeCL kernels. Every buffer is a flat, row-major f32 array; sizes the kernels loop over
//! at run time are `u32` arguments, sizes that shape registers and shared memory are comptime.
//! Each kernel bounds-checks its own work items, so launches may round the grid up.

use cubecl::prelude::*;

/// Rows and columns of the output tile one cube of `linear_tiled` computes.
pub const TILE: u32 = 64;
/// Depth of the input slice staged in shared memory per step.
const TILE_K: u32 = 16;
/// Threads per side of a `linear_tiled` cube; each computes a 4 x 4 block of outputs.
pub const TILE_THREADS: u32 = 16;

/// `out[r, col_offset + j] = Σ_k input[r, k] · weight[j, k] (+ bias[col_offset + j])`, weights
/// of type `W` (f32, or f16/bf16 as stored, widened as read), one 64 x 64 output tile per cube (cube x: column tile, cube y: row tile), 16 x 16 threads of 4 x 4
/// outputs each. `weight` is a block of `n_len` rows of a larger matrix whose output rows are
/// `out_stride` wide, starting at column `col_offset`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn linear_tiled<W: Float>(
    input: &Array<f32>,
    weight: &Array<W>,
    bias: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    k_len: u32,
    n_len: u32,
    out_stride: u32,
    col_offset: u32,
    #[comptime] has_bias: bool,
    #[comptime] accumulate: bool,
) {
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let thread = ty * TILE_THREADS + tx;
    let row0 = CUBE_POS_Y * TILE;
    let col0 = CUBE_POS_X * TILE;
    let mut a_tile = SharedMemory::<f32>::new(1024usize); // [64 rows][16 k]
    let mut w_tile = SharedMemory::<f32>::new(1024usize); // [64 columns][16 k]
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16u32 {
        acc[i as usize] = 0.0;
    }
    let mut k0 = 0u32;
    while k0 < k_len {
        #[unroll]
        for s in 0..4u32 {
            let idx = thread + s * 256;
            let r = idx / TILE_K;
            let gk = k0 + idx % TILE_K;
            let mut a = 0.0f32;
            if row0 + r < rows && gk < k_len {
                a = input[((row0 + r) * k_len + gk) as usize];
            }
            a_tile[idx as usize] = a;
            let mut w = 0.0f32;
            if col0 + r < n_len && gk < k_len {
                w = f32::cast_from(weight[((col0 + r) * k_len + gk) as usize]);
            }
            w_tile[idx as usize] = w;
        }
        sync_cube();
        for kk in 0..TILE_K {
            #[unroll]
            for i in 0..4u32 {
                let a = a_tile[((ty * 4 + i) * TILE_K + kk) as usize];
                #[unroll]
                for j in 0..4u32 {
                    acc[(i * 4 + j) as usize] += a * w_tile[((tx * 4 + j) * TILE_K + kk) as usize];
                }
            }
        }
        sync_cube();
        k0 += TILE_K;
    }
    #[unroll]
    for i in 0..4u32 {
        let r = row0 + ty * 4 + i;
        #[unroll]
        for j in 0..4u32 {
            let c = col0 + tx * 4 + j;
            if r < rows && c < n_len {
                store_output(out, bias, r * out_stride + col_offset + c, col_offset + c, acc[(i * 4 + j) as usize], has_bias, accumulate);
            }
        }
    }
}

/// Writes one output of a product: `value` plus the bias at `column`, plus what `out` holds
/// there when `accumulate` (the residual add as the product's epilogue).
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_output(out: &mut Array<f32>, bias: &Array<f32>, at: u32, column: u32, value: f32, #[comptime] has_bias: bool, #[comptime] accumulate: bool) {
    let mut v = value;
    if has_bias {
        v += bias[column as usize];
    }
    if accumulate {
        v += out[at as usize];
    }
    out[at as usize] = v;
}

/// Threads per cube of the reduction kernels (`linear_few_rows`, `rms_norm`).
pub const REDUCE_THREADS: u32 = 128;

/// Tree sum of `values[0..CUBE_DIM_X]` (a power of two) in shared memory; every thread gets the
/// total.
#[cube]
fn cube_sum(values: &mut SharedMemory<f32>, thread: u32) -> f32 {
    sync_cube();
    let mut stride = CUBE_DIM_X / 2;
    while stride > 0 {
        if thread < stride {
            values[thread as usize] = values[thread as usize] + values[(thread + stride) as usize];
        }
        sync_cube();
        stride /= 2;
    }
    let total = values[0];
    sync_cube();
    total
}

/// The cube's linear index in a grid spread over x and y.
#[cube]
fn cube_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// `acc[r] += Σ weight[j, k] · input[r, k]` over `k = first, first + step, ...` for each of the
/// `rows` inputs: one thread's share of a few-row product. With `normed`, the input is taken
/// through an RMSNorm first: each term carries the norm's weight `norm[k]`, and `squares[r]` sums
/// `input[r, k]²` for the scale the caller applies once the sums are complete.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate_dots<W: Float>(
    input: &Array<f32>,
    weight: &Array<W>,
    norm: &Array<f32>,
    acc: &mut Array<f32>,
    squares: &mut Array<f32>,
    j: u32,
    first: u32,
    step: u32,
    k_len: u32,
    #[comptime] rows: u32,
    #[comptime] normed: bool,
) {
    let mut k = first;
    while k < k_len {
        let mut w = f32::cast_from(weight[(j * k_len + k) as usize]);
        if normed {
            w *= norm[k as usize];
        }
        #[unroll]
        for r in 0..rows {
            let x = input[(r * k_len + k) as usize];
            acc[r as usize] += w * x;
            if normed {
                squares[r as usize] += x * x;
            }
        }
        k += step;
    }
}

/// The RMSNorm's scale for a row whose squares sum to `squares` over `k_len` values.
#[cube]
fn norm_scale(squares: f32, k_len: u32, eps: f32) -> f32 {
    1.0f32 / f32::sqrt(squares / f32::cast_from(k_len) + eps)
}

/// `linear` for a few rows (decode): one cube per output feature `j` of the block, its threads
/// striding over `k` for each of the `rows` (at most 4, comptime) inputs, then a tree sum. The
/// block and output layout are those of [`linear_tiled`]. With `normed` the input goes through
/// an RMSNorm (weight `norm`, `eps`) first, inside the product.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn linear_few_rows<W: Float>(
    input: &Array<f32>,
    weight: &Array<W>,
    bias: &Array<f32>,
    norm: &Array<f32>,
    out: &mut Array<f32>,
    k_len: u32,
    n_len: u32,
    out_stride: u32,
    col_offset: u32,
    eps: f32,
    #[comptime] rows: u32,
    #[comptime] has_bias: bool,
    #[comptime] accumulate: bool,
    #[comptime] normed: bool,
) {
    let j = cube_index();
    let thread = UNIT_POS_X;
    let mut partial = SharedMemory::<f32>::new(128usize);
    let mut acc = Array::<f32>::new(4usize);
    let mut squares = Array::<f32>::new(4usize);
    #[unroll]
    for r in 0..rows {
        acc[r as usize] = 0.0;
        squares[r as usize] = 0.0;
    }
    if j < n_len {
        accumulate_dots(input, weight, norm, &mut acc, &mut squares, j, thread, REDUCE_THREADS, k_len, rows, normed);
    }
    #[unroll]
    for r in 0..rows {
        partial[thread as usize] = acc[r as usize];
        let mut total = cube_sum(&mut partial, thread);
        if normed {
            partial[thread as usize] = squares[r as usize];
            total *= norm_scale(cube_sum(&mut partial, thread), k_len, eps);
        }
        if thread == 0 && j < n_len {
            store_output(out, bias, r * out_stride + col_offset + j, col_offset + j, total, has_bias, accumulate);
        }
    }
}

/// RMSNorm over groups of `group` channels, one cube per (row, group): `out = x * rsqrt(mean(x²)
/// + eps) * weight`, where with `gated` x is first `y * silu(z)` (norm_before_gate = false).
#[cube(launch_unchecked)]
pub fn rms_norm(
    x: &Array<f32>,
    z: &Array<f32>,
    weight: &Array<f32>,
    out: &mut Array<f32>,
    items: u32,
    group: u32,
    width: u32,
    eps: f32,
    #[comptime] gated: bool,
) {
    let item = cube_index();
    let thread = UNIT_POS_X;
    let mut partial = SharedMemory::<f32>::new(128usize);
    // One item is one group of one row: rows are `width` wide, groups `group` wide.
    let groups_per_row = width / group;
    let start = (item / groups_per_row) * width + (item % groups_per_row) * group;
    let weight_start = (item % groups_per_row) * group;
    let mut sum = 0.0f32;
    if item < items {
        let mut i = thread;
        while i < group {
            let v = gate(x, z, start + i, gated);
            sum += v * v;
            i += REDUCE_THREADS;
        }
    }
    partial[thread as usize] = sum;
    let total = cube_sum(&mut partial, thread);
    if item < items {
        let scale = 1.0f32 / f32::sqrt(total / f32::cast_from(group) + eps);
        let mut i = thread;
        while i < group {
            out[(start + i) as usize] = gate(x, z, start + i, gated) * scale * weight[(weight_start + i) as usize];
            i += REDUCE_THREADS;
        }
    }
}

#[cube]
fn silu(v: f32) -> f32 {
    v / (1.0f32 + f32::exp(-v))
}

#[cube]
fn gate(x: &Array<f32>, z: &Array<f32>, i: u32, #[comptime] gated: bool) -> f32 {
    let mut v = x[i as usize];
    if gated {
        v *= silu(z[i as usize]);
    }
    v
}

/// Causal depthwise conv plus SiLU with its state update, one thread per channel walking the
/// tokens: the thread keeps its channel's window of the last K inputs (the conv state, from
/// `state_offset`, holds the K inputs before the call, oldest first) in registers, shifts each
/// token in, writes its output, and leaves the last K inputs in the state. Inputs and outputs
/// start at `x_offset` and `out_offset` (a sequence's rows of a batch); neighbouring threads read
/// and write neighbouring values. One launch for the conv, no scratch state.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d(
    xbc: &Array<f32>,
    state: &mut Array<f32>,
    weight: &Array<f32>,
    bias: &Array<f32>,
    out: &mut Array<f32>,
    x_offset: u32,
    out_offset: u32,
    state_offset: u32,
    tokens: u32,
    channels: u32,
    #[comptime] taps: u32,
    #[comptime] has_bias: bool,
) {
    let c = ABSOLUTE_POS as u32;
    if c < channels {
        let mut window = Array::<f32>::new(comptime!(taps as usize));
        let mut w = Array::<f32>::new(comptime!(taps as usize));
        #[unroll]
        for i in 0..taps {
            window[i as usize] = state[(state_offset + c * taps + i) as usize];
            w[i as usize] = weight[(c * taps + i) as usize];
        }
        let mut b = 0.0f32;
        if has_bias {
            b = bias[c as usize];
        }
        for t in 0..tokens {
            #[unroll]
            for i in 0..comptime!(taps - 1) {
                window[i as usize] = window[(i + 1) as usize];
            }
            window[comptime!((taps - 1) as usize)] = xbc[(x_offset + t * channels + c) as usize];
            let mut acc = b;
            #[unroll]
            for i in 0..taps {
                acc += w[i as usize] * window[i as usize];
            }
            out[(out_offset + t * channels + c) as usize] = silu(acc);
        }
        #[unroll]
        for i in 0..taps {
            state[(state_offset + c * taps + i) as usize] = window[i as usize];
        }
    }
}

/// The selective scan, sequential in time: one thread per (head, channel) keeps its `[N]` row
/// of the state in registers; the cube (one head, cube x: channel block, cube y: head) stages
/// each token's `B` and `C` of the head's group in shared memory.
/// `S = exp(dt·A + offset) S + (dt·x) B`, `y = S·C + D x`. `unroll` unrolls the loop over the
/// state row (fast on real GPUs; lavapipe's shader compiler takes seconds over it). The
/// per-token arrays start at `x_at`, `dt_at`, `b_at`, `c_at` and `y_at` (a sequence's rows of a
/// batch, a segment of a scan).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    x: &Array<f32>,
    dt: &Array<f32>,
    a: &Array<f32>,
    log_offset: &Array<f32>,
    b: &Array<f32>,
    c: &Array<f32>,
    d: &Array<f32>,
    state: &mut Array<f32>,
    y: &mut Array<f32>,
    x_at: u32,
    dt_at: u32,
    b_at: u32,
    c_at: u32,
    y_at: u32,
    state_offset: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    groups: u32,
    #[comptime] d_state: u32,
    #[comptime] d_per_channel: bool,
    #[comptime] unroll: bool,
) {
    let h = CUBE_POS_Y;
    let p = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    let active = p < head_dim;
    let g = h / (heads / groups);
    let inner = heads * head_dim;
    let bc_width = groups * d_state;
    let mut bc = SharedMemory::<f32>::new(comptime!(2 * d_state as usize));
    let mut s = Array::<f32>::new(comptime!(d_state as usize));
    let row = state_offset + (h * head_dim + p) * d_state;
    #[unroll]
    for n in 0..d_state {
        let mut v = 0.0f32;
        if active {
            v = state[(row + n) as usize];
        }
        s[n as usize] = v;
    }
    let a_h = a[h as usize];
    let offset = log_offset[h as usize];
    let mut d_skip = 0.0f32;
    if d_per_channel {
        if active {
            d_skip = d[(h * head_dim + p) as usize];
        }
    } else {
        d_skip = d[h as usize];
    }
    for t in 0..tokens {
        let mut i = UNIT_POS_X;
        while i < d_state {
            bc[i as usize] = b[(b_at + t * bc_width + g * d_state + i) as usize];
            bc[(d_state + i) as usize] = c[(c_at + t * bc_width + g * d_state + i) as usize];
            i += CUBE_DIM_X;
        }
        sync_cube();
        if active {
            let step = dt[(dt_at + t * heads + h) as usize];
            let decay = f32::exp(step * a_h + offset);
            let xv = x[(x_at + t * inner + h * head_dim + p) as usize];
            let input = xv * step;
            let mut acc = 0.0f32;
            #[unroll(unroll)]
            for n in 0..d_state {
                let v = s[n as usize] * decay + input * bc[n as usize];
                s[n as usize] = v;
                acc += v * bc[(d_state + n) as usize];
            }
            y[(y_at + t * inner + h * head_dim + p) as usize] = acc + d_skip * xv;
        }
        sync_cube();
    }
    if active {
        #[unroll]
        for n in 0..d_state {
            state[(row + n) as usize] = s[n as usize];
        }
    }
}

/// The kernels of a resident forward pass between the products: copies, dt's preparation, the
/// residual add, the embedding gather, checks. One thread per output value unless said.
/// `out[out_offset + i] = src[src_offset + i]` for `i < len`.
#[cube(launch_unchecked)]
pub fn copy(src: &Array<f32>, out: &mut Array<f32>, src_offset: u32, out_offset: u32, len: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        out[(out_offset + i) as usize] = src[(src_offset + i) as usize];
    }
}

/// Columns `first..first + width` of each of `rows` rows of `src_width` values (from
/// `src_offset`) into `out` (`[rows, width]`, from `out_offset`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn copy_columns(src: &Array<f32>, out: &mut Array<f32>, src_offset: u32, out_offset: u32, src_width: u32, first: u32, width: u32, rows: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < rows * width {
        let r = i / width;
        let c = i % width;
        out[(out_offset + i) as usize] = src[(src_offset + r * src_width + first + c) as usize];
    }
}

/// Each row of `src` (from `src_offset`) split into three outputs side by side, each written
/// from its own offset: columns `0..w0` to `first`, the next `w1` to `second`, the last `w2` to
/// `third`. One thread per value of `src`, so the reads are contiguous.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn split_columns(
    src: &Array<f32>,
    first: &mut Array<f32>,
    second: &mut Array<f32>,
    third: &mut Array<f32>,
    src_offset: u32,
    first_offset: u32,
    second_offset: u32,
    third_offset: u32,
    w0: u32,
    w1: u32,
    w2: u32,
    rows: u32,
) {
    let i = ABSOLUTE_POS as u32;
    let width = w0 + w1 + w2;
    if i < rows * width {
        let r = i / width;
        let c = i % width;
        let v = src[(src_offset + i) as usize];
        if c < w0 {
            first[(first_offset + r * w0 + c) as usize] = v;
        } else if c < w0 + w1 {
            second[(second_offset + r * w1 + c - w0) as usize] = v;
        } else {
            third[(third_offset + r * w2 + c - w0 - w1) as usize] = v;
        }
    }
}

/// `dt[t, h] = clamp(softplus(dt_raw[t, h] + bias[h]), min, max)` with torch's softplus
/// threshold (arguments above 20 pass through).
#[cube(launch_unchecked)]
pub fn softplus_dt(dt_raw: &Array<f32>, bias: &Array<f32>, dt: &mut Array<f32>, heads: u32, len: u32, min: f32, max: f32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        let v = dt_raw[i as usize] + bias[(i % heads) as usize];
        let mut s = v;
        if v <= 20.0 {
            s = f32::log1p(f32::exp(v));
        }
        dt[i as usize] = f32::min(f32::max(s, min), max);
    }
}

/// Per head: `dt[t, h] = clamp(dt[t, h], low[h], high[h])` (`clamp`), or `dt[t, h] *= low[h]`.
#[cube(launch_unchecked)]
pub fn dt_step(dt: &mut Array<f32>, low: &Array<f32>, high: &Array<f32>, heads: u32, len: u32, #[comptime] clamp: bool) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        let h = (i % heads) as usize;
        let v = dt[i as usize];
        if clamp {
            dt[i as usize] = f32::min(f32::max(v, low[h]), high[h]);
        } else {
            dt[i as usize] = v * low[h];
        }
    }
}

/// `x[offset + i] = value` for `i < len`.
#[cube(launch_unchecked)]
pub fn fill(x: &mut Array<f32>, offset: u32, len: u32, value: f32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        x[(offset + i) as usize] = value;
    }
}

/// `x[offset + i] *= factor`.
#[cube(launch_unchecked)]
pub fn scale(x: &mut Array<f32>, offset: u32, len: u32, factor: f32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        x[(offset + i) as usize] *= factor;
    }
}

/// `acc[acc_offset + i] += x[x_offset + i]`.
#[cube(launch_unchecked)]
pub fn add(acc: &mut Array<f32>, x: &Array<f32>, acc_offset: u32, x_offset: u32, len: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        acc[(acc_offset + i) as usize] += x[(x_offset + i) as usize];
    }
}

/// The embedding rows of `ids` that fall in a block of `block_rows` table rows starting at row
/// `first_row`: `out[t, :] = block[ids[t] - first_row, :]` (rows of `width`, from `out_offset`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gather_rows<W: Float>(block: &Array<W>, ids: &Array<u32>, out: &mut Array<f32>, out_offset: u32, first_row: u32, block_rows: u32, width: u32, tokens: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < tokens * width {
        let t = i / width;
        let id = ids[t as usize];
        if id >= first_row && id < first_row + block_rows {
            out[(out_offset + i) as usize] = f32::cast_from(block[((id - first_row) * width + i % width) as usize]);
        }
    }
}

/// `flag[flag_offset] = 1` if any of `x[offset..offset + len]` is NaN or infinite (left as it
/// was otherwise; every thread that finds one writes the same value).
#[cube(launch_unchecked)]
pub fn find_non_finite(x: &Array<f32>, flag: &mut Array<f32>, offset: u32, len: u32, flag_offset: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        let v = x[(offset + i) as usize];
        if v.is_nan() || v.is_inf() {
            flag[flag_offset as usize] = 1.0;
        }
    }
}

/// State normalisation, one cube per head: the head's `[P, N]` values (`head_len` of them) are
/// scaled by `min(1, tau[h] / ||S_h||)`.
#[cube(launch_unchecked)]
pub fn clamp_head_norms(state: &mut Array<f32>, tau: &Array<f32>, head_len: u32, heads: u32) {
    let h = cube_index();
    let thread = UNIT_POS_X;
    let mut partial = SharedMemory::<f32>::new(128usize);
    let mut sum = 0.0f32;
    if h < heads {
        let mut i = thread;
        while i < head_len {
            let v = state[(h * head_len + i) as usize];
            sum += v * v;
            i += REDUCE_THREADS;
        }
    }
    partial[thread as usize] = sum;
    let total = cube_sum(&mut partial, thread);
    if h < heads {
        let norm = f32::sqrt(total);
        let limit = tau[h as usize];
        if norm > limit {
            let factor = limit / norm;
            let mut i = thread;
            while i < head_len {
                state[(h * head_len + i) as usize] *= factor;
                i += REDUCE_THREADS;
            }
        }
    }
}

/// Per head: `out[h] = Σ_t (dt[t, h] · a[h] + offset[h])` over `tokens`, one thread per head,
/// compensated (Kahan) so a long piece sums as closely as the host's f64 running sums.
#[cube(launch_unchecked)]
pub fn log_decay_sums(dt: &Array<f32>, a: &Array<f32>, offset: &Array<f32>, out: &mut Array<f32>, out_offset: u32, heads: u32, tokens: u32, #[comptime] accumulate: bool) {
    let h = ABSOLUTE_POS as u32;
    if h < heads {
        let (a_h, offset_h) = (a[h as usize], offset[h as usize]);
        let mut sum = 0.0f32;
        let mut carry = 0.0f32;
        for t in 0..tokens {
            let term = dt[(t * heads + h) as usize] * a_h + offset_h - carry;
            let next = sum + term;
            carry = (next - sum) - term;
            sum = next;
        }
        if accumulate {
            out[(out_offset + h) as usize] += sum;
        } else {
            out[(out_offset + h) as usize] = sum;
        }
    }
}

/// `linear` for a few rows (decode), one plane (warp, subgroup) per output feature `j` of the
/// block: its lanes stride over `k` and a plane sum ends it, so no cube-wide barrier is needed
/// (lavapipe runs those slowly; GPUs gain the coalesced reads). Block and output layout as in
/// [`linear_tiled`]. Chosen only where [`crate`]'s probe found plane sums correct.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn linear_plane_rows<W: Float>(
    input: &Array<f32>,
    weight: &Array<W>,
    bias: &Array<f32>,
    norm: &Array<f32>,
    out: &mut Array<f32>,
    k_len: u32,
    n_len: u32,
    out_stride: u32,
    col_offset: u32,
    eps: f32,
    #[comptime] rows: u32,
    #[comptime] has_bias: bool,
    #[comptime] accumulate: bool,
    #[comptime] normed: bool,
) {
    let planes = CUBE_DIM_X / PLANE_DIM;
    let j = cube_index() * planes + UNIT_POS_X / PLANE_DIM;
    let lane = UNIT_POS_PLANE;
    let mut acc = Array::<f32>::new(4usize);
    let mut squares = Array::<f32>::new(4usize);
    #[unroll]
    for r in 0..rows {
        acc[r as usize] = 0.0;
        squares[r as usize] = 0.0;
    }
    if j < n_len {
        accumulate_dots(input, weight, norm, &mut acc, &mut squares, j, lane, PLANE_DIM, k_len, rows, normed);
    }
    #[unroll]
    for r in 0..rows {
        let mut total = plane_sum(acc[r as usize]);
        if normed {
            total *= norm_scale(plane_sum(squares[r as usize]), k_len, eps);
        }
        if lane == 0 && j < n_len {
            store_output(out, bias, r * out_stride + col_offset + j, col_offset + j, total, has_bias, accumulate);
        }
    }
}
