//! `CudaBackend`: the `backend::Ops` of the forward pass on an NVIDIA GPU. Weights are
//! uploaded once in their F32/F16/BF16 form; activations and the KV cache are f32 device
//! buffers in the CPU backend's layouts, so every op has the CPU op as its twin.
//!
//! Every launch goes on the device's one stream; nothing here synchronizes except
//! `read_row` (the logits copy back to the host).

use cudarc::driver::{
    CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg, sys,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::device::CudaDevice;
use super::kernels;
use super::params::{
    ArgmaxParams, AttnParams, ElementwiseParams, EmbedParams, GemvParams, RopeParams, SampleParams,
    TACHYON_DTYPE_BF16, TACHYON_DTYPE_F16, TACHYON_DTYPE_F32, TACHYON_DTYPE_Q4_0,
    TACHYON_DTYPE_Q4_1, TACHYON_DTYPE_Q4_K, TACHYON_DTYPE_Q5_0, TACHYON_DTYPE_Q5_1,
    TACHYON_DTYPE_Q5_K, TACHYON_DTYPE_Q6_K, TACHYON_DTYPE_Q8_0, TACHYON_EW_ADD, TACHYON_EW_ADD_ROW,
    TACHYON_EW_SWIGLU,
};
use crate::backend::cpu::ops::rope_angles;
use crate::backend::{AttnShape, BackendError, Ops};
use crate::format::GgmlType;
use crate::format::{Rope, RopeStyle, Weight};

/// An activation matrix: `rows x width` f32 on the device.
pub struct CudaAct {
    pub buf: CudaSlice<f32>,
    pub rows: usize,
    pub width: usize,
}

/// A weight matrix on the device, elements as in the file (F32, F16 or BF16).
pub struct CudaMat {
    pub buf: CudaSlice<u8>,
    pub rows: usize,
    pub cols: usize,
    /// A `TACHYON_DTYPE_*` value.
    pub dtype: i32,
}

/// One layer's KV cache: `ctx x kv_dim` f32 for K and for V.
pub struct CudaKv {
    pub k: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
    pub ctx: usize,
    pub kv_dim: usize,
}

/// The CPU backend's rope angle tables, on the device.
pub struct CudaRope {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub half: usize,
    pub ctx: usize,
    pub interleaved: bool,
}

/// Most activation rows a matrix product runs as GEMV (weights streamed once per 4 rows);
/// more rows run as the tiled GEMM.
pub const GEMV_MAX_ROWS: usize = 4;

/// Most splits of the sequence in flash-decoding.
pub const MAX_ATTN_SPLITS: usize = 64;
/// Most argmax partial blocks.
const ARGMAX_PARTS: usize = 264;

pub struct CudaBackend {
    dev: CudaDevice,
    sm_count: usize,
    /// Token ids of the current `embed` call.
    tokens: Option<CudaSlice<u32>>,
    /// Flash-decoding partials (acc, max, sum), grown on demand.
    part_acc: Option<CudaSlice<f32>>,
    part_max: Option<CudaSlice<f32>>,
    part_sum: Option<CudaSlice<f32>>,
    /// Scratch for the in-place head RMSNorm.
    scratch: Option<CudaSlice<f32>>,
    progress: Option<ProgressBar>,
    /// Device addresses of a token id (u32) and a position (i32) that `embed`, `rope` and
    /// `attention` read instead of their host arguments: how a captured CUDA graph gets
    /// each step's token and position.
    device_inputs: Option<(u64, u64)>,
}

/// Maps a driver error to the backend's error, naming what was being done.
fn dev_err(what: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            BackendError::OutOfMemory {
                what: format!("{what} on the GPU"),
            }
        } else {
            BackendError::Device(format!("CUDA: {what}: {e}"))
        }
    }
}

fn shape_err(msg: String) -> BackendError {
    BackendError::Device(format!("CUDA backend: {msg}"))
}

/// A value that must fit the kernels' 32-bit ints.
fn i32_of(v: usize, what: &str) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| shape_err(format!("{what} = {v} does not fit a 32-bit int")))
}

