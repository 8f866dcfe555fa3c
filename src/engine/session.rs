//! A model bound to a backend with its KV cache: the one object the generation loop drives.
//! Type-erased so the engine does not care which backend runs underneath.
//!
//! One call runs the model: [`Session::step`] runs tokens at positions and says what to
//! pick from the logits it made ([`Pick`]): the logits themselves, each row's argmax, or a
//! sampled token, for the last row or for every row of a verify pass ([`Rows`]). Every
//! session implements every pick: the CPU session picks on the host with the sampler's
//! code ([`pick_on_host`]); the CUDA session picks on the device where it can, so a decode
//! step copies back 4 bytes instead of a vocabulary of logits.
//!
//! A constrained step picks under a token mask ([`Pick::Masked`]) that the session asks
//! for ([`StepMask`]) only after it has queued the step's forward pass: the mask depends on
//! the tokens so far alone, so the CUDA session computes it on the host while the GPU runs
//! the forward pass, uploads it and picks on the device (no logits copy, no extra sync).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::cpu::CpuBackend;
use crate::backend::{BackendError, KvDtype, Ops, StepProfile};
pub use crate::graph::llama::MAX_VERIFY_ROWS;
use crate::graph::llama::{Llama, State};

pub use super::cuda_session::cuda_session;
use super::sampler::{SamplingParams, argmax, sample_filtered};
use crate::format::{ModelConfig, ModelWeights};

/// Tokens to run, at positions `pos..pos + tokens.len()` (the KV cache grows to cover them).
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub pos: usize,
}

/// Which rows of the step the pick is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The last token's: the next token after the input (prefill, a decode step).
    Last,
    /// Every token's, at most [`MAX_VERIFY_ROWS`]: the verify pass of speculative decoding.
    All,
}

/// The allowed tokens of one step's pick, asked for by the session once it has queued the
/// step's forward pass (a GPU session runs that forward pass meanwhile).
pub trait StepMask {
    /// The allowed tokens as a bitmask of at least `vocab.div_ceil(32)` words (bit `i % 32`
    /// of word `i / 32` allows token `i`), or `None` when every token is allowed (a free
    /// step, e.g. a tool-call constraint before its trigger). Called once per step. On
    /// `Err` the step ends without a pick (the session returns an error); the implementor
    /// keeps why, for its caller.
    fn allowed(&mut self) -> Result<Option<&[u32]>, MaskUnavailable>;
}

/// A [`StepMask`] could not say which tokens are allowed (its owner holds the reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskUnavailable;

/// What a [`Pick::Masked`] picks among the allowed tokens.
#[derive(Clone, Copy, Debug)]
pub enum MaskedPick<'a> {
    /// As [`Pick::Argmax`].
    Argmax,
    /// As [`Pick::Sample`].
    Sample {
        params: &'a SamplingParams,
        seed: u64,
    },
}

/// What to pick from the logits of a step.
pub enum Pick<'a> {
    /// Copy the logits out: one row (vocab values) for [`Rows::Last`], `tokens.len()` rows
    /// one after another for [`Rows::All`].
    Logits(&'a mut [f32]),
    /// Each row's argmax (lowest id on ties, NaN never).
    Argmax,
    /// Each row's token drawn with the sampler's top-k, temperature, min-p and top-p
    /// (penalties only as [`Session::begin_generation`] says) from a random
    /// stream seeded by `seed` (row `i` by `seed + i`). Temperature 0 is the argmax.
    Sample {
        params: &'a SamplingParams,
        seed: u64,
    },
    /// [`Rows::Last`] only: `pick` among the tokens `mask` allows, the mask asked for after
    /// the step's forward pass is queued. A refused token is no candidate at all, as a NaN
    /// logit is (the argmax and the sampler's distribution over the allowed tokens; top-k
    /// counts allowed tokens only), so no allowed number gives [`super::sampler::NO_TOKEN`].
    Masked {
        mask: &'a mut dyn StepMask,
        pick: MaskedPick<'a>,
    },
}

