//! Decode steps as CUDA graphs, without knowing the model: a step's token id and position
//! live in device memory ([`StepInputs`]), the first step runs eagerly (so every scratch
//! buffer exists and the step itself is done), then the same step is captured (recorded,
//! not run) together with the on-device pick of the next token. Every later step writes
//! the token id and position (8 bytes host to device), replays the graph, and reads back
//! the 4-byte token it picked or the logits.
//!
//! What a step runs comes from the layer above through [`DecodeStep`] (the engine drives
//! `graph::llama` with it). [`DeviceDecoder`] owns that step's model and state, the
//! backend and the graph, in an order that destroys the graph before anything it points
//! into: the buffers, the weights and the kernel module.
//!
//! A constrained step captures the forward pass alone ([`DevicePick::Deferred`]): its pick
//! reads the step's token mask, which the host computes from the tokens so far while the
//! GPU runs that forward pass, so the pick cannot be inside a graph launched before the mask
//! exists. [`DeviceDecoder::pick_after_step`] then queues the mask's upload (from pinned
//! memory, asynchronous) and the masked pick behind the graph on the same stream, and
//! [`DeviceDecoder::read_next`] is still the step's one synchronization.
//!
//! Set `TACHYON_NO_CUDA_GRAPH=1` to run decode steps eagerly (same kernels, one launch
//! each), e.g. to tell a graph problem from a kernel problem.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream, PinnedHostSlice, sys};

use super::backend::CudaBackend;
use super::buffers::CudaAct;
use super::launch::dev_err;
use super::launch::sample::{self as pick_kernels, SampleFilters};
use crate::backend::{BackendError, Position, StepProfile, TokenIds};

/// How a decode step picks the next token on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DevicePick {
    Argmax,
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
    },
    /// No pick inside the step: the graph ends with the logits, and the pick is queued after
    /// it by [`DeviceDecoder::pick_after_step`] (a masked pick, whose mask the host computes
    /// while the forward pass runs).
    Deferred,
}

/// The inputs of a decode step in device memory: one token id and its position.
pub struct StepInputs {
    token: CudaSlice<u32>,
    pos: CudaSlice<i32>,
}

impl StepInputs {
    /// The token id, as the ops take it (`Ops::embed`).
    pub fn token_ids(&self) -> TokenIds<'_, CudaSlice<u32>> {
        TokenIds::Device(&self.token)
    }

    /// The position, as the ops take it (`Ops::rope`, `Ops::attention`).
    pub fn position(&self) -> Position<'_, CudaSlice<i32>> {
        Position::Device(&self.pos)
    }
}

/// One decode step of a model, as [`DeviceDecoder`] runs and captures it.
pub trait DecodeStep {
    /// Positions the state holds: a step at or past it is refused before it is written.
    fn ctx(&self) -> usize;
    /// Queues the forward pass of the token in `inputs`, leaving its logits in
    /// [`DecodeStep::logits`]. It is captured into a graph, so it must queue device work
    /// only: no host copy, no synchronization, no allocation.
    fn queue(&mut self, b: &mut CudaBackend, inputs: &StepInputs) -> Result<(), BackendError>;
    /// The logits of the last step (one row, vocabulary wide).
    fn logits(&self) -> &CudaAct;
    /// The logits of the last multi-row (verify) pass, one row per token, if one ran.
    fn rows_logits(&self) -> Option<&CudaAct>;
}

/// A replayable decode step.
struct StepGraph(CudaGraph);

// SAFETY: a CUgraphExec may be launched from any thread once the context is current there
// (cudarc's `launch` makes it current). Its owner is used from one thread at a time
// (`&mut self`), so launches never race.
unsafe impl Send for StepGraph {}

/// The buffers the on-device picks write and read.
struct PickBuffers {
    /// The decode step's pick.
    next: CudaSlice<u32>,
    /// The argmax of each row of a verify pass.
    rows_next: CudaSlice<u32>,
    part_val: CudaSlice<f32>,
    part_idx: CudaSlice<i32>,
    /// Sampling scratch (vocabulary-sized) and the generator state the draw reads.
    work: CudaSlice<f32>,
    rng: CudaSlice<u64>,
    /// A deferred pick's token mask (vocabulary/32 words) on the device, and the pinned
    /// host buffers its upload and the draw's seed are copied from: a copy from pinned
    /// memory is queued on the stream and returns at once, where one from pageable memory
    /// may wait for the forward pass in flight (the driver stages it through its own
    /// pinned buffer).
    mask: CudaSlice<u32>,
    mask_host: PinnedHostSlice<u32>,
    seed_host: PinnedHostSlice<u64>,
    /// Recorded behind the last upload from the pinned buffers: waited on before they are
    /// rewritten, so a new mask never overwrites one the copy engine is still reading
    /// (already done in the usual order, where `read_next` synchronized the step before).
    uploaded: CudaEvent,
}

