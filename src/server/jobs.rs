//! From a parsed request to a queued engine job: prompt tokens (raw text, token ids, the
//! fill-in-the-middle layout, or the chat template), the context check, sampling settings,
//! and the per-request cancel flag that is raised when the response is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::AppState;
use super::engine_thread::{Event, Job};
use super::error::ApiError;
use super::openai::{ChatRequest, CompletionRequest, Options, Prompt};
use super::tool_calls;
use super::tools::ToolChoice;
use crate::engine::constraint::{
    Constraint, ConstraintLimits, ConstraintSpec, ConstraintVocab, Tag,
};
use crate::engine::{EngineError, GenerateParams, Limits};

/// Raises the cancel flag when dropped: the response body, the waiting handler or the
/// WebSocket's current request going away stops the generation at the next step.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl CancelOnDrop {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A queued request: its events and the guard that cancels it.
pub struct Submitted {
    pub events: UnboundedReceiver<Event>,
    pub guard: CancelOnDrop,
    pub received: Instant,
    /// Busy-poll the events once tokens flow (see [`Submitted::poll_event`]).
    busy_poll: bool,
    hot: bool,
    spinning_since: Option<Instant>,
}

/// Longest a connection's task busy-polls for one event before it parks.
const MAX_SPIN: Duration = Duration::from_millis(250);

impl Submitted {
    /// The request's next event. Waking a parked thread when the engine hands a token over
    /// takes from tens to hundreds of microseconds (more on virtual machines), most of the
    /// server's per-token overhead. So with busy polling on, once the request produces
    /// tokens, an empty channel makes the task schedule itself again at once instead of
    /// parking: its thread stays awake and picks the next token up within microseconds,
    /// while other tasks still run between polls. After `MAX_SPIN` without an event it
    /// parks as usual. At batch 1 only the running request's task polls like this.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.events.poll_recv(cx) {
            Poll::Ready(ev) => {
                self.spinning_since = None;
                if matches!(ev, Some(Event::Token(_))) {
                    self.hot = self.busy_poll;
                }
                Poll::Ready(ev)
            }
            Poll::Pending => {
                if self.hot
                    && self
                        .spinning_since
                        .get_or_insert_with(Instant::now)
                        .elapsed()
                        < MAX_SPIN
                {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    /// [`Submitted::poll_event`] as a future.
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// The fill-in-the-middle special tokens: prefix, suffix, middle.
#[derive(Clone, Copy, Debug)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
}

/// A response id: a prefix, the process start and a counter, unique within a server run.
pub fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{:x}{:06x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, add_bos)
            .map_err(|e| ApiError::invalid("prompt", format!("could not tokenize the prompt: {e}")))
    }

    /// The prompt ids of a completion request, `suffix` laid out prefix-suffix-middle.
    pub fn completion_prompt(&self, req: &CompletionRequest) -> Result<Vec<u32>, ApiError> {
        let Some(suffix) = &req.suffix else {
            return match &req.prompt {
                Prompt::Text(t) => self.encode(t, true),
                Prompt::Tokens(ids) => Ok(ids.clone()),
            };
        };
        let Some(fim) = self.fim else {
            return Err(ApiError::invalid(
                "suffix",
                "this model has no fill-in-the-middle tokens (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>)",
            ));
        };
        let mut ids = vec![fim.prefix];
        match &req.prompt {
            Prompt::Text(t) => ids.extend(self.encode(t, false)?),
            Prompt::Tokens(t) => ids.extend_from_slice(t),
        }
        ids.push(fim.suffix);
        ids.extend(self.encode(suffix, false)?);
        ids.push(fim.middle);
        Ok(ids)
    }

    /// The prompt ids of a chat request, through the model's chat template (with the
    /// declared tools in its `tools` variable).
    pub fn chat_prompt(&self, req: &ChatRequest) -> Result<Vec<u32>, ApiError> {
        let Some(tmpl) = &self.chat_template else {
            return Err(ApiError::invalid(
                "messages",
                "this model has no chat template; use /v1/completions",
            ));
        };
        let tools = req.tools.template_tools();
        if !tools.is_empty()
            && !self
                .tokenizer
                .chat_template()
                .is_some_and(|t| t.contains("tools"))
        {
            return Err(ApiError::invalid(
                "tools",
                "this model's chat template has no tool section; tools cannot be offered to it",
            ));
        }
        let text = tmpl
            .render_with_tools(&req.template_messages, tools, true)
            .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
        // The template writes BOS itself when the model wants one.
        self.encode(&text, false)
    }

