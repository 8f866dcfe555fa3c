//! Launches of `kernels/rmsnorm.cu`: RMSNorm row by row, with the residual add fused in
//! front of it (`x += add`, then the norm of the new `x`), and the per-head form (qwen3's
//! q/k norm). The public [`rmsnorm`] and [`add_rmsnorm`] take any cudarc buffers (views
//! included); [`rows`], [`add_rows`] and [`heads`] are what `CudaBackend` dispatches to.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DriverError, LaunchConfig};

use super::{dev_err, shape_err};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::CudaAct;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::RmsNormParams;

/// Threads per block of the RMSNorm kernel. 256 = 8 warps: at dim 4096 each thread moves
/// 4 float4s per pass, enough loads in flight per thread for one block (a decode step has a
/// single row, so a single block) without making the cross-warp reduction longer.
pub const RMSNORM_THREADS: u32 = 256;

/// Why a launch was refused or failed to queue.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The buffers do not have the shapes the kernel needs; nothing was launched.
    #[error("{kernel}: {message}")]
    Shape {
        kernel: &'static str,
        message: String,
    },
    /// A buffer was allocated in another CUDA context than the device's; nothing was launched.
    #[error("{kernel}: buffer `{buffer}` belongs to another CUDA context than the device's")]
    ForeignBuffer {
        kernel: &'static str,
        buffer: &'static str,
    },
    /// The driver refused the launch.
    #[error("{kernel}: launch failed: {source}")]
    Launch {
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
}

impl From<KernelError> for BackendError {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Launch { source, .. } => dev_err("rmsnorm_residual_f32")(source),
            other => BackendError::Device(other.to_string()),
        }
    }
}

/// `out = x * rsqrt(mean(x^2) + eps) * weight`, row by row, on the GPU.
///
/// `weight` has `dim` elements, `x` and `out` are `n_rows * dim` (row-major), and
/// `n_rows = x.len() / dim`. `x` is only read. The GPU twin of
/// [`crate::backend::cpu::ops::rmsnorm`] applied to each row.
pub fn rmsnorm<X, W, O>(
    dev: &CudaDevice,
    x: &X,
    weight: &W,
    eps: f32,
    out: &mut O,
) -> Result<(), KernelError>
where
    X: DevicePtr<f32>,
    W: DevicePtr<f32>,
    O: DevicePtrMut<f32>,
{
    const KERNEL: &str = "rmsnorm";
    let (n_rows, dim) = rmsnorm_shape(KERNEL, x.len(), weight.len(), out.len(), None)?;
    same_context(
        KERNEL,
        dev,
        &[
            ("x", x.stream()),
            ("weight", weight.stream()),
            ("out", out.stream()),
        ],
    )?;
    if n_rows == 0 {
        return Ok(());
    }
    let stream = dev.stream();
    // The guards record cudarc's usage events when tracking is on; it is off on a
    // CudaDevice, but holding them to the end of the launch keeps this correct either way.
    let (x_ptr, _x_guard) = x.device_ptr(stream);
    let (w_ptr, _w_guard) = weight.device_ptr(stream);
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let params = RmsNormParams {
        add: std::ptr::null(),
        // The kernel writes x only when add is non-null, so x stays read-only here.
        x: x_ptr as *mut f32,
        weight: w_ptr as *const f32,
        out: out_ptr as *mut f32,
        n_rows,
        dim,
        eps,
    };
    launch_rmsnorm(KERNEL, dev, &params)
}

