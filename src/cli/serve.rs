//! `tachyon serve`'s arguments, converted into the server's and the engine's options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use tachyon::engine::{EngineOptions, ModelSpec, SessionOptions};
use tachyon::server::{BusyPoll, ServeOptions};

use super::engine_args::{BackendArg, KvDtypeArg, QuantArg, SpeculationArgs, prefill_chunk};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A .gguf file or an HF directory (config.json + safetensors + tokenizer.json).
    #[arg(long, short)]
    pub model: PathBuf,
    /// Address to bind (loopback by default; use 0.0.0.0 to listen on every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the ready line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "TACHYON_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where the engine runs: auto takes the GPU when there is one.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// KV cache size in tokens, capped at the model's context length (default: the model's
    /// context length, as far as a quarter of the available memory holds with --slots
    /// caches; on CUDA, three quarters of the device memory the weights leave free).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// KV caches of this many sequences (slots): a request takes the slot sharing the
    /// longest prefix with its prompt (default: as many as a quarter of the available memory
    /// holds, 1 to 4, on the CPU; 4 on a GPU).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Prompt tokens per forward call during prefill (each call reads every weight once;
    /// activation buffers for that many rows are allocated per cached sequence). Default:
    /// 512.
    #[arg(long, value_parser = prefill_chunk)]
    pub prefill_chunk: Option<usize>,
    /// Requests that may wait for the engine; more are answered 429.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// The model name clients see (default: the file name without extension).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPU: exact f32 dot products instead of 8-bit activation quantization (slower).
    #[arg(long)]
    pub precise: bool,
    /// GPU: the KV cache's element type (bf16 halves the bytes attention reads; f32 for
    /// checks against the CPU, which keeps f32).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::Bf16)]
    pub kv_dtype: KvDtypeArg,
    /// GPU: quantize the activations of block-format (GGUF-quantized) matrices to int8 per
    /// 32 values and multiply with dp4a, instead of f32 activations (the CPU's default
    /// arithmetic; a product moves by about 0.5%, see BENCHMARKS.md).
    #[arg(long)]
    pub int8_acts: bool,
    /// Keep the running request's connection thread polling for tokens instead of
    /// sleeping between them (lowest per-token overhead, one core busy while generating).
    /// auto: on when the machine has a core beyond the engine's threads.
    #[arg(long, value_enum, default_value_t = BusyPollArg::Auto)]
    pub busy_poll: BusyPollArg,
    /// Quantize F32/F16/BF16 matrices at load: int8 (Q8_0) or int4 (Q4_K / Q4_0).
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    #[command(flatten)]
    pub spec: SpeculationArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BusyPollArg {
    Auto,
    On,
    Off,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let serve = ServeOptions {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        queue: a.queue,
        max_body: a.max_body,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        served_model_name: a.served_model_name,
        busy_poll: match a.busy_poll {
            BusyPollArg::Auto => BusyPoll::Auto,
            BusyPollArg::On => BusyPoll::On,
            BusyPollArg::Off => BusyPoll::Off,
        },
    };
    let engine = EngineOptions {
        backend: a.backend.into(),
        session: SessionOptions {
            ctx: a.ctx.unwrap_or(SessionOptions::MODEL_CTX),
            precise: a.precise,
            slots: a.slots.unwrap_or(0),
            kv_dtype: a.kv_dtype.into(),
            int8_acts: a.int8_acts,
            ..Default::default()
        },
        prefill_chunk: a.prefill_chunk,
        quant: a.quant.map(Into::into),
        threads: a.threads,
        tokenizer: true,
        progress: true,
    };
    tachyon::server::start::run(
        &serve,
        &ModelSpec::File(a.model),
        &engine,
        &a.spec.options(),
    )?;
    Ok(())
}
