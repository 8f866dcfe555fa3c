//! Launches of `kernels/sample.cu` (argmax) and `kernels/sample_passes.cu` +
//! `kernels/sample_logits.cu` (the draw): the next token picked on the device from a row of
//! logits, so the logits never leave it: the argmax (a partial pass over many blocks, then
//! one block merging them) and a draw with the CPU sampler's filters (top-k, temperature,
//! min-p, top-p). Either may take a constrained step's allowed-token bitmask (`mask`:
//! vocabulary/32 words in device memory, bit `i % 32` of word `i / 32` allows token `i`),
//! so a constrained request picks on the device too: refused tokens are no candidates.

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::CudaAct;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::{
    ArgmaxParams, MaskedArgmaxParams, MaskedSampleParams, SampleConfig, SampleParams, StepAdvance,
    TACHYON_SAMPLE_MAX_PARTS, TACHYON_SAMPLE_SCRATCH_WORDS,
};

/// Most argmax partial blocks.
const ARGMAX_PARTS: usize = 264;

/// Partial slots the argmax needs for a vocabulary of `n`.
pub fn argmax_parts(n: usize) -> usize {
    ARGMAX_PARTS.min(n.div_ceil(256)).max(1)
}

/// The device address of `mask` after checking that it covers a vocabulary of `n`
/// (`n.div_ceil(32)` words); 0 for no mask.
fn mask_ptr(
    dev: &CudaDevice,
    mask: Option<&CudaSlice<u32>>,
    n: usize,
) -> Result<u64, BackendError> {
    match mask {
        None => Ok(0),
        Some(m) if m.len() >= n.div_ceil(32) => Ok(ptr(m, dev)),
        Some(m) => Err(shape_err(format!(
            "a token mask of {} words for a vocabulary of {n} (needs {})",
            m.len(),
            n.div_ceil(32)
        ))),
    }
}

/// The index of the largest value of row `row` of `logits` into `out[slot]` (lowest index
/// on ties, NaN never chosen), among the tokens `mask` allows when there is one
/// (`TACHYON_NO_TOKEN` when no allowed value is a number). Rows picked one after another on
/// the stream may share the partial buffers.
#[allow(clippy::too_many_arguments)]
pub fn argmax_row(
    dev: &CudaDevice,
    logits: &CudaAct,
    row: usize,
    mask: Option<&CudaSlice<u32>>,
    out: &mut CudaSlice<u32>,
    slot: usize,
    part_val: &mut CudaSlice<f32>,
    part_idx: &mut CudaSlice<i32>,
    advance: StepAdvance,
) -> Result<(), BackendError> {
    let n = logits.width;
    let parts = argmax_parts(n);
    let mask = mask_ptr(dev, mask, n)?;
    if slot >= out.len() || row >= logits.rows || part_val.len() < parts || part_idx.len() < parts {
        return Err(shape_err(format!(
            "argmax of row {row} of {} into slot {slot} of {} needs {parts} partial slots",
            logits.rows,
            out.len()
        )));
    }
    let row_bytes = (n * std::mem::size_of::<f32>()) as u64;
    let slot_bytes = (slot * std::mem::size_of::<u32>()) as u64;
    let p = ArgmaxParams {
        logits: (ptr(&logits.buf, dev) + row as u64 * row_bytes) as *const f32,
        part_val: ptr_mut(part_val, dev) as *mut f32,
        part_idx: ptr_mut(part_idx, dev) as *mut i32,
        out: (ptr_mut(out, dev) + slot_bytes) as *mut u32,
        n: i32_of(n, "vocabulary")?,
        n_parts: parts as i32,
        advance,
    };
    let k = &dev.kernels;
    let grid = (u32_of(parts, "argmax parts")?, 1, 1);
    if mask == 0 {
        launch(
            dev,
            &k.argmax_partial,
            grid,
            (256, 1, 1),
            &p,
            "argmax_partial",
        )?;
    } else {
        let masked = MaskedArgmaxParams {
            base: p,
            mask: mask as *const u32,
        };
        let name = "argmax_partial_masked";
        launch(
            dev,
            &k.argmax_partial_masked,
            grid,
            (256, 1, 1),
            &masked,
            name,
        )?;
    }
    launch(
        dev,
        &k.argmax_final,
        (1, 1, 1),
        (1024, 1, 1),
        &p,
        "argmax_final",
    )
}

/// The filters of a device draw (see `SampleParams`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleFilters {
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// In (0, 1]; 1: off.
    pub top_p: f32,
    /// In [0, 1]; 0: off.
    pub min_p: f32,
}