/// The residual form: `x += add` (written back to `x`, the residual stream), then
/// `out = x * rsqrt(mean(x^2) + eps) * weight`, row by row.
///
/// Shapes as in [`rmsnorm`]; `add` has the shape of `x`. The borrows make `out` distinct
/// from `x` and `add`, as the kernel requires.
pub fn add_rmsnorm<X, A, W, O>(
    dev: &CudaDevice,
    x: &mut X,
    add: &A,
    weight: &W,
    eps: f32,
    out: &mut O,
) -> Result<(), KernelError>
where
    X: DevicePtrMut<f32>,
    A: DevicePtr<f32>,
    W: DevicePtr<f32>,
    O: DevicePtrMut<f32>,
{
    const KERNEL: &str = "add_rmsnorm";
    let (n_rows, dim) = rmsnorm_shape(KERNEL, x.len(), weight.len(), out.len(), Some(add.len()))?;
    same_context(
        KERNEL,
        dev,
        &[
            ("x", x.stream()),
            ("add", add.stream()),
            ("weight", weight.stream()),
            ("out", out.stream()),
        ],
    )?;
    if n_rows == 0 {
        return Ok(());
    }
    let stream = dev.stream();
    let (x_ptr, _x_guard) = x.device_ptr_mut(stream);
    let (add_ptr, _add_guard) = add.device_ptr(stream);
    let (w_ptr, _w_guard) = weight.device_ptr(stream);
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let params = RmsNormParams {
        add: add_ptr as *const f32,
        x: x_ptr as *mut f32,
        weight: w_ptr as *const f32,
        out: out_ptr as *mut f32,
        n_rows,
        dim,
        eps,
    };
    launch_rmsnorm(KERNEL, dev, &params)
}

/// `Ops::rmsnorm`: the first `n` rows of `x` into `out`.
pub fn rows(
    dev: &CudaDevice,
    x: &CudaAct,
    w: &CudaSlice<f32>,
    eps: f32,
    n: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    if x.width != out.width || n > x.rows || n > out.rows || w.len() < x.width {
        return Err(shape_err(format!(
            "rmsnorm of {n} rows of [{} x {}] into [{} x {}] with {} weights",
            x.rows,
            x.width,
            out.rows,
            out.width,
            w.len()
        )));
    }
    let len = n * x.width;
    Ok(rmsnorm(
        dev,
        &x.buf.slice(..len),
        &w.slice(..x.width),
        eps,
        &mut out.buf.slice_mut(..len),
    )?)
}

/// `Ops::add_rmsnorm`: `x += y`, then the norm of the first `n` rows of `x` into `out`, in
/// one launch.
pub fn add_rows(
    dev: &CudaDevice,
    x: &mut CudaAct,
    y: &CudaAct,
    w: &CudaSlice<f32>,
    eps: f32,
    n: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    if x.width != out.width
        || y.width != x.width
        || n > x.rows.min(y.rows).min(out.rows)
        || w.len() < x.width
    {
        return Err(shape_err(format!(
            "add_rmsnorm of {n} rows of [{} x {}] + [{} x {}] into [{} x {}] with {} weights",
            x.rows,
            x.width,
            y.rows,
            y.width,
            out.rows,
            out.width,
            w.len()
        )));
    }
    let len = n * x.width;
    Ok(add_rmsnorm(
        dev,
        &mut x.buf.slice_mut(..len),
        &y.buf.slice(..len),
        &w.slice(..x.width),
        eps,
        &mut out.buf.slice_mut(..len),
    )?)
}

/// `Ops::head_rmsnorm`: each `head_dim` slice of the first `n` rows of `x`, in place. The
/// kernel's output must not alias its input, so it writes `scratch` (at least `n` rows of
/// `x`) and the rows are copied back.
pub fn heads(
    dev: &CudaDevice,
    x: &mut CudaAct,
    w: &CudaSlice<f32>,
    head_dim: usize,
    eps: f32,
    n: usize,
    scratch: &mut CudaSlice<f32>,
) -> Result<(), BackendError> {
    let len = n * x.width;
    if head_dim == 0
        || !x.width.is_multiple_of(head_dim)
        || w.len() < head_dim
        || n > x.rows
        || scratch.len() < len
    {
        return Err(shape_err(format!(
            "head rmsnorm of {n} rows of [{} x {}] by heads of {head_dim} with {} weights",
            x.rows,
            x.width,
            w.len()
        )));
    }
    rmsnorm(
        dev,
        &x.buf.slice(..len),
        &w.slice(..head_dim),
        eps,
        &mut scratch.slice_mut(..len),
    )?;
    dev.stream()
        .memcpy_dtod(&scratch.slice(..len), &mut x.buf.slice_mut(..len))
        .map_err(dev_err("copy"))
}

