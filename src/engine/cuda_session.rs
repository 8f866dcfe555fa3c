//! The CUDA session: prefill runs op by op; each decode step is one CUDA-graph replay.
//!
//! `backend::cuda::DeviceDecoder` owns the graph machinery (capture, replay, the step's
//! token id and position in device memory, the on-device picks); this session drives
//! `graph::llama` through it. A decode step picks on the device and copies back the 4-byte
//! token (`Pick::Argmax` for plain greedy decoding, `Pick::Sample` for top-k / temperature
//! / min-p / top-p) or the logits (`Pick::Logits`, when the host samples, e.g. with
//! penalties). A verify pass (`Rows::All`) runs eagerly and picks each row's argmax on the
//! device; the picks the device has no kernel for (a sampled verify, a multi-token
//! prefill) are made on the host with the sampler's code.

use crate::backend::cuda::{
    CudaAct, CudaBackend, CudaDevice, DecodeStep, DeviceDecoder, DevicePick, StepInputs,
};
use crate::backend::{BackendError, Ops};
use crate::format::{ModelConfig, ModelWeights};
use crate::graph::llama::{Llama, State};

use super::session::{
    MAX_VERIFY_ROWS, Pick, Picked, Rows, Session, SessionOptions, StepInput, StepOutput,
    check_step, pick_on_host,
};

/// A model and its state on the GPU: what one decode step runs.
struct LlamaOnCuda {
    model: Llama<CudaBackend>,
    state: State<CudaBackend>,
}

impl DecodeStep for LlamaOnCuda {
    fn ctx(&self) -> usize {
        self.state.ctx
    }

    fn queue(&mut self, b: &mut CudaBackend, inputs: &StepInputs) -> Result<(), BackendError> {
        let (model, state) = (&self.model, &mut self.state);
        model.forward_logits(b, state, inputs.token_ids(), inputs.position())
    }

    fn logits(&self) -> &CudaAct {
        self.model.logits(&self.state)
    }

    fn rows_logits(&self) -> Option<&CudaAct> {
        self.model.rows_logits(&self.state)
    }
}

pub struct CudaSession {
    decoder: DeviceDecoder<LlamaOnCuda>,
    /// Host logits and sampler scratch for the picks made on the host.
    logits: Vec<f32>,
    scratch: Vec<(u32, f32)>,
}

/// A CUDA session over a model's weights on `dev`: uploads every matrix once (with a
/// progress bar on stderr when `progress` is set) and allocates everything a step needs.
pub fn cuda_session(
    config: &ModelConfig,
    weights: &ModelWeights,
    opts: &SessionOptions,
    dev: CudaDevice,
    progress: bool,
) -> Result<Box<dyn Session>, BackendError> {
    let mut backend = CudaBackend::new(dev)?;
    if progress {
        // Every matrix is uploaded once, the embedding too (twice when tied to the head).
        backend.show_upload_progress(weights.bytes_per_token() + weights.embed.byte_len() as u64);
    }
    let model = Llama::load(&mut backend, config, weights);
    backend.finish_upload_progress();
    let model = model?;
    let ctx = opts.ctx.clamp(1, config.max_ctx);
    let max_batch = opts.max_batch.max(1);
    let state = model.new_state(&mut backend, ctx, max_batch)?;
    backend.reserve(max_batch, config.n_heads, config.head_dim)?;
    let decoder = DeviceDecoder::new(
        backend,
        LlamaOnCuda { model, state },
        config.vocab_size,
        MAX_VERIFY_ROWS,
    )?;
    Ok(Box::new(CudaSession {
        decoder,
        logits: Vec::new(),
        scratch: Vec::new(),
    }))
}

impl Session for CudaSession {
    fn backend_name(&self) -> &'static str {
        self.decoder.backend().name()
    }

    fn ctx(&self) -> usize {
        self.decoder.model().state.ctx
    }

    fn max_batch(&self) -> usize {
        self.decoder.model().state.max_batch
    }

    fn vocab_size(&self) -> usize {
        self.decoder.model().model.cfg.vocab_size
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
        let StepInput { tokens, pos } = input;
        match (rows, tokens) {
            // A decode step: one graph replay, picked on the device.
            (Rows::Last, &[token]) => {
                let device_pick = match &pick {
                    Pick::Argmax => DevicePick::Argmax,
                    Pick::Sample { params, .. } if params.temperature == 0.0 => DevicePick::Argmax,
                    Pick::Sample { params, .. } => DevicePick::Sample {
                        temperature: params.temperature,
                        top_k: params.top_k,
                        top_p: params.top_p,
                        min_p: params.min_p,
                    },
                    // Keep whatever pick the captured step has (its result is not read).
                    Pick::Logits(_) => self.decoder.captured_pick().unwrap_or(DevicePick::Argmax),
                };
                let seed = match pick {
                    Pick::Sample { seed, .. } => seed,
                    _ => 0,
                };
                self.decoder.decode(token, pos, device_pick, seed)?;
                if let Pick::Logits(out) = pick {
                    self.decoder.read_logits(out)?;
                    return Ok(StepOutput::Logits);
                }
                let next = self.decoder.read_next()?;
                Ok(StepOutput::Tokens(Picked::from_slice(&[next])))
            }
            // The greedy verify pass: every row's argmax on the device.
            (Rows::All, _) if matches!(pick, Pick::Argmax) => self.verify_argmax(tokens, pos),
            // Prefill and the sampled verify: the logits, then the host picks if asked.
            _ => {
                let out: &mut [f32] = match &mut pick {
                    Pick::Logits(out) => out,
                    _ => {
                        self.logits.resize(n_rows * vocab, 0.0);
                        &mut self.logits
                    }
                };
                let (b, m) = self.decoder.parts_mut();
                let (model, s) = (&m.model, &mut m.state);
                match rows {
                    Rows::Last => model.forward(b, s, tokens, pos, out)?,
                    Rows::All => model.forward_rows(b, s, tokens, pos, out)?,
                }
                Ok(match pick {
                    Pick::Logits(_) => StepOutput::Logits,
                    pick => StepOutput::Tokens(pick_on_host(
                        &self.logits,
                        vocab,
                        &pick,
                        &mut self.scratch,
                    )),
                })
            }
        }
    }
}

impl CudaSession {
    /// Runs the verify rows eagerly (their shape changes with K, so no graph) and picks
    /// each row's argmax on the device: K+1 ids come back instead of K+1 rows of logits.
    fn verify_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<StepOutput, BackendError> {
        let n = tokens.len();
        let (b, m) = self.decoder.parts_mut();
        m.model.forward_rows_logits(b, &mut m.state, tokens, pos)?;
        let mut out = [0u32; MAX_VERIFY_ROWS];
        self.decoder.argmax_rows(&mut out[..n])?;
        Ok(StepOutput::Tokens(Picked::from_slice(&out[..n])))
    }
}
