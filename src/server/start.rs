//! `tachyon serve`: check the options, bind the port, build the engine, start the engine
//! thread, serve until SIGTERM. The port is bound before the model loads, so a clash is
//! reported at once; `alive on http://ADDR` goes to stderr when `/health` answers
//! (liveness), `listening on http://ADDR` once the model is loaded and warmed up and
//! `/v1/models` answers (readiness; see `ready`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::engine_thread::{self, EngineThread};
use super::jobs::{FimTokens, unix_time};
use super::metrics::Metrics;
use super::ready::{ReadyGate, serve_gated};
use super::{AppState, router, shutdown_signal};
use crate::engine::{
    BuildError, Engine, EngineOptions, Flow, GenerateParams, ModelSpec, SamplingParams,
    SpeculationOptions, build,
};
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{option}: {why}")]
    Invalid { option: &'static str, why: String },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the model has no tokenizer")]
    NoTokenizer,
    #[error("the chat template does not compile")]
    Template(#[source] crate::tokenizer::TokenizerError),
    #[error("binding {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("warming the model up: {0}")]
    WarmUp(String),
    #[error("starting the server")]
    Io(#[source] std::io::Error),
}

/// Busy-poll the running request's events (see `jobs::Submitted::poll_event`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusyPoll {
    /// On when the machine has a core beyond the engine's threads.
    #[default]
    Auto,
    On,
    Off,
}

/// The server's own options (the engine's are [`EngineOptions`]).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to bind.
    pub host: String,
    /// Port (0 picks a free one; the ready line says which).
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    pub api_key: Option<String>,
    /// Requests that may wait for the engine; more are answered 429.
    pub queue: usize,
    /// Largest request body in bytes (413 past it).
    pub max_body: usize,
    /// In-flight requests may take this long to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The model name clients see (default: the file name without extension).
    pub served_model_name: Option<String>,
    pub busy_poll: BusyPoll,
}

impl ServeOptions {
    pub fn validate(&self) -> Result<(), ServeError> {
        if self.max_body == 0 {
            return Err(ServeError::Invalid {
                option: "--max-body",
                why: "must be at least 1 byte (every request would be refused)".into(),
            });
        }
        if self.host.trim().is_empty() {
            return Err(ServeError::Invalid {
                option: "--host",
                why: "is empty".into(),
            });
        }
        Ok(())
    }
}

/// The model name of a path: its file name without `.gguf`.
fn model_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

