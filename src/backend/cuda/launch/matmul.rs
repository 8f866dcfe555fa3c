//! Launches of the matrix products, `out[t] = W x[t]` for the first `n` activation rows:
//! `gemv.cu` (F32/F16/BF16 weights, up to [`GEMV_MAX_ROWS`] rows), `gemm_mma.cu` (tensor
//! cores: BF16 weights, more rows, when the alignment allows; `gemm_tile_bf16` from 64), `gemm.cu` (the SIMT tiled
//! product for the other more-row cases), `gemv_qpack.cu` (GGML block formats repacked at
//! upload, dequantized in registers; f32 or, with `--int8-acts`, int8 activations), the
//! `gemm_mma_qpack_<format>` kernels of `gemm_mma.cu` (those matrices on the tensor cores for
//! more rows; `gemm_mma_qpack_wide_<format>` from 64 rows) and `gemv_quant.cu` (the same over the file's blocks, any number of rows).
//! One [`GemvParams`] drives them all; the fused parts are fields of it: RMSNorm of the
//! activation rows in the prologue (the GEMVs), the bias, the gate/up SwiGLU form (a second
//! matrix streamed alongside), the residual add (`x += W a`) and the q/k/v split of a
//! stacked matrix ([`matmul_split`]) in the epilogue.

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, launch_smem, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::{CudaAct, CudaMat, is_block_format};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::{
    GemvParams, QuantActParams, TACHYON_DTYPE_BF16, TACHYON_DTYPE_Q4_0,
};

/// Most activation rows a matrix product runs as GEMV (weights streamed once per 4 rows);
/// more rows run as the tiled GEMM.
pub const GEMV_MAX_ROWS: usize = 4;

// The int8-activation path is the GEMV's: its CPU twin rounds as many rows.
const _: () = assert!(GEMV_MAX_ROWS == crate::quant::INT8_ACT_MAX_ROWS);

/// Bytes of the int8-activation scratch for `n` rows of `cols` (a multiple of 32): the
/// codes, then from the next 256-byte boundary two floats per 32 codes
/// (`quantize_act.cu`'s layout).
pub fn int8_acts_len(n: usize, cols: usize) -> usize {
    int8_scales_at(n, cols) + n * (cols / crate::backend::cuda::repack::UNIT) * 8
}

fn int8_scales_at(n: usize, cols: usize) -> usize {
    (n * cols).div_ceil(256) * 256
}

/// The product's optional parts.
#[derive(Clone, Copy, Default)]
pub struct Fused<'a> {
    /// `out = silu(W x) * (W2 x)`: the up matrix of the MLP (GEMV and quantized GEMV only).
    pub swiglu_up: Option<&'a CudaMat>,
    /// Added to every output row (at least `W.rows` values).
    pub bias: Option<&'a CudaSlice<f32>>,
    /// RMSNorm of each activation row in the prologue: the norm weight (at least `W.cols`
    /// values) and eps (GEMV and quantized GEMV only: at most [`GEMV_MAX_ROWS`] rows).
    pub norm: Option<(&'a CudaSlice<f32>, f32)>,
    /// `out += W x` (the residual add) instead of `out = W x`.
    pub accumulate: bool,
}

impl Fused<'_> {
    /// Whether the product can run with these parts for `n` rows of `w`: the norm and the
    /// SwiGLU form need a GEMV (at most [`GEMV_MAX_ROWS`] rows).
    pub fn runs_as_gemv_only(&self) -> bool {
        self.swiglu_up.is_some() || self.norm.is_some()
    }
}

/// Whether a product with GEMV-only parts ([`Fused::runs_as_gemv_only`]) can run for `n`
/// rows of `w` (else the caller runs the fine ops): at most [`GEMV_MAX_ROWS`] rows, every
/// format (more rows run on the tensor cores or the tiled GEMM, which have no prologue).
pub fn gemv_fits(_w: &CudaMat, n: usize) -> bool {
    n <= GEMV_MAX_ROWS
}

/// Weight rows and activation rows per block of `gemm_mma.cu`.
const MMA_TILE: usize = 16;

/// Dynamic shared memory of `gemm_mma_qpack_<format>` (`MmaQSmem` in gemm_mma.cu, which
/// asserts the same size): each of 4 warps' bf16 hi and lo stages of 16 rows x 64 columns,
/// then the epilogue's 4 x 16 x 17 floats.
const QMMA_SMEM_BYTES: u32 = 4 * 2 * 16 * 64 * 2 + 4 * 16 * 17 * 4;