/// Nodes of a captured graph (kernels, and any copy or memset it recorded).
fn graph_node_count(g: &CudaGraph) -> Result<usize, BackendError> {
    let mut n = 0usize;
    // SAFETY: asks only for the count (a null node array); the graph is alive, owned by `g`.
    unsafe { sys::cuGraphGetNodes(g.cu_graph(), std::ptr::null_mut(), &mut n) }
        .result()
        .map_err(dev_err("counting the graph's nodes"))?;
    Ok(n)
}

/// Runs decode steps of `M` as graph replays, and verify rows with on-device picks.
pub struct DeviceDecoder<M> {
    /// The captured step and the pick it was captured with (the kernels' parameters are
    /// baked into a graph, so another pick means another capture). First field on
    /// purpose: fields drop in declaration order, and the graph holds the addresses of the
    /// buffers, weights and kernel module below, so it must be destroyed before any of
    /// them is freed.
    graph: Option<(DevicePick, StepGraph)>,
    inputs: StepInputs,
    picks: PickBuffers,
    model: M,
    backend: CudaBackend,
    use_graph: bool,
}

impl<M: DecodeStep> DeviceDecoder<M> {
    /// A decoder over `model` (loaded on `backend`, whose scratch is already reserved)
    /// for a vocabulary of `vocab` ids and verify passes of up to `max_rows` rows.
    pub fn new(
        backend: CudaBackend,
        model: M,
        vocab: usize,
        max_rows: usize,
    ) -> Result<Self, BackendError> {
        let s = backend.device().stream().clone();
        let ctx = backend.device().context().clone();
        let parts = CudaBackend::argmax_parts(vocab);
        let words = vocab.div_ceil(32).max(1);
        let e = || dev_err("step buffers");
        // SAFETY: pinned memory starts unset; these buffers are only copied from after
        // `pick_after_step` has written them in full (every word of the mask, the seed).
        let (mask_host, seed_host) = unsafe {
            (
                ctx.alloc_pinned::<u32>(words).map_err(e())?,
                ctx.alloc_pinned::<u64>(1).map_err(e())?,
            )
        };
        let use_graph =
            !std::env::var("TACHYON_NO_CUDA_GRAPH").is_ok_and(|v| !matches!(v.trim(), "" | "0"));
        Ok(DeviceDecoder {
            graph: None,
            inputs: StepInputs {
                token: s.alloc_zeros::<u32>(1).map_err(e())?,
                pos: s.alloc_zeros::<i32>(1).map_err(e())?,
            },
            picks: PickBuffers {
                next: s.alloc_zeros::<u32>(1).map_err(e())?,
                rows_next: s.alloc_zeros::<u32>(max_rows.max(1)).map_err(e())?,
                part_val: s.alloc_zeros::<f32>(parts).map_err(e())?,
                part_idx: s.alloc_zeros::<i32>(parts).map_err(e())?,
                work: s
                    .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
                    .map_err(e())?,
                rng: s.alloc_zeros::<u64>(1).map_err(e())?,
                mask: s.alloc_zeros::<u32>(words).map_err(e())?,
                mask_host,
                seed_host,
                uploaded: ctx.new_event(None).map_err(e())?,
            },
            model,
            backend,
            use_graph,
        })
    }

    pub fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// The backend and the model, for eager work (prefill, verify) between decode steps.
    /// Eager work must not reallocate what a captured step reads.
    pub fn parts_mut(&mut self) -> (&mut CudaBackend, &mut M) {
        (&mut self.backend, &mut self.model)
    }

    /// Drops the captured step, so the next decode step captures anew: for a model whose
    /// step now reads other buffers (another slot's KV cache and activations).
    pub fn forget_capture(&mut self) {
        self.graph = None;
    }

    /// The pick a captured step has, if any (a step whose pick is not read can keep it).
    pub fn captured_pick(&self) -> Option<DevicePick> {
        self.graph.as_ref().map(|(p, _)| *p)
    }

