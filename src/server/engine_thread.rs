//! The one thread that owns the model and the engine. The async front hands it jobs over a
//! bounded FIFO (full: the caller answers 429) and gets each job's events back over its own
//! channel: a token event per generated token, then one `Done`. Detokenizing and stop-string
//! matching happen here, next to the token, so a stop string ends generation at once; a
//! job's cancel flag (set when its client goes away or replaces it) is checked before every
//! decode step. After a device fault the engine rebuilds its sessions before the next job
//! (`engine::recovery`); if it cannot, the handle refuses every job with 503 and `/health`
//! reports the failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use super::stop::StopMatcher;
use crate::engine::constraint::Constraint;
use crate::engine::{Engine, FinishReason, Flow, GenerateParams, StreamOptions};
use crate::tokenizer::Tokenizer;

/// One request, tokenized and validated, ready to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    /// The compiled `response_format` / `grammar` / tool-call constraint.
    pub constraint: Option<Constraint>,
    pub logit_bias: Vec<(u32, f32)>,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub received: Instant,
}

/// Log-probabilities of one token: its own and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub struct TokenEvent {
    /// Text released by this token: complete characters, stop-string prefixes held back.
    pub text: String,
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
    /// When the engine handed the token over (the start of the server's overhead).
    pub produced_at: Instant,
}

pub struct Done {
    /// Text released only at the end (held back as a possible stop string, or an
    /// incomplete character).
    pub tail: String,
    /// "stop", "length" or "cancelled".
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub queue_wait: Duration,
    /// Arrival to first token, queue wait included.
    pub time_to_first_token: Duration,
    pub total: Duration,
}

pub enum Event {
    Token(TokenEvent),
    Done(Done),
    Error(ApiError),
}

/// The front's handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    /// `None` asks the thread to end (only [`EngineThread::join`] sends it).
    tx: SyncSender<Option<Job>>,
    metrics: Arc<Metrics>,
    /// Set once the engine runs no more: why.
    failure: Arc<OnceLock<String>>,
}

impl EngineHandle {
    /// Queues a job; a full queue is a 429, a stopped or failed engine a 503.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if let Some(why) = self.failure() {
            return Err(ApiError::engine_failed(why));
        }
        self.metrics.queue_depth.inc();
        match self.tx.try_send(Some(job)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.dec();
                match e {
                    TrySendError::Full(_) => {
                        self.metrics.rejected.inc();
                        Err(ApiError::queue_full())
                    }
                    TrySendError::Disconnected(_) => Err(ApiError::unavailable()),
                }
            }
        }
    }

    /// Why the engine runs no more, once a device fault could not be recovered from.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

