//! Launch of `kernels/elementwise.cu`: the small f32 ops between the big ones (residual
//! add, bias add, SwiGLU), one grid-stride kernel selected by an op code.

use super::{i32_of, launch, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::CudaAct;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::{
    ElementwiseParams, TACHYON_EW_ADD, TACHYON_EW_ADD_ROW, TACHYON_EW_SWIGLU,
};
use cudarc::driver::CudaSlice;

/// Queues `op` over `len` values of `x` (at device address `x`) with `y`.
fn elementwise(
    dev: &CudaDevice,
    sm_count: usize,
    x: u64,
    y: u64,
    len: usize,
    width: usize,
    op: u32,
) -> Result<(), BackendError> {
    if len == 0 {
        return Ok(());
    }
    let p = ElementwiseParams {
        x: x as *mut f32,
        y: y as *const f32,
        len: len as i64,
        width: i32_of(width.max(1), "width")?,
        op: op as i32,
    };
    let blocks = u32_of(len.div_ceil(256).min(sm_count * 16), "blocks")?;
    launch(
        dev,
        &dev.kernels.elementwise_f32,
        (blocks, 1, 1),
        (256, 1, 1),
        &p,
        "elementwise_f32",
    )
}

/// `Ops::add`: `x[i] += y[i]` over the first `n` rows.
pub fn add(
    dev: &CudaDevice,
    sm_count: usize,
    x: &mut CudaAct,
    y: &CudaAct,
    n: usize,
) -> Result<(), BackendError> {
    if x.width != y.width || n > x.rows || n > y.rows {
        return Err(shape_err("add shapes differ".into()));
    }
    let (xp, yp) = (ptr_mut(&mut x.buf, dev), ptr(&y.buf, dev));
    elementwise(dev, sm_count, xp, yp, n * x.width, x.width, TACHYON_EW_ADD)
}

/// `Ops::add_bias`: `x[i] += b` over the first `n` rows.
pub fn add_bias(
    dev: &CudaDevice,
    sm_count: usize,
    x: &mut CudaAct,
    b: &CudaSlice<f32>,
    n: usize,
) -> Result<(), BackendError> {
    if b.len() < x.width || n > x.rows {
        return Err(shape_err("bias shorter than the row".into()));
    }
    let (xp, bp) = (ptr_mut(&mut x.buf, dev), ptr(b, dev));
    elementwise(
        dev,
        sm_count,
        xp,
        bp,
        n * x.width,
        x.width,
        TACHYON_EW_ADD_ROW,
    )
}

/// `Ops::swiglu`: `gate[i] = silu(gate[i]) * up[i]` over the first `n` rows.
pub fn swiglu(
    dev: &CudaDevice,
    sm_count: usize,
    gate: &mut CudaAct,
    up: &CudaAct,
    n: usize,
) -> Result<(), BackendError> {
    if gate.width != up.width || n > gate.rows || n > up.rows {
        return Err(shape_err("swiglu shapes differ".into()));
    }
    let (xp, yp) = (ptr_mut(&mut gate.buf, dev), ptr(&up.buf, dev));
    elementwise(
        dev,
        sm_count,
        xp,
        yp,
        n * gate.width,
        gate.width,
        TACHYON_EW_SWIGLU,
    )
}