/// The token ids a step picked, one per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    ids: [u32; MAX_VERIFY_ROWS],
    len: usize,
}

impl Picked {
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// From a slice of at most [`MAX_VERIFY_ROWS`] ids.
    pub fn from_slice(ids: &[u32]) -> Picked {
        let mut p = Picked {
            ids: [0; MAX_VERIFY_ROWS],
            len: ids.len().min(MAX_VERIFY_ROWS),
        };
        p.ids[..p.len].copy_from_slice(&ids[..p.len]);
        p
    }
}

/// What a step returns: nothing beyond the logits it wrote, or the picked ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutput {
    Logits,
    Tokens(Picked),
}

impl StepOutput {
    /// The ids picked (empty for [`Pick::Logits`]).
    pub fn tokens(&self) -> &[u32] {
        match self {
            StepOutput::Logits => &[],
            StepOutput::Tokens(p) => p.as_slice(),
        }
    }

    /// The last row's id, for a [`Rows::Last`] pick.
    pub fn token(&self) -> Option<u32> {
        self.tokens().last().copied()
    }
}

pub trait Session: Send {
    fn backend_name(&self) -> &'static str;
    /// Positions the KV cache holds.
    fn ctx(&self) -> usize;
    /// Most tokens one step takes.
    fn max_batch(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Run `input`, extending the cache, and pick from the logits of `rows` as `pick`
    /// says. Checks the shapes: tokens within `max_batch` and the context (and
    /// [`MAX_VERIFY_ROWS`] for [`Rows::All`]), a logits buffer of the rows' size.
    fn step(
        &mut self,
        input: StepInput<'_>,
        pick: Pick<'_>,
        rows: Rows,
    ) -> Result<StepOutput, BackendError>;

    /// A prefill step (`Rows::Last`, the logits into `logits`) that stops early once
    /// `cancel` is set: `Ok(false)` then, with positions `input.pos..` of the cache holding
    /// partial work that the caller must not count as cached. Sessions that can check
    /// between layers do (a cancel then waits for one layer, not a whole chunk); this
    /// default checks only before the step.
    fn step_until_cancelled(
        &mut self,
        input: StepInput<'_>,
        logits: &mut [f32],
        cancel: &AtomicBool,
    ) -> Result<bool, BackendError> {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.step(input, Pick::Logits(logits), Rows::Last)?;
        Ok(true)
    }

    /// Rows of logits this session has copied from a device to the host so far (0 for a
    /// session whose logits are made on the host): how a test tells that a pick stayed on
    /// the device.
    fn logits_rows_copied(&self) -> u64 {
        0
    }

    /// The row counts of the verify passes this session replays as captured graphs, in
    /// capture order (none for a session without graphs): how a test tells that a verify
    /// step is one replay.
    fn verify_graph_rows(&self) -> Vec<usize> {
        Vec::new()
    }

    /// KV caches this session holds (slots), each of [`Session::ctx`] positions.
    fn slots(&self) -> usize {
        1
    }

    /// Makes slot `slot` (below [`Session::slots`]) the KV cache later steps read and
    /// extend; the others keep their contents.
    fn use_slot(&mut self, slot: usize) -> Result<(), BackendError> {
        if slot == 0 {
            Ok(())
        } else {
            Err(shape_err(format!("slot {slot} of a one-slot session")))
        }
    }

    /// Bytes of KV cache one position of one slot takes.
    fn kv_bytes_per_position(&self) -> usize {
        0
    }

    /// Called before a generation's decode steps (after its prompt ran, at positions
    /// `0..prompt.len()`): a session that can apply `sampling`'s repetition, presence and
    /// frequency penalties itself, from the prompt and the tokens its later decode steps
    /// take, keeps what it needs and returns `true`; its [`Pick::Argmax`] and
    /// [`Pick::Sample`] decode steps then pick after those penalties, until the next call.
    /// The steps must then take each position once, in order, from `prompt.len()` on.
    /// This default keeps nothing: penalties stay with the host's sampler.
    fn begin_generation(
        &mut self,
        _prompt: &[u32],
        _sampling: &SamplingParams,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Up to `steps` decode steps from `token` at `pos`, each picking as `sampling` says
    /// (the argmax at temperature 0, else a draw seeded with
    /// [`position_seed`](crate::backend::position_seed)`(sampling.seed, position)`;
    /// penalties only as [`Session::begin_generation`] said), each step taking the token
    /// the one before picked. `on_token` gets each picked token in order and returns
    /// whether to go on; a pick of no token ([`super::sampler::NO_TOKEN`]) is passed on and
    /// ends the run. Returns the tokens passed on. Positions past the last step whose
    /// token went on may hold work of a step run ahead: not cached. This default runs
    /// the steps one by one; a GPU session queues each step before reading the last one's
    /// token.
    fn decode_run(
        &mut self,
        token: u32,
        pos: usize,
        sampling: &SamplingParams,
        steps: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<usize, BackendError> {
        decode_step_by_step(self, token, pos, sampling, steps, on_token)
    }

    /// The kernels of one decode step, counted (and timed with `timed`) on a session that
    /// launches kernels, after at least one decode step; `None` elsewhere.
    fn profile_step(&mut self, _timed: bool) -> Result<Option<StepProfile>, BackendError> {
        Ok(None)
    }
}

/// [`Session::decode_run`] one step at a time, each token read before the next step is
/// queued: the default, and what a session falls back to when it cannot run ahead.
pub fn decode_step_by_step<S: Session + ?Sized>(
    session: &mut S,
    token: u32,
    pos: usize,
    sampling: &SamplingParams,
    steps: usize,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<usize, BackendError> {
    let mut input = token;
    for k in 0..steps {
        let at = pos + k;
        let pick = if sampling.temperature == 0.0 {
            Pick::Argmax
        } else {
            Pick::Sample {
                params: sampling,
                seed: crate::backend::position_seed(sampling.seed, at),
            }
        };
        let step = StepInput {
            tokens: &[input],
            pos: at,
        };
        let next = session
            .step(step, pick, Rows::Last)?
            .token()
            .unwrap_or(super::sampler::NO_TOKEN);
        let go_on = on_token(next);
        if next == super::sampler::NO_TOKEN || !go_on {
            return Ok(k + 1);
        }
        input = next;
    }
    Ok(steps)
}

fn shape_err(msg: String) -> BackendError {
    BackendError::Device(format!("session step: {msg}"))
}

/// Checks a step's shape against a session's limits; returns the number of logit rows.
pub fn check_step(
    input: &StepInput<'_>,
    pick: &Pick<'_>,
    rows: Rows,
    (ctx, max_batch, vocab): (usize, usize, usize),
) -> Result<usize, BackendError> {
    let n = input.tokens.len();
    if n == 0 || n > max_batch || input.pos + n > ctx {
        return Err(shape_err(format!(
            "{n} tokens at position {} (the session takes 1 to {max_batch} within a context of {ctx})",
            input.pos
        )));
    }
    let n_rows = match rows {
        Rows::Last => 1,
        Rows::All if matches!(pick, Pick::Masked { .. }) => {
            return Err(shape_err(
                "a masked pick is made for the last row only".into(),
            ));
        }
        Rows::All if n <= MAX_VERIFY_ROWS => n,
        Rows::All => {
            return Err(shape_err(format!(
                "{n} verify rows; at most {MAX_VERIFY_ROWS}"
            )));
        }
    };
    if let Pick::Logits(out) = pick
        && out.len() != n_rows * vocab
    {
        return Err(shape_err(format!(
            "a logits buffer of {} values for {n_rows} rows of {vocab}",
            out.len()
        )));
    }
    Ok(n_rows)
}

/// `pick` (not [`Pick::Logits`]) made on the host from `logits` (rows of `vocab`), with
/// the sampler's code: what the CPU session does, and the CUDA session where the device
/// has no kernel for it. A masked pick asks for its mask here (the forward pass is done)
/// and overwrites the refused logits of its row; an unavailable mask is an error.
pub fn pick_on_host(
    logits: &mut [f32],
    vocab: usize,
    pick: &mut Pick<'_>,
    scratch: &mut Vec<(u32, f32)>,
) -> Result<Picked, BackendError> {
    if let Pick::Masked { mask, pick } = pick {
        let n = logits.len();
        let row = logits
            .get_mut(..vocab)
            .ok_or_else(|| shape_err(format!("a masked pick from {n} logits")))?;
        let allowed = mask.allowed().map_err(|_| mask_unavailable())?;
        let id = pick_masked_on_host(row, allowed, *pick, scratch)?;
        return Ok(Picked::from_slice(&[id]));
    }
    let mut ids = [0u32; MAX_VERIFY_ROWS];
    let mut len = 0;
    for (i, row) in logits.chunks_exact(vocab).take(MAX_VERIFY_ROWS).enumerate() {
        ids[i] = match pick {
            Pick::Sample { params, seed } if params.temperature > 0.0 => {
                sample_filtered(params, row, seed.wrapping_add(i as u64), scratch)
            }
            _ => argmax(row),
        };
        len = i + 1;
    }
    Ok(Picked { ids, len })
}

/// The error of a step whose [`StepMask`] could not give its mask.
pub fn mask_unavailable() -> BackendError {
    shape_err("the step's token mask could not be computed".into())
}

/// `pick` among the tokens `mask` allows (`None`: all) of one row of logits: the CPU twin of
/// the device's masked picks (`argmax_partial_masked`, the `sample_*_masked` draw). Refused
/// logits become NaN in `row`, which the argmax and the sampler never choose, so the pick is
/// the unmasked pick's code over the allowed tokens alone (the result the engine had by
/// setting refused logits to -inf and picking, except that no allowed number now gives
/// [`super::sampler::NO_TOKEN`] rather than a refused token). A mask shorter than the row's
/// `row.len().div_ceil(32)` words is refused.
pub fn pick_masked_on_host(
    row: &mut [f32],
    mask: Option<&[u32]>,
    pick: MaskedPick<'_>,
    scratch: &mut Vec<(u32, f32)>,
) -> Result<u32, BackendError> {
    if let Some(mask) = mask {
        if mask.len() < row.len().div_ceil(32) {
            return Err(shape_err(format!(
                "a token mask of {} words for {} logits",
                mask.len(),
                row.len()
            )));
        }
        for (chunk, &bits) in row.chunks_mut(32).zip(mask) {
            if bits == u32::MAX {
                continue;
            }
            for (i, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << i) == 0 {
                    *l = f32::NAN;
                }
            }
        }
    }
    Ok(match pick {
        MaskedPick::Sample { params, seed } => sample_filtered(params, row, seed, scratch),
        MaskedPick::Argmax => argmax(row),
    })
}

struct OpsSession<B: Ops> {
    backend: B,
    model: Llama<B>,
    /// One state (KV cache and activations) per slot; `active` is the one steps use.
    states: Vec<State<B>>,
    active: usize,
    /// Host logits for picks made here (vocab, or verify rows x vocab).
    logits: Vec<f32>,
    scratch: Vec<(u32, f32)>,
}

impl<B: Ops + Send> Session for OpsSession<B>
where
    Llama<B>: Send,
    State<B>: Send,
{
    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn ctx(&self) -> usize {
        self.states[self.active].ctx
    }

    fn max_batch(&self) -> usize {
        self.states[self.active].max_batch
    }

    fn slots(&self) -> usize {
        self.states.len()
    }

    fn use_slot(&mut self, slot: usize) -> Result<(), BackendError> {
        if slot >= self.states.len() {
            return Err(shape_err(format!(
                "slot {slot} of a {}-slot session",
                self.states.len()
            )));
        }
        self.active = slot;
        Ok(())
    }

    fn kv_bytes_per_position(&self) -> usize {
        f32_kv_bytes(&self.model.cfg)
    }

    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn step_until_cancelled(
        &mut self,
        input: StepInput<'_>,
        logits: &mut [f32],
        cancel: &AtomicBool,
    ) -> Result<bool, BackendError> {
        let vocab = self.vocab_size();
        let limits = (self.ctx(), self.max_batch(), vocab);
        check_step(&input, &Pick::Logits(&mut *logits), Rows::Last, limits)?;
        let (b, s) = (&mut self.backend, &mut self.states[self.active]);
        let stop = || cancel.load(Ordering::Relaxed);
        self.model
            .forward_until(b, s, input.tokens, input.pos, logits, &stop)
    }

    fn step(
        &mut self,
        input: StepInput<'_>,
        mut pick: Pick<'_>,
        rows: Rows,
    ) -> Result<StepOutput, BackendError> {
        let vocab = self.vocab_size();
        let limits = (self.ctx(), self.max_batch(), vocab);
        let n_rows = check_step(&input, &pick, rows, limits)?;
        let out: &mut [f32] = match &mut pick {
            Pick::Logits(out) => out,
            _ => {
                self.logits.resize(n_rows * vocab, 0.0);
                &mut self.logits
            }
        };
        let (b, s) = (&mut self.backend, &mut self.states[self.active]);
        match rows {
            Rows::Last => self.model.forward(b, s, input.tokens, input.pos, out)?,
            Rows::All => self
                .model
                .forward_rows(b, s, input.tokens, input.pos, out)?,
        }
        Ok(match pick {
            Pick::Logits(_) => StepOutput::Logits,
            mut pick => StepOutput::Tokens(pick_on_host(
                &mut self.logits,
                vocab,
                &mut pick,
                &mut self.scratch,
            )?),
        })
    }
}

/// Options for building a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// KV cache positions (clamped to the model's context length).
    /// [`SessionOptions::MODEL_CTX`]: the model's own context length, capped so that the
    /// slots' KV caches fit the memory budget (see [`kv_layout`]).
    pub ctx: usize,
    /// Prompt tokens per forward call during prefill.
    pub max_batch: usize,
    /// CPU: exact f32 dot products instead of 8-bit activations.
    pub precise: bool,
    /// CPU: copy the weights into huge-page memory at load (faster decoding, slower load,
    /// the model's size in resident memory) instead of reading the file mapping.
    pub resident_weights: bool,
    /// KV caches of this many sequences (slots). 0: as many as a quarter of the available
    /// memory holds, 1 to 4 (the CUDA session: 4, see `cuda_session`).
    pub slots: usize,
    /// CUDA: the KV cache's element type (the CPU keeps f32).
    pub kv_dtype: KvDtype,
    /// CUDA: block-format matrices read int8 activations (`CudaBackend::set_int8_acts`).
    /// A CPU session rounds its activations the same way (`CpuBackend::round_acts_int8`:
    /// the twin the GPU path is checked against).
    pub int8_acts: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ctx: 4096,
            max_batch: 64,
            precise: false,
            resident_weights: true,
            slots: 1,
            kv_dtype: KvDtype::default(),
            int8_acts: false,
        }
    }
}

