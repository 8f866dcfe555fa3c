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
//! Speculative verify passes are captured too, one graph per row count (`verify.rs`).
//!
//! Set `TACHYON_NO_CUDA_GRAPH=1` to run decode steps and verify passes eagerly (same
//! kernels, one launch each), e.g. to tell a graph problem from a kernel problem.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream, PinnedHostSlice, sys};

use super::backend::CudaBackend;
use super::buffers::CudaAct;
use super::history::{DeviceHistory, DeviceSampling};
use super::launch::dev_err;
use super::launch::penalty;
use super::launch::sample::{self as pick_kernels, SampleFilters};
use crate::backend::{BackendError, Position, StepProfile, TokenIds, position_seed};

mod verify;
use verify::VerifyGraphs;

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
        TokenIds::Device(&self.token, 1)
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
    /// Queues the forward pass of the first `n` ids of `tokens` at positions `*pos..`
    /// (a verify pass: at most the state's batch, which the caller checks), leaving every
    /// row's logits in [`DecodeStep::rows_logits`]. Captured like [`DecodeStep::queue`].
    fn queue_rows(
        &mut self,
        b: &mut CudaBackend,
        tokens: &CudaSlice<u32>,
        n: usize,
        pos: &CudaSlice<i32>,
    ) -> Result<(), BackendError>;
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

/// Pinned host copies of a step's inputs, what their uploads are queued from.
struct InputsHost {
    token: PinnedHostSlice<u32>,
    pos: PinnedHostSlice<i32>,
    seed: PinnedHostSlice<u64>,
}

/// What a captured step depends on beyond its buffers: the pick, and whether the
/// generation's penalties run before it (kernels' parameters are baked into a graph, so
/// another key means another capture, made once and kept).
#[derive(Clone, Copy, Debug, PartialEq)]
struct GraphKey {
    pick: PickKind,
    penalties: bool,
}

/// A pick without its settings: a captured draw reads its filters from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PickKind {
    Argmax,
    Sample,
    Deferred,
}

impl PickKind {
    fn of(p: DevicePick) -> PickKind {
        match p {
            DevicePick::Argmax => PickKind::Argmax,
            DevicePick::Sample { .. } => PickKind::Sample,
            DevicePick::Deferred => PickKind::Deferred,
        }
    }
}

