//! The decoder forward pass shared by llama, mistral, qwen2 and qwen3: pre-norm blocks of
//! grouped-query attention with rotary positions and a SwiGLU MLP. The family differences
//! are flags on the config: q/k/v biases (qwen2), per-head q/k RMSNorm (qwen3), sliding
//! window (mistral), rope style and scaling.
//!
//! Written against `backend::Ops`, so the same graph runs on every backend. Each block is
//! two coarse ops: the norm and the q/k/v projections (biases included) are one
//! `Ops::norm_qkv`, the MLP's norm, gate/up products and SwiGLU one
//! `Ops::norm_gate_up_swiglu`, each output projection with the residual add after it one
//! `Ops::matmul_add`, and qwen3's q/k norms, rope, the KV append and attention one
//! `Ops::rope_attention`: a backend with fused kernels runs each as one (CUDA does), the CPU
//! as its fine ops. After the blocks, the final norm and the LM head are one
//! `Ops::norm_matmul`.

use crate::backend::{AttnShape, BackendError, HeadNorms, Ops, Position, QkvWeights, TokenIds};

use crate::format::ModelConfig;
use crate::format::ModelWeights;

struct Layer<B: Ops> {
    attn_norm: B::Vector,
    qkv: QkvWeights<B::Mat, B::Vector>,
    q_norm: Option<B::Vector>,
    k_norm: Option<B::Vector>,
    wo: B::Mat,
    ffn_norm: B::Vector,
    w_gate: B::Mat,
    w_up: B::Mat,
    w_down: B::Mat,
}

/// A model's weights in a backend's form.
pub struct Llama<B: Ops> {
    pub cfg: ModelConfig,
    embed: B::Mat,
    layers: Vec<Layer<B>>,
    final_norm: B::Vector,
    output: B::Mat,
}

/// Per-sequence state: the KV cache and scratch activations for up to `max_batch` tokens
/// per forward call. Allocated once; the decode step allocates nothing.
pub struct State<B: Ops> {
    pub ctx: usize,
    pub max_batch: usize,
    kv: Vec<B::Kv>,
    rope: B::RopeTable,
    /// The residual stream.
    x: B::Act,
    /// The normalized input of the block being run (scratch of the fused ops' default
    /// forms).
    hn: B::Act,
    /// A block's output before it is added to the residual stream.
    h: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    att: B::Act,
    gate: B::Act,
    up: B::Act,
    last: B::Act,
    last_norm: B::Act,
    logits: B::Act,
    /// Logits of every position of a verify call (speculative decoding), made on first use:
    /// up to [`MAX_VERIFY_ROWS`] rows, vocab wide.
    rows_logits: Option<B::Act>,
}

/// Most positions one [`Llama::forward_rows`] call scores (a proposal of 15 tokens plus the
/// token before it).
pub const MAX_VERIFY_ROWS: usize = 16;