impl SessionOptions {
    /// `ctx` for "the model's context length, as far as memory allows".
    pub const MODEL_CTX: usize = usize::MAX;
}

/// The fewest positions [`SessionOptions::MODEL_CTX`] shrinks to under a small budget (the
/// model's own length when shorter): below it most requests would fail.
const MIN_AUTO_CTX: usize = 256;

/// Slots left to the default take at most this many.
const MAX_AUTO_SLOTS: usize = 4;

/// The positions of each KV cache and the number of caches (slots) a session gets:
/// `opts.ctx` clamped to the model's length, or for [`SessionOptions::MODEL_CTX`] the
/// model's length capped so that the slots asked for (one when left to the default) fit in
/// `budget` bytes; then `opts.slots`, or when 0 as many caches as `budget` holds (1 to 4).
/// `kv_bytes`: bytes one position of one cache takes.
pub fn kv_layout(
    config: &ModelConfig,
    opts: &SessionOptions,
    kv_bytes: usize,
    budget: usize,
) -> (usize, usize) {
    let kv_bytes = kv_bytes.max(1);
    let ctx = if opts.ctx == SessionOptions::MODEL_CTX {
        let fits = budget / (opts.slots.max(1) * kv_bytes);
        fits.max(MIN_AUTO_CTX).min(config.max_ctx).max(1)
    } else {
        opts.ctx.clamp(1, config.max_ctx)
    };
    let slots = match opts.slots {
        0 => (budget / (ctx * kv_bytes)).clamp(1, MAX_AUTO_SLOTS),
        n => n,
    };
    (ctx, slots)
}

