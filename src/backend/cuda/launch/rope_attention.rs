//! Launch of `kernels/rope_attention.cu`: a decode row's per-head q/k norms, rope, KV
//! append and flash-decoding attention in one kernel, the splits merged by the last block
//! of each head group to finish (a completion counter, no waiting). One instantiation per
//! head size ([`FUSED_HEAD_DIMS`]) and cache element type, chosen here. The split count
//! ([`max_splits`]) fills every SM; the kernel cuts the visible positions into at most that
//! many chunks of at least [`MIN_CHUNK`] positions from the position it reads.

use cudarc::driver::CudaSlice;

use super::attention::MAX_ATTN_SPLITS;
use super::{i32_of, launch_smem, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::cuda::buffers::{CudaAct, CudaKv, CudaRope};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::RopeAttnParams;
use crate::backend::{AttnShape, BackendError, KvDtype};

/// The head sizes the fused kernel is instantiated for.
pub const FUSED_HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];

/// The instantiations of one head size, by cache element type.
pub const KV_F32: usize = 0;
pub const KV_BF16: usize = 1;
pub const KV_F16: usize = 2;
const KV_NAMES: [&str; 3] = ["f32", "bf16", "f16"];

/// The instantiation of a cache element type.
pub fn kv_index(d: KvDtype) -> usize {
    match d {
        KvDtype::F32 => KV_F32,
        KvDtype::Bf16 => KV_BF16,
        KvDtype::F16 => KV_F16,
    }
}

/// The kernel names of every instantiation, by head size then cache type.
pub fn kernel_names() -> Vec<[String; 3]> {
    FUSED_HEAD_DIMS
        .iter()
        .map(|hd| KV_NAMES.map(|t| format!("rope_attn_decode_h{hd}_{t}")))
        .collect()
}

/// Q heads one block holds (`kHeads` in the kernel): a GQA group of up to this many reads
/// each K/V byte once; a larger group is split over blocks that each read it.
pub const HEADS_PER_BLOCK: usize = 8;

/// Fewest positions a split covers: below that a split's fixed cost (the q norm and rope,
/// the partials) outweighs the positions it reads.
pub const MIN_CHUNK: usize = 32;

/// The index of `head_dim` in [`FUSED_HEAD_DIMS`], or a clear error naming the sizes.
pub fn head_dim_index(head_dim: usize) -> Result<usize, BackendError> {
    FUSED_HEAD_DIMS
        .iter()
        .position(|&d| d == head_dim)
        .ok_or_else(|| {
            shape_err(format!(
                "head size {head_dim} has no fused attention kernel (supported: {FUSED_HEAD_DIMS:?})"
            ))
        })
}

/// Blocks of the grid's x extent: one per kv head and group of up to 8 q heads.
pub fn head_blocks(s: &AttnShape) -> usize {
    let group = s.n_heads / s.n_kv_heads.max(1);
    s.n_kv_heads * group.div_ceil(HEADS_PER_BLOCK)
}

/// The grid's y extent: enough blocks for two per SM over all head blocks, at most
/// `MAX_ATTN_SPLITS`; at most one split per [`MIN_CHUNK`] of the `visible` positions when
/// the host knows them (with a device position, `visible` is the whole cache and the
/// kernel narrows the splits to the real length).
pub fn max_splits(sm_count: usize, s: &AttnShape, visible: usize) -> usize {
    let for_sms = (2 * sm_count).div_ceil(head_blocks(s).max(1));
    for_sms
        .min(visible.div_ceil(MIN_CHUNK))
        .clamp(1, MAX_ATTN_SPLITS)
}

/// The splits the kernel runs for a query at `query_pos` seeing from `first` on, with
/// `max_splits` launched: `(n_splits, chunk)`, the kernel's own arithmetic (a CPU test
/// checks that they tile the visible range and never exceed the launch).
pub fn device_splits(first: usize, query_pos: usize, max_splits: usize) -> (usize, usize) {
    let len = query_pos + 1 - first;
    let chunk = MIN_CHUNK.max(len.div_ceil(max_splits));
    (len.div_ceil(chunk), chunk)
}

/// Dynamic shared memory of the `head_dim` instantiation: `Smem<HD>` in the kernel (q of 8
/// heads, the new k and v, each warp's max, sum and output for 8 heads, a flag), 43 KB at
/// head size 256 (under the 48 KB a block gets without opting in).
pub fn smem_bytes(head_dim: usize) -> u32 {
    (4 * (42 * head_dim + 65)) as u32
}

/// The buffers of one call besides the activations.
pub struct FusedScratch<'a> {
    pub acc: &'a mut CudaSlice<f32>,
    pub max: &'a mut CudaSlice<f32>,
    pub sum: &'a mut CudaSlice<f32>,
    /// One per head block, zero between calls (the kernel leaves them zero).
    pub counters: &'a mut CudaSlice<u32>,
}

/// qwen3's per-head norm weights and epsilon, as the kernel takes them.
pub struct Norms<'a> {
    pub q: &'a CudaSlice<f32>,
    pub k: &'a CudaSlice<f32>,
    pub eps: f32,
}

