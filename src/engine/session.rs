//! A model bound to a backend with its KV cache: the one object the generation loop drives.
//! Type-erased so the engine does not care which backend runs underneath.

use crate::backend::cpu::CpuBackend;
use crate::backend::{BackendError, Ops};
pub use crate::graph::llama::MAX_VERIFY_ROWS;
use crate::graph::llama::{Llama, State};

pub use super::cuda_session::cuda_session;
use crate::format::{ModelConfig, ModelWeights};

pub trait Session: Send {
    fn backend_name(&self) -> &'static str;
    /// Positions the KV cache holds.
    fn ctx(&self) -> usize;
    /// Most tokens one `forward` call takes.
    fn max_batch(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Run `tokens` at positions `pos..`, extending the cache; logits of the last token.
    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError>;
    /// Run `tokens` (at most [`MAX_VERIFY_ROWS`] and `max_batch`) at positions `pos..`,
    /// extending the cache, and write the logits of each of them into `logits`, row after
    /// row (`tokens.len()` x vocab): the verify step of speculative decoding.
    fn forward_rows(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError>;
    /// `forward_rows` that returns only the argmax of each row (lowest id on ties, NaN
    /// never), computed where the logits are, into `out` (`tokens.len()` ids): greedy
    /// verification without copying K+1 vocabulary-wide rows back. `false` when this
    /// session cannot, and the caller uses `forward_rows`.
    fn forward_rows_argmax(
        &mut self,
        tokens: &[u32],
        pos: usize,
        out: &mut [u32],
    ) -> Result<bool, BackendError> {
        let _ = (tokens, pos, out);
        Ok(false)
    }
    /// Run one token at `pos` and return the argmax of its logits (lowest id on ties, NaN
    /// never), computed where the logits are; `None` when this session cannot, and the
    /// caller uses `forward` instead. The logits are not returned.
    fn forward_argmax(&mut self, token: u32, pos: usize) -> Result<Option<u32>, BackendError> {
        let _ = (token, pos);
        Ok(None)
    }
    /// Run one token at `pos` and draw the next one where the logits are, with the
    /// sampler's top-k, temperature, min-p and top-p (`params` has no penalties and a
    /// temperature above 0) and a random stream seeded by `draw_seed`; `None` when this
    /// session cannot, and the caller samples from `forward`'s logits.
    fn forward_sample(
        &mut self,
        token: u32,
        pos: usize,
        params: &super::SamplingParams,
        draw_seed: u64,
    ) -> Result<Option<u32>, BackendError> {
        let _ = (token, pos, params, draw_seed);
        Ok(None)
    }
}

struct OpsSession<B: Ops> {
    backend: B,
    model: Llama<B>,
    state: State<B>,
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

    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError> {
        self.model
            .forward(&mut self.backend, &mut self.state, tokens, pos, logits)
    }

    fn forward_rows(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError> {
        self.model
            .forward_rows(&mut self.backend, &mut self.state, tokens, pos, logits)
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
    }))
}
