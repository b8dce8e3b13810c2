//! Command-line arguments (clap). Turned into validated plans by each command's module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "coil", version, about = "Run Mamba-2 state-space language models over input of any length.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream a prompt through the model, then generate text.
    Run(RunArgs),
    /// Per-token negative log-likelihood of a text or of token ids.
    Score(ScoreArgs),
    /// Describe a checkpoint: dialect, sizes, state size, parameters, dtypes, tokenizer.
    Inspect(InspectArgs),
    /// Write a checkpoint (either dialect, safetensors or pytorch_model.bin) as an HF-dialect
    /// folder: config.json + model.safetensors (+ tokenizer.json).
    Convert(ConvertArgs),
}

/// Options every command shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json + model.safetensors or pytorch_model.bin [+ tokenizer.json]); defaults to the
    /// small checkpoint embedded in the binary.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// SSD chunk length for prefill (default: the checkpoint's chunk_size).
    #[arg(long, value_name = "Q")]
    pub chunk_size: Option<usize>,
    /// Tokens per prefill pass; memory grows with it, not with the input.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub piece_len: usize,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (otherwise --prompt-file, --token-ids, or standard input).
    #[arg(long, conflicts_with_all = ["prompt_file", "token_ids"])]
    pub prompt: Option<String>,
    /// Read the prompt from a UTF-8 file of any length.
    #[arg(long, value_name = "FILE", conflicts_with = "token_ids")]
    pub prompt_file: Option<PathBuf>,
    /// Read the prompt as token ids (integers separated by whitespace or commas).
    #[arg(long, value_name = "FILE")]
    pub token_ids: Option<PathBuf>,
    /// Tokens to generate after the prompt.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past the end-of-text token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Start from a state saved by --state-out instead of the empty state.
    #[arg(long, value_name = "FILE")]
    pub state_in: Option<PathBuf>,
    /// Save the state after the prompt and the generated tokens.
    #[arg(long, value_name = "FILE")]
    pub state_out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A UTF-8 text to score.
    #[arg(long, value_name = "FILE", required_unless_present = "token_ids", conflicts_with = "token_ids")]
    pub text_file: Option<PathBuf>,
    /// Token ids to score (integers separated by whitespace or commas).
    #[arg(long, value_name = "FILE")]
    pub token_ids: Option<PathBuf>,
    /// Also write every position's logits, computed by chunked prefill, as one f32 tensor
    /// `logits` of shape [T, V] in a safetensors file.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Refuse --logits-out above this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_logits_bytes: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint folder to read.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The folder to write (created if missing; its model files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}
