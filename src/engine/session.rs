//! A model bound to a backend with its KV cache: the one object the generation loop drives.
//! Type-erased so the engine does not care which backend runs underneath.
//!
//! One call runs the model: [`Session::step`] runs tokens at positions and says what to
//! pick from the logits it made ([`Pick`]): the logits themselves, each row's argmax, or a
//! sampled token, for the last row or for every row of a verify pass ([`Rows`]). Every
//! session implements every pick: the CPU session picks on the host with the sampler's
//! code ([`pick_on_host`]); the CUDA session picks on the device where it can, so a decode
//! step copies back 4 bytes instead of a vocabulary of logits.

use crate::backend::cpu::CpuBackend;
use crate::backend::{BackendError, Ops};
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

/// What to pick from the logits of a step.
pub enum Pick<'a> {
    /// Copy the logits out: one row (vocab values) for [`Rows::Last`], `tokens.len()` rows
    /// one after another for [`Rows::All`].
    Logits(&'a mut [f32]),
    /// Each row's argmax (lowest id on ties, NaN never).
    Argmax,
    /// Each row's token drawn with the sampler's top-k, temperature, min-p and top-p
    /// (penalties are not applied: they need the host's token history) from a random
    /// stream seeded by `seed` (row `i` by `seed + i`). Temperature 0 is the argmax.
    Sample {
        params: &'a SamplingParams,
        seed: u64,
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
/// has no kernel for it.
pub fn pick_on_host(
    logits: &[f32],
    vocab: usize,
    pick: &Pick<'_>,
    scratch: &mut Vec<(u32, f32)>,
) -> Picked {
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
    Picked { ids, len }
}

struct OpsSession<B: Ops> {
    backend: B,
    model: Llama<B>,
    state: State<B>,
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
        self.state.ctx
    }

    fn max_batch(&self) -> usize {
        self.state.max_batch
    }

    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
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
        let (b, s) = (&mut self.backend, &mut self.state);
        match rows {
            Rows::Last => self.model.forward(b, s, input.tokens, input.pos, out)?,
            Rows::All => self
                .model
                .forward_rows(b, s, input.tokens, input.pos, out)?,
        }
        Ok(match pick {
            Pick::Logits(_) => StepOutput::Logits,
            pick => StepOutput::Tokens(pick_on_host(&self.logits, vocab, &pick, &mut self.scratch)),
        })
    }
}

/// Options for building a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// KV cache positions (clamped to the model's context length).
    pub ctx: usize,
    /// Prompt tokens per forward call during prefill.
    pub max_batch: usize,
    /// CPU: exact f32 dot products instead of 8-bit activations.
    pub precise: bool,
    /// CPU: copy the weights into huge-page memory at load (faster decoding, slower load,
    /// the model's size in resident memory) instead of reading the file mapping.
    pub resident_weights: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ctx: 4096,
            max_batch: 64,
            precise: false,
            resident_weights: true,
        }
    }
}

/// A CPU session over a model's weights.
pub fn cpu_session(
    config: &ModelConfig,
    weights: &ModelWeights,
    opts: &SessionOptions,
) -> Result<Box<dyn Session>, BackendError> {
    let mut backend = CpuBackend::new(opts.precise, opts.resident_weights);
    let llama = Llama::load(&mut backend, config, weights)?;
    let ctx = opts.ctx.clamp(1, config.max_ctx);
    let state = llama.new_state(&mut backend, ctx, opts.max_batch.max(1))?;
    Ok(Box::new(OpsSession {
        backend,
        model: llama,
        state,
        logits: Vec::new(),
        scratch: Vec::new(),
    }))
}
