//! `tachyon bench`: decode speed of a model file or of random weights of a real shape,
//! as a table or JSON (see `tachyon::bench` for what is measured).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::ValueEnum;

use tachyon::backend::cuda;
use tachyon::engine::bench::{self, BenchOptions, BenchReport};
use tachyon::engine::{
    Built, EngineOptions, ModelSpec, RandomSpec, SamplingParams, SessionOptions,
};
use tachyon::format::GgmlType;

use super::engine_args::{BackendArg, KvDtypeArg, QuantArg, SpeculationArgs, prefill_chunk};

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
    /// Sample instead of greedy decoding (0: greedy), to compare the two.
    #[arg(long, default_value_t = 0.0)]
    pub(super) temperature: f32,
    /// With --temperature: keep the k most likely tokens (0 disables).
    #[arg(long, default_value_t = 0)]
    pub(super) top_k: usize,
    /// With --temperature: nucleus mass (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub(super) top_p: f32,
    /// With --temperature: drop tokens below min-p times the most likely (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub(super) min_p: f32,
    /// With --temperature: repetition penalty over the last 64 tokens (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub(super) repeat_penalty: f32,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub(super) backend: BackendArg,
    /// KV cache size in tokens (default: prompt + new tokens).
    #[arg(long)]
    pub(super) ctx: Option<usize>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// Prompt tokens per forward call during prefill (each call reads every weight once;
    /// activation buffers for that many rows are allocated per cached sequence). Default:
    /// 512.
    #[arg(long, value_parser = prefill_chunk)]
    pub(super) prefill_chunk: Option<usize>,
    /// CPU: exact f32 dot products instead of 8-bit activation quantization.
    #[arg(long)]
    pub(super) precise: bool,
    /// GPU: the KV cache's element type (bf16 halves the bytes attention reads; f32 for
    /// checks against the CPU, which keeps f32).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::Bf16)]
    pub(super) kv_dtype: KvDtypeArg,
    /// GPU: quantize the activations of block-format (GGUF-quantized) matrices to int8 per
    /// 32 values and multiply with dp4a, instead of f32 activations (the CPU's default
    /// arithmetic; a product moves by about 0.5%, see BENCHMARKS.md).
    #[arg(long)]
    pub(super) int8_acts: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// GPU: time each kernel of one decode step (events around each launch of an eager
    /// run of the step) and print where the step's time goes. The kernel and graph node
    /// counts per token are printed without it too.
    #[arg(long)]
    pub(super) profile: bool,
    /// Quantize F32/F16/BF16 matrices (random weights included) at load: int8 or int4.
    #[arg(long, value_enum)]
    pub(super) quant: Option<QuantArg>,
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
    if super::spec_bench::wanted(&a) {
        return super::spec_bench::bench(&a);
    }
    if a.prompt_tokens == 0 || a.new_tokens < 2 {
        bail!("--prompt-tokens must be at least 1 and --new-tokens at least 2");
    }
    let need = a.prompt_tokens + a.new_tokens;
    let ctx = a.ctx.unwrap_or(need);
    if ctx < need {
        bail!("the run needs {need} positions; --ctx is {ctx}");
    }
    let built = tachyon::engine::build(&a.target(), &a.engine_options(ctx), &Default::default())?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let Built {
        mut engine,
        model,
        device,
        ..
    } = built;
    if need > engine.ctx() {
        bail!(
            "the run needs {need} positions; the model holds {}",
            model.config.max_ctx
        );
    }
    let bopts = BenchOptions {
        prompt_tokens: a.prompt_tokens,
        new_tokens: a.new_tokens,
        warmup_tokens: a.warmup_tokens,
        seed: a.seed,
        sampling: a.sampling(),
    };
    let timings = bench::measure(&mut engine, model.config.vocab_size, &bopts)?;
    let profile = engine.profile_step(a.profile)?;
    let mut report = BenchReport::new(
        model.label,
        model.weights_type.to_string(),
        engine.backend_name().to_string(),
        device,
        &timings,
        model.bytes_per_token,
        copy_bandwidth(engine.backend_name())?,
    );
    report.sampling = bench::describe_sampling(&bopts.sampling);
    report.profile = profile;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The memory copy bandwidth of the device `backend` runs on, in GB/s (read + written).
pub(super) fn copy_bandwidth(backend: &str) -> Result<f64> {
    if backend == "cuda" {
        let dev = cuda::probe()?;
        Ok(cuda::device_copy_bandwidth(&dev, 1 << 30, 10)?)
    } else {
        Ok(bench::host_copy_bandwidth(256 << 20, 5))
    }
}

impl BenchArgs {
    /// Greedy unless --temperature is above 0; the seed of the draw is the bench's seed.
    fn sampling(&self) -> SamplingParams {
        if self.temperature <= 0.0 {
            return SamplingParams::greedy();
        }
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }

    /// The model `--model` or `--random-weights` names.
    pub(super) fn target(&self) -> ModelSpec {
        match (&self.model, &self.random_weights) {
            (Some(path), _) => ModelSpec::File(path.clone()),
            // clap's "source" group requires one of the two.
            (None, shape) => ModelSpec::Random(RandomSpec {
                shape: shape.clone().unwrap_or_default(),
                dtype: self.random_dtype.ggml(),
                seed: self.seed,
            }),
        }
    }

    pub(super) fn engine_options(&self, ctx: usize) -> EngineOptions {
        EngineOptions {
            backend: self.backend.into(),
            session: SessionOptions {
                ctx,
                precise: self.precise,
                kv_dtype: self.kv_dtype.into(),
                int8_acts: self.int8_acts,
                ..Default::default()
            },
            prefill_chunk: self.prefill_chunk,
            quant: self.quant.map(Into::into),
            threads: self.threads,
            tokenizer: false,
            progress: true,
        }
    }
}
