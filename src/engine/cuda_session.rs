//! The CUDA session: prefill runs op by op; each decode step is one CUDA-graph replay.
//!
//! The first decode step runs eagerly with the token id and position read from device
//! memory (so every scratch buffer exists and the step itself is done), then the same
//! step is captured (recorded, not run) into a graph together with the on-device argmax.
//! Every later step writes the token id and position (8 bytes host to device), replays the
//! graph, and copies back either the 4-byte token the graph picked (`Pick::Argmax` for
//! plain greedy decoding, `Pick::Sample` for top-k / temperature / min-p / top-p) or the
//! logits (`Pick::Logits`, when the host samples, e.g. with penalties). A verify pass
//! (`Rows::All`) runs eagerly and picks each row's argmax on the device; the picks the
//! device has no kernel for (a sampled verify, a multi-token prefill) are made on the host
//! with the sampler's code.
//!
//! Set `TACHYON_NO_CUDA_GRAPH=1` to run decode steps eagerly (same kernels, one launch
//! each), e.g. to tell a graph problem from a kernel problem.

use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr, sys};

use crate::backend::cuda::{CudaBackend, CudaDevice};
use crate::backend::{BackendError, Ops};
use crate::format::{ModelConfig, ModelWeights};
use crate::graph::llama::{Llama, State};

use super::session::{
    MAX_VERIFY_ROWS, Pick, Picked, Rows, Session, SessionOptions, StepInput, StepOutput,
    check_step, pick_on_host,
};

/// How a decode step picks the next token on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DevicePick {
    Argmax,
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
    },
}

/// A replayable decode step.
struct Graph(CudaGraph);

// SAFETY: a CUgraphExec may be launched from any thread once the context is current there
// (cudarc's `launch` makes it current). The session owning it is used from one thread at a
// time (`&mut self`), so launches never race.
unsafe impl Send for Graph {}

fn dev_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Device(format!("CUDA: {what}: {e}"))
}

pub struct CudaSession {
    /// The captured step and the pick it was captured with (the kernels' parameters are
    /// baked into a graph, so another pick means another capture). First field on
    /// purpose: fields drop in declaration order, and the graph holds the addresses of the
    /// buffers, weights and kernel module below, so it must be destroyed before any of
    /// them is freed.
    graph: Option<(DevicePick, Graph)>,
    backend: CudaBackend,
    model: Llama<CudaBackend>,
    state: State<CudaBackend>,
    /// The decode step's inputs and output on the device.
    token: CudaSlice<u32>,
    pos: CudaSlice<i32>,
    next: CudaSlice<u32>,
    /// The argmax of each row of a verify pass.
    rows_next: CudaSlice<u32>,
    part_val: CudaSlice<f32>,
    part_idx: CudaSlice<i32>,
    /// Sampling scratch (vocabulary-sized) and the generator state the draw reads.
    work: CudaSlice<f32>,
    rng: CudaSlice<u64>,
    use_graph: bool,
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
    let s = backend.device().stream().clone();
    let parts = CudaBackend::argmax_parts(config.vocab_size);
    let use_graph =
        !std::env::var("TACHYON_NO_CUDA_GRAPH").is_ok_and(|v| !matches!(v.trim(), "" | "0"));
    Ok(Box::new(CudaSession {
        token: s.alloc_zeros::<u32>(1).map_err(dev_err("step buffers"))?,
        pos: s.alloc_zeros::<i32>(1).map_err(dev_err("step buffers"))?,
        next: s.alloc_zeros::<u32>(1).map_err(dev_err("step buffers"))?,
        rows_next: s
            .alloc_zeros::<u32>(MAX_VERIFY_ROWS)
            .map_err(dev_err("step buffers"))?,
        part_val: s
            .alloc_zeros::<f32>(parts)
            .map_err(dev_err("step buffers"))?,
        part_idx: s
            .alloc_zeros::<i32>(parts)
            .map_err(dev_err("step buffers"))?,
        work: s
            .alloc_zeros::<f32>(config.vocab_size)
            .map_err(dev_err("step buffers"))?,
        rng: s.alloc_zeros::<u64>(1).map_err(dev_err("step buffers"))?,
        backend,
        model,
        state,
        graph: None,
        use_graph,
        logits: Vec::new(),
        scratch: Vec::new(),
    }))
}

impl CudaSession {
    /// Everything a decode step queues: the forward pass with device-side token and
    /// position, then the pick of the next token into `next`.
    fn queue_step(&mut self, pos: usize, pick: DevicePick) -> Result<(), BackendError> {
        let s = self.backend.device().stream().clone();
        let (tok, _g1) = self.token.device_ptr(&s);
        let (p, _g2) = self.pos.device_ptr(&s);
        self.backend.set_device_inputs(Some((tok, p)));
        // The host token is only a shape: the kernels read the id from `token`.
        let queued = self
            .model
            .forward_logits(&mut self.backend, &mut self.state, &[0], pos)
            .and_then(|()| {
                let logits = self.model.logits(&self.state);
                match pick {
                    DevicePick::Argmax => self.backend.argmax(
                        logits,
                        &mut self.next,
                        &mut self.part_val,
                        &mut self.part_idx,
                    ),
                    DevicePick::Sample {
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                    } => self.backend.sample(
                        logits,
                        &mut self.work,
                        &mut self.next,
                        &mut self.rng,
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                    ),
                }
            });
        self.backend.set_device_inputs(None);
        queued
    }

