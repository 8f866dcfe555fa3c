//! Launches of `kernels/attention.cu`: the new K/V rows appended to the cache
//! (`attn_kv_append`), then flash-decoding: the visible positions of each query row cut
//! into splits, each split's online softmax (`attn_decode_split`), the splits merged
//! (`attn_decode_reduce`). The split count is chosen here ([`attn_splits`]); the partials
//! live in scratch the backend owns ([`Partials`]). Prefill chunks over a BF16 cache run
//! the tensor-core flash attention of `kernels/attention_prefill.cu` instead of the split
//! and reduce ([`prefill_on_tensor_cores`]).

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, launch_smem, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::cuda::buffers::{CudaAct, CudaKv, kv_dtype_code};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::AttnParams;
use crate::backend::{AttnShape, BackendError, KvDtype};

/// Most splits of the sequence in flash-decoding.
pub const MAX_ATTN_SPLITS: usize = 64;

/// Splits of the sequence for flash-decoding: enough blocks for two waves over `sm_count`
/// SMs, at most one split per 16 visible positions, between 1 and `MAX_ATTN_SPLITS`.
pub fn attn_splits(sm_count: usize, s: &AttnShape, visible: usize, n: usize) -> usize {
    let group = s.n_heads / s.n_kv_heads.max(1);
    let head_blocks = s.n_kv_heads * group.div_ceil(8) * n.max(1);
    let for_sms = (2 * sm_count).div_ceil(head_blocks.max(1));
    for_sms.min(visible.div_ceil(16)).clamp(1, MAX_ATTN_SPLITS)
}

/// The positions split `split` of `n_splits` covers for a query at `query_pos` that sees
/// from `first` on: the same arithmetic as `split_range` in kernels/attention.cu, kept here
/// so a CPU test can check that the splits tile the visible range exactly.
pub fn split_range(
    first: usize,
    query_pos: usize,
    n_splits: usize,
    split: usize,
) -> std::ops::Range<usize> {
    let len = query_pos + 1 - first;
    let chunk = len.div_ceil(n_splits);
    let c0 = first + split * chunk;
    c0..(c0 + chunk).min(query_pos + 1)
}

/// Head sizes `attn_prefill_mma_h<HD>` is instantiated for, in `KernelFns::attn_prefill_mma`
/// order.
pub const PREFILL_HEAD_DIMS: [usize; 2] = [64, 128];

/// Fewest query rows that run the tensor-core prefill kernel.
pub const PREFILL_MIN_ROWS: usize = 16;

/// Whether an attention call of `n` rows runs `attn_prefill_mma_h<HD>` (the index of its
/// head size in [`PREFILL_HEAD_DIMS`]) instead of the split and reduce: a BF16 cache (the
/// kernel stages raw BF16 rows for the MMAs), a head size it is instantiated for, the
/// position on the host (the kernel sizes its grid and tiles from it), and at least
/// [`PREFILL_MIN_ROWS`] rows. The threshold is reasoned, not measured: the kernel's 64
/// (row, head) pair tile is less than half used below 16 rows at GQA <= 2 (a quarter at
/// GQA 1), each padded pair still costing its hi/lo MMAs, while the split path's cost is
/// one K/V read per row (per 8 heads of a kv head), cheap for a few rows; decode and
/// speculative verify (K + 1 < 16 rows) keep the path they are tested and tuned on. From
/// 16 rows the split path reads each visible K/V byte 16+ times on the CUDA cores, the
/// tensor-core kernel once per 64 pairs.
pub fn prefill_on_tensor_cores(
    kv: KvDtype,
    shape: &AttnShape,
    n: usize,
    pos_on_host: bool,
) -> Option<usize> {
    let hd = PREFILL_HEAD_DIMS
        .iter()
        .position(|&d| d == shape.head_dim)?;
    (kv == KvDtype::Bf16 && pos_on_host && n >= PREFILL_MIN_ROWS).then_some(hd)
}

/// Positions (4 key tiles of 32) a split of the prefill kernel covers at least: its fixed
/// cost (loading Q's fragments, writing a partial per (row, head)) stays small against its
/// MMAs.
const PREFILL_MIN_SPLIT: usize = 128;