impl<B: Ops> Llama<B> {
    pub fn load(b: &mut B, cfg: &ModelConfig, w: &ModelWeights) -> Result<Self, BackendError> {
        let opt =
            |b: &mut B, v: &Option<Vec<f32>>| v.as_ref().map(|v| b.upload_vector(v)).transpose();
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(Layer {
                attn_norm: b.upload_vector(&l.attn_norm)?,
                qkv: b.upload_qkv(
                    &l.wq,
                    &l.wk,
                    &l.wv,
                    [l.bq.as_deref(), l.bk.as_deref(), l.bv.as_deref()],
                )?,
                q_norm: opt(b, &l.q_norm)?,
                k_norm: opt(b, &l.k_norm)?,
                wo: b.upload_matrix(&l.wo)?,
                ffn_norm: b.upload_vector(&l.ffn_norm)?,
                w_gate: b.upload_matrix(&l.w_gate)?,
                w_up: b.upload_matrix(&l.w_up)?,
                w_down: b.upload_matrix(&l.w_down)?,
            });
        }
        Ok(Llama {
            cfg: cfg.clone(),
            embed: b.upload_table(&w.embed)?,
            layers,
            final_norm: b.upload_vector(&w.final_norm)?,
            output: b.upload_matrix(&w.output)?,
        })
    }

    pub fn new_state(
        &self,
        b: &mut B,
        ctx: usize,
        max_batch: usize,
    ) -> Result<State<B>, BackendError> {
        let c = &self.cfg;
        let mut kv = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            kv.push(b.alloc_kv(ctx, c.kv_dim())?);
        }
        Ok(State {
            ctx,
            max_batch,
            kv,
            rope: b.rope_table(&c.rope, ctx)?,
            x: b.alloc_act(max_batch, c.dim)?,
            hn: b.alloc_act(max_batch, c.dim)?,
            h: b.alloc_act(max_batch, c.dim)?,
            q: b.alloc_act(max_batch, c.q_dim())?,
            k: b.alloc_act(max_batch, c.kv_dim())?,
            v: b.alloc_act(max_batch, c.kv_dim())?,
            att: b.alloc_act(max_batch, c.q_dim())?,
            gate: b.alloc_act(max_batch, c.ffn_dim)?,
            up: b.alloc_act(max_batch, c.ffn_dim)?,
            last: b.alloc_act(1, c.dim)?,
            last_norm: b.alloc_act(1, c.dim)?,
            logits: b.alloc_act(1, c.vocab_size)?,
            rows_logits: None,
        })
    }

    /// Run `tokens` (at most `max_batch`) at positions `pos..`, extending the KV cache, and
    /// write the logits of the last token into `logits` (vocab-sized).
    pub fn forward(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError> {
        self.forward_logits(b, s, TokenIds::Host(tokens), Position::Host(pos))?;
        b.read_row(&s.logits, logits)
    }

    /// [`Llama::forward`] that asks `stop` before each layer's attention and MLP blocks and
    /// gives up once it says yes, so a cancelled prefill ends within half a layer instead of
    /// a whole chunk. Returns false
    /// then: positions `pos..` of the KV cache hold partial work, which the caller must not
    /// count as cached (the next forward at those positions overwrites it).
    pub fn forward_until(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
        stop: &dyn Fn() -> bool,
    ) -> Result<bool, BackendError> {
        let ids = TokenIds::Host(tokens);
        if !self.layers_forward(b, s, ids, Position::Host(pos), Some(stop))? {
            return Ok(false);
        }
        self.last_logits(b, s, tokens.len())?;
        b.read_row(&s.logits, logits)?;
        Ok(true)
    }

    /// The logits [`Llama::forward_logits`] left in the backend (one row, vocab wide).
    pub fn logits<'a>(&self, s: &'a State<B>) -> &'a B::Act {
        &s.logits
    }

    /// Run `tokens` (at most `MAX_VERIFY_ROWS` and `max_batch`) at positions `pos..`,
    /// extending the KV cache, and write the logits of every one of them, row after row,
    /// into `logits` (`tokens.len()` x vocab): what verifying a speculative proposal needs.
    /// On the CPU each row is bit for bit what a one-token `forward` at its position gives
    /// (the same kernels run row by row), so greedy speculation reproduces plain decoding.
    pub fn forward_rows(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: &[u32],
        pos: usize,
        logits: &mut [f32],
    ) -> Result<(), BackendError> {
        assert!(
            logits.len() == tokens.len() * self.cfg.vocab_size,
            "caller checks the verify shape"
        );
        self.forward_rows_logits(b, s, TokenIds::Host(tokens), Position::Host(pos))?;
        let Some(out) = s.rows_logits.as_ref() else {
            unreachable!("made by forward_rows_logits")
        };
        b.read_row(out, logits)
    }

    /// [`Llama::forward_rows`] without reading the logits back: they stay in the backend,
    /// one row per token (see [`Llama::rows_logits`]), for a device-side pick. With the
    /// token ids and position in device memory it queues only device work, so a GPU
    /// backend can capture a verify pass of each row count into a CUDA graph.
    pub fn forward_rows_logits(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: TokenIds<'_, B::DeviceTokens>,
        pos: Position<'_, B::DevicePos>,
    ) -> Result<(), BackendError> {
        let (n, c) = (tokens.len(), &self.cfg);
        assert!(n <= MAX_VERIFY_ROWS, "caller checks the verify shape");
        self.layers_forward(b, s, tokens, pos, None)?;
        if s.rows_logits.is_none() {
            s.rows_logits = Some(b.alloc_act(MAX_VERIFY_ROWS.min(s.max_batch), c.vocab_size)?);
        }
        let Some(out) = s.rows_logits.as_mut() else {
            unreachable!("allocated above")
        };
        b.norm_matmul(
            &s.x,
            &self.final_norm,
            c.rms_eps,
            &self.output,
            n,
            &mut s.h,
            out,
        )
    }

    /// The logits [`Llama::forward_rows_logits`] left in the backend, if it ran.
    pub fn rows_logits<'a>(&self, s: &'a State<B>) -> Option<&'a B::Act> {
        s.rows_logits.as_ref()
    }

    /// [`Llama::forward`] without reading the logits back: they stay in the backend (see
    /// [`Llama::logits`]). With the token id and position in device memory it queues only
    /// device work, so a GPU backend can capture it into a CUDA graph and replay it for
    /// every later token.
    pub fn forward_logits(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: TokenIds<'_, B::DeviceTokens>,
        pos: Position<'_, B::DevicePos>,
    ) -> Result<(), BackendError> {
        let n = tokens.len();
        self.layers_forward(b, s, tokens, pos, None)?;
        self.last_logits(b, s, n)
    }

    /// The logits of the last of the `n` rows `layers_forward` left in `s.x`, into `s.logits`.
    fn last_logits(&self, b: &mut B, s: &mut State<B>, n: usize) -> Result<(), BackendError> {
        // Only the last position's logits are needed to pick the next token. A decode step
        // has one row, already first: no copy (on CUDA the step is then the LM head's GEMV
        // with the final norm in its prologue, one kernel).
        let c = &self.cfg;
        let last = if n == 1 {
            &s.x
        } else {
            b.copy_row(&s.x, n - 1, &mut s.last)?;
            &s.last
        };
        let (norm, eps) = (&self.final_norm, c.rms_eps);
        b.norm_matmul(
            last,
            norm,
            eps,
            &self.output,
            1,
            &mut s.last_norm,
            &mut s.logits,
        )
    }

    /// The embedding and every block: leaves the residual stream of `tokens` in `s.x`.
    /// `stop`, asked before each attention and MLP block: false once it said yes (the rest
    /// not run).
    fn layers_forward(
        &self,
        b: &mut B,
        s: &mut State<B>,
        tokens: TokenIds<'_, B::DeviceTokens>,
        pos: Position<'_, B::DevicePos>,
        stop: Option<&dyn Fn() -> bool>,
    ) -> Result<bool, BackendError> {
        let c = &self.cfg;
        let n = tokens.len();
        // A device position is checked by whoever writes it.
        assert!(
            n > 0 && n <= s.max_batch && pos.host().is_none_or(|p| p + n <= s.ctx),
            "caller checks batch and context bounds"
        );
        let shape = AttnShape::of(c);
        b.embed(&self.embed, tokens, &mut s.x)?;
        for (l, kv) in self.layers.iter().zip(s.kv.iter_mut()) {
            if stop.is_some_and(|stop| stop()) {
                return Ok(false);
            }
            // Attention block: q, k, v of the normalized residual stream.
            let (q, k, v) = (&mut s.q, &mut s.k, &mut s.v);
            b.norm_qkv(&s.x, &l.attn_norm, c.rms_eps, &l.qkv, n, &mut s.hn, q, k, v)?;
            // qwen3's q/k norms, rope, KV append and attention: one op (one kernel on CUDA).
            let norms = match (&l.q_norm, &l.k_norm) {
                (Some(q), Some(k)) => Some(HeadNorms {
                    q,
                    k,
                    eps: c.rms_eps,
                }),
                _ => None,
            };
            let (q, k) = (&mut s.q, &mut s.k);
            b.rope_attention(q, k, &s.v, norms, &s.rope, kv, shape, pos, n, &mut s.att)?;
            // x += Wo att.
            b.matmul_add(&s.att, &l.wo, n, &mut s.x, &mut s.h)?;
            // MLP block (about half a layer's work: asked again before it).
            if stop.is_some_and(|stop| stop()) {
                return Ok(false);
            }
            let (gate, up) = (&mut s.gate, &mut s.up);
            b.norm_gate_up_swiglu(
                &s.x,
                &l.ffn_norm,
                c.rms_eps,
                &l.w_gate,
                &l.w_up,
                n,
                &mut s.hn,
                gate,
                up,
            )?;
            // x += W_down gate (the final norm runs on the last row only, in the caller).
            b.matmul_add(&s.gate, &l.w_down, n, &mut s.x, &mut s.h)?;
        }
        Ok(true)
    }
}
