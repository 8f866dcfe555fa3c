//! A generation's sampling settings and token history in device memory, so a replayed
//! decode step applies repetition, presence and frequency penalties and draws with the
//! request's filters without the logits leaving the device, and a change of settings
//! between requests re-captures nothing: the graph reads them where they are.
//!
//! [`DeviceHistory::begin`] is the one upload per generation: the settings, and the
//! prompt's last `penalty_last_n` tokens (the repetition penalty's window at the first
//! step); each step's `penalty_apply` then records its own input token
//! (`kernels/penalty.cu`). A generation steps each position once, in order, from the
//! prompt's end: what the engine's decode loop does.

use cudarc::driver::CudaSlice;

use super::buffers::CudaAct;
use super::device::CudaDevice;
use super::launch::dev_err;
use super::launch::penalty::{self, HistoryBufs};
use super::launch::sample::SampleFilters;
use super::params::SampleConfig;
use crate::backend::BackendError;

/// What a generation samples with, as the device keeps it (the CPU sampler's settings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampling {
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// 1: off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Positions the repetition penalty looks back over (prompt included).
    pub penalty_last_n: usize,
    /// The draw at position `p` is seeded with [`position_seed`](crate::backend::position_seed)`(seed, p)`.
    pub seed: u64,
}

impl DeviceSampling {
    /// Greedy, no penalties: what a device holds before any generation set it.
    pub const GREEDY: DeviceSampling = DeviceSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        penalty_last_n: 0,
        seed: 0,
    };

    /// Any penalty set: the step then needs `penalty_apply` before its pick.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

fn clamp_i32(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The settings and history buffers of one decoder (one generation at a time).
pub struct DeviceHistory {
    /// A `SampleConfig`, as bytes.
    cfg: CudaSlice<u8>,
    hist: CudaSlice<u32>,
    last: CudaSlice<u32>,
    counts: CudaSlice<u32>,
    next_pos: CudaSlice<i32>,
    /// What `cfg` holds.
    sampling: DeviceSampling,
    prompt_len: usize,
}

impl DeviceHistory {
    /// Buffers for a vocabulary of `vocab` ids and `ctx` positions, holding
    /// [`DeviceSampling::GREEDY`] and no history.
    pub fn new(dev: &CudaDevice, vocab: usize, ctx: usize) -> Result<Self, BackendError> {
        let s = dev.stream();
        let e = || dev_err("the token history");
        let mut h = DeviceHistory {
            cfg: s
                .alloc_zeros::<u8>(std::mem::size_of::<SampleConfig>())
                .map_err(e())?,
            hist: s.alloc_zeros::<u32>(ctx.max(1)).map_err(e())?,
            last: s.alloc_zeros::<u32>(vocab.max(1)).map_err(e())?,
            counts: s.alloc_zeros::<u32>(vocab.max(1)).map_err(e())?,
            next_pos: s.alloc_zeros::<i32>(1).map_err(e())?,
            sampling: DeviceSampling::GREEDY,
            prompt_len: 0,
        };
        h.write_config(dev, DeviceSampling::GREEDY, 0)?;
        Ok(h)
    }

    /// The settings the device holds.
    pub fn sampling(&self) -> &DeviceSampling {
        &self.sampling
    }

    /// The device copy of the settings, as the kernels take it.
    pub fn config(&self) -> &CudaSlice<u8> {
        &self.cfg
    }

    fn write_config(
        &mut self,
        dev: &CudaDevice,
        s: DeviceSampling,
        prompt_len: usize,
    ) -> Result<(), BackendError> {
        let c = SampleConfig {
            temperature: s.temperature,
            top_p: s.top_p,
            min_p: s.min_p,
            top_k: clamp_i32(s.top_k),
            repetition_penalty: s.repetition_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            last_n: clamp_i32(s.penalty_last_n),
            prompt_len: clamp_i32(prompt_len),
            pad_: 0,
            seed: s.seed,
        };
        // SAFETY: SampleConfig is a plain `#[repr(C)]` struct of f32/i32/u64 fields with no
        // padding left implicit (`pad_` fills the one gap), so all of its bytes are
        // initialized and may be viewed as `u8`s for the length of the borrow.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&c as *const SampleConfig).cast::<u8>(),
                std::mem::size_of::<SampleConfig>(),
            )
        };
        dev.stream()
            .memcpy_htod(bytes, &mut self.cfg)
            .map_err(dev_err("writing the sampling settings"))?;
        self.sampling = s;
        self.prompt_len = prompt_len;
        Ok(())
    }

    /// Makes the device's filters `f` (checked as a draw checks them), keeping the
    /// penalties, seed and history: what a captured draw reads. Uploads only a change.
    pub fn set_filters(&mut self, dev: &CudaDevice, f: SampleFilters) -> Result<(), BackendError> {
        let ok = f.temperature.is_finite()
            && f.temperature > 0.0
            && f.top_p > 0.0
            && f.top_p <= 1.0
            && (0.0..=1.0).contains(&f.min_p);
        if !ok {
            return Err(BackendError::Device(format!(
                "CUDA: sampling filters temperature {}, top_p {}, min_p {}",
                f.temperature, f.top_p, f.min_p
            )));
        }
        let s = DeviceSampling {
            temperature: f.temperature,
            top_k: f.top_k,
            top_p: f.top_p,
            min_p: f.min_p,
            ..self.sampling
        };
        if s == self.sampling {
            return Ok(());
        }
        self.write_config(dev, s, self.prompt_len)
    }

    /// Starts a generation after `prompt` (positions `0..prompt.len()`; its first decode
    /// step is at `prompt.len()`): writes `s`, forgets the last generation's history and
    /// keeps the prompt's last `s.penalty_last_n` tokens. Queued on the stream.
    pub fn begin(
        &mut self,
        dev: &CudaDevice,
        s: DeviceSampling,
        prompt: &[u32],
    ) -> Result<(), BackendError> {
        let n = prompt.len();
        if n > self.hist.len() {
            return Err(BackendError::Device(format!(
                "CUDA: a prompt of {n} tokens for a history of {} positions",
                self.hist.len()
            )));
        }
        self.write_config(dev, s, n)?;
        let st = dev.stream();
        let e = || dev_err("resetting the token history");
        st.memset_zeros(&mut self.last).map_err(e())?;
        st.memset_zeros(&mut self.counts).map_err(e())?;
        let from = n - s.penalty_last_n.min(n);
        if from < n {
            st.memcpy_htod(&prompt[from..], &mut self.hist.slice_mut(from..n))
                .map_err(dev_err("writing the prompt's last tokens"))?;
        }
        penalty::seed(dev, &mut self.bufs(), from, n)
    }

    fn bufs(&mut self) -> HistoryBufs<'_> {
        HistoryBufs {
            hist: &mut self.hist,
            last: &mut self.last,
            counts: &mut self.counts,
            next_pos: &mut self.next_pos,
        }
    }

    /// Records the step's input (`token` at `pos`, device words) and penalizes `logits`
    /// (row 0) in place with the settings of [`DeviceHistory::begin`].
    pub fn apply(
        &mut self,
        dev: &CudaDevice,
        logits: &CudaAct,
        token: &CudaSlice<u32>,
        pos: &CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        let cfg = &self.cfg;
        let mut b = HistoryBufs {
            hist: &mut self.hist,
            last: &mut self.last,
            counts: &mut self.counts,
            next_pos: &mut self.next_pos,
        };
        penalty::apply(dev, &mut b, cfg, logits, token, pos)
    }
}
