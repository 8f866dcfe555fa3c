//! Launches of the matrix products, `out[t] = W x[t]` for the first `n` activation rows:
//! `gemv.cu` (F32/F16/BF16 weights, up to [`GEMV_MAX_ROWS`] rows), `gemm.cu` (the tiled
//! prefill product for more rows) and `gemv_quant.cu` (GGML block formats, dequantized in
//! registers, any number of rows). One [`GemvParams`] drives all three; the bias (added in
//! the epilogue) and the gate/up SwiGLU form (a second matrix streamed alongside) are
//! fields of it.

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::{CudaAct, CudaMat, is_block_format};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::GemvParams;

/// Most activation rows a matrix product runs as GEMV (weights streamed once per 4 rows);
/// more rows run as the tiled GEMM.
pub const GEMV_MAX_ROWS: usize = 4;

/// The product's optional parts.
#[derive(Clone, Copy, Default)]
pub struct Fused<'a> {
    /// `out = silu(W x) * (W2 x)`: the up matrix of the MLP (GEMV and quantized GEMV only).
    pub swiglu_up: Option<&'a CudaMat>,
    /// Added to every output row (at least `W.rows` values).
    pub bias: Option<&'a CudaSlice<f32>>,
}

/// Warps per output row for a GEMV with `rows` rows: enough blocks to fill the SMs.
fn warps_per_row(rows: usize, sm_count: usize) -> i32 {
    let mut wpr = 1;
    while wpr < 8 && rows * wpr / 8 < 4 * sm_count {
        wpr *= 2;
    }
    wpr as i32
}

/// `out[t] = W x[t]` (with the [`Fused`] parts) for the first `n` rows of `x`.
pub fn matmul(
    dev: &CudaDevice,
    sm_count: usize,
    x: &CudaAct,
    w: &CudaMat,
    fused: Fused<'_>,
    n: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    if x.width != w.cols || out.width != w.rows || n > x.rows || n > out.rows {
        return Err(shape_err(format!(
            "matmul of [{} x {}] by [{}, {}] into [{} x {}] for {n} rows",
            x.rows, x.width, w.rows, w.cols, out.rows, out.width
        )));
    }
    let w2 = fused.swiglu_up;
    if w2.is_some_and(|w2| (w2.rows, w2.cols, w2.dtype) != (w.rows, w.cols, w.dtype)) {
        return Err(shape_err(
            "the fused gate/up matrices differ in shape or format".into(),
        ));
    }
    if w2.is_some() && n > GEMV_MAX_ROWS && !is_block_format(w.dtype) {
        return Err(shape_err(format!(
            "the fused gate/up product runs as a GEMV, for at most {GEMV_MAX_ROWS} rows, not {n}"
        )));
    }
    if let Some(b) = fused.bias
        && b.len() < w.rows
    {
        return Err(shape_err(format!(
            "bias of {} for {} rows",
            b.len(),
            w.rows
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let wpr = warps_per_row(w.rows, sm_count);
    let p = GemvParams {
        w: ptr(&w.buf, dev) as *const std::ffi::c_void,
        w2: w2.map_or(std::ptr::null(), |m| {
            ptr(&m.buf, dev) as *const std::ffi::c_void
        }),
        bias: fused
            .bias
            .map_or(std::ptr::null(), |b| ptr(b, dev) as *const f32),
        x: ptr(&x.buf, dev) as *const f32,
        out: ptr_mut(&mut out.buf, dev) as *mut f32,
        rows: i32_of(w.rows, "matrix rows")?,
        cols: i32_of(w.cols, "matrix columns")?,
        n: i32_of(n, "rows")?,
        dtype: w.dtype,
        warps_per_row: wpr,
    };
    let k = &dev.kernels;
    let rows_per_block = 8 / wpr as usize;
    let gemv_grid = (
        u32_of(w.rows.div_ceil(rows_per_block), "matrix rows")?,
        1,
        1,
    );
    if is_block_format(w.dtype) {
        // Block formats dequantize in registers, whatever the number of rows (a
        // tensor-core prefill path for them is not written yet).
        return launch(
            dev,
            &k.gemv_quant_f32out,
            gemv_grid,
            (32, 8, 1),
            &p,
            "gemv_quant_f32out",
        );
    }
    if n > GEMV_MAX_ROWS {
        // Many activation rows (prefill): the tiled GEMM reads each weight once per 32
        // rows instead of once per 4.
        let grid = (
            u32_of(w.rows.div_ceil(64), "matrix rows")?,
            u32_of(n.div_ceil(32), "rows")?,
            1,
        );
        return launch(dev, &k.gemm_f32out, grid, (256, 1, 1), &p, "gemm_f32out");
    }
    launch(
        dev,
        &k.gemv_f32out,
        gemv_grid,
        (32, 8, 1),
        &p,
        "gemv_f32out",
    )
}