/// Checks the RMSNorm buffer lengths and returns (n_rows, dim) as the kernel's `int`s.
fn rmsnorm_shape(
    kernel: &'static str,
    x_len: usize,
    weight_len: usize,
    out_len: usize,
    add_len: Option<usize>,
) -> Result<(i32, i32), KernelError> {
    let shape = |message: String| KernelError::Shape { kernel, message };
    let dim = weight_len;
    if dim == 0 {
        return Err(shape("weight is empty (dim must be at least 1)".into()));
    }
    if !x_len.is_multiple_of(dim) {
        return Err(shape(format!(
            "x has {x_len} elements, not a multiple of dim = weight.len() = {dim}"
        )));
    }
    if out_len != x_len {
        return Err(shape(format!("out has {out_len} elements, x has {x_len}")));
    }
    if let Some(add_len) = add_len
        && add_len != x_len
    {
        return Err(shape(format!("add has {add_len} elements, x has {x_len}")));
    }
    let n_rows = x_len / dim;
    // The kernel indexes with int row/dim (and size_t row offsets); the grid's x extent is
    // at most 2^31 - 1 blocks. Both fit i32::MAX.
    let dim = i32::try_from(dim).map_err(|_| shape(format!("dim {dim} exceeds i32::MAX")))?;
    let n_rows =
        i32::try_from(n_rows).map_err(|_| shape(format!("{n_rows} rows exceed i32::MAX")))?;
    Ok((n_rows, dim))
}

/// A device pointer from another context is meaningless in this one: refuse it up front.
fn same_context(
    kernel: &'static str,
    dev: &CudaDevice,
    buffers: &[(&'static str, &Arc<cudarc::driver::CudaStream>)],
) -> Result<(), KernelError> {
    let ctx = dev.context().cu_ctx();
    match buffers
        .iter()
        .find(|(_, stream)| stream.context().cu_ctx() != ctx)
    {
        Some(&(buffer, _)) => Err(KernelError::ForeignBuffer { kernel, buffer }),
        None => Ok(()),
    }
}

fn launch_rmsnorm(
    kernel: &'static str,
    dev: &CudaDevice,
    params: &RmsNormParams,
) -> Result<(), KernelError> {
    // n_rows >= 1 here (the callers return early on 0), so the cast is lossless.
    let cfg = LaunchConfig {
        grid_dim: (params.n_rows as u32, 1, 1),
        block_dim: (RMSNORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the kernel takes exactly one RmsNormParams by value (same header, bindgen
    // layout checks), which is what is passed. Its pointers come from live buffers of this
    // device's context whose lengths were checked against n_rows * dim and dim above;
    // `out` is a distinct &mut buffer, so it overlaps neither x nor add. The launch copies
    // the params at enqueue time; the buffers are freed stream-ordered on the stream they
    // were allocated on, which CudaDevice requires to be this one, so no free can overtake
    // the kernel.
    unsafe { super::queue(dev, &dev.kernels.rmsnorm_residual_f32, cfg, params, kernel) }
        .map_err(|source| KernelError::Launch { kernel, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_shape_accepts_whole_rows() {
        assert_eq!(rmsnorm_shape("t", 12, 4, 12, None).ok(), Some((3, 4)));
        assert_eq!(rmsnorm_shape("t", 12, 4, 12, Some(12)).ok(), Some((3, 4)));
        // Zero rows is valid: the wrappers return without launching.
        assert_eq!(rmsnorm_shape("t", 0, 4, 0, Some(0)).ok(), Some((0, 4)));
    }

    #[test]
    fn rmsnorm_shape_rejects_mismatches() {
        let bad = |r: Result<(i32, i32), KernelError>| matches!(r, Err(KernelError::Shape { .. }));
        assert!(bad(rmsnorm_shape("t", 4, 0, 4, None)), "empty weight");
        assert!(bad(rmsnorm_shape("t", 10, 4, 10, None)), "partial row");
        assert!(bad(rmsnorm_shape("t", 12, 4, 8, None)), "short out");
        assert!(bad(rmsnorm_shape("t", 12, 4, 12, Some(8))), "short add");
        assert!(
            bad(rmsnorm_shape("t", 1 << 32, 1, 1 << 32, None)),
            "rows past i32"
        );
    }
}