    /// The constraint of a chat request's tools, in the model's `<tool_call>` syntax.
    pub fn tool_constraint(&self, req: &ChatRequest) -> Result<Option<ConstraintSpec>, ApiError> {
        if !req.tools.constrains() {
            return Ok(None);
        }
        let tag = |t: &str| match self.tokenizer.token_id(t) {
            Some(id) => Tag::Token(id),
            None => Tag::Text(t.to_string()),
        };
        let (open, close) = (tag(tool_calls::OPEN), tag(tool_calls::CLOSE));
        if req.tools.choice == ToolChoice::Auto && !matches!(open, Tag::Token(_)) {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice \"auto\" needs a model with a <tool_call> token; use \"required\" or a named function",
            ));
        }
        Ok(req.tools.spec(open, close))
    }

    /// Compiles a request's constraint against the model's vocabulary (built on first use).
    /// A schema or grammar that cannot be compiled within the limits is a 400 naming the
    /// field it came from.
    pub fn compile_constraint(&self, spec: &ConstraintSpec) -> Result<Constraint, ApiError> {
        let vocab = self
            .constraints
            .get_or_init(|| {
                ConstraintVocab::new(
                    &self.tokenizer,
                    self.logits_vocab,
                    ConstraintLimits::default(),
                )
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                ApiError::bad_request(format!("constrained decoding is unavailable: {e}"))
            })?;
        let param = match spec {
            ConstraintSpec::JsonObject | ConstraintSpec::JsonSchema { .. } => "response_format",
            ConstraintSpec::Lark(_) | ConstraintSpec::Regex(_) => "grammar",
            ConstraintSpec::ToolCalls { .. } => "tools",
        };
        vocab
            .compile(spec)
            .map_err(|e| ApiError::invalid(param, format!("{param}: {e}")))
    }

    /// Checks `prompt` against the vocabulary and the context, then queues it.
    /// `default_max`: max_tokens when the request gives none (None: the rest of the context).
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        o: &Options,
        default_max: Option<usize>,
        received: Instant,
    ) -> Result<Submitted, ApiError> {
        let room = self.ctx.saturating_sub(prompt.len());
        // Without max_tokens the completion may fill the context (one token at least).
        let max_tokens = o.max_tokens.or(default_max).unwrap_or(room.max(1));
        let seed = o.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let params = GenerateParams {
            max_tokens,
            sampling: o.sampling(seed),
            stop_ids: if o.ignore_eos {
                Vec::new()
            } else {
                self.tokenizer.stop_ids().to_vec()
            },
        };
        // The engine's own check (prompt, vocabulary, context, sampling), then the
        // server's rule that the whole completion must fit the context.
        let limits = Limits {
            vocab: self.vocab,
            ctx: self.ctx,
        };
        limits.check(&prompt, &params).map_err(request_error)?;
        if prompt.len().saturating_add(max_tokens) > self.ctx {
            return Err(ApiError::context_length(prompt.len(), max_tokens, self.ctx));
        }
        if let Some(&(id, _)) = o
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= self.vocab)
        {
            return Err(ApiError::invalid(
                "logit_bias",
                format!(
                    "logit_bias token id {id} is outside the vocabulary of {} tokens",
                    self.vocab
                ),
            ));
        }
        let constraint = o
            .constraint
            .as_ref()
            .map(|spec| self.compile_constraint(spec))
            .transpose()?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, events) = unbounded_channel();
        let job = Job {
            prompt,
            params,
            stop: o.stop.clone(),
            logprobs: o.logprobs,
            constraint,
            logit_bias: o.logit_bias.clone(),
            cancel: cancel.clone(),
            events: tx,
            received,
        };
        self.engine.submit(job)?;
        Ok(Submitted {
            events,
            guard: CancelOnDrop(cancel),
            received,
            busy_poll: self.busy_poll,
            hot: false,
            spinning_since: None,
        })
    }
}

/// The API error of an engine error: a refused request is the client's (400), a backend
/// failure the server's (500).
pub fn request_error(e: EngineError) -> ApiError {
    match e {
        EngineError::EmptyPrompt => ApiError::invalid("prompt", "the prompt is empty"),
        EngineError::BadToken { id, vocab } => ApiError::invalid(
            "prompt",
            format!("token id {id} is outside the vocabulary of {vocab} tokens"),
        ),
        EngineError::PromptTooLong { prompt, ctx } => ApiError::prompt_too_long(prompt, ctx),
        EngineError::Sampling(why) => ApiError::bad_request(why),
        EngineError::Constraint(_) => ApiError::bad_request(e.to_string()),
        EngineError::Backend(_) | EngineError::NanLogits { .. } => {
            ApiError::internal(e.to_string())
        }
        EngineError::Failed(why) => ApiError::engine_failed(&why),
    }
}