/// Blocks of the draw's vocabulary passes for a vocabulary of `n`: about 4096 ids each
/// (a few 16-byte loads per thread), at most `TACHYON_SAMPLE_MAX_PARTS`. A function of `n`
/// alone, as every launch shape of the draw.
fn sample_parts(n: usize) -> usize {
    n.div_ceil(4096).clamp(1, TACHYON_SAMPLE_MAX_PARTS as usize)
}

/// Words of scratch (`work`) a draw over a vocabulary of `n` needs: the fixed part
/// (counters, histograms, candidates) and `n` for the whole-vocabulary fallback. Allocate it
/// zeroed: the kernels return their counters to zero after each draw.
pub fn sample_work_len(n: usize) -> usize {
    TACHYON_SAMPLE_SCRATCH_WORDS as usize + n.max(1)
}

/// Draws a token from row 0 of `logits` into `out[0]`, the uniform number coming from the
/// SplitMix64 state in `rng[0]`, which the draw advances. `work` is zeroed scratch of at
/// least [`sample_work_len`] words, reused from draw to draw (one draw at a time on the
/// stream). Penalties are not applied. With `mask`, only the tokens it allows are
/// candidates (the CPU sampler's distribution over them; `TACHYON_NO_TOKEN` when none is a
/// number). Four launches (three passes over the vocabulary, then one block: see the header
/// of kernels/sample_logits.cu) whose shapes depend on the vocabulary size alone; the filters
/// travel in the parameters, or with `config` (a `SampleConfig` in device memory, whose
/// filters the caller checked as `f` is checked here) are read from there, so a captured
/// draw follows the settings the device holds.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    dev: &CudaDevice,
    logits: &CudaAct,
    mask: Option<&CudaSlice<u32>>,
    work: &mut CudaSlice<f32>,
    out: &mut CudaSlice<u32>,
    rng: &mut CudaSlice<u64>,
    f: SampleFilters,
    advance: StepAdvance,
    config: Option<&CudaSlice<u8>>,
) -> Result<(), BackendError> {
    let n = logits.width;
    let ok = f.temperature.is_finite()
        && f.temperature > 0.0
        && f.top_p > 0.0
        && f.top_p <= 1.0
        && (0.0..=1.0).contains(&f.min_p)
        && work.len() >= sample_work_len(n)
        && !out.is_empty()
        && !rng.is_empty();
    if !ok {
        return Err(shape_err(format!(
            "sample: temperature {}, top_p {}, min_p {}, scratch {} for {n} logits (needs {})",
            f.temperature,
            f.top_p,
            f.min_p,
            work.len(),
            sample_work_len(n)
        )));
    }
    let mask = mask_ptr(dev, mask, n)?;
    let parts = sample_parts(n);
    let p = SampleParams {
        logits: ptr(&logits.buf, dev) as *const f32,
        work: ptr_mut(work, dev) as *mut f32,
        out: ptr_mut(out, dev) as *mut u32,
        rng_state: ptr_mut(rng, dev) as *mut u64,
        n: i32_of(n, "vocabulary")?,
        top_k: i32_of(f.top_k.min(n), "top_k")?,
        temperature: f.temperature,
        top_p: f.top_p,
        min_p: f.min_p,
        n_parts: parts as i32,
        advance,
        cfg: match config {
            Some(c) if c.len() >= std::mem::size_of::<SampleConfig>() => {
                ptr(c, dev) as *const SampleConfig
            }
            Some(c) => {
                return Err(shape_err(format!(
                    "sample: settings of {} bytes, not a SampleConfig",
                    c.len()
                )));
            }
            None => std::ptr::null(),
        },
    };
    let k = &dev.kernels;
    let grid = (u32_of(parts, "sample parts")?, 1, 1);
    const PASSES: [&str; 3] = ["sample_scan", "sample_refine", "sample_compact"];
    const MASKED: [&str; 3] = [
        "sample_scan_masked",
        "sample_refine_masked",
        "sample_compact_masked",
    ];
    if mask == 0 {
        for (func, name) in k.sample_passes.iter().zip(PASSES) {
            launch(dev, func, grid, (256, 1, 1), &p, name)?;
        }
        return launch(
            dev,
            &k.sample_logits,
            (1, 1, 1),
            (1024, 1, 1),
            &p,
            "sample_logits",
        );
    }
    let masked = MaskedSampleParams {
        base: p,
        mask: mask as *const u32,
    };
    for (func, name) in k.sample_passes_masked.iter().zip(MASKED) {
        launch(dev, func, grid, (256, 1, 1), &masked, name)?;
    }
    let name = "sample_logits_masked";
    launch(
        dev,
        &k.sample_logits_masked,
        (1, 1, 1),
        (1024, 1, 1),
        &masked,
        name,
    )
}