/// Builds the engine, runs a short generation so the first request pays no one-time
/// costs (page faults on the weights, the GPU's graph capture), starts the engine thread and
/// returns the routes' shared state.
fn load_and_warm(
    o: &ServeOptions,
    model: &ModelSpec,
    engine: &EngineOptions,
    spec: &SpeculationOptions,
    model_id: String,
    metrics: Arc<Metrics>,
) -> Result<(Arc<AppState>, EngineThread), ServeError> {
    let engine_opts = EngineOptions {
        tokenizer: true,
        ..engine.clone()
    };
    let built = build(model, &engine_opts, spec)?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let mut engine = built.engine;
    let ctx = engine.ctx();
    let kv = engine.kv_bytes_per_position();
    eprintln!(
        "KV cache: {} slots x {ctx} positions x {kv} bytes = {:.1} MiB",
        engine.slots(),
        (engine.slots() * ctx * kv) as f64 / (1 << 20) as f64
    );
    if let Some(tokens) = spec.suffix_cache {
        eprintln!(
            "suffix cache: up to {tokens} tokens of earlier requests, at most {:.1} MiB",
            (tokens * crate::engine::spec::suffix_cache::BYTES_PER_TOKEN) as f64 / (1 << 20) as f64
        );
    }
    let tokenizer = Arc::new(built.model.tokenizer.ok_or(ServeError::NoTokenizer)?);
    let chat_template = tokenizer
        .compile_chat_template()
        .transpose()
        .map_err(ServeError::Template)?;
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
    let vocab = built.model.config.vocab_size.min(tokenizer.vocab_size());
    warm_up(&mut engine, &tokenizer, vocab)?;
    let logits_vocab = engine.vocab_size();
    let (handle, thread) =
        engine_thread::spawn(engine, tokenizer.clone(), o.queue, metrics.clone())
            .map_err(ServeError::Io)?;
    let state = Arc::new(AppState {
        engine: handle,
        tokenizer,
        chat_template,
        fim,
        model_id,
        ctx,
        vocab,
        metrics,
        api_key: o.api_key.clone().filter(|k| !k.is_empty()),
        max_body: o.max_body,
        busy_poll: match o.busy_poll {
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
    Ok((state, thread))
}

/// A few greedy tokens after a short prompt, then the kept sequence is forgotten so no
/// request reports it as cached.
fn warm_up(engine: &mut Engine, tokenizer: &Tokenizer, vocab: usize) -> Result<(), ServeError> {
    let mut prompt = tokenizer.encode("def warm_up():", true).unwrap_or_default();
    prompt.retain(|&t| (t as usize) < vocab);
    prompt.truncate(engine.ctx().saturating_sub(5));
    if prompt.is_empty() {
        prompt.push(0);
    }
    let params = GenerateParams {
        max_tokens: 4.min(engine.ctx().saturating_sub(prompt.len())),
        sampling: SamplingParams::greedy(),
        stop_ids: Vec::new(),
    };
    engine
        .generate(&prompt, &params, &mut |_| Flow::Continue)
        .map_err(|e| ServeError::WarmUp(e.to_string()))?;
    engine.forget_cache();
    Ok(())
}

/// How long the engine thread may take to end after the server has stopped.
const ENGINE_STOP: Duration = Duration::from_secs(5);

pub fn run(
    o: &ServeOptions,
    model: &ModelSpec,
    engine: &EngineOptions,
    spec: &SpeculationOptions,
) -> Result<(), ServeError> {
    // Every check that needs no model first, then the port, then the (slow) load.
    o.validate()?;
    engine.validate()?;
    spec.validate().map_err(BuildError::from)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tachyon-http")
        .enable_all()
        .build()
        .map_err(ServeError::Io)?;
    let addr = format!("{}:{}", o.host, o.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(ServeError::Io)?;
    let model_id = o.served_model_name.clone().unwrap_or_else(|| match model {
        ModelSpec::File(p) => model_id(p),
        ModelSpec::Random(r) => format!("random-{}", r.shape),
    });
    let metrics = Arc::new(Metrics::new());
    let gate = Arc::new(ReadyGate::default());
    let served = rt.block_on(async {
        // Alive from here (liveness: /health), ready once the model is loaded and warmed
        // up (readiness: /v1/models and every other route).
        eprintln!("alive on http://{local}; loading the model");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop_rx => {}
            }
        };
        let server = tokio::spawn(serve_gated(
            listener,
            gate.clone(),
            metrics.clone(),
            shutdown,
            o.shutdown_timeout,
        ));
        let (o2, model2, engine2, spec2) = (o.clone(), model.clone(), engine.clone(), spec.clone());
        let m2 = metrics.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            load_and_warm(&o2, &model2, &engine2, &spec2, model_id, m2)
        })
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)));
        let thread = match loaded.and_then(|r| r) {
            Ok((state, thread)) => {
                gate.open(router(state));
                eprintln!("listening on http://{local}");
                thread
            }
            Err(e) => {
                let _ = stop_tx.send(());
                let _ = server.await;
                return Err(e);
            }
        };
        server
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
            .map_err(ServeError::Io)?;
        Ok::<EngineThread, ServeError>(thread)
    });
    // Do not wait for connections that outlived the grace period (WebSockets): dropping
    // their tasks closes their jobs' event channels, so a job still running stops at its
    // next token.
    rt.shutdown_timeout(Duration::from_millis(100));
    let thread = served?;
    // The routes' state holds the engine's handles; with them gone the engine thread ends.
    drop(gate);
    if !thread.join(ENGINE_STOP) {
        tracing::warn!("the engine thread did not end within {ENGINE_STOP:?}; exiting anyway");
    }
    eprintln!("shut down");
    Ok(())
}
