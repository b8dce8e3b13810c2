//! Throughput of candle-transformers' Mamba-2 (models::mamba2) on CPU, f32, batch 1.
//!
//!   candle-mamba2 --weights DIR --prefill N --decode M [--threads T] [--chunk C]
//!
//! DIR holds HF-format config.json (Mamba2Config) and model.safetensors ("backbone." prefix).
//! Prefill: --mode chunked (default) uses candle's chunked-SSD `Model::forward_prefill` with chunk
//! size C (default 64: fastest here, and its intermediates are O(seq * C * heads * d_state) f32);
//! --mode step calls `Model::forward` once per token, as candle-examples' mamba2 does by default.
//! Decode: `Model::forward` one token at a time, greedy. Tokens: i * 7919 % vocab_size.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::mamba2::{Config, Model, State};
use std::time::Instant;

fn main() -> Result<()> {
    let mut weights = None;
    let (mut prefill, mut decode, mut threads, mut chunk) = (512usize, 32usize, None, 64usize);
    let mut step = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--weights" => weights = Some(val()?),
            "--prefill" => prefill = val()?.parse()?,
            "--decode" => decode = val()?.parse()?,
            "--threads" => threads = Some(val()?.parse::<usize>()?),
            "--chunk" => chunk = val()?.parse()?,
            "--mode" => step = match val()?.as_str() {
                "step" => true,
                "chunked" => false,
                m => bail!("--mode is step or chunked, not {m}"),
            },
            _ => bail!("usage: candle-mamba2 --weights DIR --prefill N --decode M [--threads T] [--mode step|chunked] [--chunk C]"),
        }
    }
    if let Some(t) = threads {
        // candle's CPU kernels (gemm + rayon) read this once, on first use.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let dir = std::path::PathBuf::from(weights.context("--weights DIR is required")?);
    // HF Mamba2Config -> candle Config: hidden_size, num_hidden_layers, vocab_size, state_size,
    // expand, head_dim, n_groups are serde aliases in candle's Config; the rest (eps 1e-5, conv 4,
    // no dt clamp) is fixed in candle and matches mamba2-130m.
    let cfg: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let device = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)?
    };
    let model = Model::new(&cfg, vb.pp("backbone"))?;
    let vocab = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..prefill as u32).map(|i| (i as u64 * 7919 % vocab as u64) as u32).collect();

    // warm-up (thread pool, allocator)
    {
        let mut st = State::new(1, &cfg, DType::F32, &device)?;
        let w = &ids[..prefill.min(16)];
        if step {
            for &t in w {
                model.forward(&Tensor::new(&[t], &device)?, &mut st)?;
            }
        } else {
            model.forward_prefill(&Tensor::new(w, &device)?.unsqueeze(0)?, &mut st, chunk)?;
        }
    }

    let mut state = State::new(1, &cfg, DType::F32, &device)?;
    let start = Instant::now();
    let last = if step {
        // candle's per-token path, as candle-examples' mamba2 does by default (without --use-prefill)
        let mut logits = None;
        for &t in &ids {
            logits = Some(model.forward(&Tensor::new(&[t], &device)?, &mut state)?.get(0)?);
        }
        logits.context("empty prefill")?
    } else {
        let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
        model.forward_prefill(&input, &mut state, chunk)?.get(0)?.get(prefill - 1)?
    };
    let mut token = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
    let prefill_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..decode {
        let logits = model.forward(&Tensor::new(&[token], &device)?, &mut state)?;
        token = logits.get(0)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
    }
    let decode_s = start.elapsed().as_secs_f64();
    println!("prefill: {prefill} tokens {:.1} tok/s", prefill as f64 / prefill_s);
    println!("decode: batch 1 x {decode} tokens {:.2} tok/s aggregate", decode as f64 / decode_s);
    Ok(())
}
