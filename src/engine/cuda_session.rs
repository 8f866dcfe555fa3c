//! The CUDA session: prefill runs op by op; each decode step is one CUDA-graph replay.
//!
//! `backend::cuda::DeviceDecoder` owns the graph machinery (capture, replay, the step's
//! token id and position in device memory, the on-device picks); this session drives
//! `graph::llama` through it. A decode step picks on the device and copies back the 4-byte
//! token (`Pick::Argmax` for plain greedy decoding, `Pick::Sample` for top-k / temperature
//! / min-p / top-p) or the logits (`Pick::Logits`, when the host samples, e.g. with
//! penalties). A greedy verify pass (`Rows::All`) is a graph replay too, one graph per row
//! count, and picks each row's argmax on the device; the picks the device has no kernel for
//! (a sampled verify, a multi-token prefill) are made on the host with the sampler's code,
//! from an eager pass.
//!
//! A constrained decode step (`Pick::Masked`) runs in this order, each part for a reason:
//! 1. the forward pass is queued: a graph captured without a pick (`DevicePick::Deferred`),
//!    launched asynchronously, so the GPU is busy from here on;
//! 2. the host computes the step's mask (llguidance, from the tokens so far) while the GPU
//!    runs that forward pass: the mask needs no logits, so its cost hides behind the step;
//! 3. the mask's upload (pinned memory, async) and the masked pick are queued behind the
//!    forward pass on the stream: the pick reads the mask, so it cannot be part of a graph
//!    launched before the mask existed;
//! 4. one synchronization reads the 4-byte token, as for an unconstrained step.
//!
//! So a constrained token costs no logits copy and no host sync beyond that one read.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::cuda::{
    CudaAct, CudaBackend, CudaDevice, DecodeStep, DeviceDecoder, DevicePick, DeviceSampling,
    StepInputs,
};
use crate::backend::{AttnShape, BackendError, KvDtype, Ops, Position, StepProfile, TokenIds};
use crate::format::{ModelConfig, ModelWeights};
use crate::graph::llama::{Llama, State};
use cudarc::driver::CudaSlice;

use super::sampler::SamplingParams;
use crate::backend::position_seed;

use super::session::{
    MAX_VERIFY_ROWS, MaskedPick, Pick, Picked, Rows, Session, SessionOptions, StepInput, StepMask,
    StepOutput, check_step, decode_step_by_step, kv_bytes, kv_layout, mask_unavailable,
    pick_on_host,
};

/// A model and its states on the GPU, one per slot: a decode step runs the active one.
struct LlamaOnCuda {
    model: Llama<CudaBackend>,
    states: Vec<State<CudaBackend>>,
    active: usize,
}

impl LlamaOnCuda {
    fn state(&self) -> &State<CudaBackend> {
        &self.states[self.active]
    }

    /// The model and the active state, for eager work.
    fn parts(&mut self) -> (&Llama<CudaBackend>, &mut State<CudaBackend>) {
        (&self.model, &mut self.states[self.active])
    }
}

impl DecodeStep for LlamaOnCuda {
    fn ctx(&self) -> usize {
        self.state().ctx
    }

    fn queue(&mut self, b: &mut CudaBackend, inputs: &StepInputs) -> Result<(), BackendError> {
        let (model, state) = self.parts();
        model.forward_logits(b, state, inputs.token_ids(), inputs.position())
    }

    fn queue_rows(
        &mut self,
        b: &mut CudaBackend,
        tokens: &CudaSlice<u32>,
        n: usize,
        pos: &CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        let (model, state) = self.parts();
        let (ids, at) = (TokenIds::Device(tokens, n), Position::Device(pos));
        model.forward_rows_logits(b, state, ids, at)
    }

    fn logits(&self) -> &CudaAct {
        self.model.logits(self.state())
    }

    fn rows_logits(&self) -> Option<&CudaAct> {
        self.model.rows_logits(self.state())
    }
}

/// Slots a GPU session keeps when `--slots` is left to the default.
const GPU_AUTO_SLOTS: usize = 4;