/// The host memory the CPU session's KV caches may take: a quarter of what the kernel says
/// is available (the weights, the other processes and the page cache keep the rest).
fn host_kv_budget() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kib| kib.saturating_mul(1024));
    available / 4
}

/// Bytes one position of one f32 KV cache takes (keys and values of every layer).
pub fn f32_kv_bytes(config: &ModelConfig) -> usize {
    kv_bytes(config, KvDtype::F32)
}

/// Bytes one position of one KV cache of `dtype` elements takes.
pub fn kv_bytes(config: &ModelConfig, dtype: KvDtype) -> usize {
    2 * config.n_layers * config.kv_dim() * dtype.bytes()
}

/// A CPU session over a model's weights.
pub fn cpu_session(
    config: &ModelConfig,
    weights: &ModelWeights,
    opts: &SessionOptions,
) -> Result<Box<dyn Session>, BackendError> {
    let mut backend = CpuBackend::new(opts.precise, opts.resident_weights);
    // The twin of the CUDA session's int8 activations (with `precise`: value for value).
    backend.round_acts_int8 = opts.int8_acts;
    let llama = Llama::load(&mut backend, config, weights)?;
    let (ctx, slots) = kv_layout(config, opts, f32_kv_bytes(config), host_kv_budget());
    let mut states = Vec::with_capacity(slots);
    for _ in 0..slots {
        states.push(llama.new_state(&mut backend, ctx, opts.max_batch.max(1))?);
    }
    Ok(Box::new(OpsSession {
        backend,
        model: llama,
        states,
        active: 0,
        logits: Vec::new(),
        scratch: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::random::Shape;

    fn qwen_05b() -> ModelConfig {
        let Ok(shape) = Shape::resolve("qwen2.5-0.5b") else {
            panic!("built-in shape")
        };
        shape.config
    }

    fn opts(ctx: usize, slots: usize) -> SessionOptions {
        SessionOptions {
            ctx,
            slots,
            ..Default::default()
        }
    }

    /// The CPU session's masked pick is the pick the engine made before it picked under a
    /// mask itself (refused logits set to -inf by `apply_mask`, then the sampler's code),
    /// token for token, for greedy and for seeded draws; and no allowed number gives
    /// NO_TOKEN where the -inf path would have picked a refused token.
    #[test]
    fn the_masked_pick_is_the_host_masked_pick() {
        use crate::engine::constraint::{apply_mask, mask_allows};
        use crate::engine::sampler::{NO_TOKEN, Rng};
        let mut rng = Rng::new(0x5EED);
        let mut scratch = Vec::new();
        for vocab in [1usize, 31, 33, 200, 1000] {
            for round in 0..20 {
                let logits: Vec<f32> = (0..vocab)
                    .map(|_| (rng.next_f64() as f32 - 0.5) * 8.0)
                    .collect();
                let mut mask = vec![0u32; vocab.div_ceil(32)];
                let density = [0.02, 0.5, 0.95][round % 3];
                for t in 0..vocab {
                    if rng.next_f64() < density {
                        mask[t / 32] |= 1 << (t % 32);
                    }
                }
                let first = (rng.next_u64() % vocab as u64) as u32;
                mask[first as usize / 32] |= 1 << (first % 32);
                let params = SamplingParams {
                    temperature: 0.9,
                    top_k: [0, 5, 40][round % 3],
                    top_p: [1.0, 0.9, 0.5][round % 3],
                    min_p: [0.0, 0.05, 0.1][round % 3],
                    ..Default::default()
                };
                let seed = rng.next_u64();
                for pick in [
                    MaskedPick::Argmax,
                    MaskedPick::Sample {
                        params: &params,
                        seed,
                    },
                ] {
                    let mut old = logits.clone();
                    apply_mask(&mut old, &mask);
                    let want = match pick {
                        MaskedPick::Argmax => argmax(&old),
                        MaskedPick::Sample { params, seed } => {
                            sample_filtered(params, &old, seed, &mut scratch)
                        }
                    };
                    let mut row = logits.clone();
                    let got = pick_masked_on_host(&mut row, Some(&mask), pick, &mut scratch)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(got, want, "vocab {vocab} round {round} {pick:?}");
                    assert!(mask_allows(&mask, got));
                }
            }
        }
        // Every allowed logit NaN: NO_TOKEN (the -inf path picked a refused -inf token).
        let mut row = vec![1.0f32, f32::NAN, 2.0, f32::NAN];
        let got = pick_masked_on_host(&mut row, Some(&[0b1010]), MaskedPick::Argmax, &mut scratch);
        assert_eq!(got.ok(), Some(NO_TOKEN));
        // A mask too short for the row is refused.
        let mut row = vec![0.0f32; 40];
        assert!(
            pick_masked_on_host(&mut row, Some(&[1]), MaskedPick::Argmax, &mut scratch).is_err()
        );
    }

    #[test]
    fn the_model_context_is_taken_when_the_budget_holds_it() {
        let c = qwen_05b();
        let kv = f32_kv_bytes(&c);
        // 24 layers x 2 x 128 wide x 4 bytes.
        assert_eq!(kv, 24 * 2 * 128 * 4);
        let whole = c.max_ctx * kv;
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 0), kv, 8 * whole),
            (c.max_ctx, 4),
            "auto slots stop at 4"
        );
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 0), kv, 2 * whole + 1),
            (c.max_ctx, 2)
        );
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 3), kv, 3 * whole),
            (c.max_ctx, 3)
        );
    }

    #[test]
    fn a_small_budget_caps_the_model_context_but_not_an_asked_one() {
        let c = qwen_05b();
        let kv = f32_kv_bytes(&c);
        // Room for 10,000 positions: one slot takes them all, two slots half each.
        let budget = 10_000 * kv;
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 0), kv, budget),
            (10_000, 1)
        );
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 2), kv, budget),
            (5_000, 2)
        );
        // Next to nothing: the floor, not a context no request fits.
        assert_eq!(
            kv_layout(&c, &opts(SessionOptions::MODEL_CTX, 1), kv, 10),
            (MIN_AUTO_CTX, 1)
        );
        // --ctx as given (clamped to the model's only), whatever the budget.
        assert_eq!(kv_layout(&c, &opts(20_000, 1), kv, budget), (20_000, 1));
        assert_eq!(kv_layout(&c, &opts(1 << 30, 1), kv, budget), (c.max_ctx, 1));
        assert_eq!(kv_layout(&c, &opts(4096, 0), kv, 0), (4096, 1));
    }
}
