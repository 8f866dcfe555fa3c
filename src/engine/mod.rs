//! The single-stream generation loop: prefill the prompt (reusing the cached prefix), then
//! decode one token at a time until a stop token, the token budget or the context ends.

pub mod bench;
pub mod build;
pub mod constraint;
pub mod cuda_session;
pub mod logprobs;
pub mod recovery;
pub mod sampler;
pub mod session;
pub mod slots;
pub mod spec;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use build::{
    BackendChoice, BuildError, Built, EngineOptions, ModelInfo, ModelSpec, RandomSpec, build,
};
pub use sampler::{Sampler, SamplingParams};
pub use session::{
    MaskedPick, Pick, Rows, Session, SessionOptions, StepInput, StepMask, StepOutput, cpu_session,
    cuda_session,
};
pub use slots::SlotEvent;
use slots::Slots;
pub use spec::{SpecStats, Speculation, SpeculationError, SpeculationOptions};

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the prompt has {prompt} tokens; the context holds {ctx} (raise --ctx, up to the model's limit)"
    )]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// The request's constraint left no token to choose, or refused one.
    #[error("constrained decoding: {0}")]
    Constraint(#[from] constraint::ConstraintError),
    #[error(
        "the model's logits for generated token {index} are all NaN (a damaged model file or a numerical fault)"
    )]
    NanLogits { index: usize },
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device faulted and the engine could not rebuild its session: nothing more runs
    /// (see [`recovery`]).
    #[error("the engine cannot run: {0}")]
    Failed(String),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop_ids: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the previous request.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Duration,
    /// Time spent decoding after the first token.
    pub decode_time: Duration,
    pub finish: FinishReason,
    /// Speculation counts, when the engine has a proposer.
    pub speculation: Option<SpecStats>,
}

impl GenerateStats {
    /// Decode speed after the first token.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if n == 0 || self.decode_time.is_zero() {
            0.0
        } else {
            n as f64 / self.decode_time.as_secs_f64()
        }
    }
}

/// What a request is checked against: the one place a prompt and its sampling settings
/// are validated. The engine checks every request with its own limits; the server checks
/// with the same function before queueing (with the tokenizer's vocabulary when it is
/// smaller), so a bad request is refused at once and never reaches the engine thread.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Token ids must be below this.
    pub vocab: usize,
    /// KV cache positions: the prompt must leave room for one token.
    pub ctx: usize,
}

impl Limits {
    pub fn check(&self, prompt: &[u32], params: &GenerateParams) -> Result<(), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(EngineError::BadToken {
                id,
                vocab: self.vocab,
            });
        }
        if prompt.len() >= self.ctx {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                ctx: self.ctx,
            });
        }
        params.sampling.validate().map_err(EngineError::Sampling)
    }
}

/// What the caller wants after each token.
pub enum Flow {
    Continue,
    Stop,
}

/// One generated token as a streaming caller sees it.
pub struct TokenStep<'a> {
    pub id: u32,
    /// Log-probability of `id` under the model's raw logits; `Some` when asked for.
    pub logprob: Option<f32>,
    /// The most likely tokens and their log-probabilities, best first (when asked for).
    pub top: &'a [(u32, f32)],
}

/// What a streaming caller wants beyond the token ids.
#[derive(Default)]
pub struct StreamOptions<'a> {
    /// `Some(n)`: report each token's log-probability and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Checked between the layers of each prefill chunk (on sessions that can; else between
    /// chunks) and before every decode step; once set, generation
    /// ends at the next check with `FinishReason::Cancelled`.
    pub cancel: Option<&'a AtomicBool>,
    /// The output must follow this constraint (a fresh one: generation works on a copy).
    /// Each step's logits are masked to the allowed tokens before sampling.
    pub constraint: Option<&'a constraint::Constraint>,
    /// OpenAI's `logit_bias`, added to the logits before the mask and the sampler.
    pub logit_bias: &'a [(u32, f32)],
}

