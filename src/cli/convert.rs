//! `coil convert`: any checkpoint Coil loads, written out in the HF dialect (safetensors).

use anyhow::{bail, Context, Result};
use coil::{convert_to_hf, Source};

use super::args::ConvertArgs;
use super::load::source_of;

pub fn convert(args: ConvertArgs) -> Result<()> {
    if let Source::Embedded(name) = source_of(Some(&args.model)) {
        bail!("convert reads a checkpoint folder; `embedded:{name}` is compiled into the binary (its folder is under checkpoints/ in Coil's source tree)");
    }
    let exported = convert_to_hf(&args.model, &args.out)
        .with_context(|| format!("cannot convert {} to {}", args.model.display(), args.out.display()))?;
    let dtypes: Vec<String> = exported.dtypes.iter().map(ToString::to_string).collect();
    println!("wrote {} ({} tensors, {})", exported.model.display(), exported.tensors, dtypes.join(", "));
    println!("wrote {}", exported.config.display());
    if let Some(tokenizer) = exported.tokenizer {
        println!("wrote {}", tokenizer.display());
    }
    Ok(())
}