/// Splits of the sequence for `attn_prefill_mma`: blocks for two waves over `sm_count` SMs
/// (it has only `n_kv_heads * ceil(n * group / 64)` blocks otherwise: 32 for a 64-row chunk
/// of an 8-kv-head model, a quarter of an H200), at most one per [`PREFILL_MIN_SPLIT`]
/// positions a block walks (`pos + n`, or about `window + n` with a sliding window),
/// between 1 and [`MAX_ATTN_SPLITS`]. One split writes the output directly; more write
/// partials that `attn_decode_reduce` merges.
pub fn prefill_splits(sm_count: usize, s: &AttnShape, pos: usize, n: usize) -> usize {
    let group = s.n_heads / s.n_kv_heads.max(1);
    let blocks = s.n_kv_heads * (n * group).div_ceil(64);
    let for_sms = (2 * sm_count).div_ceil(blocks.max(1));
    let walked = s.window.map_or(pos + n, |w| (w + n).min(pos + n));
    for_sms
        .min(walked.div_ceil(PREFILL_MIN_SPLIT))
        .clamp(1, MAX_ATTN_SPLITS)
}

/// The split count of an attention call: [`prefill_splits`] when it runs the prefill
/// kernel ([`prefill_on_tensor_cores`]), else [`attn_splits`] (with the position on the
/// device, sized for the whole cache of `ctx`). The backend sizes the partials with it.
pub fn call_splits(
    sm_count: usize,
    kv: KvDtype,
    s: &AttnShape,
    (pos, pos_on_host): (usize, bool),
    n: usize,
    ctx: usize,
) -> usize {
    if prefill_on_tensor_cores(kv, s, n, pos_on_host).is_some() {
        return prefill_splits(sm_count, s, pos, n);
    }
    let visible = if pos_on_host { pos + n } else { ctx };
    attn_splits(sm_count, s, visible, n)
}

/// The most (row, split) pairs an attention call of at most `max_batch` rows makes (a
/// prefill chunk, verify rows, a decode row fused or not), wherever its position: what the
/// backend reserves partials for at load, so that no later call allocates (a graph
/// capture must not). Every split count only grows with the visible positions, so a
/// position past every cap is the worst case; with many rows the counts fall (the rows
/// fill the SMs), so this stays near `max_batch`, far below `max_batch * MAX_ATTN_SPLITS`.
pub fn max_split_rows(sm_count: usize, kv: KvDtype, s: &AttnShape, max_batch: usize) -> usize {
    let far = 1usize << 40;
    let decode = super::rope_attention::max_splits(sm_count, s, far);
    (1..=max_batch.max(1))
        .map(|n| {
            let host = call_splits(sm_count, kv, s, (far, true), n, far);
            n * host.max(attn_splits(sm_count, s, far, n))
        })
        .fold(decode, usize::max)
}

/// Flash-decoding partials: per (row, head, split) the unnormalized output (`head_dim`
/// values), the running max and the exp-sum.
pub struct Partials<'a> {
    pub acc: &'a mut CudaSlice<f32>,
    pub max: &'a mut CudaSlice<f32>,
    pub sum: &'a mut CudaSlice<f32>,
}

/// Partial slots an attention call of `n` rows over `splits` splits needs: (for `max` and
/// `sum`, for `acc`).
pub fn partial_slots(shape: &AttnShape, n: usize, splits: usize) -> (usize, usize) {
    let slots = n * shape.n_heads * splits;
    (slots, slots * shape.head_dim)
}

