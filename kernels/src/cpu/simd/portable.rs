//! The portable bodies: plain Rust, always compiled, the reference the SIMD bodies are tested against.

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