/// The raw device address of a buffer. Event tracking is off on a `CudaDevice`, so the
/// guard cudarc returns records nothing and may be dropped at once.
fn ptr<T, S: DevicePtr<T>>(s: &S, dev: &CudaDevice) -> u64 {
    let (p, _guard) = s.device_ptr(dev.stream());
    p
}

fn ptr_mut<T, S: DevicePtrMut<T>>(s: &mut S, dev: &CudaDevice) -> u64 {
    let (p, _guard) = s.device_ptr_mut(dev.stream());
    p
}

/// Makes sure `slot` holds at least `len` elements (contents are scratch).
fn ensure<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    dev: &CudaDevice,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &'static str,
) -> Result<(), BackendError> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = Some(
            dev.stream()
                .alloc_zeros::<T>(len.max(1))
                .map_err(dev_err(what))?,
        );
    }
    Ok(())
}

impl CudaBackend {
    pub fn new(dev: CudaDevice) -> Result<CudaBackend, BackendError> {
        let sm = dev
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(dev_err("reading the SM count"))?;
        Ok(CudaBackend {
            dev,
            sm_count: usize::try_from(sm).unwrap_or(1).max(1),
            tokens: None,
            part_acc: None,
            part_max: None,
            part_sum: None,
            scratch: None,
            progress: None,
            device_inputs: None,
        })
    }

