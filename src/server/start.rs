//! `tachyon serve`: check the options, bind the port, build the engine, start the engine
//! thread, serve until SIGTERM. The port is bound before the model loads, so a clash is
//! reported at once; `listening on http://ADDR` goes to stderr once `/health` answers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::engine_thread;
use super::jobs::{FimTokens, unix_time};
use super::metrics::Metrics;
use super::{AppState, serve, shutdown_signal};
use crate::engine::{BuildError, EngineOptions, ModelSpec, SpeculationOptions, build};

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

    let engine_opts = EngineOptions {
        tokenizer: true,
        ..engine.clone()
    };
    let built = build(model, &engine_opts, spec)?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let engine = built.engine;
    let ctx = engine.ctx();
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
    let model_id = o.served_model_name.clone().unwrap_or_else(|| match model {
        ModelSpec::File(p) => model_id(p),
        ModelSpec::Random(r) => format!("random-{}", r.shape),
    });
    let logits_vocab = engine.vocab_size();
    let metrics = Arc::new(Metrics::new());
    let handle = engine_thread::spawn(engine, tokenizer.clone(), o.queue, metrics.clone())
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
    rt.block_on(async {
        eprintln!("listening on http://{local}");
        serve(listener, state, shutdown_signal(), o.shutdown_timeout)
            .await
            .map_err(ServeError::Io)?;
        eprintln!("shut down");
        Ok::<(), ServeError>(())
    })?;
    // Do not wait for connections that outlived the grace period (WebSockets).
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
