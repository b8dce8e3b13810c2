//! One layer's prefill ops at mamba2-130m shapes (2048 tokens) on the CPU backend, best of five
//! runs each: where a prefill's time goes, op by op, and the SSD scan at several chunk lengths.
//! `RAYON_NUM_THREADS=2 cargo run --release -p coil-benches --example op_budget`
use coil_kernels::{Backend, Matrix, Recurrence, ScanInputs, SsmShape, WeightDtype};
use std::time::Instant;
fn rnd(len: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + 13) % 1000) as f32 / 500.0 - 1.0) * scale)
        .collect()
}

fn time(cpu: &coil_kernels::Cpu, mut f: impl FnMut() + Send) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            cpu.run(&mut f);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
fn main() {
    let cpu = coil_kernels::Cpu;
    // Decode's products (one row: memory-bound, so GB/s of weights read, in each held dtype).
    for (k, n) in [(768usize, 3352usize), (1536, 768), (768, 50280)] {
        let input = rnd(k, 1.0);
        let f32_weight = Matrix::new(rnd(n * k, 0.05), n, k);
        let mut out = vec![0f32; n];
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let w = f32_weight.to_dtype(dtype);
            let t = time(&cpu, || cpu.linear(&input, &w, None, &mut out));
            println!("linear 1x{k}x{n} {dtype}: {:.3} ms ({:.1} GB/s)", t * 1e3, w.bytes() as f64 / t / 1e9);
        }
    }
    // Batched decode's products (32 and 64 rows: register tiles; 65: the GEMM), and 32 rows
    // through the lm_head's shape and in bf16.
    for (m, k, n, dtype) in [(32usize, 768usize, 3352usize, WeightDtype::F32), (64, 768, 3352, WeightDtype::F32), (65, 768, 3352, WeightDtype::F32), (32, 768, 3352, WeightDtype::Bf16), (32, 768, 50280, WeightDtype::Bf16)] {
        let input = rnd(m * k, 1.0);
        let w = Matrix::new(rnd(n * k, 0.05), n, k).to_dtype(dtype);
        let mut out = vec![0f32; m * n];
        let t = time(&cpu, || cpu.linear(&input, &w, None, &mut out));
        println!("linear {m}x{k}x{n} {dtype}: {:.2} ms ({:.0} GFLOP/s)", t * 1e3, 2.0 * (m * k * n) as f64 / t / 1e9);
    }
    let m = 2048usize;
    // Prefill's products, in each held dtype.
    for (k, n) in [(768usize, 3352usize), (1536, 768)] {
        let input = rnd(m * k, 1.0);
        let f32_weight = Matrix::new(rnd(n * k, 0.05), n, k);
        let mut out = vec![0f32; m * n];
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let w = f32_weight.to_dtype(dtype);
            let t = time(&cpu, || cpu.linear(&input, &w, None, &mut out));
            println!("linear {m}x{k}x{n} {dtype}: {:.2} ms ({:.0} GFLOP/s)", t * 1e3, 2.0 * (m * k * n) as f64 / t / 1e9);
        }
        if std::env::var_os("OP_BUDGET_PRODUCTS_ONLY").is_some() && n == 768 {
            return;
        }
    }
    let shape = SsmShape {
        heads: 24,
        head_dim: 64,
        d_state: 128,
        groups: 1,
    };
    let a: Vec<f32> = (0..24).map(|h| -1.0 - h as f32 * 0.5).collect();
    let d = rnd(24, 1.0);
    let off = vec![0f32; 24];
    let x = rnd(m * shape.inner(), 1.0);
    let dt: Vec<f32> = rnd(m * 24, 1.0)
        .iter()
        .map(|v| 0.01 + v.abs() * 0.1)
        .collect();
    let b = rnd(m * shape.bc_width(), 1.0);
    let c = rnd(m * shape.bc_width(), 1.0);
    for chunk in [256usize, 128, 64, 32] {
        let mut state = vec![0f32; shape.state_len()];
        let mut y = vec![0f32; m * shape.inner()];
        let t = time(&cpu, || {
            cpu.ssd_scan(
                shape,
                Recurrence {
                    a: &a,
                    log_decay_offset: &off,
                    d: &d,
                },
                ScanInputs {
                    x: &x,
                    dt: &dt,
                    b: &b,
                    c: &c,
                },
                &mut state,
                chunk,
                &mut y,
            )
        });
        println!("ssd_scan T={m} chunk {chunk}: {:.2} ms", t * 1e3);
    }
    let ch = shape.inner() + 2 * shape.bc_width();
    let xbc = rnd(m * ch, 1.0);
    let wc = rnd(ch * 4, 0.5);
    let bc = rnd(ch, 0.5);
    let mut cs = vec![0f32; ch * 4];
    let mut o = vec![0f32; m * ch];
    let t = time(&cpu, || {
        cpu.causal_conv1d(&xbc, &mut cs, &wc, Some(&bc), ch, &mut o)
    });
    println!("conv1d: {:.2} ms", t * 1e3);
    let y = rnd(m * shape.inner(), 1.0);
    let z = rnd(m * shape.inner(), 1.0);
    let nw = rnd(shape.inner(), 1.0);
    let mut u = vec![0f32; m * shape.inner()];
    let t = time(&cpu, || {
        cpu.gated_rms_norm(&y, &z, &nw, shape.inner(), 1e-5, &mut u)
    });
    println!("gated_rms_norm: {:.2} ms", t * 1e3);
}