/// Owns a session and remembers which tokens its KV cache holds, so a prompt sharing a
/// prefix with the previous sequence only prefills the new suffix.
pub struct Engine {
    session: Box<dyn Session>,
    /// The tokens the active slot's KV cache holds.
    cached: Vec<u32>,
    /// Slots (KV caches of several sequences, when the session has more than one).
    slots: Slots,
    logits: Vec<f32>,
    /// Copy of the raw logits for log-probabilities (the sampler edits `logits` in place).
    raw: Vec<f32>,
    top: Vec<(u32, f32)>,
    /// Draft model and/or prompt lookup; `None`: plain decoding.
    spec: Option<Speculation>,
    /// Rebuilds the sessions after a device fault (`None`: a fault is final).
    restart: Option<recovery::Restart>,
    /// A device fault whose sessions are not rebuilt yet (see [`Engine::recover`]).
    lost: Option<String>,
    /// Why nothing runs any more: a device fault the engine could not recover from.
    failure: Option<String>,
    /// Device faults seen, and sessions rebuilt after them.
    faults: u64,
    restarts: u64,
}

/// Hands generated tokens to the caller and decides when generation ends: a stop token
/// (not passed on), the caller's `Flow::Stop`, or the token budget. Both decode loops emit
/// through it, so they end alike.
pub(crate) struct Emitter<'a, 'b> {
    params: &'a GenerateParams,
    on_token: &'a mut dyn FnMut(&TokenStep<'_>) -> Flow,
    t0: Instant,
    first: Option<Instant>,
    stats: &'b mut GenerateStats,
    /// Set when a pick had no token (every logit NaN): generation ends there, as an error.
    nan_at: Option<usize>,
}

impl Emitter<'_, '_> {
    fn generated(&self) -> usize {
        self.stats.generated_tokens
    }

    /// Emit `step`; `Some(reason)` when generation ends here.
    fn emit_step(&mut self, step: &TokenStep<'_>) -> Option<FinishReason> {
        if step.id == sampler::NO_TOKEN {
            self.nan_at = Some(self.stats.generated_tokens);
            return Some(FinishReason::Stop);
        }
        if self.first.is_none() {
            let now = Instant::now();
            self.first = Some(now);
            self.stats.time_to_first_token = now - self.t0;
        }
        if self.params.stop_ids.contains(&step.id) {
            return Some(FinishReason::Stop);
        }
        self.stats.generated_tokens += 1;
        if let Flow::Stop = (self.on_token)(step) {
            return Some(FinishReason::Cancelled);
        }
        (self.stats.generated_tokens >= self.params.max_tokens).then_some(FinishReason::Length)
    }

    fn emit(&mut self, id: u32) -> Option<FinishReason> {
        self.emit_step(&TokenStep {
            id,
            logprob: None,
            top: &[],
        })
    }
}

impl Engine {
    pub fn new(session: Box<dyn Session>) -> Engine {
        let vocab = session.vocab_size();
        let slots = Slots::new(session.slots());
        Engine {
            session,
            cached: Vec::new(),
            slots,
            logits: vec![0.0; vocab],
            raw: Vec::new(),
            top: Vec::new(),
            spec: None,
            restart: None,
            lost: None,
            failure: None,
            faults: 0,
            restarts: 0,
        }
    }

    /// How to rebuild the sessions after a device fault (see [`recovery`]).
    pub fn set_restart(&mut self, restart: recovery::Restart) {
        self.restart = Some(restart);
    }

    /// Why the engine no longer runs anything, once a device fault could not be recovered.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Device faults seen so far, and how many of them the engine recovered from by
    /// rebuilding its sessions.
    pub fn fault_counts(&self) -> (u64, u64) {
        (self.faults, self.restarts)
    }

    /// After a step failed: the cache may hold half-written positions, so none of it is
    /// kept. A device fault also leaves the sessions unusable: every handle on the faulted
    /// context is dropped now (the driver resets a primary context once its last reference
    /// is released), and [`Engine::recover`] rebuilds them.
    fn after_backend_error(&mut self, err: &BackendError) {
        self.cached.clear();
        if !err.is_device_fault() {
            return;
        }
        self.faults += 1;
        self.slots.forget();
        let why = err.to_string();
        self.session = Box::new(recovery::FailedSession::replacing(
            &*self.session,
            why.clone(),
        ));
        self.spec = None;
        self.lost = Some(why);
    }

