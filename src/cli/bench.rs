//! `tachyon bench`: decode speed of a model file or of random weights of a real shape,
//! as a table or JSON (see `tachyon::bench` for what is measured).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use tachyon::engine::bench::{self, BenchOptions, BenchReport};
use tachyon::engine::{Engine, SessionOptions, SpeculationArgs};
use tachyon::format::GgmlType;
use tachyon::format::random::{self, Shape};
use tachyon::format::{ModelConfig, ModelWeights, load_weights};
use tachyon::quant::at_load::{LoadQuant, quantize_weights};

use super::backend::{BackendChoice, make_session};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RandomDtype {
    Bf16,
    F16,
    F32,
}

impl RandomDtype {
    pub(super) fn ggml(self) -> GgmlType {
        match self {
            RandomDtype::Bf16 => GgmlType::BF16,
            RandomDtype::F16 => GgmlType::F16,
            RandomDtype::F32 => GgmlType::F32,
        }
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "random_weights"])))]
pub struct BenchArgs {
    /// A .gguf file or an HF directory.
    #[arg(long, short)]
    pub(super) model: Option<PathBuf>,
    /// Random weights of a shape: llama-3.2-1b, llama-3.1-8b, qwen2.5-1.5b, qwen2.5-0.5b,
    /// or the path of an HF config.json.
    #[arg(long, value_name = "SHAPE")]
    pub(super) random_weights: Option<String>,
    /// Format of the random weights' matrices.
    #[arg(long, value_enum, default_value_t = RandomDtype::Bf16)]
    pub(super) random_dtype: RandomDtype,
    /// Length of the random prompt.
    #[arg(long, default_value_t = 128)]
    pub(super) prompt_tokens: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub(super) new_tokens: usize,
    /// Tokens generated in an untimed warm-up run first.
    #[arg(long, default_value_t = 8)]
    pub(super) warmup_tokens: usize,
    /// Seed of the random weights and prompt.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub(super) backend: BackendChoice,
    /// KV cache size in tokens (default: prompt + new tokens).
    #[arg(long)]
    pub(super) ctx: Option<usize>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// CPU: exact f32 dot products instead of 8-bit activation quantization.
    #[arg(long)]
    pub(super) precise: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// Quantize F32/F16/BF16 matrices (random weights included) at load: int8 or int4.
    #[arg(long, value_parser = super::load_quant_parser())]
    pub(super) quant: Option<LoadQuant>,
    #[command(flatten)]
    pub(super) spec: SpeculationArgs,
    /// Speculation on random weights: the draft's shape (as --random-weights).
    #[arg(long, value_name = "SHAPE")]
    pub(super) draft_random_weights: Option<String>,
    /// Code prompts, one JSON object per line ({"name", "prompt"}), for measuring a draft's
    /// acceptance against the target (real weights): each is decoded plainly and with
    /// speculation, greedily, for --new-tokens tokens at most.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(super) prompts: Option<PathBuf>,
    /// With --prompts: write every prompt's (proposed, kept) steps to this JSON file.
    #[arg(long, value_name = "OUT.json")]
    pub(super) record_acceptance: Option<PathBuf>,
    /// Replay a recorded acceptance (from --record-acceptance) on these weights.
    #[arg(long, value_name = "FILE.json")]
    pub(super) replay_acceptance: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("--threads")?;
    }
    if super::spec_bench::wanted(&a) {
        return super::spec_bench::bench(&a);
    }
    if a.prompt_tokens == 0 || a.new_tokens < 2 {
        bail!("--prompt-tokens must be at least 1 and --new-tokens at least 2");
    }
    let (label, config, weights) = load(&a)?;
    let weights_ty = weights
        .layers
        .first()
        .map_or(weights.output.ty, |l| l.wq.ty);
    let need = a.prompt_tokens + a.new_tokens;
    let ctx = a.ctx.unwrap_or(need);
    if ctx < need || need > config.max_ctx {
        bail!(
            "the run needs {need} positions; --ctx is {ctx} and the model holds {}",
            config.max_ctx
        );
    }
    let opts = SessionOptions {
        ctx,
        precise: a.precise,
        ..Default::default()
    };
    let placed = make_session(a.backend, &config, &weights, &opts)?;
    let mut engine = Engine::new(placed.session);
    let bopts = BenchOptions {
        prompt_tokens: a.prompt_tokens,
        new_tokens: a.new_tokens,
        warmup_tokens: a.warmup_tokens,
        seed: a.seed,
    };
    let timings = bench::measure(&mut engine, config.vocab_size, &bopts)?;
    let report = BenchReport::new(
        label,
        weights_ty.to_string(),
        engine.backend_name().to_string(),
        placed.device,
        &timings,
        weights.bytes_per_token(),
        (placed.copy_bandwidth)()?,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

pub(super) fn load(a: &BenchArgs) -> Result<(String, ModelConfig, ModelWeights)> {
    let (label, config, weights) = load_unquantized(a)?;
    match a.quant {
        Some(q) => {
            let w = quantize_weights(&weights, q).context("--quant")?;
            Ok((format!("{label} --quant {q:?}").to_lowercase(), config, w))
        }
        None => Ok((label, config, weights)),
    }
}

fn load_unquantized(a: &BenchArgs) -> Result<(String, ModelConfig, ModelWeights)> {
    match (&a.model, &a.random_weights) {
        (Some(path), _) => {
            let (config, weights, _source) =
                load_weights(path).with_context(|| format!("loading {}", path.display()))?;
            Ok((path.display().to_string(), config, weights))
        }
        (None, Some(spec)) => {
            let shape = Shape::resolve(spec)?;
            let weights = random::random_weights(&shape, a.random_dtype.ggml(), a.seed)?;
            Ok((format!("random:{}", shape.name), shape.config, weights))
        }
        (None, None) => bail!("give --model or --random-weights"),
    }
}