/// Activation rows and weight rows per block of `gemm_tile_bf16` (gemm_mma.cu), and the
/// fewest activation rows a BF16 product needs to run it (prefill chunks).
const TILE: usize = 64;

/// Dynamic shared memory of `gemm_tile_bf16` (`TileSmem`, which asserts the same size): 3
/// stages of the weights and of the activations' bf16 hi and lo, 64 rows x 32 columns each.
const TILE_SMEM_BYTES: u32 = 3 * 3 * 64 * 32 * 2;

/// Activation rows per block of `gemm_mma_qpack_wide_<format>`, and the fewest rows a
/// product needs to run it: each dequantized weight unit then feeds 64 tokens.
const QMMA_WIDE_TOKENS: usize = 64;

/// Dynamic shared memory of the wide form: the same stages, an epilogue of 4 x 64 x 17
/// floats (`MmaQSmem<kMmaWideTiles>`, same assertion).
const QMMA_WIDE_SMEM_BYTES: u32 = 4 * 2 * 16 * 64 * 2 + 4 * 64 * 17 * 4;

/// Whether `gemm_mma.cu` takes this product: BF16 weights with 16-byte aligned rows (a
/// multiple of 8 columns, a 16-byte aligned start), 8-byte aligned activations (float2
/// loads), no GEMV-only parts, and few enough row blocks for the grid's y extent.
fn mma_fits(w: &CudaMat, p: &GemvParams) -> bool {
    w.dtype == TACHYON_DTYPE_BF16 as i32
        && w.cols.is_multiple_of(8)
        && (p.w as usize).is_multiple_of(16)
        && (p.x as usize).is_multiple_of(8)
        && p.w2.is_null()
        && p.norm_w.is_null()
        && w.rows.div_ceil(MMA_TILE) <= 65_535
}

