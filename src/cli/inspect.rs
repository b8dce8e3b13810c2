//! `coil inspect`: what a checkpoint is.

use anyhow::Result;

use super::args::InspectArgs;
use super::load::load;

pub fn inspect(args: InspectArgs) -> Result<()> {
    let loaded = load(&args.model)?;
    let c = loaded.model().config();
    let (low, high) = c.time_step_limit;
    let tokenizer = loaded.tokenizer_if_any().map(|t| (t.path().display().to_string(), t.vocab_size()));
    let tie = loaded.model().tied_embeddings();
    if args.json {
        let report = serde_json::json!({
            "source": loaded.source().to_string(),
            "dialect": format!("{:?}", c.dialect),
            "d_model": c.d_model, "n_layer": c.n_layer, "vocab_size": c.vocab_size,
            "vocab_size_unpadded": c.vocab_size_unpadded, "d_state": c.d_state, "head_dim": c.head_dim,
            "n_heads": c.n_heads, "n_groups": c.n_groups, "d_inner": c.d_inner(), "conv_kernel": c.conv_kernel,
            "chunk_size": c.chunk_size, "use_bias": c.use_bias, "use_conv_bias": c.use_conv_bias,
            "tied_embeddings": tie, "time_step_limit": [low, if high.is_finite() { Some(high) } else { None }],
            "state_elements": c.state_elements(), "parameters": loaded.model().parameter_count(),
            "stored_dtype": loaded.stored_dtype().to_string(),
            "held_dtype": loaded.model().weight_dtype().to_string(), "weight_bytes": loaded.model().weight_bytes(),
            "tokenizer": tokenizer.as_ref().map(|(path, size)| serde_json::json!({"path": path, "vocab_size": size})),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("checkpoint      {}", loaded.source());
    println!("dialect         {}", c.dialect);
    println!("layers          {}", c.n_layer);
    println!("d_model         {}", c.d_model);
    println!("heads x dim     {} x {} (d_inner {})", c.n_heads, c.head_dim, c.d_inner());
    println!("d_state         {}", c.d_state);
    println!("groups          {}", c.n_groups);
    println!("conv kernel     {}", c.conv_kernel);
    println!("chunk size      {}", c.chunk_size);
    println!("vocab           {} rows ({} real tokens)", c.vocab_size, c.vocab_size_unpadded);
    println!("biases          in/out_proj {}, conv {}", c.use_bias, c.use_conv_bias);
    let untied_by_file = !tie && c.tie_embeddings == Some(true);
    let embeddings = match (tie, untied_by_file) {
        (true, _) => "tied",
        (false, true) => "untied: the config ties them, but the file's lm_head.weight differs from the embedding and is used (as HF transformers does)",
        (false, false) => "untied",
    };
    println!("embeddings      {embeddings}");
    println!("dt limit        [{low}, {high}]");
    println!("state N_S       {} elements ({:.3} M; L*H*P*N)", c.state_elements(), c.state_elements() as f64 / 1e6);
    println!("parameters      {} ({:.2} M)", loaded.model().parameter_count(), loaded.model().parameter_count() as f64 / 1e6);
    println!("stored dtype    {} (computed in f32)", loaded.stored_dtype());
    let (held, bytes) = (loaded.model().weight_dtype(), loaded.model().weight_bytes());
    println!("weights held as {held} ({:.1} MB of matrices; --weights picks)", bytes as f64 / 1e6);
    match tokenizer {
        Some((path, size)) => println!("tokenizer       {path} ({size} entries)"),
        None => println!("tokenizer       none (commands take --token-ids)"),
    }
    Ok(())
}