    /// Allocates every scratch buffer the ops need for up to `max_batch` rows of `q_dim`
    /// (`n_heads` heads of `head_dim`), so that no op allocates later: a captured CUDA graph
    /// holds these addresses, and a reallocation would leave it pointing at freed memory.
    pub fn reserve(
        &mut self,
        max_batch: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<(), BackendError> {
        let slots = max_batch * n_heads * MAX_ATTN_SPLITS;
        ensure(&self.dev, &mut self.tokens, max_batch, "token ids")?;
        ensure(
            &self.dev,
            &mut self.part_acc,
            slots * head_dim,
            "attention partials",
        )?;
        ensure(&self.dev, &mut self.part_max, slots, "attention partials")?;
        ensure(&self.dev, &mut self.part_sum, slots, "attention partials")?;
        ensure(
            &self.dev,
            &mut self.scratch,
            max_batch * n_heads * head_dim,
            "scratch",
        )
    }

    /// Makes `embed` read its (single) token id, and `rope` / `attention` their position,
    /// from these device addresses (a u32 and an i32) instead of the host arguments, which
    /// then only size and check the work; `None` goes back to host arguments. The caller
    /// keeps both buffers alive while the mode is on and while any graph captured in it
    /// can be replayed.
    pub fn set_device_inputs(&mut self, token_and_pos: Option<(u64, u64)>) {
        self.device_inputs = token_and_pos;
    }

    /// Show a progress bar over `total_bytes` of weight uploads on stderr.
    pub fn show_upload_progress(&mut self, total_bytes: u64) {
        let bar = ProgressBar::new(total_bytes);
        if let Ok(style) = ProgressStyle::with_template(
            "uploading weights {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style);
        }
        self.progress = Some(bar);
    }

    /// Ends the upload progress bar, if any.
    pub fn finish_upload_progress(&mut self) {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Queues a kernel taking one params struct by value.
    fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: u32,
        block: (u32, u32, u32),
        grid_yz: (u32, u32),
        p: &P,
        name: &'static str,
    ) -> Result<(), BackendError> {
        let cfg = LaunchConfig {
            grid_dim: (grid.max(1), grid_yz.0.max(1), grid_yz.1.max(1)),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let mut b = self.dev.stream().launch_builder(f);
        b.arg(p);
        // SAFETY: every kernel of kernels/ takes exactly one params struct by value, the one
        // generated from the same header; each caller fills its pointers from live buffers
        // of this device whose sizes it checked against the params' shape fields.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(dev_err(name))
    }

    /// Index of the largest of the `n` first values of `logits` row 0, on the device: the
    /// token id lands in `out[0]` (lowest index on ties, NaN never chosen).
    pub fn argmax(
        &mut self,
        logits: &CudaAct,
        out: &mut CudaSlice<u32>,
        part_val: &mut CudaSlice<f32>,
        part_idx: &mut CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        self.argmax_row(logits, 0, out, 0, part_val, part_idx)
    }

    /// [`CudaBackend::argmax`] of row `row` of `logits` into `out[slot]`. Rows picked one
    /// after another on the stream may share the partial buffers.
    pub fn argmax_row(
        &mut self,
        logits: &CudaAct,
        row: usize,
        out: &mut CudaSlice<u32>,
        slot: usize,
        part_val: &mut CudaSlice<f32>,
        part_idx: &mut CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        let n = logits.width;
        let parts = ARGMAX_PARTS.min(n.div_ceil(256)).max(1);
        if slot >= out.len()
            || row >= logits.rows
            || part_val.len() < parts
            || part_idx.len() < parts
        {
            return Err(shape_err(format!(
                "argmax of row {row} of {} into slot {slot} of {} needs {parts} partial slots",
                logits.rows,
                out.len()
            )));
        }
        let row_bytes = (n * std::mem::size_of::<f32>()) as u64;
        let slot_bytes = (slot * std::mem::size_of::<u32>()) as u64;
        let p = ArgmaxParams {
            logits: (ptr(&logits.buf, &self.dev) + row as u64 * row_bytes) as *const f32,
            part_val: ptr_mut(part_val, &self.dev) as *mut f32,
            part_idx: ptr_mut(part_idx, &self.dev) as *mut i32,
            out: (ptr_mut(out, &self.dev) + slot_bytes) as *mut u32,
            n: i32_of(n, "vocabulary")?,
            n_parts: parts as i32,
        };
        let k = &self.dev.kernels;
        self.launch(
            &k.argmax_partial,
            parts as u32,
            (256, 1, 1),
            (1, 1),
            &p,
            "argmax_partial",
        )?;
        self.launch(&k.argmax_final, 1, (1024, 1, 1), (1, 1), &p, "argmax_final")
    }

    /// Draws a token from row 0 of `logits` into `out[0]` with the CPU sampler's filters
    /// (top-k, softmax at `temperature`, min-p, top-p; see `SampleParams`), the uniform
    /// number coming from the SplitMix64 state in `rng[0]`, which the draw advances.
    /// `work` is scratch of at least the vocabulary size. Penalties are not applied.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &mut self,
        logits: &CudaAct,
        work: &mut CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
        rng: &mut CudaSlice<u64>,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
    ) -> Result<(), BackendError> {
        let n = logits.width;
        let ok = temperature.is_finite()
            && temperature > 0.0
            && top_p > 0.0
            && top_p <= 1.0
            && (0.0..=1.0).contains(&min_p)
            && work.len() >= n
            && !out.is_empty()
            && !rng.is_empty();
        if !ok {
            return Err(shape_err(format!(
                "sample: temperature {temperature}, top_p {top_p}, min_p {min_p}, scratch {} for {n} logits",
                work.len()
            )));
        }
        let p = SampleParams {
            logits: ptr(&logits.buf, &self.dev) as *const f32,
            work: ptr_mut(work, &self.dev) as *mut f32,
            out: ptr_mut(out, &self.dev) as *mut u32,
            rng_state: ptr_mut(rng, &self.dev) as *mut u64,
            n: i32_of(n, "vocabulary")?,
            top_k: i32_of(top_k.min(n), "top_k")?,
            temperature,
            top_p,
            min_p,
        };
        self.launch(
            &self.dev.kernels.sample_logits,
            1,
            (1024, 1, 1),
            (1, 1),
            &p,
            "sample_logits",
        )
    }

    /// Partial slots `argmax` needs for a vocabulary of `n`.
    pub fn argmax_parts(n: usize) -> usize {
        ARGMAX_PARTS.min(n.div_ceil(256)).max(1)
    }

    fn elementwise(
        &mut self,
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
        let blocks = len.div_ceil(256).min(self.sm_count * 16) as u32;
        self.launch(
            &self.dev.kernels.elementwise_f32,
            blocks,
            (256, 1, 1),
            (1, 1),
            &p,
            "elementwise_f32",
        )
    }

    /// An activation matrix holding `data` (`rows * width` values).
    pub fn act_from_host(
        &mut self,
        rows: usize,
        width: usize,
        data: &[f32],
    ) -> Result<CudaAct, BackendError> {
        if data.len() != rows * width {
            return Err(shape_err(format!(
                "{} values for a [{rows} x {width}] matrix",
                data.len()
            )));
        }
        let buf = self
            .dev
            .stream()
            .clone_htod(data)
            .map_err(dev_err("uploading activations"))?;
        Ok(CudaAct { buf, rows, width })
    }

    /// All values of an activation matrix, after the queued work finished.
    pub fn act_to_host(&mut self, x: &CudaAct) -> Result<Vec<f32>, BackendError> {
        let v = self
            .dev
            .stream()
            .clone_dtoh(&x.buf)
            .map_err(dev_err("reading activations"))?;
        self.dev.synchronize().map_err(dev_err("running kernels"))?;
        Ok(v)
    }

    /// A KV cache holding `k` and `v` (`ctx * kv_dim` values each).
    pub fn kv_from_host(
        &mut self,
        ctx: usize,
        kv_dim: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<CudaKv, BackendError> {
        if k.len() != ctx * kv_dim || v.len() != ctx * kv_dim {
            return Err(shape_err("KV cache contents of the wrong size".into()));
        }
        let s = self.dev.stream();
        Ok(CudaKv {
            k: s.clone_htod(k).map_err(dev_err("uploading a KV cache"))?,
            v: s.clone_htod(v).map_err(dev_err("uploading a KV cache"))?,
            ctx,
            kv_dim,
        })
    }

    /// The K and V caches' contents, after the queued work finished.
    pub fn kv_to_host(&mut self, kv: &CudaKv) -> Result<(Vec<f32>, Vec<f32>), BackendError> {
        let s = self.dev.stream();
        let k = s.clone_dtoh(&kv.k).map_err(dev_err("reading a KV cache"))?;
        let v = s.clone_dtoh(&kv.v).map_err(dev_err("reading a KV cache"))?;
        self.dev.synchronize().map_err(dev_err("running kernels"))?;
        Ok((k, v))
    }

    /// Splits of the sequence for flash-decoding on this device; see [`attn_splits`].
    pub fn attn_splits(&self, s: &AttnShape, visible: usize, n: usize) -> usize {
        attn_splits(self.sm_count, s, visible, n)
    }

    /// Warps per output row for a GEMV with `rows` rows: enough blocks to fill the SMs.
    fn warps_per_row(&self, rows: usize) -> i32 {
        let mut wpr = 1;
        while wpr < 8 && rows * wpr / 8 < 4 * self.sm_count {
            wpr *= 2;
        }
        wpr as i32
    }

    /// The GEMV, with an optional second matrix for the fused SwiGLU form.
    fn gemv(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        w2: Option<&CudaMat>,
        bias: Option<u64>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if x.width != w.cols || out.width != w.rows || n > x.rows || n > out.rows {
            return Err(shape_err(format!(
                "matmul of [{} x {}] by [{}, {}] into [{} x {}] for {n} rows",
                x.rows, x.width, w.rows, w.cols, out.rows, out.width
            )));
        }
        if w2.is_some_and(|w2| (w2.rows, w2.cols, w2.dtype) != (w.rows, w.cols, w.dtype)) {
            return Err(shape_err(
                "the fused gate/up matrices differ in shape or format".into(),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let wpr = self.warps_per_row(w.rows);
        let p = GemvParams {
            w: ptr(&w.buf, &self.dev) as *const std::ffi::c_void,
            w2: w2.map_or(std::ptr::null(), |m| {
                ptr(&m.buf, &self.dev) as *const std::ffi::c_void
            }),
            bias: bias.map_or(std::ptr::null(), |b| b as *const f32),
            x: ptr(&x.buf, &self.dev) as *const f32,
            out: ptr_mut(&mut out.buf, &self.dev) as *mut f32,
            rows: i32_of(w.rows, "matrix rows")?,
            cols: i32_of(w.cols, "matrix columns")?,
            n: i32_of(n, "rows")?,
            dtype: w.dtype,
            warps_per_row: wpr,
        };
        let rows_per_block = 8 / wpr as usize;
        let grid = u32::try_from(w.rows.div_ceil(rows_per_block))
            .map_err(|_| shape_err("too many matrix rows".into()))?;
        if is_block_format(w.dtype) {
            // Block formats dequantize in registers, whatever the number of rows (a
            // tensor-core prefill path for them is not written yet).
            return self.launch(
                &self.dev.kernels.gemv_quant_f32out,
                grid,
                (32, 8, 1),
                (1, 1),
                &p,
                "gemv_quant_f32out",
            );
        }
        if n > GEMV_MAX_ROWS && w2.is_none() {
            // Many activation rows (prefill): the tiled GEMM reads each weight once per 32
            // rows instead of once per 4.
            let grid = u32::try_from(w.rows.div_ceil(64))
                .map_err(|_| shape_err("too many matrix rows".into()))?;
            return self.launch(
                &self.dev.kernels.gemm_f32out,
                grid,
                (256, 1, 1),
                (n.div_ceil(32) as u32, 1),
                &p,
                "gemm_f32out",
            );
        }
        self.launch(
            &self.dev.kernels.gemv_f32out,
            grid,
            (32, 8, 1),
            (1, 1),
            &p,
            "gemv_f32out",
        )
    }

    /// `out[t] = W x[t] + bias` in one launch (the bias fused into the GEMV epilogue).
    pub fn matmul_bias(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        bias: &CudaSlice<f32>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if bias.len() < w.rows {
            return Err(shape_err(format!(
                "bias of {} for {} rows",
                bias.len(),
                w.rows
            )));
        }
        let b = ptr(bias, &self.dev);
        self.gemv(x, w, None, Some(b), n, out)
    }
}

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

/// The kernels' code for a weight format (`TACHYON_DTYPE_*`). Every format tachyon reads
/// runs on the device as stored: F32/F16/BF16 elements or GGML blocks (kernels/quant.cuh).
pub fn dtype_code(ty: GgmlType) -> i32 {
    (match ty {
        GgmlType::F32 => TACHYON_DTYPE_F32,
        GgmlType::F16 => TACHYON_DTYPE_F16,
        GgmlType::BF16 => TACHYON_DTYPE_BF16,
        GgmlType::Q4_0 => TACHYON_DTYPE_Q4_0,
        GgmlType::Q4_1 => TACHYON_DTYPE_Q4_1,
        GgmlType::Q5_0 => TACHYON_DTYPE_Q5_0,
        GgmlType::Q5_1 => TACHYON_DTYPE_Q5_1,
        GgmlType::Q8_0 => TACHYON_DTYPE_Q8_0,
        GgmlType::Q4K => TACHYON_DTYPE_Q4_K,
        GgmlType::Q5K => TACHYON_DTYPE_Q5_K,
        GgmlType::Q6K => TACHYON_DTYPE_Q6_K,
    }) as i32
}

/// Whether a `TACHYON_DTYPE_*` code is a GGML block format.
fn is_block_format(dtype: i32) -> bool {
    dtype >= TACHYON_DTYPE_Q4_0 as i32
}

fn dtype_of(w: &Weight) -> Result<i32, BackendError> {
    // Rows of whole blocks: the kernels index blocks by `cols / block_elems`.
    let qk = w.ty.block_len();
    if !w.cols.is_multiple_of(qk) {
        return Err(BackendError::Device(format!(
            "{}: rows of {} elements are not whole {}-element {} blocks",
            w.name, w.cols, qk, w.ty
        )));
    }
    Ok(dtype_code(w.ty))
}

impl Ops for CudaBackend {
    type Act = CudaAct;
    type Mat = CudaMat;
    type Vector = CudaSlice<f32>;
    type Kv = CudaKv;
    type RopeTable = CudaRope;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload_matrix(&mut self, w: &Weight) -> Result<CudaMat, BackendError> {
        let dtype = dtype_of(w)?;
        let buf = self
            .dev
            .stream()
            .clone_htod(w.bytes())
            .map_err(dev_err("uploading weights"))?;
        if let Some(bar) = &self.progress {
            bar.inc(w.byte_len() as u64);
        }
        Ok(CudaMat {
            buf,
            rows: w.rows,
            cols: w.cols,
            dtype,
        })
    }

    fn upload_vector(&mut self, v: &[f32]) -> Result<CudaSlice<f32>, BackendError> {
        self.dev
            .stream()
            .clone_htod(v)
            .map_err(dev_err("uploading a vector"))
    }

    fn alloc_act(&mut self, rows: usize, width: usize) -> Result<CudaAct, BackendError> {
        let buf = self
            .dev
            .stream()
            .alloc_zeros::<f32>((rows * width).max(1))
            .map_err(dev_err("activations"))?;
        Ok(CudaAct { buf, rows, width })
    }

    fn alloc_kv(&mut self, ctx: usize, kv_dim: usize) -> Result<CudaKv, BackendError> {
        let s = self.dev.stream();
        let k = s
            .alloc_zeros::<f32>((ctx * kv_dim).max(1))
            .map_err(dev_err("KV cache"))?;
        let v = s
            .alloc_zeros::<f32>((ctx * kv_dim).max(1))
            .map_err(dev_err("KV cache"))?;
        Ok(CudaKv { k, v, ctx, kv_dim })
    }

    fn rope_table(&mut self, rope: &Rope, ctx: usize) -> Result<CudaRope, BackendError> {
        let (cos, sin, half) = rope_angles(rope, ctx);
        let s = self.dev.stream();
        Ok(CudaRope {
            cos: s.clone_htod(&cos).map_err(dev_err("rope table"))?,
            sin: s.clone_htod(&sin).map_err(dev_err("rope table"))?,
            half,
            ctx,
            interleaved: rope.style == RopeStyle::Interleaved,
        })
    }

    fn embed(
        &mut self,
        table: &CudaMat,
        tokens: &[u32],
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if tokens.len() > out.rows || out.width != table.cols {
            return Err(shape_err(format!(
                "embedding {} tokens of {} into [{} x {}]",
                tokens.len(),
                table.cols,
                out.rows,
                out.width
            )));
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let tok_ptr = match self.device_inputs {
            Some((tok, _)) if tokens.len() == 1 => tok,
            Some(_) => {
                return Err(shape_err(
                    "device-side token ids take one token per step".into(),
                ));
            }
            None => {
                ensure(&self.dev, &mut self.tokens, tokens.len(), "token ids")?;
                let Some(tok_buf) = self.tokens.as_mut() else {
                    return Err(shape_err("token buffer missing".into()));
                };
                self.dev
                    .stream()
                    .memcpy_htod(tokens, &mut tok_buf.slice_mut(..tokens.len()))
                    .map_err(dev_err("uploading token ids"))?;
                ptr(tok_buf, &self.dev)
            }
        };
        let p = EmbedParams {
            table: ptr(&table.buf, &self.dev) as *const std::ffi::c_void,
            tokens: tok_ptr as *const u32,
            out: ptr_mut(&mut out.buf, &self.dev) as *mut f32,
            n_tokens: i32_of(tokens.len(), "tokens")?,
            dim: i32_of(table.cols, "embedding width")?,
            vocab: i32_of(table.rows, "vocabulary")?,
            dtype: table.dtype,
        };
        self.launch(
            &self.dev.kernels.embed_gather,
            tokens.len() as u32,
            (256, 1, 1),
            (1, 1),
            &p,
            "embed_gather",
        )
    }

    fn rmsnorm(
        &mut self,
        x: &CudaAct,
        w: &CudaSlice<f32>,
        eps: f32,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if x.width != out.width || n > x.rows || n > out.rows {
            return Err(shape_err("rmsnorm shapes differ".into()));
        }
        let len = n * x.width;
        kernels::rmsnorm(
            &self.dev,
            &x.buf.slice(..len),
            &w.slice(..x.width.min(w.len())),
            eps,
            &mut out.buf.slice_mut(..len),
        )
        .map_err(|e| BackendError::Device(e.to_string()))
    }

    fn head_rmsnorm(
        &mut self,
        x: &mut CudaAct,
        w: &CudaSlice<f32>,
        head_dim: usize,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        let len = n * x.width;
        if head_dim == 0 || !x.width.is_multiple_of(head_dim) || w.len() < head_dim || n > x.rows {
            return Err(shape_err("head rmsnorm shapes differ".into()));
        }
        ensure(&self.dev, &mut self.scratch, len, "scratch")?;
        let Some(scratch) = self.scratch.as_mut() else {
            return Err(shape_err("scratch missing".into()));
        };
        kernels::rmsnorm(
            &self.dev,
            &x.buf.slice(..len),
            &w.slice(..head_dim),
            eps,
            &mut scratch.slice_mut(..len),
        )
        .map_err(|e| BackendError::Device(e.to_string()))?;
        self.dev
            .stream()
            .memcpy_dtod(&scratch.slice(..len), &mut x.buf.slice_mut(..len))
            .map_err(dev_err("copy"))
    }

    fn matmul(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.gemv(x, w, None, None, n, out)
    }

    fn gate_up_swiglu(
        &mut self,
        x: &CudaAct,
        w_gate: &CudaMat,
        w_up: &CudaMat,
        n: usize,
        gate: &mut CudaAct,
        up: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if n > GEMV_MAX_ROWS {
            // Prefill: two tiled GEMMs and the elementwise SwiGLU.
            self.gemv(x, w_gate, None, None, n, gate)?;
            self.gemv(x, w_up, None, None, n, up)?;
            return self.swiglu(gate, up, n);
        }
        self.gemv(x, w_gate, Some(w_up), None, n, gate)
    }

    fn add_bias(
        &mut self,
        x: &mut CudaAct,
        b: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), BackendError> {
        if b.len() < x.width || n > x.rows {
            return Err(shape_err("bias shorter than the row".into()));
        }
        let (xp, bp) = (ptr_mut(&mut x.buf, &self.dev), ptr(b, &self.dev));
        self.elementwise(xp, bp, n * x.width, x.width, TACHYON_EW_ADD_ROW)
    }

    fn add(&mut self, x: &mut CudaAct, y: &CudaAct, n: usize) -> Result<(), BackendError> {
        if x.width != y.width || n > x.rows || n > y.rows {
            return Err(shape_err("add shapes differ".into()));
        }
        let (xp, yp) = (ptr_mut(&mut x.buf, &self.dev), ptr(&y.buf, &self.dev));
        self.elementwise(xp, yp, n * x.width, x.width, TACHYON_EW_ADD)
    }

    fn swiglu(&mut self, gate: &mut CudaAct, up: &CudaAct, n: usize) -> Result<(), BackendError> {
        if gate.width != up.width || n > gate.rows || n > up.rows {
            return Err(shape_err("swiglu shapes differ".into()));
        }
        let (xp, yp) = (ptr_mut(&mut gate.buf, &self.dev), ptr(&up.buf, &self.dev));
        self.elementwise(xp, yp, n * gate.width, gate.width, TACHYON_EW_SWIGLU)
    }

    fn rope(
        &mut self,
        x: &mut CudaAct,
        t: &CudaRope,
        n_heads: usize,
        pos: usize,
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
            x: ptr_mut(&mut x.buf, &self.dev) as *mut f32,
            cos: ptr(&t.cos, &self.dev) as *const f32,
            sin: ptr(&t.sin, &self.dev) as *const f32,
            pos_dev: self
                .device_inputs
                .map_or(std::ptr::null(), |(_, p)| p as *const i32),
            pos: i32_of(pos, "position")?,
            n: i32_of(n, "rows")?,
            n_heads: i32_of(n_heads, "heads")?,
            head_dim: i32_of(x.width / n_heads, "head size")?,
            half: i32_of(t.half, "rope pairs")?,
            interleaved: i32::from(t.interleaved),
            ctx: i32_of(t.ctx, "context")?,
        };
        self.launch(
            &self.dev.kernels.rope_f32,
            n as u32,
            (256, 1, 1),
            (1, 1),
            &p,
            "rope_f32",
        )
    }

    fn attention(
        &mut self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        kv: &mut CudaKv,
        shape: AttnShape,
        pos: usize,
        n: usize,
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
        // With the position on the device (a replayed graph) the visible length is only
        // known there: size the split count for the whole cache; the kernel sizes the chunks.
        let visible = if self.device_inputs.is_some() {
            kv.ctx
        } else {
            pos + n
        };
        let splits = self.attn_splits(&shape, visible, n);
        let slots = n * shape.n_heads * splits;
        ensure(
            &self.dev,
            &mut self.part_acc,
            slots * hd,
            "attention partials",
        )?;
        ensure(&self.dev, &mut self.part_max, slots, "attention partials")?;
        ensure(&self.dev, &mut self.part_sum, slots, "attention partials")?;
        let (Some(pa), Some(pm), Some(ps)) = (
            self.part_acc.as_mut(),
            self.part_max.as_mut(),
            self.part_sum.as_mut(),
        ) else {
            return Err(shape_err("attention partials missing".into()));
        };
        let p = AttnParams {
            q: ptr(&q.buf, &self.dev) as *const f32,
            k: ptr(&k.buf, &self.dev) as *const f32,
            v: ptr(&v.buf, &self.dev) as *const f32,
            k_cache: ptr_mut(&mut kv.k, &self.dev) as *mut f32,
            v_cache: ptr_mut(&mut kv.v, &self.dev) as *mut f32,
            out: ptr_mut(&mut out.buf, &self.dev) as *mut f32,
            part_acc: ptr_mut(pa, &self.dev) as *mut f32,
            part_max: ptr_mut(pm, &self.dev) as *mut f32,
            part_sum: ptr_mut(ps, &self.dev) as *mut f32,
            pos_dev: self
                .device_inputs
                .map_or(std::ptr::null(), |(_, p)| p as *const i32),
            pos: i32_of(pos, "position")?,
            n: i32_of(n, "rows")?,
            n_heads: i32_of(shape.n_heads, "heads")?,
            n_kv_heads: i32_of(shape.n_kv_heads, "kv heads")?,
            head_dim: i32_of(hd, "head size")?,
            window: i32_of(shape.window.unwrap_or(0), "window")?,
            n_splits: splits as i32,
            ctx: i32_of(kv.ctx, "context")?,
        };
        let group = shape.n_heads / shape.n_kv_heads;
        let head_blocks = (shape.n_kv_heads * group.div_ceil(8)) as u32;
        let kern = &self.dev.kernels;
        self.launch(
            &kern.attn_kv_append,
            n as u32,
            (256, 1, 1),
            (1, 1),
            &p,
            "attn_kv_append",
        )?;
        self.launch(
            &kern.attn_decode_split,
            head_blocks,
            (128, 1, 1),
            (splits as u32, n as u32),
            &p,
            "attn_decode_split",
        )?;
        self.launch(
            &kern.attn_decode_reduce,
            (n * shape.n_heads) as u32,
            (128, 1, 1),
            (1, 1),
            &p,
            "attn_decode_reduce",
        )
    }

    fn copy_row(
        &mut self,
        src: &CudaAct,
        src_row: usize,
        dst: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let w = src.width;
        if src_row >= src.rows || dst.width != w || dst.rows == 0 {
            return Err(shape_err("copy_row shapes differ".into()));
        }
        self.dev
            .stream()
            .memcpy_dtod(
                &src.buf.slice(src_row * w..(src_row + 1) * w),
                &mut dst.buf.slice_mut(..w),
            )
            .map_err(dev_err("copy"))
    }

    fn read_row(&mut self, x: &CudaAct, out: &mut [f32]) -> Result<(), BackendError> {
        if out.len() > x.rows * x.width {
            return Err(shape_err("read_row past the last row".into()));
        }
        self.dev
            .stream()
            .memcpy_dtoh(&x.buf.slice(..out.len()), out)
            .map_err(dev_err("reading results"))?;
        self.dev
            .synchronize()
            .map_err(dev_err("running the forward pass"))
    }
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), the median of `reps`
/// copies of `bytes` after one untimed copy, timed on the host after synchronizing.
pub fn device_copy_bandwidth(
    dev: &CudaDevice,
    bytes: usize,
    reps: usize,
) -> Result<f64, BackendError> {
    let s = dev.stream();
    let src = s
        .alloc_zeros::<u8>(bytes.max(1))
        .map_err(dev_err("copy buffer"))?;
    let mut dst = s
        .alloc_zeros::<u8>(bytes.max(1))
        .map_err(dev_err("copy buffer"))?;
    s.memcpy_dtod(&src, &mut dst).map_err(dev_err("copy"))?;
    dev.synchronize().map_err(dev_err("copy"))?;
    let mut secs = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        s.memcpy_dtod(&src, &mut dst).map_err(dev_err("copy"))?;
        dev.synchronize().map_err(dev_err("copy"))?;
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    Ok(if median > 0.0 {
        2.0 * bytes as f64 / median / 1e9
    } else {
        0.0
    })
}