/// Where a product's output rows go.
enum Dest<'b> {
    /// Every row to one activation matrix (`n x W.rows`).
    One(&'b mut CudaAct),
    /// Rows `[0, a)` to the first, `[a, a + b)` to the second, the rest to the third (the
    /// widths of the three).
    Split([&'b mut CudaAct; 3]),
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
///
/// `int8_acts`: scratch of at least [`int8_acts_len`] bytes for `n` rows of `W.cols`: a
/// repacked block matrix then reads its activations quantized to int8 per 32 values
/// (`quantize_act.cu`, the norm applied there) through `__dp4a` (the `_q8` kernels of
/// `gemv_qpack.cu`); every other product ignores it.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dev: &CudaDevice,
    sm_count: usize,
    int8_acts: Option<&mut CudaSlice<u8>>,
    x: &CudaAct,
    w: &CudaMat,
    fused: Fused<'_>,
    n: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    product(dev, sm_count, int8_acts, x, w, fused, n, Dest::One(out))
}

/// [`matmul`] of a stacked matrix whose rows go to `outs[0]`, `outs[1]` and `outs[2]` in
/// turn (their widths: q, k and v of a stacked QKV projection).
#[allow(clippy::too_many_arguments)]
pub fn matmul_split(
    dev: &CudaDevice,
    sm_count: usize,
    int8_acts: Option<&mut CudaSlice<u8>>,
    x: &CudaAct,
    w: &CudaMat,
    fused: Fused<'_>,
    n: usize,
    outs: [&mut CudaAct; 3],
) -> Result<(), BackendError> {
    product(dev, sm_count, int8_acts, x, w, fused, n, Dest::Split(outs))
}

#[allow(clippy::too_many_arguments)]
fn product(
    dev: &CudaDevice,
    sm_count: usize,
    int8_acts: Option<&mut CudaSlice<u8>>,
    x: &CudaAct,
    w: &CudaMat,
    fused: Fused<'_>,
    n: usize,
    mut dest: Dest<'_>,
) -> Result<(), BackendError> {
    let (out_width, out_rows) = match &dest {
        Dest::One(o) => (o.width, o.rows),
        Dest::Split(o) => (
            o[0].width + o[1].width + o[2].width,
            o.iter().map(|o| o.rows).min().unwrap_or(0),
        ),
    };
    if x.width != w.cols || out_width != w.rows || n > x.rows || n > out_rows {
        return Err(shape_err(format!(
            "matmul of [{} x {}] by [{}, {}] into [{} x {}] for {n} rows",
            x.rows, x.width, w.rows, w.cols, out_rows, out_width
        )));
    }
    let w2 = fused.swiglu_up;
    if w2.is_some_and(|w2| {
        (w2.rows, w2.cols, w2.dtype, w2.packed) != (w.rows, w.cols, w.dtype, w.packed)
    }) {
        return Err(shape_err(
            "the fused gate/up matrices differ in shape or format".into(),
        ));
    }
    if fused.runs_as_gemv_only() && !gemv_fits(w, n) {
        return Err(shape_err(format!(
            "the fused norm and gate/up forms run as a GEMV, for at most {GEMV_MAX_ROWS} rows, not {n}"
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
    if let Some((g, _)) = fused.norm
        && g.len() < w.cols
    {
        return Err(shape_err(format!(
            "norm weight of {} for {} columns",
            g.len(),
            w.cols
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let wpr = warps_per_row(w.rows, sm_count);
    let null = std::ptr::null_mut::<f32>();
    let (out, out_b, out_c, rows_a, rows_b) = match &mut dest {
        Dest::One(o) => (ptr_mut(&mut o.buf, dev) as *mut f32, null, null, 0, 0),
        Dest::Split([a, b, c]) => (
            ptr_mut(&mut a.buf, dev) as *mut f32,
            ptr_mut(&mut b.buf, dev) as *mut f32,
            ptr_mut(&mut c.buf, dev) as *mut f32,
            i32_of(a.width, "rows")?,
            i32_of(b.width, "rows")?,
        ),
    };
    let p = GemvParams {
        w: ptr(&w.buf, dev) as *const std::ffi::c_void,
        w2: w2.map_or(std::ptr::null(), |m| {
            ptr(&m.buf, dev) as *const std::ffi::c_void
        }),
        bias: fused
            .bias
            .map_or(std::ptr::null(), |b| ptr(b, dev) as *const f32),
        x: ptr(&x.buf, dev) as *const f32,
        out,
        rows: i32_of(w.rows, "matrix rows")?,
        cols: i32_of(w.cols, "matrix columns")?,
        n: i32_of(n, "rows")?,
        dtype: w.dtype,
        warps_per_row: wpr,
        norm_w: fused
            .norm
            .map_or(std::ptr::null(), |(g, _)| ptr(g, dev) as *const f32),
        eps: fused.norm.map_or(0.0, |(_, eps)| eps),
        accumulate: i32::from(fused.accumulate),
        out_b,
        out_c,
        rows_a,
        rows_b,
        xq: std::ptr::null(),
        xd: std::ptr::null(),
    };
    let k = &dev.kernels;
    let rows_per_block = 8 / wpr as usize;
    let gemv_grid = (
        u32_of(w.rows.div_ceil(rows_per_block), "matrix rows")?,
        1,
        1,
    );
    if is_block_format(w.dtype) && w.packed {
        // Repacked block formats (repack.rs): 16-byte code loads, scales once per 32
        // elements, x and the norm weight read as float4.
        let unaligned = [p.x as usize, p.norm_w as usize, p.w as usize, p.w2 as usize]
            .iter()
            .any(|a| a % 16 != 0);
        if unaligned || !w.cols.is_multiple_of(crate::backend::cuda::repack::UNIT) {
            return Err(shape_err(
                "the repacked quantized GEMV needs 16-byte aligned operands".into(),
            ));
        }
        // One kernel per format, in TACHYON_DTYPE_* order from Q4_0.
        let f = usize::try_from(w.dtype - TACHYON_DTYPE_Q4_0 as i32)
            .ok()
            .and_then(|i| k.gemv_qpack.get(i))
            .ok_or_else(|| shape_err(format!("no repacked GEMV for dtype {}", w.dtype)))?;
        if n > GEMV_MAX_ROWS && w.rows.div_ceil(MMA_TILE) <= 65_535 {
            // Verify rows and prefill: the tensor cores over units dequantized into shared
            // memory (gemm_mma.cu), each weight read and decoded once per 16 rows, or once
            // per 64 for prefill chunks of 64 rows and more (the wide form).
            let wide = n >= QMMA_WIDE_TOKENS;
            let (kernels, tokens, smem) = match wide {
                true => (
                    &k.gemm_mma_qpack_wide,
                    QMMA_WIDE_TOKENS,
                    QMMA_WIDE_SMEM_BYTES,
                ),
                false => (&k.gemm_mma_qpack, MMA_TILE, QMMA_SMEM_BYTES),
            };
            let name = ["gemm_mma_qpack", "gemm_mma_qpack_wide"][usize::from(wide)];
            let f = usize::try_from(w.dtype - TACHYON_DTYPE_Q4_0 as i32)
                .ok()
                .and_then(|i| kernels.get(i))
                .ok_or_else(|| {
                    shape_err(format!("no tensor-core product for dtype {}", w.dtype))
                })?;
            let grid = (
                u32_of(n.div_ceil(tokens), "rows")?,
                u32_of(w.rows.div_ceil(MMA_TILE), "matrix rows")?,
                1,
            );
            return launch_smem(dev, f, grid, (128, 1, 1), smem, &p, name);
        }
        if let Some(acts) = int8_acts {
            return int8_product(dev, acts, p, gemv_grid);
        }
        return launch(dev, f, gemv_grid, (32, 8, 1), &p, "gemv_qpack");
    }
    if is_block_format(w.dtype) {
        // Block formats as stored dequantize in registers, whatever the number of rows (a
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
    if n >= TILE && mma_fits(w, &p) && (p.x as usize).is_multiple_of(16) {
        // Prefill with BF16 weights: tensor cores over 64 x 64 tiles with both operands
        // staged, each weight read once per 64 tokens, each activation split once per 64
        // weight rows.
        let grid = (
            u32_of(n.div_ceil(TILE), "rows")?,
            u32_of(w.rows.div_ceil(TILE), "matrix rows")?,
            1,
        );
        return launch_smem(
            dev,
            &k.gemm_tile_bf16,
            grid,
            (128, 1, 1),
            TILE_SMEM_BYTES,
            &p,
            "gemm_tile_bf16",
        );
    }
    if n > GEMV_MAX_ROWS && mma_fits(w, &p) {
        // Verify rows (and prefill chunks the tile kernel does not take) with BF16
        // weights: tensor cores, each weight tile read once per 16 rows (once in all for a
        // verify step).
        let grid = (
            u32_of(n.div_ceil(MMA_TILE), "rows")?,
            u32_of(w.rows.div_ceil(MMA_TILE), "matrix rows")?,
            1,
        );
        return launch(
            dev,
            &k.gemm_mma_bf16,
            grid,
            (128, 1, 1),
            &p,
            "gemm_mma_bf16",
        );
    }
    if n > GEMV_MAX_ROWS {
        // Many activation rows (prefill) that the tensor-core kernel does not take: the
        // tiled GEMM reads each weight once per 32 rows instead of once per 4.
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

/// The repacked product over int8 activations: `quantize_act_q8` writes the rows' codes
/// and unit scales into `acts` (the norm of `p` applied there), then the format's `_q8`
/// kernel reads them in place of `x`.
fn int8_product(
    dev: &CudaDevice,
    acts: &mut CudaSlice<u8>,
    mut p: GemvParams,
    gemv_grid: (u32, u32, u32),
) -> Result<(), BackendError> {
    // rows and cols are positive here: the caller's checks and i32 conversions passed.
    let (n, cols) = (p.n as usize, p.cols as usize);
    let need = int8_acts_len(n, cols);
    if acts.len() < need {
        return Err(shape_err(format!(
            "int8 activation scratch of {} bytes for {n} rows of {cols} ({need} needed)",
            acts.len()
        )));
    }
    let base = ptr_mut(acts, dev);
    let scales = base + int8_scales_at(n, cols) as u64;
    let q = QuantActParams {
        x: p.x,
        norm_w: p.norm_w,
        eps: p.eps,
        n: p.n,
        cols: p.cols,
        q: base as *mut i8,
        d: scales as *mut f32,
    };
    let k = &dev.kernels;
    launch(
        dev,
        &k.quantize_act_q8,
        (u32_of(n, "rows")?, 1, 1),
        (32, 8, 1),
        &q,
        "quantize_act_q8",
    )?;
    p.xq = base as *const i8;
    p.xd = scales as *const f32;
    p.norm_w = std::ptr::null();
    let f = usize::try_from(p.dtype - TACHYON_DTYPE_Q4_0 as i32)
        .ok()
        .and_then(|i| k.gemv_qpack_q8.get(i))
        .ok_or_else(|| shape_err(format!("no int8-activation GEMV for dtype {}", p.dtype)))?;
    launch(dev, f, gemv_grid, (32, 8, 1), &p, "gemv_qpack_q8")
}