    /// After a device fault: rebuilds the sessions (or, when that cannot be done, leaves
    /// the engine failed with the reason). Runs by itself before the next request; the
    /// server calls it as soon as the faulted request has its error, so the rebuild does
    /// not delay that answer. Does nothing when no fault is pending.
    pub fn recover(&mut self) {
        let Some(why) = self.lost.take() else {
            return;
        };
        let Some(restart) = self.restart.as_mut() else {
            self.failure = Some(format!("{why} (this engine cannot rebuild its session)"));
            return;
        };
        match restart() {
            Ok(rebuilt) if rebuilt.session.vocab_size() == self.vocab_size() => {
                self.slots = Slots::new(rebuilt.session.slots());
                self.session = rebuilt.session;
                self.spec = rebuilt.speculation;
                self.restarts += 1;
            }
            Ok(rebuilt) => {
                self.failure = Some(format!(
                    "{why}; the rebuilt session has {} logits, not {}",
                    rebuilt.session.vocab_size(),
                    self.vocab_size()
                ));
            }
            Err(e) => self.failure = Some(format!("{why}; rebuilding the session failed: {e}")),
        }
    }

    /// Runs `run`, then the clean-up a backend error needs; refused at once when the engine
    /// has failed.
    fn guarded<T>(
        &mut self,
        run: impl FnOnce(&mut Self) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.recover();
        if let Some(why) = &self.failure {
            return Err(EngineError::Failed(why.clone()));
        }
        let r = run(self);
        if let Err(EngineError::Backend(e)) = &r {
            self.after_backend_error(e);
        }
        r
    }

    /// Decode with speculation (a draft model, prompt lookup or both) from now on; `None`
    /// turns it off. (`DraftModel::new` checks the draft's vocabulary against the target's.)
    pub fn set_speculation(&mut self, spec: Option<Speculation>) {
        self.spec = spec;
    }

    /// Takes the speculation out (plain decoding from now on), to set it again later.
    pub fn take_speculation(&mut self) -> Option<Speculation> {
        self.spec.take()
    }

    /// Logits per position of the target model.
    pub fn vocab_size(&self) -> usize {
        self.session.vocab_size()
    }

    pub fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    pub fn ctx(&self) -> usize {
        self.session.ctx()
    }

    /// Positions of the KV caches (every slot) that hold kept sequences.
    pub fn cached_len(&self) -> usize {
        self.cached.len() + self.slots.parked_tokens()
    }

    /// Forgets the kept sequences (after a warm-up run), so no request reuses them.
    pub fn forget_cache(&mut self) {
        self.cached.clear();
        self.slots.forget();
    }

    /// KV caches of this many sequences are kept (see [`slots`]).
    pub fn slots(&self) -> usize {
        self.slots.count()
    }

