//! Launch of `kernels/rope.cu`: the rotary embedding of the first `n` rows, in place, with
//! the angle tables of `format::Rope::fill_angles` (the CPU backend's own), so both
//! backends rotate by bit-identical angles.

use super::{i32_of, launch, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::{CudaAct, CudaRope};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::RopeParams;

/// `Ops::rope`: rotate the `n_heads` heads of each of the first `n` rows of `x`; row `i`
/// is at position `pos + i`, or (with `pos_dev` not null) at the position stored there.
pub fn rope(
    dev: &CudaDevice,
    x: &mut CudaAct,
    t: &CudaRope,
    n_heads: usize,
    (pos, pos_dev): (usize, *const i32),
    n: usize,
) -> Result<(), BackendError> {
    if n_heads == 0
        || !x.width.is_multiple_of(n_heads)
        || 2 * t.half > x.width / n_heads
        || n > x.rows
        || pos + n > t.ctx
    {
        return Err(shape_err(format!(
            "rope of {n} rows at {pos} over {n_heads} heads of a [{} x {}] matrix",
            x.rows, x.width
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let p = RopeParams {
        x: ptr_mut(&mut x.buf, dev) as *mut f32,
        cos: ptr(&t.cos, dev) as *const f32,
        sin: ptr(&t.sin, dev) as *const f32,
        pos_dev,
        pos: i32_of(pos, "position")?,
        n: i32_of(n, "rows")?,
        n_heads: i32_of(n_heads, "heads")?,
        head_dim: i32_of(x.width / n_heads, "head size")?,
        half: i32_of(t.half, "rope pairs")?,
        interleaved: i32::from(t.interleaved),
        ctx: i32_of(t.ctx, "context")?,
    };
    launch(
        dev,
        &dev.kernels.rope_f32,
        (u32_of(n, "rows")?, 1, 1),
        (256, 1, 1),
        &p,
        "rope_f32",
    )
}