/// `Ops::attention`: append `k`, `v` (the first `n` rows, at positions `pos..pos + n`) to
/// the cache, then causal attention of each query row over the cache up to its position.
/// `pos_dev` (when not null) is the device address of the position, which the kernels read
/// instead of `pos` (then 0; row i is at that value + i); `visible` sizes the split count.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &CudaDevice,
    sm_count: usize,
    q: &CudaAct,
    k: &CudaAct,
    v: &CudaAct,
    kv: &mut CudaKv,
    shape: AttnShape,
    (pos, pos_dev): (usize, *const i32),
    n: usize,
    parts: Partials<'_>,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    let hd = shape.head_dim;
    let kvd = shape.n_kv_heads * hd;
    let ok = shape.n_kv_heads > 0
        && shape.n_heads.is_multiple_of(shape.n_kv_heads)
        && (1..=256).contains(&hd)
        && q.width == shape.n_heads * hd
        && out.width == q.width
        && k.width == kvd
        && v.width == kvd
        && kv.kv_dim == kvd
        && n <= q.rows.min(k.rows).min(v.rows).min(out.rows)
        && pos + n <= kv.ctx;
    if !ok {
        return Err(shape_err(format!(
            "attention shapes disagree ({shape:?}, {n} rows at {pos}, cache of {})",
            kv.ctx
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let on_host = pos_dev.is_null();
    let prefill = prefill_on_tensor_cores(kv.dtype, &shape, n, on_host);
    // With the position on the device (a replayed graph) the visible length is only
    // known there: size the split count for the whole cache; the kernel sizes the chunks.
    let splits = call_splits(sm_count, kv.dtype, &shape, (pos, on_host), n, kv.ctx);
    let (slots, acc_len) = partial_slots(&shape, n, splits);
    if parts.acc.len() < acc_len || parts.max.len() < slots || parts.sum.len() < slots {
        return Err(shape_err(format!(
            "attention partials hold {} slots, {slots} needed",
            parts.max.len().min(parts.sum.len())
        )));
    }
    let p = AttnParams {
        q: ptr(&q.buf, dev) as *const f32,
        k: ptr(&k.buf, dev) as *const f32,
        v: ptr(&v.buf, dev) as *const f32,
        k_cache: ptr_mut(&mut kv.k, dev) as *mut std::ffi::c_void,
        v_cache: ptr_mut(&mut kv.v, dev) as *mut std::ffi::c_void,
        out: ptr_mut(&mut out.buf, dev) as *mut f32,
        part_acc: ptr_mut(parts.acc, dev) as *mut f32,
        part_max: ptr_mut(parts.max, dev) as *mut f32,
        part_sum: ptr_mut(parts.sum, dev) as *mut f32,
        pos_dev,
        pos: i32_of(pos, "position")?,
        n: i32_of(n, "rows")?,
        n_heads: i32_of(shape.n_heads, "heads")?,
        n_kv_heads: i32_of(shape.n_kv_heads, "kv heads")?,
        head_dim: i32_of(hd, "head size")?,
        window: i32_of(shape.window.unwrap_or(0), "window")?,
        n_splits: splits as i32,
        ctx: i32_of(kv.ctx, "context")?,
        kv_dtype: kv_dtype_code(kv.dtype),
    };
    let group = shape.n_heads / shape.n_kv_heads;
    let head_blocks = u32_of(shape.n_kv_heads * group.div_ceil(8), "head groups")?;
    let rows = u32_of(n, "rows")?;
    let k = &dev.kernels;
    launch(
        dev,
        &k.attn_kv_append,
        (rows, 1, 1),
        (256, 1, 1),
        &p,
        "attn_kv_append",
    )?;
    if let Some(which) = prefill {
        // One block per 64 (row, head) pairs of a kv head (kernels/attention_prefill.cu).
        let pairs = u32_of(n * group, "rows x group")?.div_ceil(64);
        let kv_heads = u32_of(shape.n_kv_heads, "kv heads")?;
        // Two stages of K and V, 32 positions of head_dim bf16 each.
        let smem = u32_of(2 * 2 * 32 * hd * 2, "shared memory")?;
        launch_smem(
            dev,
            &k.attn_prefill_mma[which],
            (pairs, kv_heads, splits as u32),
            (128, 1, 1),
            smem,
            &p,
            "attn_prefill_mma",
        )?;
        if splits == 1 {
            return Ok(()); // the one split wrote the output
        }
    } else {
        launch(
            dev,
            &k.attn_decode_split,
            (head_blocks, splits as u32, rows),
            (128, 1, 1),
            &p,
            "attn_decode_split",
        )?;
    }
    launch(
        dev,
        &k.attn_decode_reduce,
        (u32_of(n * shape.n_heads, "rows x heads")?, 1, 1),
        (128, 1, 1),
        &p,
        "attn_decode_reduce",
    )
}
