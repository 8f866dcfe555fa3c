//! Launches of `kernels/penalty.cu`: the token history a decode step penalizes from
//! (`penalty_seed` once per generation, `penalty_apply` in each step before the pick), and
//! the next step's inputs that a pick writes after its token (`StepAdvance`).

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, ptr, ptr_mut, shape_err};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::CudaAct;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::{
    PenaltyApplyParams, PenaltySeedParams, PenaltyState, SampleConfig, StepAdvance,
};

/// The history buffers (see `PenaltyState` in kernels/tachyon_kernels.h).
pub struct HistoryBufs<'a> {
    /// Token by position (`ctx` words).
    pub hist: &'a mut CudaSlice<u32>,
    /// 1 + the latest position of each token (`vocab` words).
    pub last: &'a mut CudaSlice<u32>,
    /// Generated count of each token (`vocab` words).
    pub counts: &'a mut CudaSlice<u32>,
    /// The first position not yet recorded (1 word).
    pub next_pos: &'a mut CudaSlice<i32>,
}

fn state(dev: &CudaDevice, b: &mut HistoryBufs<'_>) -> Result<PenaltyState, BackendError> {
    let vocab = b.last.len();
    if b.counts.len() != vocab || b.next_pos.is_empty() || b.hist.is_empty() {
        return Err(shape_err(format!(
            "penalty history: {} last, {} counts, {} positions",
            vocab,
            b.counts.len(),
            b.hist.len()
        )));
    }
    Ok(PenaltyState {
        hist: ptr_mut(b.hist, dev) as *mut u32,
        last: ptr_mut(b.last, dev) as *mut u32,
        counts: ptr_mut(b.counts, dev) as *mut u32,
        next_pos: ptr_mut(b.next_pos, dev) as *mut i32,
        ctx: i32_of(b.hist.len(), "history positions")?,
        vocab: i32_of(vocab, "vocabulary")?,
    })
}

/// Marks positions `from..to` of `hist` (already written) in `last` (already zeroed) and
/// starts recording at `to`.
pub fn seed(
    dev: &CudaDevice,
    b: &mut HistoryBufs<'_>,
    from: usize,
    to: usize,
) -> Result<(), BackendError> {
    if from > to || to > b.hist.len() {
        return Err(shape_err(format!(
            "penalty history: positions {from}..{to} of {}",
            b.hist.len()
        )));
    }
    let p = PenaltySeedParams {
        st: state(dev, b)?,
        from: i32_of(from, "history start")?,
        to: i32_of(to, "history end")?,
    };
    let k = &dev.kernels;
    launch(
        dev,
        &k.penalty_seed,
        (1, 1, 1),
        (256, 1, 1),
        &p,
        "penalty_seed",
    )
}

/// Records the step's token (`token` at `pos`, device words) and applies `cfg`'s penalties
/// to row 0 of `logits` in place: the step's own output, which the pick queued behind this
/// on the stream reads next.
pub fn apply(
    dev: &CudaDevice,
    b: &mut HistoryBufs<'_>,
    cfg: &CudaSlice<u8>,
    logits: &CudaAct,
    token: &CudaSlice<u32>,
    pos: &CudaSlice<i32>,
) -> Result<(), BackendError> {
    let st = state(dev, b)?;
    if logits.width != b.last.len() || cfg.len() < std::mem::size_of::<SampleConfig>() {
        return Err(shape_err(format!(
            "penalties: {} logits for a history of {} tokens",
            logits.width,
            b.last.len()
        )));
    }
    let p = PenaltyApplyParams {
        st,
        cfg: ptr(cfg, dev) as *const SampleConfig,
        logits: ptr(&logits.buf, dev) as *mut f32,
        token: ptr(token, dev) as *const u32,
        pos: ptr(pos, dev) as *const i32,
    };
    let k = &dev.kernels;
    launch(
        dev,
        &k.penalty_apply,
        (1, 1, 1),
        (1024, 1, 1),
        &p,
        "penalty_apply",
    )
}

/// No advance: a pick that only writes its token (verify rows, the ops' own calls).
pub fn no_advance() -> StepAdvance {
    StepAdvance {
        cfg: std::ptr::null(),
        token: std::ptr::null_mut(),
        pos: std::ptr::null_mut(),
        rng_state: std::ptr::null_mut(),
    }
}

/// The next step's inputs, for the pick to write after its token: `token` = the pick
/// (unless none was picked), `pos` + 1, and `rng` seeded for that position from `cfg`.
pub fn advance(
    dev: &CudaDevice,
    cfg: &CudaSlice<u8>,
    token: &mut CudaSlice<u32>,
    pos: &mut CudaSlice<i32>,
    rng: &mut CudaSlice<u64>,
) -> Result<StepAdvance, BackendError> {
    if cfg.len() < std::mem::size_of::<SampleConfig>()
        || token.is_empty()
        || pos.is_empty()
        || rng.is_empty()
    {
        return Err(shape_err("step advance: an empty buffer".into()));
    }
    Ok(StepAdvance {
        cfg: ptr(cfg, dev) as *const SampleConfig,
        token: ptr_mut(token, dev) as *mut u32,
        pos: ptr_mut(pos, dev) as *mut i32,
        rng_state: ptr_mut(rng, dev) as *mut u64,
    })
}