    /// Runs one decode step of `token` at `pos` and picks the next token on the device
    /// (read it with [`DeviceDecoder::read_next`]); `draw_seed` seeds a sampled pick. With
    /// [`DevicePick::Deferred`] nothing is picked yet: the step is queued (on a GPU it runs
    /// while this returns) for [`DeviceDecoder::pick_after_step`].
    pub fn decode(
        &mut self,
        token: u32,
        pos: usize,
        pick: DevicePick,
        draw_seed: u64,
    ) -> Result<(), BackendError> {
        let ctx = self.model.ctx();
        let pos_i32 = i32::try_from(pos)
            .ok()
            .filter(|_| pos < ctx)
            .ok_or_else(|| {
                BackendError::Device(format!("position {pos} is past the context of {ctx}"))
            })?;
        let s = self.stream();
        s.memcpy_htod(&[token][..], &mut self.inputs.token)
            .map_err(dev_err("writing the token id"))?;
        s.memcpy_htod(&[pos_i32][..], &mut self.inputs.pos)
            .map_err(dev_err("writing the position"))?;
        if matches!(pick, DevicePick::Sample { .. }) {
            s.memcpy_htod(&[draw_seed][..], &mut self.picks.rng)
                .map_err(dev_err("writing the random seed"))?;
        }
        match &self.graph {
            Some((p, g)) if *p == pick => {
                return g.0.launch().map_err(dev_err("replaying the decode step"));
            }
            _ => self.graph = None,
        }
        self.queue_step(pick)?;
        if self.use_graph {
            // Capture the step just run (recording queues no work). A failure leaves the
            // decoder eager rather than broken.
            match self.capture(pick) {
                Ok(g) => self.graph = Some((pick, g)),
                Err(e) => {
                    tracing::warn!("CUDA graph capture failed, decoding without graphs: {e}");
                    self.use_graph = false;
                }
            }
        }
        Ok(())
    }

    /// Counts (and with `timed`, times) the kernels of one decode step: the last step
    /// again, run eagerly with the pick the graph was captured with (it rewrites the same
    /// KV position with the same values and picks the same token), and the nodes of the
    /// captured graph.
    pub fn profile_step(&mut self, timed: bool) -> Result<StepProfile, BackendError> {
        let pick = self.captured_pick().unwrap_or(DevicePick::Argmax);
        let graph_nodes = match &self.graph {
            Some((_, g)) => Some(graph_node_count(&g.0)?),
            None => None,
        };
        self.backend.device().tally.start(timed);
        let queued = self.queue_step(pick);
        let synced = self.stream().synchronize();
        let kernels = self.backend.device().tally.finish();
        queued?;
        synced.map_err(dev_err("running the profiled step"))?;
        Ok(StepProfile {
            graph_nodes,
            kernels: kernels?,
        })
    }

    /// Queues the pick of the last decode step's token, which ran with
    /// [`DevicePick::Deferred`]: `pick` (argmax or a draw seeded by `draw_seed`) among the
    /// tokens `mask` allows (at least vocabulary/32 words, bit `i % 32` of word `i / 32`
    /// allows token `i`; `None`: every token). The mask is copied into pinned memory and
    /// uploaded asynchronously, behind the step on the stream, so nothing here waits for
    /// the GPU: the host may have computed the mask while the step's forward pass ran.
    pub fn pick_after_step(
        &mut self,
        mask: Option<&[u32]>,
        pick: DevicePick,
        draw_seed: u64,
    ) -> Result<(), BackendError> {
        let s = self.stream();
        let dev = self.backend.device();
        let logits = self.model.logits();
        let p = &mut self.picks;
        let words = p.mask.len();
        p.uploaded
            .synchronize()
            .map_err(dev_err("waiting for the last mask upload"))?;
        let mask = match mask {
            None => None,
            Some(m) if m.len() >= words => {
                let host = p
                    .mask_host
                    .as_mut_slice()
                    .map_err(dev_err("the token mask"))?;
                host.copy_from_slice(&m[..words]);
                s.memcpy_htod(&p.mask_host, &mut p.mask)
                    .map_err(dev_err("uploading the token mask"))?;
                p.uploaded
                    .record(&s)
                    .map_err(dev_err("recording the mask upload"))?;
                Some(&p.mask)
            }
            Some(m) => {
                return Err(BackendError::Device(format!(
                    "CUDA: a token mask of {} words for a vocabulary of {} words",
                    m.len(),
                    words
                )));
            }
        };
        match pick {
            DevicePick::Argmax => pick_kernels::argmax_row(
                dev,
                logits,
                0,
                mask,
                &mut p.next,
                0,
                &mut p.part_val,
                &mut p.part_idx,
            ),
            DevicePick::Sample {
                temperature,
                top_k,
                top_p,
                min_p,
            } => {
                let seed = p.seed_host.as_mut_slice().map_err(dev_err("the seed"))?;
                seed[0] = draw_seed;
                s.memcpy_htod(&p.seed_host, &mut p.rng)
                    .map_err(dev_err("writing the random seed"))?;
                p.uploaded
                    .record(&s)
                    .map_err(dev_err("recording the seed upload"))?;
                let f = SampleFilters {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                };
                pick_kernels::sample(dev, logits, mask, &mut p.work, &mut p.next, &mut p.rng, f)
            }
            DevicePick::Deferred => Err(BackendError::Device(
                "CUDA: a deferred pick must say what to pick".into(),
            )),
        }
    }

