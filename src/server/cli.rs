//! `tachyon serve`: load the model, start the engine thread, bind, serve until SIGTERM.
//! Prints `listening on http://ADDR` to stderr once `/health` answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::engine_thread;
use super::jobs::{FimTokens, unix_time};
use super::metrics::Metrics;
use super::{AppState, serve, shutdown_signal};
use crate::engine::draft::{DraftModel, VocabMismatch};
use crate::engine::spec_args::SpeculationError;
use crate::engine::{Engine, SessionOptions, SpeculationArgs, cpu_session};
use crate::format::ModelError;
use crate::graph::Model;
use crate::quant::at_load::{LoadQuant, quantize_weights};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading {path}: {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("the chat template does not compile: {0}")]
    Template(#[from] crate::tokenizer::TokenizerError),
    #[error("starting the engine: {0}")]
    Engine(#[from] crate::backend::BackendError),
    #[error("--threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    Draft(#[from] SpeculationError),
    #[error(transparent)]
    DraftVocabulary(#[from] VocabMismatch),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

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
    /// KV cache size in tokens (capped at the model's context length).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
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
    /// Keep the running request's connection thread polling for tokens instead of
    /// sleeping between them (lowest per-token overhead, one core busy while generating).
    /// auto: on when the machine has a core beyond the engine's threads.
    #[arg(long, value_enum, default_value_t = BusyPoll::Auto)]
    pub busy_poll: BusyPoll,
    /// Quantize F32/F16/BF16 matrices at load: int8 (Q8_0) or int4 (Q4_K / Q4_0).
    #[arg(long, value_parser = clap::builder::TypedValueParser::try_map(
        clap::builder::PossibleValuesParser::new(LoadQuant::NAMES),
        |s| s.parse::<LoadQuant>(),
    ))]
    pub quant: Option<LoadQuant>,
    #[command(flatten)]
    pub spec: SpeculationArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BusyPoll {
    Auto,
    On,
    Off,
}

pub fn run(a: ServeArgs) -> Result<(), ServeError> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()?;
    }
    let mut model = Model::load(&a.model).map_err(|source| ServeError::Model {
        path: a.model.clone(),
        source,
    })?;
    if let Some(q) = a.quant {
        model.weights =
            quantize_weights(&model.weights, q).map_err(|source| ServeError::Model {
                path: a.model.clone(),
                source,
            })?;
    }
    let opts = SessionOptions {
        ctx: a.ctx,
        precise: a.precise,
        ..Default::default()
    };
    let draft_model = a.spec.load_draft(&model)?;
    let session = cpu_session(&model.config, &model.weights, &opts)?;
    let mut engine = Engine::new(session);
    let draft = match &draft_model {
        Some(d) => Some(DraftModel::new(
            cpu_session(&d.config, &d.weights, &opts)?,
            engine.vocab_size(),
        )?),
        None => None,
    };
    engine.set_speculation(a.spec.speculation(draft));
    eprintln!(
        "notice: serving on the {} backend (the CUDA forward pass is not in this version yet)",
        engine.backend_name()
    );
    let ctx = engine.ctx();
    let tokenizer = Arc::new(model.tokenizer);
    let chat_template = tokenizer.compile_chat_template().transpose()?;
    let fim = match (
        tokenizer.token_id("<|fim_prefix|>"),
        tokenizer.token_id("<|fim_suffix|>"),
        tokenizer.token_id("<|fim_middle|>"),
    ) {
        (Some(prefix), Some(suffix), Some(middle)) => Some(FimTokens {
            prefix,
            suffix,
            middle,
        }),
        _ => None,
    };
    let vocab = model.config.vocab_size.min(tokenizer.vocab_size());
    let model_id = a.served_model_name.clone().unwrap_or_else(|| {
        let name = a
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf")
            .map(str::to_string)
            .unwrap_or(name)
    });
    let logits_vocab = engine.vocab_size();
    let metrics = Arc::new(Metrics::new());
    let handle = engine_thread::spawn(engine, tokenizer.clone(), a.queue, metrics.clone())?;
    let state = Arc::new(AppState {
        engine: handle,
        tokenizer,
        chat_template,
        fim,
        model_id,
        ctx,
        vocab,
        metrics,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_body: a.max_body,
        busy_poll: match a.busy_poll {
            BusyPoll::On => true,
            BusyPoll::Off => false,
            BusyPoll::Auto => {
                std::thread::available_parallelism().map_or(1, |n| n.get())
                    > rayon::current_num_threads()
            }
        },
        created: unix_time(),
        constraints: std::sync::OnceLock::new(),
        logits_vocab,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tachyon-http")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local: SocketAddr = listener.local_addr()?;
        eprintln!("listening on http://{local}");
        serve(
            listener,
            state,
            shutdown_signal(),
            Duration::from_secs(a.shutdown_timeout),
        )
        .await?;
        eprintln!("shut down");
        Ok::<(), ServeError>(())
    })?;
    // Do not wait for connections that outlived the grace period (WebSockets).
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