/// Most captured steps kept: the picks and penalty settings a session switches between.
const MAX_GRAPHS: usize = 6;

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
    graphs: Vec<(GraphKey, StepGraph)>,
    /// The captured verify passes and their inputs (their graphs drop first inside).
    verify: VerifyGraphs,
    inputs: StepInputs,
    /// What `inputs` and `picks.rng` hold once the last step's `step_advance` ran, when
    /// the host knows it (after reading that step's token): a step whose token, position
    /// and seed are these uploads nothing.
    advanced: Option<(u32, usize, u64)>,
    /// The position the last queued step's `step_advance` moves to, until its token is read.
    pending: Option<usize>,
    /// The last decode step's token, position, seed and graph, for [`DeviceDecoder::profile_step`].
    last_step: Option<(u32, i32, u64, GraphKey)>,
    /// Pinned staging for the step inputs the host does write.
    inputs_host: InputsHost,
    /// Pinned landing place of the step's 4-byte token.
    /// Two, so a run of steps ([`DeviceDecoder::decode_run`]) copies one step's token
    /// while the host still reads the last one's.
    next_host: [PinnedHostSlice<u32>; 2],
    /// Recorded behind each token's copy into `next_host`: what the host waits on.
    picked: [CudaEvent; 2],
    picks: PickBuffers,
    history: DeviceHistory,
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
        // The step inputs' staging and the token's landing place likewise: written in
        // full before each upload, read only after the copy into them finished.
        let (mask_host, seed_host, inputs_host, next_host) = unsafe {
            (
                ctx.alloc_pinned::<u32>(words).map_err(e())?,
                ctx.alloc_pinned::<u64>(1).map_err(e())?,
                InputsHost {
                    token: ctx.alloc_pinned::<u32>(1).map_err(e())?,
                    pos: ctx.alloc_pinned::<i32>(1).map_err(e())?,
                    seed: ctx.alloc_pinned::<u64>(1).map_err(e())?,
                },
                [
                    ctx.alloc_pinned::<u32>(1).map_err(e())?,
                    ctx.alloc_pinned::<u32>(1).map_err(e())?,
                ],
            )
        };
        let history = DeviceHistory::new(backend.device(), vocab, model.ctx())?;
        let use_graph =
            !std::env::var("TACHYON_NO_CUDA_GRAPH").is_ok_and(|v| !matches!(v.trim(), "" | "0"));
        Ok(DeviceDecoder {
            graphs: Vec::new(),
            verify: VerifyGraphs::new(backend.device(), max_rows)?,
            inputs: StepInputs {
                token: s.alloc_zeros::<u32>(1).map_err(e())?,
                pos: s.alloc_zeros::<i32>(1).map_err(e())?,
            },
            advanced: None,
            pending: None,
            last_step: None,
            inputs_host,
            next_host,
            picked: [
                ctx.new_event(None).map_err(e())?,
                ctx.new_event(None).map_err(e())?,
            ],
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
            history,
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
        self.graphs.clear();
        self.verify.forget();
        self.advanced = None;
    }

    /// The pick the last captured step has, if any.
    pub fn captured_pick(&self) -> Option<DevicePick> {
        let (k, _) = self.graphs.last()?;
        Some(match k.pick {
            PickKind::Argmax => DevicePick::Argmax,
            PickKind::Deferred => DevicePick::Deferred,
            PickKind::Sample => {
                let s = self.history.sampling();
                DevicePick::Sample {
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                    min_p: s.min_p,
                }
            }
        })
    }

    /// Starts a generation after `prompt` with settings `s` (see [`DeviceHistory::begin`]):
    /// later steps penalize on the device when `s` has penalties. Settings that equal the
    /// last ones and have no penalties (whose history would not be read) upload nothing.
    pub fn begin_generation(
        &mut self,
        s: DeviceSampling,
        prompt: &[u32],
    ) -> Result<(), BackendError> {
        if s == *self.history.sampling() && !s.has_penalties() {
            return Ok(());
        }
        // What the device's seed will be is worked out from these settings from now on.
        self.advanced = None;
        self.history.begin(self.backend.device(), s, prompt)
    }

    /// The history and settings the device keeps for penalties and draws.
    pub fn history(&self) -> &DeviceHistory {
        &self.history
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
        // The seed the draw needs; a step that draws nothing keeps whatever the device has.
        let sampled = matches!(pick, DevicePick::Sample { .. });
        let seed = if sampled {
            draw_seed
        } else {
            position_seed(self.history.sampling().seed, pos)
        };
        let known = self
            .advanced
            .is_some_and(|(t, p, r)| t == token && p == pos && (r == seed || !sampled));
        if !known {
            self.upload_inputs(token, pos_i32, seed)?;
        }
        self.advanced = None;
        self.pending = None;
        if let DevicePick::Sample {
            temperature,
            top_k,
            top_p,
            min_p,
        } = pick
        {
            let f = SampleFilters {
                temperature,
                top_k,
                top_p,
                min_p,
            };
            self.history.set_filters(self.backend.device(), f)?;
        }
        let key = GraphKey {
            pick: PickKind::of(pick),
            penalties: pick != DevicePick::Deferred && self.history.sampling().has_penalties(),
        };
        self.last_step = Some((token, pos_i32, seed, key));
        if let Some((_, g)) = self.graphs.iter().find(|(k, _)| *k == key) {
            g.0.launch().map_err(dev_err("replaying the decode step"))?;
        } else {
            self.queue_step(key)?;
            if self.use_graph {
                // Capture the step just run (recording queues no work). A failure leaves
                // the decoder eager rather than broken.
                match self.capture(key) {
                    Ok(g) => {
                        if self.graphs.len() >= MAX_GRAPHS {
                            self.graphs.remove(0);
                        }
                        self.graphs.push((key, g));
                    }
                    Err(e) => {
                        tracing::warn!("CUDA graph capture failed, decoding without graphs: {e}");
                        self.use_graph = false;
                    }
                }
            }
        }
        if pick != DevicePick::Deferred {
            self.pending = Some(pos + 1);
        }
        Ok(())
    }

    /// Writes a step's token id, position and draw seed from pinned memory (queued, not
    /// waited for), once the last such upload has left the staging buffer.
    fn upload_inputs(&mut self, token: u32, pos: i32, seed: u64) -> Result<(), BackendError> {
        let s = self.stream();
        let p = &mut self.picks;
        p.uploaded
            .synchronize()
            .map_err(dev_err("waiting for the last input upload"))?;
        let e = || dev_err("writing the step inputs");
        let h = &mut self.inputs_host;
        h.token.as_mut_slice().map_err(e())?[0] = token;
        h.pos.as_mut_slice().map_err(e())?[0] = pos;
        h.seed.as_mut_slice().map_err(e())?[0] = seed;
        s.memcpy_htod(&h.token, &mut self.inputs.token)
            .map_err(e())?;
        s.memcpy_htod(&h.pos, &mut self.inputs.pos).map_err(e())?;
        s.memcpy_htod(&h.seed, &mut p.rng).map_err(e())?;
        p.uploaded.record(&s).map_err(e())
    }

    /// Counts (and with `timed`, times) the kernels of one decode step: the last step
    /// again, run eagerly with the pick the graph was captured with (it rewrites the same
    /// KV position with the same values and picks the same token), and the nodes of the
    /// captured graph.
    pub fn profile_step(&mut self, timed: bool) -> Result<StepProfile, BackendError> {
        let Some((token, pos, seed, key)) = self.last_step else {
            return Err(BackendError::Device(
                "CUDA: a decode step must run before it is profiled".into(),
            ));
        };
        let graph_nodes = match self.graphs.iter().find(|(k, _)| *k == key) {
            Some((_, g)) => Some(graph_node_count(&g.0)?),
            None => None,
        };
        // The step's inputs moved on with its `step_advance`: put them back, and let the
        // next step write its own (the history records a position once, so the re-run
        // penalizes as the step did and counts nothing twice).
        self.upload_inputs(token, pos, seed)?;
        self.advanced = None;
        self.pending = None;
        self.backend.device().tally.start(timed);
        let queued = self.queue_step(key);
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
        let advance = penalty::advance(
            dev,
            self.history.config(),
            &mut self.inputs.token,
            &mut self.inputs.pos,
            &mut p.rng,
        )?;
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
                advance,
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
                pick_kernels::sample(
                    dev,
                    logits,
                    mask,
                    &mut p.work,
                    &mut p.next,
                    &mut p.rng,
                    f,
                    advance,
                    None,
                )
            }
            DevicePick::Deferred => Err(BackendError::Device(
                "CUDA: a deferred pick must say what to pick".into(),
            )),
        }?;
        if let Some((_, pos, _, _)) = self.last_step {
            self.pending = Some(pos as usize + 1);
        }
        Ok(())
    }

    /// The token the last decode step picked: a 4-byte copy into pinned memory queued
    /// behind the step, and a wait for the event recorded after it.
    pub fn read_next(&mut self) -> Result<u32, BackendError> {
        self.queue_token_copy(0)?;
        let next = self.wait_token(0)?;
        // The device's inputs now hold this token at the next position (a step that picked
        // nothing keeps its old token there: the host does not know it, so uploads anew).
        self.advanced = match self.pending.take() {
            Some(pos) if next != super::params::TACHYON_NO_TOKEN => {
                Some((next, pos, position_seed(self.history.sampling().seed, pos)))
            }
            _ => None,
        };
        Ok(next)
    }

    /// Queues the copy of the last step's token into pinned slot `slot`, and its event.
    fn queue_token_copy(&mut self, slot: usize) -> Result<(), BackendError> {
        let s = self.stream();
        let e = || dev_err("reading the token");
        s.memcpy_dtoh(&self.picks.next, &mut self.next_host[slot])
            .map_err(e())?;
        self.picked[slot].record(&s).map_err(e())
    }

    /// Waits for slot `slot`'s copy and returns the token it holds.
    fn wait_token(&mut self, slot: usize) -> Result<u32, BackendError> {
        self.picked[slot]
            .synchronize()
            .map_err(dev_err("running the decode step"))?;
        Ok(self.next_host[slot]
            .as_slice()
            .map_err(dev_err("reading the token"))?[0])
    }

    /// Up to `steps` decode steps from `token` at `pos` with `pick` (`draw_seed` seeding
    /// the first draw; the device seeds the later ones from the generation's settings), each
    /// picked token passed to `on_token` in order until it returns `false` or a pick of no
    /// token (passed on too) ends the run. Each step's inputs come from the step before on the device, so the next
    /// step is queued before this one's token is read: the GPU never waits for the host
    /// between them. A stop leaves at most one step more run, whose position the caller
    /// does not count as cached. Returns the steps whose tokens were passed on.
    pub fn decode_run(
        &mut self,
        token: u32,
        pos: usize,
        pick: DevicePick,
        draw_seed: u64,
        steps: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<usize, BackendError> {
        if steps == 0 || pick == DevicePick::Deferred || pos + steps > self.model.ctx() {
            return Err(BackendError::Device(format!(
                "CUDA: a run of {steps} steps at position {pos} (context {})",
                self.model.ctx()
            )));
        }
        self.decode(token, pos, pick, draw_seed)?;
        let key = match self.last_step {
            Some((_, _, _, key)) => key,
            None => return Err(BackendError::Device("CUDA: no decode step ran".into())),
        };
        self.pending = None;
        let mut seed = draw_seed;
        let mut input = token;
        for k in 0..steps {
            let slot = k % 2;
            self.queue_token_copy(slot)?;
            if k + 1 < steps {
                match self.graphs.iter().find(|(g, _)| *g == key) {
                    Some((_, g)) => g.0.launch().map_err(dev_err("replaying the decode step"))?,
                    None => self.queue_step(key)?,
                }
            }
            let next = self.wait_token(slot)?;
            self.last_step = Some((input, (pos + k) as i32, seed, key));
            let go_on = on_token(next);
            if next == super::params::TACHYON_NO_TOKEN || !go_on || k + 1 == steps {
                // Whatever ran past the stop is left to finish in stream order; the host
                // no longer knows what the inputs hold.
                self.advanced = None;
                return Ok(k + 1);
            }
            input = next;
            seed = position_seed(self.history.sampling().seed, pos + k + 1);
        }
        Ok(steps)
    }

    /// The logits of the last decode step, into `out` (vocabulary-sized).
    pub fn read_logits(&mut self, out: &mut [f32]) -> Result<(), BackendError> {
        use crate::backend::Ops;
        self.backend.read_row(self.model.logits(), out)
    }

    fn stream(&self) -> Arc<CudaStream> {
        self.backend.device().stream().clone()
    }

    /// Everything a decode step queues: the forward pass reading the token id and position
    /// from `inputs`, then the pick of the next token into `picks.next`.
    fn queue_step(&mut self, key: GraphKey) -> Result<(), BackendError> {
        self.model.queue(&mut self.backend, &self.inputs)?;
        let logits = self.model.logits();
        if key.penalties {
            let dev = self.backend.device();
            self.history
                .apply(dev, logits, &self.inputs.token, &self.inputs.pos)?;
        }
        let dev = self.backend.device();
        let p = &mut self.picks;
        // The pick writes the next step's inputs after its token: a replay needs nothing
        // from the host.
        let advance = penalty::advance(
            dev,
            self.history.config(),
            &mut self.inputs.token,
            &mut self.inputs.pos,
            &mut p.rng,
        )?;
        match key.pick {
            PickKind::Deferred => Ok(()),
            PickKind::Argmax => pick_kernels::argmax_row(
                dev,
                logits,
                0,
                None,
                &mut p.next,
                0,
                &mut p.part_val,
                &mut p.part_idx,
                advance,
            ),
            // The filters come from the device's settings (`set_filters` checked them).
            PickKind::Sample => {
                let st = self.history.sampling();
                let f = SampleFilters {
                    temperature: st.temperature,
                    top_k: st.top_k,
                    top_p: st.top_p,
                    min_p: st.min_p,
                };
                pick_kernels::sample(
                    dev,
                    logits,
                    None,
                    &mut p.work,
                    &mut p.next,
                    &mut p.rng,
                    f,
                    advance,
                    Some(self.history.config()),
                )
            }
        }
    }

    /// Records the step (begin / end capture on the device stream) into a graph.
    fn capture(&mut self, key: GraphKey) -> Result<StepGraph, BackendError> {
        self.record(|d| d.queue_step(key))
    }

    /// Records what `queue` queues on the device stream into a graph.
    fn record(
        &mut self,
        queue: impl FnOnce(&mut Self) -> Result<(), BackendError>,
    ) -> Result<StepGraph, BackendError> {
        let s = self.stream();
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(dev_err("starting graph capture"))?;
        let queued = queue(self);
        // End the capture whatever happened, so the stream is usable again.
        let ended = s.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = ended.map_err(dev_err("instantiating the graph"))?;
        let graph = graph
            .ok_or_else(|| BackendError::Device("CUDA graph capture recorded nothing".into()))?;
        graph.upload().map_err(dev_err("uploading the graph"))?;
        Ok(StepGraph(graph))
    }
}