    /// Bytes of KV cache one position of one slot takes (0 when the backend does not say).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.session.kv_bytes_per_position()
    }

    /// The kernels of one decode step (see [`Session::profile_step`]); `None` on a backend
    /// without kernels, or before any decode step.
    pub fn profile_step(
        &mut self,
        timed: bool,
    ) -> Result<Option<crate::backend::StepProfile>, EngineError> {
        self.guarded(|e| Ok(e.session.profile_step(timed)?))
    }

    /// Rows of logits the session has copied from its device to the host so far (see
    /// [`Session::logits_rows_copied`]).
    pub fn logits_rows_copied(&self) -> u64 {
        self.session.logits_rows_copied()
    }

    /// The most prompt tokens one forward call takes (the prefill chunk).
    pub fn max_batch(&self) -> usize {
        self.session.max_batch()
    }

    /// Which slot the last request took, and how (`None` with one slot).
    pub fn last_slot_event(&self) -> Option<SlotEvent> {
        self.slots.last
    }

    /// Run the prompt and return the logits after its last token. Reuses the cached prefix.
    fn prefill(&mut self, prompt: &[u32]) -> Result<usize, EngineError> {
        self.prefill_until(prompt, None).map(|(cached, _)| cached)
    }

    /// `prefill` that stops between chunks once `cancel` is set; returns the number of
    /// reused tokens and whether the whole prompt ran. The cache stays consistent either way.
    fn prefill_until(
        &mut self,
        prompt: &[u32],
        cancel: Option<&AtomicBool>,
    ) -> Result<(usize, bool), EngineError> {
        if self.slots.count() > 1 {
            let (slot, event) = self.slots.choose(&self.cached, prompt);
            if slot != self.slots.active {
                self.session.use_slot(slot)?;
                self.slots.switch(&mut self.cached, slot);
            }
            self.slots.last = Some(event);
        }
        let common = slots::common_prefix(&self.cached, prompt);
        // At least one token must run to produce logits.
        let start = common.min(prompt.len() - 1);
        self.cached.truncate(start);
        let batch = self.session.max_batch();
        let mut pos = start;
        while pos < prompt.len() {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Ok((start, false));
            }
            let end = (pos + batch).min(prompt.len());
            let input = StepInput {
                tokens: &prompt[pos..end],
                pos,
            };
            match cancel {
                // Checked between layers too: a replacement need not wait for the chunk.
                Some(c) => {
                    if !self
                        .session
                        .step_until_cancelled(input, &mut self.logits, c)?
                    {
                        return Ok((start, false));
                    }
                }
                None => {
                    self.session
                        .step(input, Pick::Logits(&mut self.logits), Rows::Last)?;
                }
            }
            self.cached.extend_from_slice(&prompt[pos..end]);
            pos = end;
        }
        Ok((start, true))
    }

    /// The logits after the last call (vocab-sized).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Prefill `prompt` and return the logits of its last position (used by tests).
    pub fn prompt_logits(&mut self, prompt: &[u32]) -> Result<&[f32], EngineError> {
        let greedy = GenerateParams {
            max_tokens: 0,
            sampling: SamplingParams::greedy(),
            stop_ids: Vec::new(),
        };
        self.limits().check(prompt, &greedy)?;
        self.guarded(|e| e.prefill(prompt))?;
        Ok(&self.logits)
    }

    /// The limits this engine checks every request against.
    pub fn limits(&self) -> Limits {
        Limits {
            vocab: self.session.vocab_size(),
            ctx: self.ctx(),
        }
    }

    /// Generate from `prompt`, calling `on_token` with each new token as soon as it is
    /// sampled. Stop tokens end generation and are not passed on.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32) -> Flow,
    ) -> Result<GenerateStats, EngineError> {
        self.generate_stream(prompt, params, &StreamOptions::default(), &mut |step| {
            on_token(step.id)
        })
    }

    /// `generate` with log-probabilities and cancellation (see [`StreamOptions`]). A
    /// backend error ends this request; a device fault also rebuilds the sessions for the
    /// next one (see [`recovery`]).
    pub fn generate_stream(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        opts: &StreamOptions<'_>,
        on_token: &mut dyn FnMut(&TokenStep<'_>) -> Flow,
    ) -> Result<GenerateStats, EngineError> {
        self.guarded(|e| e.generate_unguarded(prompt, params, opts, on_token))
    }

    fn generate_unguarded(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        opts: &StreamOptions<'_>,
        on_token: &mut dyn FnMut(&TokenStep<'_>) -> Flow,
    ) -> Result<GenerateStats, EngineError> {
        self.limits().check(prompt, params)?;
        let t0 = Instant::now();
        let (cached_tokens, complete) = self.prefill_until(prompt, opts.cancel)?;
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            cached_tokens,
            generated_tokens: 0,
            time_to_first_token: Duration::ZERO,
            decode_time: Duration::ZERO,
            finish: FinishReason::Length,
            speculation: None,
        };
        if !complete {
            stats.finish = FinishReason::Cancelled;
            return Ok(stats);
        }
        let mut sampler = Sampler::new(params.sampling.clone(), prompt);
        // Every generation tells the session its settings, so none outlives its request.
        let device_penalties = self.session.begin_generation(prompt, &params.sampling)?;
        let mut spec_stats = self.spec.as_ref().map(|_| SpecStats::default());
        let mut emit = Emitter {
            params,
            on_token,
            t0,
            first: None,
            stats: &mut stats,
            nan_at: None,
        };
        if params.max_tokens == 0 {
            emit.stats.finish = FinishReason::Length;
        } else if let Some(mut spec) = self.spec.take() {
            // Speculation keeps the text exactly the target's; it needs the raw logits
            // as they come (no penalties, which depend on the tokens being verified) and
            // no per-token log-probabilities. A constraint and logit_bias act on each
            // verified row (`spec/decode.rs`).
            let sst = spec_stats.get_or_insert_with(SpecStats::default);
            let blocker = if !params.sampling.has_no_penalties() {
                Some("repetition, presence and frequency penalties turn speculation off")
            } else if opts.logprobs.is_some() {
                Some("log-probabilities turn speculation off")
            } else {
                None
            };
            let end = match blocker {
                None => self.decode_speculative(
                    &mut spec,
                    prompt,
                    params,
                    opts,
                    &mut sampler,
                    &mut emit,
                    sst,
                ),
                Some(why) => {
                    sst.off = Some(why);
                    self.decode_plain(params, opts, &mut sampler, &mut emit, device_penalties)
                }
            };
            self.spec = Some(spec);
            emit.stats.finish = end?;
        } else {
            emit.stats.finish =
                self.decode_plain(params, opts, &mut sampler, &mut emit, device_penalties)?;
        }
        if let Some(index) = emit.nan_at {
            // What the cache holds produced no number: keep none of it for the next request.
            self.cached.clear();
            return Err(EngineError::NanLogits { index });
        }
        let t_first = emit.first.unwrap_or(t0);
        stats.decode_time = t_first.elapsed();
        // What ran (prompt and output) is what a proposer of earlier requests learns from.
        if let Some(spec) = self.spec.as_mut() {
            spec.proposer.record(&self.cached);
        }
        stats.speculation = spec_stats;
        Ok(stats)
    }

    /// A decode step whose token the session picks under `c`'s mask for this step (computed
    /// when the session asks, once the forward pass is queued); a matcher error is returned
    /// as itself.
    pub(crate) fn step_masked(
        &mut self,
        input: StepInput<'_>,
        c: &mut constraint::Constraint,
        pick: MaskedPick<'_>,
    ) -> Result<Option<u32>, EngineError> {
        let mut mask = constraint::ConstraintMask::new(c);
        let masked = Pick::Masked {
            mask: &mut mask,
            pick,
        };
        let stepped = self.session.step(input, masked, Rows::Last);
        // The matcher's own error, in place of the session's "no mask".
        if let Some(e) = mask.take_error() {
            return Err(e.into());
        }
        Ok(stepped?.token())
    }

    /// The rest of a generation whose tokens no stop rule can end (no stop ids, no
    /// constraint, picks the session makes): `token`, already emitted and accepted, goes in
    /// at `pos`, and [`Session::decode_run`] runs the steps after it, each queued on a GPU
    /// before the token of the one before is read. Returns why generation ended.
    fn decode_ahead(
        &mut self,
        token: u32,
        pos: usize,
        params: &GenerateParams,
        opts: &StreamOptions<'_>,
        sampler: &mut Sampler,
        emit: &mut Emitter<'_, '_>,
    ) -> Result<FinishReason, EngineError> {
        let steps = params
            .max_tokens
            .saturating_sub(emit.generated())
            .min(self.ctx().saturating_sub(pos));
        if steps == 0 {
            return Ok(FinishReason::Length);
        }
        let mut end = None;
        let mut input = token;
        let (session, cached) = (&mut self.session, &mut self.cached);
        session.decode_run(token, pos, &params.sampling, steps, &mut |t| {
            // The step that took `input` ran: its position is cached from here on.
            cached.push(input);
            end = emit.emit(t);
            if end.is_some() {
                return false;
            }
            sampler.accept(t);
            if opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                end = Some(FinishReason::Cancelled);
                return false;
            }
            input = t;
            true
        })?;
        // A run that ended without a reason ran out of tokens or of context.
        Ok(end.unwrap_or(FinishReason::Length))
    }

    /// One target forward pass per token. Returns why generation ended. `device_penalties`:
    /// the session applies the penalties itself (`Session::begin_generation`).
    fn decode_plain(
        &mut self,
        params: &GenerateParams,
        opts: &StreamOptions<'_>,
        sampler: &mut Sampler,
        emit: &mut Emitter<'_, '_>,
        device_penalties: bool,
    ) -> Result<FinishReason, EngineError> {
        let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        let mut constraint = opts.constraint.cloned();
        // The session picks the token where the logits are (on a GPU, on the device),
        // under the constraint's mask when there is one (`Pick::Masked`: the session asks
        // for the mask once the step's forward pass is queued, so on a GPU the matcher
        // runs while the forward pass does, and no logits are copied), and with the
        // penalties when it applies them (a GPU session does, from its token history on the
        // device; not under a mask). Otherwise penalties need the host's token history,
        // log-probabilities the raw logits, and logit_bias changes the logits before the
        // pick: all on the host, so then the logits come back and the sampler picks (the
        // mask applied there too).
        let penalties_ok =
            params.sampling.has_no_penalties() || (device_penalties && constraint.is_none());
        let session_pick = penalties_ok && opts.logprobs.is_none() && opts.logit_bias.is_empty();
        let mut next: Option<u32> = None;
        loop {
            let token = match next.take() {
                Some(t) => t,
                None => {
                    if opts.logprobs.is_some() {
                        self.raw.clear();
                        self.raw.extend_from_slice(&self.logits);
                    }
                    constraint::apply_logit_bias(&mut self.logits, opts.logit_bias);
                    if let Some(c) = constraint.as_mut()
                        && let Some(mask) = c.compute_mask()?
                    {
                        constraint::apply_mask(&mut self.logits, mask);
                    }
                    sampler.sample(&mut self.logits)
                }
            };
            let logprob = opts
                .logprobs
                .map(|n| logprobs::logprobs(&self.raw, token, n, &mut self.top));
            let step = TokenStep {
                id: token,
                logprob,
                top: if logprob.is_some() { &self.top } else { &[] },
            };
            let end = emit.emit_step(&step);
            if let Some(c) = constraint.as_mut()
                && matches!(end, None | Some(FinishReason::Length))
            {
                c.commit(token)?;
                if c.is_complete() {
                    return Ok(FinishReason::Stop);
                }
            }
            if let Some(end) = end {
                return Ok(end);
            }
            sampler.accept(token);
            let pos = self.cached.len();
            if pos + 1 > self.ctx() {
                return Ok(FinishReason::Length);
            }
            if cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            let input = StepInput {
                tokens: &[token],
                pos,
            };
            if session_pick && constraint.is_none() && params.stop_ids.is_empty() {
                // No stop rule can end the sequence at a token: the session may queue each
                // step before the last one's token is read.
                return self.decode_ahead(token, pos, params, opts, sampler, emit);
            }
            if session_pick {
                let sp = &params.sampling;
                let pick = if sp.temperature == 0.0 {
                    MaskedPick::Argmax
                } else {
                    // A fresh, reproducible random stream per position and seed (the one a
                    // GPU session's step also derives on the device).
                    let seed = crate::backend::position_seed(sp.seed, pos);
                    MaskedPick::Sample { params: sp, seed }
                };
                next = match constraint.as_mut() {
                    None => {
                        let pick = match pick {
                            MaskedPick::Argmax => Pick::Argmax,
                            MaskedPick::Sample { params, seed } => Pick::Sample { params, seed },
                        };
                        self.session.step(input, pick, Rows::Last)?.token()
                    }
                    Some(c) => self.step_masked(input, c, pick)?,
                };
            } else {
                self.session
                    .step(input, Pick::Logits(&mut self.logits), Rows::Last)?;
            }
            self.cached.push(token);
        }
    }
}