/// The context and slot count of a CUDA session when `free` bytes are left after the
/// weights: the KV caches may take three quarters of it (activations, the graph and the
/// driver need the rest). The model's own context (`SessionOptions::MODEL_CTX`) with slots
/// left to the default is capped so that 4 caches fit; a context given explicitly with slots
/// left to the default gets as many caches as fit, 1 to 4. The engine builder checks the
/// same layout against the device's memory before anything is uploaded.
pub fn cuda_kv_layout(config: &ModelConfig, opts: &SessionOptions, free: u64) -> (usize, usize) {
    let want = SessionOptions {
        slots: if opts.slots == 0 && opts.ctx == SessionOptions::MODEL_CTX {
            GPU_AUTO_SLOTS
        } else {
            opts.slots
        },
        ..opts.clone()
    };
    let budget = usize::try_from(free / 4 * 3).unwrap_or(usize::MAX);
    kv_layout(config, &want, kv_bytes(config, opts.kv_dtype), budget)
}

pub struct CudaSession {
    decoder: DeviceDecoder<LlamaOnCuda>,
    /// Host logits and sampler scratch for the picks made on the host.
    logits: Vec<f32>,
    scratch: Vec<(u32, f32)>,
    /// Rows of logits copied to the host so far (`Session::logits_rows_copied`).
    rows_copied: u64,
    kv_dtype: KvDtype,
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
    backend.set_kv_dtype(opts.kv_dtype);
    backend.set_int8_acts(opts.int8_acts);
    if progress {
        // Every matrix is uploaded once, the embedding too (twice when tied to the head).
        backend.show_upload_progress(weights.bytes_per_token() + weights.embed.byte_len() as u64);
    }
    let model = Llama::load(&mut backend, config, weights);
    backend.finish_upload_progress();
    let model = model?;
    // The KV caches' share of what the weights left free: see cuda_kv_layout.
    let free = backend
        .device()
        .memory_info()
        .map_err(|e| BackendError::Device(format!("cuMemGetInfo: {e}")))?
        .0;
    let (ctx, slots) = cuda_kv_layout(config, opts, free as u64);
    let max_batch = opts.max_batch.max(1);
    let mut states = Vec::with_capacity(slots);
    for _ in 0..slots {
        states.push(model.new_state(&mut backend, ctx, max_batch)?);
    }
    backend.reserve(max_batch, &AttnShape::of(config))?;
    let decoder = DeviceDecoder::new(
        backend,
        LlamaOnCuda {
            model,
            states,
            active: 0,
        },
        config.vocab_size,
        MAX_VERIFY_ROWS,
    )?;
    Ok(Box::new(CudaSession {
        decoder,
        logits: Vec::new(),
        scratch: Vec::new(),
        rows_copied: 0,
        kv_dtype: opts.kv_dtype,
    }))
}