/// The engine thread itself, kept by whoever shuts the server down: once every
/// [`EngineHandle`] is gone the thread finishes its job, drops the engine and ends.
pub struct EngineThread {
    stop: SyncSender<Option<Job>>,
    ended: Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl EngineThread {
    /// Waits up to `limit` for the thread to drop the engine and end; whether it did. The
    /// server waits here before the process exits, so the engine (its memory, its device
    /// context) is torn down by its own thread and never while the process exits around it.
    pub fn join(self, limit: Duration) -> bool {
        // Queued jobs go first: their clients are gone, so each is skipped at once. A full
        // queue needs no stop message: the thread ends when the last handle is dropped.
        let _ = self.stop.try_send(None);
        match self.ended.recv_timeout(limit) {
            // Ended (or panicked, which drops the sender too): the join is immediate.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.thread.join().is_ok(),
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

/// Starts the engine thread with room for `queue` waiting jobs (at least one).
pub fn spawn(
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(EngineHandle, EngineThread)> {
    let (tx, rx) = sync_channel(queue.max(1));
    let tx2 = tx.clone();
    let (ended_tx, ended) = sync_channel(1);
    let m = metrics.clone();
    let failure = Arc::new(OnceLock::new());
    let failed = failure.clone();
    let thread = std::thread::Builder::new()
        .name("tachyon-engine".into())
        .spawn(move || {
            run(engine, &tokenizer, rx, &m, &failed);
            let _ = ended_tx.send(());
        })?;
    Ok((
        EngineHandle {
            tx,
            metrics,
            failure,
        },
        EngineThread {
            stop: tx2,
            ended,
            thread,
        },
    ))
}

fn run(
    mut engine: Engine,
    tok: &Tokenizer,
    rx: Receiver<Option<Job>>,
    metrics: &Metrics,
    failure: &OnceLock<String>,
) {
    let mut faults = (0, 0);
    while let Ok(Some(job)) = rx.recv() {
        metrics.queue_depth.dec();
        if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
            metrics.cancelled.inc();
            continue;
        }
        metrics.running.set(1);
        run_job(&mut engine, tok, job, metrics);
        metrics
            .kv
            .set(engine.cached_len(), engine.ctx() * engine.slots());
        if let Some(ev) = engine.last_slot_event() {
            if ev.hit {
                metrics.slot_hits.inc();
            } else {
                metrics.slot_misses.inc();
            }
            if ev.evicted {
                metrics.slot_evictions.inc();
            }
        }
        metrics.running.set(0);
        // After a GPU fault: the faulted request has its error; rebuild before the next.
        engine.recover();
        let now = engine.fault_counts();
        if now.1 > faults.1 {
            tracing::warn!("GPU fault: the request ended with an error; sessions rebuilt");
        }
        metrics.device_faults.inc_by(now.0 - faults.0);
        metrics.device_restarts.inc_by(now.1 - faults.1);
        faults = now;
        if let Some(why) = engine.failure() {
            tracing::error!("the engine cannot run any more: {why}");
            let _ = failure.set(why.to_string());
            metrics.engine_failed.set(1);
        }
    }
}

fn run_job(engine: &mut Engine, tok: &Tokenizer, job: Job, metrics: &Metrics) {
    let started = Instant::now();
    let queue_wait = started - job.received;
    Metrics::observe(&metrics.queue_wait, queue_wait);
    let mut decoder = tok.stream_decoder();
    let mut stop = StopMatcher::new(&job.stop);
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut gone = false;
    let opts = StreamOptions {
        logprobs: job.logprobs,
        cancel: Some(&job.cancel),
        constraint: job.constraint.as_ref(),
        logit_bias: &job.logit_bias,
    };
    let result = engine.generate_stream(&job.prompt, &job.params, &opts, &mut |step| {
        let now = Instant::now();
        match first {
            None => {
                first = Some(now);
                Metrics::observe(&metrics.time_to_first_token, now - job.received);
            }
            Some(_) => Metrics::observe(&metrics.inter_token, now - last),
        }
        last = now;
        // An id the tokenizer does not know (padding rows of the output matrix) has no text.
        let piece = decoder.push(step.id).unwrap_or_default();
        let text = stop.push(&piece);
        let logprobs = step.logprob.map(|logprob| TokenLogprobs {
            logprob,
            top: step.top.to_vec(),
        });
        let ev = TokenEvent {
            text,
            id: step.id,
            logprobs,
            produced_at: now,
        };
        if job.events.send(Event::Token(ev)).is_err() {
            gone = true;
            return Flow::Stop;
        }
        if stop.stopped() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    });
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            let err = super::jobs::request_error(e);
            let _ = job.events.send(Event::Error(err));
            return;
        }
    };
    let finish_reason = if stop.stopped() {
        "stop"
    } else {
        match stats.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    };
    if finish_reason == "cancelled" || gone {
        metrics.cancelled.inc();
    }
    let mut tail = String::new();
    if !stop.stopped() {
        let rest = decoder.finish();
        tail = stop.push(&rest);
        if !stop.stopped() {
            tail.push_str(&stop.finish());
        }
    }
    metrics.requests.inc();
    metrics.prompt_tokens.inc_by(stats.prompt_tokens as u64);
    metrics.cached_tokens.inc_by(stats.cached_tokens as u64);
    metrics
        .generated_tokens
        .inc_by(stats.generated_tokens as u64);
    if stats.cached_tokens > 0 {
        metrics.cache_hits.inc();
    }
    if let Some(sp) = &stats.speculation {
        metrics.spec_verify_steps.inc_by(sp.verify_steps as u64);
        metrics.spec_proposed.inc_by(sp.proposed as u64);
        metrics.spec_accepted.inc_by(sp.accepted as u64);
    }
    let time_to_first_token = first.map_or(Duration::ZERO, |f| f - job.received);
    let _ = job.events.send(Event::Done(Done {
        tail,
        finish_reason,
        prompt_tokens: stats.prompt_tokens,
        cached_tokens: stats.cached_tokens,
        completion_tokens: stats.generated_tokens,
        queue_wait,
        time_to_first_token,
        total: job.received.elapsed(),
    }));
}
