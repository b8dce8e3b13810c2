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
    /// Measure each head's state norm after a calibration text, for `state-norm` thresholds.
    Calibrate(CalibrateArgs),
    /// Stream a long text or probe and record per layer/head state diagnostics as CSV.
    Stats(StatsArgs),
    /// Passkey-retrieval capacity sweep over lengths, depths, mitigations and checkpoints.
    Passkey(PasskeyArgs),
    /// Merge sweep results (shards, several folders) into accuracy tables, capacity and plots.
    Report(ReportArgs),
    /// List the devices `--device` can take: CUDA devices and wgpu adapters.
    Devices,
    /// Write a checkpoint (either dialect, safetensors or pytorch_model.bin) as an HF-dialect
    /// folder: config.json + model.safetensors (+ tokenizer.json).
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
pub struct PasskeyArgs {
    /// Checkpoint folders or `embedded:NAME` (repeat to sweep state sizes); default: the embedded
    /// family trained on --template (passkey-n4, -n8, -n16, -n32 for the paper's templates).
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Context lengths in tokens: `1k,2k,4k`, or geometric `1k..1m` (doubling), `1k..1m:x4`.
    #[arg(long, value_name = "LIST")]
    pub lengths: String,
    /// Needle depths per length, at (i + 0.5) / N (see --spacing).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub depths: usize,
    /// How the needles spread: `even` (depth (i + 0.5) / N, the paper's) or `log` (the distance
    /// from needle to question geometric, from one filler block to the whole prompt: as many
    /// needles near the question at 1M tokens as at 1K, for memory span and collapse).
    #[arg(long, default_value = "even", value_parser = ["even", "log"])]
    pub spacing: String,
    /// A mitigation arm (repeat for several; `none` is the plain model; compose with `;`;
    /// `best` is each checkpoint's own best, from its training.json, and `none` for one without).
    #[arg(long = "mitigate", value_name = "SPEC", value_parser = mitigation_spec)]
    pub arms: Vec<String>,
    /// Accuracy at which a length counts toward capacity, and a distance toward memory span.
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f64,
    /// Prompt template: paper, landmark, ruler, bindings (every filler block binds a fresh name to
    /// a key; the question asks for the needle's name), or a JSON file with prefix, filler, needle,
    /// suffix and optionally key_digits ({name} and {key} in the filler draw them per block).
    #[arg(long, default_value = "paper")]
    pub template: String,
    /// Seed of the passkeys.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Results folder: results.jsonl (one line per cell), report.md, plots.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue a sweep in --out, skipping finished cells.
    #[arg(long)]
    pub resume: bool,
    /// Run only shard I of N (0-based), e.g. a cluster array task; merge with `coil report`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Feed all depths of a length together, one batched pass over the weights per piece
    /// (worth it on a GPU); a length's cells are then written together when it ends.
    #[arg(long)]
    pub batch_forks: bool,
    /// Write what the device did as one JSON object: kernel launches, blocking syncs, bytes sent
    /// up and read down (weights sent at load counted apart), and the prefill and decode tokens.
    #[arg(long, value_name = "FILE")]
    pub device_stats: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folders holding results*.jsonl (shards of one sweep, or several sweeps).
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Accuracy at which a length counts toward capacity, and a distance toward memory span.
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f64,
    /// Where to write report.md, accuracy.csv and the plots (default: the folder, when there is
    /// one; several need --out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// State-collapse mitigations (docs/mitigations.md).
#[derive(Args, Debug, Clone, Default)]
pub struct MitigationArgs {
    /// A mitigation, e.g. `rri:lambda=0.9999,beta=0.75`, `window:size=4096`,
    /// `state-norm:calibrate=8192`, `dt-scale:0.5,layers=0-3`, or `best` (the checkpoint's own,
    /// from its training.json); repeat to compose in order.
    #[arg(long = "mitigate", value_name = "SPEC", value_parser = mitigation_spec)]
    pub specs: Vec<String>,
}

/// The checkpoint a command runs, and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json + model.safetensors or pytorch_model.bin [+ tokenizer.json]),
    /// or `embedded:NAME` for one compiled into the binary (passkey-n4, passkey-n8, passkey-n16,
    /// passkey-n32, random); defaults to `embedded:default` (passkey-n16).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// How checkpoints are read and where they compute: what every command that runs a model shares
/// (`passkey` applies them to each of its checkpoints).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// A tokenizer.json to read and write text with, in place of the checkpoint's own: the
    /// released Mamba-2 checkpoints ship none (they use GPT-NeoX-20B's tokenizer.json).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// SSD chunk length for prefill (default: the backend's preferred length, 64 on the CPU;
    /// else the checkpoint's chunk_size).
    #[arg(long, value_name = "Q")]
    pub chunk_size: Option<usize>,
    /// Tokens per prefill pass (of each stream); memory grows with it, not with the input.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub piece_len: usize,
    /// Where to compute: cpu, cuda[:N], wgpu[:N] (`coil devices` lists them) or auto (CUDA, else a
    /// hardware GPU through wgpu, else the CPU). The CPU is the default: the GPU backend is slower
    /// than it for now (docs/gpu.md).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: coil::Device,
    /// How weight matrices are held: auto (bf16 or f16 for a checkpoint stored so, else f32), f32,
    /// bf16 or f16 (half the memory and decode bandwidth; f32 weights are rounded; f16 keeps more
    /// mantissa bits than bf16 but only the range ±65504).
    #[arg(long, value_enum, default_value_t = WeightsArg::Auto)]
    pub weights: WeightsArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsArg {
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write what the device did as one JSON object: kernel launches, blocking syncs, bytes sent
    /// up and read down (weights sent at load counted apart), and the prefill and decode tokens.
    #[arg(long, value_name = "FILE")]
    pub device_stats: Option<PathBuf>,
    /// The prompt text (otherwise --prompt-file, --token-ids, or standard input; `-` as a file
    /// is standard input too).
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
    #[command(flatten)]
    pub mitigation: MitigationArgs,
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
    /// Seed of the sampler (with --temperature above 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write what the device did as one JSON object: kernel launches, blocking syncs, bytes sent
    /// up and read down (weights sent at load counted apart), and the prefill and decode tokens.
    #[arg(long, value_name = "FILE")]
    pub device_stats: Option<PathBuf>,
    /// A UTF-8 text to score (`-`: standard input, which is also read when neither this nor
    /// --token-ids is given).
    #[arg(long, value_name = "FILE", conflicts_with = "token_ids")]
    pub text_file: Option<PathBuf>,
    /// Token ids to score (integers separated by whitespace or commas; `-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub token_ids: Option<PathBuf>,
    /// Print each position's loss (`position<TAB>token<TAB>nll`) instead of the summary.
    #[arg(long, conflicts_with = "json")]
    pub per_token: bool,
    /// Also write every position's logits, computed by chunked prefill, as one f32 tensor
    /// `logits` of shape [T, V] in a safetensors file.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Refuse --logits-out above this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_logits_bytes: u64,
    /// Print one JSON object (the summary and every position's loss) instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Report the mean loss per bucket of N positions (the per-token-loss curve), as CSV on
    /// standard output unless --csv or --json takes it.
    #[arg(long, value_name = "N")]
    pub bucket: Option<u64>,
    /// Write the buckets as CSV here instead of to standard output.
    #[arg(long, value_name = "FILE", requires = "bucket")]
    pub csv: Option<PathBuf>,
    /// Plot the per-bucket loss curve (SVG).
    #[arg(long, value_name = "FILE", requires = "bucket")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub mitigation: MitigationArgs,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration tokens (default: the checkpoint's training length when its training.json
    /// says, else 8192).
    #[arg(long, value_name = "T")]
    pub length: Option<usize>,
    /// Calibration text (default: the haystack the checkpoint was trained on, from its
    /// training.json's template, else the passkey filler).
    #[arg(long, value_name = "FILE")]
    pub text_file: Option<PathBuf>,
    /// Thresholds are the measured norms times this.
    #[arg(long, default_value_t = 1.0)]
    pub factor: f32,
    #[command(flatten)]
    pub mitigation: MitigationArgs,
    /// Where to write `{"thresholds": [[tau per head] per layer]}`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A UTF-8 text to stream (its first --length tokens).
    #[arg(long, value_name = "FILE", conflicts_with = "probe")]
    pub text_file: Option<PathBuf>,
    /// A synthetic probe: `filler` (the passkey filler), `newlines`, or `bindings` (a fresh name
    /// bound to a key per sentence); default: the haystack the checkpoint was trained on (its
    /// training.json's template), else `filler`.
    #[arg(long, value_name = "PROBE")]
    pub probe: Option<String>,
    /// Tokens to stream.
    #[arg(long, value_name = "T")]
    pub length: usize,
    /// Record diagnostics every K tokens.
    #[arg(long, value_name = "K", default_value_t = 1024)]
    pub every: usize,
    /// CSV output, one row per record, layer and head, written as the run goes.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also plot the state norm of the heads that grew most (SVG).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// A head is flagged when its norm passes --collapse-factor times its norm at this position
    /// (default: the training length when known, else 8192, capped at --length / 2).
    #[arg(long, value_name = "T")]
    pub reference_length: Option<usize>,
    /// Flag a head whose state norm passes this many times its norm at --reference-length.
    #[arg(long, value_name = "X", default_value_t = 4.0)]
    pub collapse_factor: f32,
    #[command(flatten)]
    pub mitigation: MitigationArgs,
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

/// A `--mitigate` value: not empty (an empty spec read as the plain model without a word; the
/// plain model is `none`).
fn mitigation_spec(spec: &str) -> Result<String, String> {
    if spec.trim().is_empty() {
        return Err("an empty spec: give `none` for the plain model, or a mitigation such as `rri:lambda=0.9999,beta=0.75`".into());
    }
    Ok(spec.to_owned())
}