    /// The token the last decode step picked (a 4-byte copy, after the step finished).
    pub fn read_next(&mut self) -> Result<u32, BackendError> {
        let s = self.stream();
        let mut next = [0u32];
        s.memcpy_dtoh(&self.picks.next, &mut next[..])
            .map_err(dev_err("reading the token"))?;
        s.synchronize()
            .map_err(dev_err("running the decode step"))?;
        Ok(next[0])
    }

    /// The logits of the last decode step, into `out` (vocabulary-sized).
    pub fn read_logits(&mut self, out: &mut [f32]) -> Result<(), BackendError> {
        use crate::backend::Ops;
        self.backend.read_row(self.model.logits(), out)
    }

    /// The argmax of each of the first `out.len()` rows of the last verify pass, picked on
    /// the device: that many ids come back instead of that many rows of logits.
    pub fn argmax_rows(&mut self, out: &mut [u32]) -> Result<(), BackendError> {
        let n = out.len();
        if n > self.picks.rows_next.len() {
            return Err(BackendError::Device(format!(
                "CUDA: {n} verify rows, at most {}",
                self.picks.rows_next.len()
            )));
        }
        let Some(logits) = self.model.rows_logits() else {
            return Err(BackendError::Device(
                "CUDA: the verify pass left no logits".into(),
            ));
        };
        let p = &mut self.picks;
        for row in 0..n {
            self.backend.argmax_row(
                logits,
                row,
                &mut p.rows_next,
                row,
                &mut p.part_val,
                &mut p.part_idx,
            )?;
        }
        let s = self.stream();
        s.memcpy_dtoh(&self.picks.rows_next.slice(..n), out)
            .map_err(dev_err("reading the verify picks"))?;
        s.synchronize().map_err(dev_err("running the verify pass"))
    }

    fn stream(&self) -> Arc<CudaStream> {
        self.backend.device().stream().clone()
    }

    /// Everything a decode step queues: the forward pass reading the token id and position
    /// from `inputs`, then the pick of the next token into `picks.next`.
    fn queue_step(&mut self, pick: DevicePick) -> Result<(), BackendError> {
        self.model.queue(&mut self.backend, &self.inputs)?;
        let logits = self.model.logits();
        let p = &mut self.picks;
        match pick {
            DevicePick::Deferred => Ok(()),
            DevicePick::Argmax => {
                self.backend
                    .argmax(logits, &mut p.next, &mut p.part_val, &mut p.part_idx)
            }
            DevicePick::Sample {
                temperature,
                top_k,
                top_p,
                min_p,
            } => self.backend.sample(
                logits,
                &mut p.work,
                &mut p.next,
                &mut p.rng,
                temperature,
                top_k,
                top_p,
                min_p,
            ),
        }
    }

    /// Records the step (begin / end capture on the device stream) into a graph.
    fn capture(&mut self, pick: DevicePick) -> Result<StepGraph, BackendError> {
        let s = self.stream();
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(dev_err("starting graph capture"))?;
        let queued = self.queue_step(pick);
        // End the capture whatever happened, so the stream is usable again.
        let ended = s.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = ended.map_err(dev_err("instantiating the decode graph"))?;
        let graph = graph
            .ok_or_else(|| BackendError::Device("CUDA graph capture recorded nothing".into()))?;
        graph
            .upload()
            .map_err(dev_err("uploading the decode graph"))?;
        Ok(StepGraph(graph))
    }
}