impl Session for CudaSession {
    fn backend_name(&self) -> &'static str {
        self.decoder.backend().name()
    }

    fn ctx(&self) -> usize {
        self.decoder.model().state().ctx
    }

    fn max_batch(&self) -> usize {
        self.decoder.model().state().max_batch
    }

    fn vocab_size(&self) -> usize {
        self.decoder.model().model.cfg.vocab_size
    }

    fn kv_bytes_per_position(&self) -> usize {
        kv_bytes(&self.decoder.model().model.cfg, self.kv_dtype)
    }

    fn logits_rows_copied(&self) -> u64 {
        self.rows_copied
    }

    fn verify_graph_rows(&self) -> Vec<usize> {
        self.decoder.captured_verify_rows()
    }

    fn profile_step(&mut self, timed: bool) -> Result<Option<StepProfile>, BackendError> {
        self.decoder.profile_step(timed).map(Some)
    }

    /// The settings go to the device once; its decode steps then penalize there (the
    /// token history on the device, `backend::cuda::history`).
    fn begin_generation(
        &mut self,
        prompt: &[u32],
        sampling: &SamplingParams,
    ) -> Result<bool, BackendError> {
        let s = DeviceSampling {
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repetition_penalty: sampling.repetition_penalty,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            penalty_last_n: sampling.penalty_last_n,
            seed: sampling.seed,
        };
        self.decoder.begin_generation(s, prompt)?;
        Ok(true)
    }

    /// The steps queued one ahead of the token read (`DeviceDecoder::decode_run`), when the
    /// device derives the draws' seeds from these settings (set by `begin_generation`).
    fn decode_run(
        &mut self,
        token: u32,
        pos: usize,
        sampling: &SamplingParams,
        steps: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<usize, BackendError> {
        let limits = (self.ctx(), self.max_batch(), self.vocab_size());
        let one = StepInput {
            tokens: &[token],
            pos,
        };
        check_step(&one, &Pick::Argmax, Rows::Last, limits)?;
        if steps == 0 || pos + steps > self.ctx() {
            return Err(BackendError::Device(format!(
                "session step: {steps} steps at position {pos} within a context of {}",
                self.ctx()
            )));
        }
        let pick = if sampling.temperature == 0.0 {
            DevicePick::Argmax
        } else if self.decoder.history().sampling().seed == sampling.seed {
            DevicePick::Sample {
                temperature: sampling.temperature,
                top_k: sampling.top_k,
                top_p: sampling.top_p,
                min_p: sampling.min_p,
            }
        } else {
            // The device would seed the later draws otherwise: one step at a time.
            return decode_step_by_step(self, token, pos, sampling, steps, on_token);
        };
        let seed = position_seed(sampling.seed, pos);
        self.decoder
            .decode_run(token, pos, pick, seed, steps, on_token)
    }

    fn slots(&self) -> usize {
        self.decoder.model().states.len()
    }

    fn use_slot(&mut self, slot: usize) -> Result<(), BackendError> {
        let slots = self.slots();
        if slot >= slots {
            return Err(BackendError::Device(format!(
                "session step: slot {slot} of a {slots}-slot session"
            )));
        }
        if slot != self.decoder.model().active {
            // The captured decode step reads the old slot's buffers: capture anew.
            self.decoder.forget_capture();
            self.decoder.parts_mut().1.active = slot;
        }
        Ok(())
    }

    fn step_until_cancelled(
        &mut self,
        input: StepInput<'_>,
        logits: &mut [f32],
        cancel: &AtomicBool,
    ) -> Result<bool, BackendError> {
        if input.tokens.len() == 1 {
            // One token: the decode graph, checked before.
            if cancel.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.step(input, Pick::Logits(logits), Rows::Last)?;
            return Ok(true);
        }
        let limits = (self.ctx(), self.max_batch(), self.vocab_size());
        check_step(&input, &Pick::Logits(&mut *logits), Rows::Last, limits)?;
        let (b, m) = self.decoder.parts_mut();
        let (model, s) = m.parts();
        let stream = b.device().stream().clone();
        // The host queues launches ahead of the GPU: waiting for the work queued so far
        // before each check makes a cancel stop within one layer of GPU work (one stream
        // sync per layer of a prefill chunk). A failed sync is left to the next launch or
        // copy, which reports the same error.
        let stop = || {
            let _ = stream.synchronize();
            cancel.load(Ordering::Relaxed)
        };
        let done = model.forward_until(b, s, input.tokens, input.pos, logits, &stop)?;
        self.rows_copied += u64::from(done);
        Ok(done)
    }

    fn step(
        &mut self,
        input: StepInput<'_>,
        pick: Pick<'_>,
        rows: Rows,
    ) -> Result<StepOutput, BackendError> {
        let vocab = self.vocab_size();
        let limits = (self.ctx(), self.max_batch(), vocab);
        let n_rows = check_step(&input, &pick, rows, limits)?;
        let StepInput { tokens, pos } = input;
        match (rows, tokens, pick) {
            // A constrained decode step: the forward pass, the mask meanwhile, the pick.
            (Rows::Last, &[token], Pick::Masked { mask, pick }) => {
                self.decode_masked(token, pos, mask, pick)
            }
            // A decode step: one graph replay, picked on the device.
            (Rows::Last, &[token], pick) => {
                let device_pick = match &pick {
                    Pick::Argmax => DevicePick::Argmax,
                    Pick::Sample { params, .. } if params.temperature == 0.0 => DevicePick::Argmax,
                    Pick::Sample { params, .. } => DevicePick::Sample {
                        temperature: params.temperature,
                        top_k: params.top_k,
                        top_p: params.top_p,
                        min_p: params.min_p,
                    },
                    // The forward pass alone: the logits as they come, unpenalized.
                    Pick::Logits(_) | Pick::Masked { .. } => DevicePick::Deferred,
                };
                let seed = match pick {
                    Pick::Sample { seed, .. } => seed,
                    _ => 0,
                };
                self.decoder.decode(token, pos, device_pick, seed)?;
                if let Pick::Logits(out) = pick {
                    self.decoder.read_logits(out)?;
                    self.rows_copied += 1;
                    return Ok(StepOutput::Logits);
                }
                let next = self.decoder.read_next()?;
                Ok(StepOutput::Tokens(Picked::from_slice(&[next])))
            }
            // The greedy verify pass: every row's argmax on the device.
            (Rows::All, _, Pick::Argmax) => self.verify_argmax(tokens, pos),
            // Prefill and the sampled verify: the logits, then the host picks if asked.
            (_, _, mut pick) => {
                let out: &mut [f32] = match &mut pick {
                    Pick::Logits(out) => out,
                    _ => {
                        self.logits.resize(n_rows * vocab, 0.0);
                        &mut self.logits
                    }
                };
                let (b, m) = self.decoder.parts_mut();
                let (model, s) = m.parts();
                match rows {
                    Rows::Last => model.forward(b, s, tokens, pos, out)?,
                    Rows::All => model.forward_rows(b, s, tokens, pos, out)?,
                }
                self.rows_copied += n_rows as u64;
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
    }
}

impl CudaSession {
    /// A constrained decode step, in the order the module header explains: the forward
    /// pass queued first, the mask computed on the host while it runs, then the mask's
    /// upload and the masked pick behind it on the stream, then the one sync.
    fn decode_masked(
        &mut self,
        token: u32,
        pos: usize,
        mask: &mut dyn StepMask,
        pick: MaskedPick<'_>,
    ) -> Result<StepOutput, BackendError> {
        let (device_pick, seed) = match pick {
            MaskedPick::Sample { params, seed } if params.temperature > 0.0 => (
                DevicePick::Sample {
                    temperature: params.temperature,
                    top_k: params.top_k,
                    top_p: params.top_p,
                    min_p: params.min_p,
                },
                seed,
            ),
            _ => (DevicePick::Argmax, 0),
        };
        // 1. Queued, not waited for: on a GPU the forward pass runs from here on.
        self.decoder.decode(token, pos, DevicePick::Deferred, 0)?;
        // 2. Host work that overlaps it. A mask that cannot be computed ends the step; the
        // queued forward pass still completes in stream order, harmlessly.
        let allowed = mask.allowed().map_err(|_| mask_unavailable())?;
        // 3. Behind the forward pass on the stream: nothing here waits for the GPU.
        self.decoder.pick_after_step(allowed, device_pick, seed)?;
        // 4. The one synchronization of the step.
        let next = self.decoder.read_next()?;
        Ok(StepOutput::Tokens(Picked::from_slice(&[next])))
    }

    /// Runs the verify rows (a graph per row count, `DeviceDecoder::verify_argmax`) and
    /// picks each row's argmax on the device: K+1 ids come back instead of K+1 rows of
    /// logits.
    fn verify_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<StepOutput, BackendError> {
        let n = tokens.len();
        let mut out = [0u32; MAX_VERIFY_ROWS];
        self.decoder.verify_argmax(tokens, pos, &mut out[..n])?;
        Ok(StepOutput::Tokens(Picked::from_slice(&out[..n])))
    }
}