/// `Ops::rope_attention` of one row: `q`, `k`, `v` row 0 (read only), the cache appended at
/// the position (`pos`, or the value at `pos_dev` when that is not null), `out` row 0.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention(
    dev: &CudaDevice,
    sm_count: usize,
    q: &CudaAct,
    k: &CudaAct,
    v: &CudaAct,
    norms: Option<Norms<'_>>,
    t: &CudaRope,
    kv: &mut CudaKv,
    shape: AttnShape,
    (pos, pos_dev): (usize, *const i32),
    scratch: FusedScratch<'_>,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    let hd = shape.head_dim;
    let kvd = shape.n_kv_heads * hd;
    let ok = shape.n_kv_heads > 0
        && shape.n_heads.is_multiple_of(shape.n_kv_heads)
        && q.width == shape.n_heads * hd
        && out.width == q.width
        && k.width == kvd
        && v.width == kvd
        && kv.kv_dim == kvd
        && q.rows.min(k.rows).min(v.rows).min(out.rows) >= 1
        && 2 * t.half <= hd
        && pos < kv.ctx.min(t.ctx)
        && norms
            .as_ref()
            .is_none_or(|n| n.q.len() >= hd && n.k.len() >= hd);
    if !ok {
        return Err(shape_err(format!(
            "fused attention shapes disagree ({shape:?} at {pos}, cache of {} x {}, rope of {} x {})",
            kv.ctx, kv.kv_dim, t.ctx, t.half
        )));
    }
    let fns = &dev.kernels.rope_attn_decode[head_dim_index(hd)?];
    let visible = if pos_dev.is_null() { pos + 1 } else { kv.ctx };
    let visible = shape.window.map_or(visible, |w| visible.min(w.max(1)));
    let splits = max_splits(sm_count, &shape, visible);
    let blocks = head_blocks(&shape);
    let slots = shape.n_heads * splits;
    if scratch.acc.len() < slots * hd
        || scratch.max.len() < slots
        || scratch.sum.len() < slots
        || scratch.counters.len() < blocks
    {
        return Err(shape_err(format!(
            "fused attention scratch holds {} slots and {} counters, {slots} and {blocks} needed",
            scratch.max.len().min(scratch.sum.len()),
            scratch.counters.len()
        )));
    }
    let null = std::ptr::null::<f32>();
    let (q_norm, k_norm, eps) = match &norms {
        Some(n) => (
            ptr(n.q, dev) as *const f32,
            ptr(n.k, dev) as *const f32,
            n.eps,
        ),
        None => (null, null, 0.0),
    };
    let p = RopeAttnParams {
        q: ptr(&q.buf, dev) as *const f32,
        k: ptr(&k.buf, dev) as *const f32,
        v: ptr(&v.buf, dev) as *const f32,
        q_norm,
        k_norm,
        cos: ptr(&t.cos, dev) as *const f32,
        sin: ptr(&t.sin, dev) as *const f32,
        k_cache: ptr_mut(&mut kv.k, dev) as *mut std::ffi::c_void,
        v_cache: ptr_mut(&mut kv.v, dev) as *mut std::ffi::c_void,
        out: ptr_mut(&mut out.buf, dev) as *mut f32,
        part_acc: ptr_mut(scratch.acc, dev) as *mut f32,
        part_max: ptr_mut(scratch.max, dev) as *mut f32,
        part_sum: ptr_mut(scratch.sum, dev) as *mut f32,
        counters: ptr_mut(scratch.counters, dev) as *mut u32,
        pos_dev,
        pos: i32_of(pos, "position")?,
        n_heads: i32_of(shape.n_heads, "heads")?,
        n_kv_heads: i32_of(shape.n_kv_heads, "kv heads")?,
        head_dim: i32_of(hd, "head size")?,
        window: i32_of(shape.window.unwrap_or(0), "window")?,
        max_splits: splits as i32,
        min_chunk: MIN_CHUNK as i32,
        ctx: i32_of(kv.ctx, "context")?,
        rope_ctx: i32_of(t.ctx, "rope table")?,
        half: i32_of(t.half, "rope pairs")?,
        interleaved: i32::from(t.interleaved),
        eps,
    };
    launch_smem(
        dev,
        &fns[kv_index(kv.dtype)],
        (u32_of(blocks, "head blocks")?, splits as u32, 1),
        (128, 1, 1),
        smem_bytes(hd),
        &p,
        "rope_attn_decode",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's splits tile the visible positions exactly, never past the launch, each
    /// at least `MIN_CHUNK` long but the last.
    #[test]
    fn device_splits_tile_the_visible_range() {
        for max in [1usize, 2, 7, 33, 64] {
            for qp in [0usize, 1, 31, 32, 33, 100, 1000, 4095, 8191, 32_767] {
                for first in [0, qp / 2, qp] {
                    let (n, chunk) = device_splits(first, qp, max);
                    assert!(n >= 1 && n <= max, "{n} splits of {max}");
                    assert!(chunk >= MIN_CHUNK);
                    // Every split non-empty, the last ending at the query.
                    assert!(first + (n - 1) * chunk <= qp && first + n * chunk > qp);
                }
            }
        }
    }

    #[test]
    fn splits_fill_the_sms_and_stay_in_bounds() {
        let s = AttnShape {
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 64,
            window: None,
        };
        // 8 head blocks on 132 SMs: 33 splits at 4k, fewer where the context is short.
        assert_eq!(max_splits(132, &s, 4096), 33);
        assert_eq!(max_splits(132, &s, 64), 2);
        assert_eq!(max_splits(132, &s, 1), 1);
        assert_eq!(max_splits(1000, &s, 1 << 20), MAX_ATTN_SPLITS);
    }

    #[test]
    fn an_unsupported_head_size_is_named() {
        for hd in FUSED_HEAD_DIMS {
            assert!(head_dim_index(hd).is_ok());
        }
        let e = head_dim_index(48)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("head size 48") && e.contains("256"), "{e}");
    }
}