    /// Runs one decode step (token and position written to the device first).
    fn decode_step(
        &mut self,
        token: u32,
        pos: usize,
        pick: DevicePick,
        draw_seed: u64,
    ) -> Result<(), BackendError> {
        if pos >= self.state.ctx {
            return Err(BackendError::Device(format!(
                "position {pos} is past the context of {}",
                self.state.ctx
            )));
        }
        let s = self.backend.device().stream().clone();
        s.memcpy_htod(&[token][..], &mut self.token)
            .map_err(dev_err("writing the token id"))?;
        s.memcpy_htod(&[pos as i32][..], &mut self.pos)
            .map_err(dev_err("writing the position"))?;
        if matches!(pick, DevicePick::Sample { .. }) {
            s.memcpy_htod(&[draw_seed][..], &mut self.rng)
                .map_err(dev_err("writing the random seed"))?;
        }
        match &self.graph {
            Some((p, g)) if *p == pick => {
                return g.0.launch().map_err(dev_err("replaying the decode step"));
            }
            _ => self.graph = None,
        }
        self.queue_step(pos, pick)?;
        if self.use_graph {
            // Capture the step just run (recording queues no work). A failure leaves the
            // session eager rather than broken.
            match self.capture(pos, pick) {
                Ok(g) => self.graph = Some((pick, Graph(g))),
                Err(e) => {
                    tracing::warn!("CUDA graph capture failed, decoding without graphs: {e}");
                    self.use_graph = false;
                }
            }
        }
        Ok(())
    }

    fn capture(&mut self, pos: usize, pick: DevicePick) -> Result<CudaGraph, BackendError> {
        let s = self.backend.device().stream().clone();
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(dev_err("starting graph capture"))?;
        let queued = self.queue_step(pos, pick);
        // End the capture whatever happened, so the stream is usable again.
        let ended = s.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = ended.map_err(dev_err("instantiating the decode graph"))?;
        let graph = graph
            .ok_or_else(|| BackendError::Device("CUDA graph capture recorded nothing".into()))?;
        graph
            .upload()
            .map_err(dev_err("uploading the decode graph"))?;
        Ok(graph)
    }
}

impl Session for CudaSession {
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
                    Pick::Logits(_) => self.graph.as_ref().map_or(DevicePick::Argmax, |(p, _)| *p),
                };
                let seed = match pick {
                    Pick::Sample { seed, .. } => seed,
                    _ => 0,
                };
                self.decode_step(token, pos, device_pick, seed)?;
                if let Pick::Logits(out) = pick {
                    let logits = self.model.logits(&self.state);
                    self.backend.read_row(logits, out)?;
                    return Ok(StepOutput::Logits);
                }
                Ok(StepOutput::Tokens(Picked::from_slice(&[self.read_next()?])))
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
                let (b, s) = (&mut self.backend, &mut self.state);
                match rows {
                    Rows::Last => self.model.forward(b, s, tokens, pos, out)?,
                    Rows::All => self.model.forward_rows(b, s, tokens, pos, out)?,
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
        self.backend.set_device_inputs(None);
        self.model
            .forward_rows_logits(&mut self.backend, &mut self.state, tokens, pos)?;
        let Some(logits) = self.model.rows_logits(&self.state) else {
            return Err(BackendError::Device(
                "CUDA: the verify pass left no logits".into(),
            ));
        };
        for row in 0..n {
            self.backend.argmax_row(
                logits,
                row,
                &mut self.rows_next,
                row,
                &mut self.part_val,
                &mut self.part_idx,
            )?;
        }
        let mut out = [0u32; MAX_VERIFY_ROWS];
        let s = self.backend.device().stream().clone();
        s.memcpy_dtoh(&self.rows_next.slice(..n), &mut out[..n])
            .map_err(dev_err("reading the verify picks"))?;
        s.synchronize()
            .map_err(dev_err("running the verify pass"))?;
        Ok(StepOutput::Tokens(Picked::from_slice(&out[..n])))
    }
}

impl CudaSession {
    /// The token the last step picked (a 4-byte copy, after the step finished).
    fn read_next(&mut self) -> Result<u32, BackendError> {
        let s = self.backend.device().stream().clone();
        let mut next = [0u32];
        s.memcpy_dtoh(&self.next, &mut next[..])
            .map_err(dev_err("reading the token"))?;
        s.synchronize()
            .map_err(dev_err("running the decode step"))?;
        Ok(next[0])
    }
}
