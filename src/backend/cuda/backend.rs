//! `CudaBackend`: the `backend::Ops` of the forward pass on an NVIDIA GPU. It owns the
//! device, the scratch the kernels share (token ids, flash-decoding partials, the per-head
//! norm's scratch) and the upload progress bar; each op is one call into a launcher of
//! `launch/` (shape checks, params, launch), whose buffers it passes.
//!
//! Every launch goes on the device's one stream; nothing here synchronizes except
//! `read_row` and the `*_to_host` helpers (copies back to the host, `host_copies.rs`). The
//! on-device picks are in `picks.rs`.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits, sys};
use indicatif::{ProgressBar, ProgressStyle};

use super::buffers::{CudaAct, CudaKv, CudaMat, CudaRope, dtype_of};
use super::device::CudaDevice;
use super::launch::attention::{Partials, attn_splits, call_splits, max_split_rows, partial_slots};
use super::launch::matmul::{Fused, GEMV_MAX_ROWS, gemv_fits};
use super::launch::rope_attention::{FusedScratch, Norms, head_blocks, head_dim_index, max_splits};
use super::launch::{
    attention, dev_err, elementwise, embed, matmul, norm, ptr, rope, rope_attention, shape_err,
};
use super::repack;
use crate::backend::{
    AttnShape, BackendError, HeadNorms, KvDtype, Ops, Position, QkvWeights, TokenIds,
    rope_attention_unfused, separate_qkv,
};
use crate::format::{Rope, RopeStyle, Weight};

mod host_copies;
mod picks;

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
    /// The fused attention kernel's completion counters, one per head block (zero between
    /// launches).
    counters: Option<CudaSlice<u32>>,
    /// The element type of the KV caches `alloc_kv` makes.
    kv_dtype: KvDtype,
    /// Whether repacked block matrices read int8 activations (`set_int8_acts`), and the
    /// scratch those activations go to.
    int8_acts: bool,
    qacts: Option<CudaSlice<u8>>,
    /// The widest repacked block matrix uploaded (columns): what `reserve` sizes `qacts` for.
    widest_packed: usize,
    progress: Option<ProgressBar>,
}

/// Makes sure `slot` holds at least `len` elements (contents are scratch) and returns it.
fn ensure<'a, T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
    what: &'static str,
) -> Result<&'a mut CudaSlice<T>, BackendError> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None;
        *slot = Some(
            dev.stream()
                .alloc_zeros::<T>(len.max(1))
                .map_err(dev_err(what))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| shape_err(format!("{what} missing")))
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
            counters: None,
            kv_dtype: KvDtype::F32,
            int8_acts: false,
            qacts: None,
            widest_packed: 0,
            progress: None,
        })
    }

    /// Allocates every scratch buffer the ops need for up to `max_batch` rows of attention
    /// `shape` (the partials for the most splits any call makes: `max_split_rows`), so that
    /// no op allocates later: a captured CUDA graph
    /// holds these addresses, and a reallocation would leave it pointing at freed memory.
    /// A head size the fused decode attention has no kernel for is refused here, at load.
    pub fn reserve(&mut self, max_batch: usize, shape: &AttnShape) -> Result<(), BackendError> {
        let (n_heads, head_dim) = (shape.n_heads, shape.head_dim);
        head_dim_index(head_dim)?;
        ensure(&self.dev, &mut self.counters, n_heads, "attention counters")?;
        let slots = n_heads * max_split_rows(self.sm_count, self.kv_dtype, shape, max_batch);
        ensure(&self.dev, &mut self.tokens, max_batch, "token ids")?;
        self.reserve_partials(slots, slots * head_dim)?;
        ensure(
            &self.dev,
            &mut self.scratch,
            max_batch * n_heads * head_dim,
            "scratch",
        )?;
        if self.int8_acts {
            // Only GEMV-sized products take int8 activations.
            let rows = max_batch.min(GEMV_MAX_ROWS);
            let len = matmul::int8_acts_len(rows, self.widest_packed);
            ensure(&self.dev, &mut self.qacts, len, "int8 activations")?;
        }
        Ok(())
    }

    /// Block-format matrices (repacked at upload) read their activations quantized to int8
    /// per 32 values, multiplied with `__dp4a` (`gemv_qpack.cu`'s `_q8` kernels), instead of
    /// f32. The CPU twin is `CpuBackend::round_acts_int8`. Set before `reserve`.
    pub fn set_int8_acts(&mut self, on: bool) {
        self.int8_acts = on;
    }

    /// The int8-activation scratch for `n` rows of `w`, when the product takes that path (a
    /// repacked block matrix, at most `GEMV_MAX_ROWS` rows; grown on demand for direct op
    /// calls: a session's `reserve` sized it already, so a captured graph never sees it
    /// move).
    fn int8_scratch<'s>(
        dev: &CudaDevice,
        on: bool,
        slot: &'s mut Option<CudaSlice<u8>>,
        w: &CudaMat,
        n: usize,
    ) -> Result<Option<&'s mut CudaSlice<u8>>, BackendError> {
        if !on || !w.packed || n > GEMV_MAX_ROWS || !w.cols.is_multiple_of(repack::UNIT) {
            return Ok(None);
        }
        let len = matmul::int8_acts_len(n, w.cols);
        Ok(Some(ensure(dev, slot, len, "int8 activations")?))
    }

    /// `matmul::matmul` with this backend's device, SM count and int8 scratch.
    fn product(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        fused: Fused<'_>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let acts = Self::int8_scratch(&self.dev, self.int8_acts, &mut self.qacts, w, n)?;
        matmul::matmul(&self.dev, self.sm_count, acts, x, w, fused, n, out)
    }

    fn reserve_partials(&mut self, slots: usize, acc: usize) -> Result<(), BackendError> {
        ensure(&self.dev, &mut self.part_acc, acc, "attention partials")?;
        ensure(&self.dev, &mut self.part_max, slots, "attention partials")?;
        ensure(&self.dev, &mut self.part_sum, slots, "attention partials")?;
        Ok(())
    }

    /// A position as the kernels take it: the host value, or 0 and the address of the
    /// device value (which the kernels then read instead: row i of a call is at that
    /// value plus i). The host shape checks then run at position 0, and whoever writes the
    /// value checks it against the context.
    fn split_pos(&self, pos: Position<'_, CudaSlice<i32>>) -> (usize, *const i32) {
        match pos {
            Position::Host(p) => (p, std::ptr::null()),
            Position::Device(p) => (0, ptr(p, &self.dev) as *const i32),
        }
    }

    /// The element type of the KV caches made from now on (f32 until set: the op tests
    /// compare caches with the CPU's).
    pub fn set_kv_dtype(&mut self, d: KvDtype) {
        self.kv_dtype = d;
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

    /// Splits of the sequence for flash-decoding on this device; see [`attn_splits`].
    pub fn attn_splits(&self, s: &AttnShape, visible: usize, n: usize) -> usize {
        attn_splits(self.sm_count, s, visible, n)
    }
}

impl Ops for CudaBackend {
    type Act = CudaAct;
    type Mat = CudaMat;
    type Vector = CudaSlice<f32>;
    type Kv = CudaKv;
    type RopeTable = CudaRope;
    /// A token id and a position in device memory: a captured decode step reads them
    /// there, so each replay runs the token and position written just before it.
    type DeviceTokens = CudaSlice<u32>;
    type DevicePos = CudaSlice<i32>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    /// GGML block matrices are repacked into `repack.rs`'s aligned layout for
    /// `gemv_qpack.cu`; F32/F16/BF16 go up as stored.
    fn upload_matrix(&mut self, w: &Weight) -> Result<CudaMat, BackendError> {
        if !repack::packs(w.ty) {
            return self.upload_table(w);
        }
        let dtype = dtype_of(w)?;
        let (bytes, rows) = repack::repack(w.ty, w.cols, &[w.bytes()])?;
        if rows != w.rows {
            return Err(shape_err(format!(
                "{}: {rows} rows of bytes for {} rows",
                w.name, w.rows
            )));
        }
        let buf = self
            .dev
            .stream()
            .clone_htod(&bytes)
            .map_err(dev_err("uploading weights"))?;
        if let Some(bar) = &self.progress {
            bar.inc(w.byte_len() as u64);
        }
        self.widest_packed = self.widest_packed.max(w.cols);
        Ok(CudaMat {
            buf,
            rows: w.rows,
            cols: w.cols,
            dtype,
            packed: true,
        })
    }

    /// Every format as stored: `embed_gather` reads the file's blocks.
    fn upload_table(&mut self, w: &Weight) -> Result<CudaMat, BackendError> {
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
            packed: false,
        })
    }

    /// Stacks q, k and v into one matrix (and their biases into one vector, zeros for a
    /// projection without one) when the three share a format and a width, so that
    /// `norm_qkv` is one product; otherwise three matrices.
    fn upload_qkv(
        &mut self,
        q: &Weight,
        k: &Weight,
        v: &Weight,
        bias: [Option<&[f32]>; 3],
    ) -> Result<QkvWeights<CudaMat, CudaSlice<f32>>, BackendError> {
        let ws = [q, k, v];
        if ws.iter().any(|w| (w.ty, w.cols) != (q.ty, q.cols)) {
            return separate_qkv(self, q, k, v, bias);
        }
        let dtype = dtype_of(q)?;
        for w in [k, v] {
            dtype_of(w)?;
        }
        let rows = [q.rows, k.rows, v.rows];
        let total: usize = ws.iter().map(|w| w.byte_len()).sum();
        let s = self.dev.stream();
        let packed = repack::packs(q.ty);
        if packed {
            self.widest_packed = self.widest_packed.max(q.cols);
        }
        let buf = if packed {
            // One repacked matrix of the three's rows (the layout spans the whole stack).
            let (bytes, stacked) = repack::repack(q.ty, q.cols, &ws.map(|w| w.bytes()))?;
            if stacked != rows.iter().sum::<usize>() {
                return Err(shape_err(format!(
                    "{}: {stacked} rows of bytes in q, k and v for {rows:?} rows",
                    q.name
                )));
            }
            let buf = s.clone_htod(&bytes).map_err(dev_err("uploading weights"))?;
            if let Some(bar) = &self.progress {
                bar.inc(total as u64);
            }
            buf
        } else {
            let mut buf = s
                .alloc_zeros::<u8>(total.max(1))
                .map_err(dev_err("uploading weights"))?;
            let mut at = 0;
            for w in ws {
                let len = w.byte_len();
                s.memcpy_htod(w.bytes(), &mut buf.slice_mut(at..at + len))
                    .map_err(dev_err("uploading weights"))?;
                at += len;
                if let Some(bar) = &self.progress {
                    bar.inc(len as u64);
                }
            }
            buf
        };
        let bias = if bias.iter().any(Option::is_some) {
            let mut stacked = Vec::with_capacity(rows.iter().sum());
            for (b, &r) in bias.iter().zip(&rows) {
                match b {
                    Some(b) if b.len() == r => stacked.extend_from_slice(b),
                    Some(b) => {
                        return Err(shape_err(format!(
                            "a projection bias of {} values for {r} rows",
                            b.len()
                        )));
                    }
                    None => stacked.resize(stacked.len() + r, 0.0),
                }
            }
            Some(self.upload_vector(&stacked)?)
        } else {
            None
        };
        Ok(QkvWeights::Stacked {
            qkv: CudaMat {
                buf,
                rows: rows.iter().sum(),
                cols: q.cols,
                dtype,
                packed,
            },
            bias,
            rows,
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
        let dtype = self.kv_dtype;
        let bytes = (ctx * kv_dim * dtype.bytes()).max(4);
        let k = s.alloc_zeros::<u8>(bytes).map_err(dev_err("KV cache"))?;
        let v = s.alloc_zeros::<u8>(bytes).map_err(dev_err("KV cache"))?;
        Ok(CudaKv {
            k,
            v,
            ctx,
            kv_dim,
            dtype,
        })
    }

    fn rope_table(&mut self, rope: &Rope, ctx: usize) -> Result<CudaRope, BackendError> {
        let (cos, sin, half) = rope.angles(ctx);
        let s = self.dev.stream();
        Ok(CudaRope {
            cos: s.clone_htod(&cos).map_err(dev_err("rope table"))?,
            sin: s.clone_htod(&sin).map_err(dev_err("rope table"))?,
            half,
            ctx,
            interleaved: rope.style == RopeStyle::Interleaved,
        })
    }

    fn embed<'t>(
        &mut self,
        table: &CudaMat,
        tokens: impl Into<TokenIds<'t, CudaSlice<u32>>>,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        match tokens.into() {
            TokenIds::Device(ids, n) => embed::embed(&self.dev, table, ids, n, out),
            TokenIds::Host(tokens) => {
                if tokens.is_empty() {
                    return Ok(());
                }
                let ids = ensure(&self.dev, &mut self.tokens, tokens.len(), "token ids")?;
                self.dev
                    .stream()
                    .memcpy_htod(tokens, &mut ids.slice_mut(..tokens.len()))
                    .map_err(dev_err("uploading token ids"))?;
                embed::embed(&self.dev, table, ids, tokens.len(), out)
            }
        }
    }

    fn rmsnorm(
        &mut self,
        x: &CudaAct,
        w: &CudaSlice<f32>,
        eps: f32,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        norm::rows(&self.dev, x, w, eps, n, out)
    }

    fn add_rmsnorm(
        &mut self,
        x: &mut CudaAct,
        y: &CudaAct,
        w: &CudaSlice<f32>,
        eps: f32,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        norm::add_rows(&self.dev, x, y, w, eps, n, out)
    }

    fn head_rmsnorm(
        &mut self,
        x: &mut CudaAct,
        w: &CudaSlice<f32>,
        head_dim: usize,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        let scratch = ensure(&self.dev, &mut self.scratch, n * x.width, "scratch")?;
        norm::heads(&self.dev, x, w, head_dim, eps, n, scratch)
    }

    fn matmul(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.product(x, w, Fused::default(), n, out)
    }

    fn matmul_bias(
        &mut self,
        x: &CudaAct,
        w: &CudaMat,
        b: &CudaSlice<f32>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let fused = Fused {
            bias: Some(b),
            ..Fused::default()
        };
        self.product(x, w, fused, n, out)
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
            self.matmul(x, w_gate, n, gate)?;
            self.matmul(x, w_up, n, up)?;
            return self.swiglu(gate, up, n);
        }
        let fused = Fused {
            swiglu_up: Some(w_up),
            ..Fused::default()
        };
        self.product(x, w_gate, fused, n, gate)
    }

    fn norm_qkv(
        &mut self,
        x: &CudaAct,
        norm: &CudaSlice<f32>,
        eps: f32,
        w: &QkvWeights<CudaMat, CudaSlice<f32>>,
        n: usize,
        hn: &mut CudaAct,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let sm = self.sm_count;
        match w {
            QkvWeights::Stacked { qkv, bias, rows } => {
                if [q.width, k.width, v.width] != *rows {
                    return Err(shape_err(format!(
                        "q/k/v outputs of widths {} {} {} for a stack of {rows:?}",
                        q.width, k.width, v.width
                    )));
                }
                let mut fused = Fused {
                    bias: bias.as_ref(),
                    ..Fused::default()
                };
                // The norm in the GEMV's prologue; prefill normalizes first (the GEMM
                // has no prologue).
                let input = if gemv_fits(qkv, n) {
                    fused.norm = Some((norm, eps));
                    x
                } else {
                    self.rmsnorm(x, norm, eps, n, hn)?;
                    &*hn
                };
                {
                    let acts =
                        Self::int8_scratch(&self.dev, self.int8_acts, &mut self.qacts, qkv, n)?;
                    matmul::matmul_split(&self.dev, sm, acts, input, qkv, fused, n, [q, k, v])
                }
            }
            QkvWeights::Separate {
                q: wq,
                k: wk,
                v: wv,
                bias,
            } => {
                let prologue = [wq, wk, wv].iter().all(|w| gemv_fits(w, n));
                if !prologue {
                    self.rmsnorm(x, norm, eps, n, hn)?;
                }
                let input = if prologue { x } else { &*hn };
                for (w, b, out) in [(wq, &bias[0], q), (wk, &bias[1], k), (wv, &bias[2], v)] {
                    let fused = Fused {
                        bias: b.as_ref(),
                        norm: prologue.then_some((norm, eps)),
                        ..Fused::default()
                    };
                    self.product(input, w, fused, n, out)?;
                }
                Ok(())
            }
        }
    }

    fn matmul_add(
        &mut self,
        a: &CudaAct,
        w: &CudaMat,
        n: usize,
        x: &mut CudaAct,
        _scratch: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let fused = Fused {
            accumulate: true,
            ..Fused::default()
        };
        self.product(a, w, fused, n, x)
    }

    fn norm_matmul(
        &mut self,
        x: &CudaAct,
        norm: &CudaSlice<f32>,
        eps: f32,
        w: &CudaMat,
        n: usize,
        hn: &mut CudaAct,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if !gemv_fits(w, n) {
            // Verify rows past the GEMV: the norm, then the tiled product.
            self.rmsnorm(x, norm, eps, n, hn)?;
            return self.matmul(hn, w, n, out);
        }
        let fused = Fused {
            norm: Some((norm, eps)),
            ..Fused::default()
        };
        self.product(x, w, fused, n, out)
    }

    fn norm_gate_up_swiglu(
        &mut self,
        x: &CudaAct,
        norm: &CudaSlice<f32>,
        eps: f32,
        w_gate: &CudaMat,
        w_up: &CudaMat,
        n: usize,
        hn: &mut CudaAct,
        gate: &mut CudaAct,
        up: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if !gemv_fits(w_gate, n) {
            // Prefill: the norm, then two tiled GEMMs and the elementwise SwiGLU.
            self.rmsnorm(x, norm, eps, n, hn)?;
            return self.gate_up_swiglu(hn, w_gate, w_up, n, gate, up);
        }
        let fused = Fused {
            swiglu_up: Some(w_up),
            norm: Some((norm, eps)),
            ..Fused::default()
        };
        self.product(x, w_gate, fused, n, gate)
    }

    fn add_bias(
        &mut self,
        x: &mut CudaAct,
        b: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), BackendError> {
        elementwise::add_bias(&self.dev, self.sm_count, x, b, n)
    }

    fn add(&mut self, x: &mut CudaAct, y: &CudaAct, n: usize) -> Result<(), BackendError> {
        elementwise::add(&self.dev, self.sm_count, x, y, n)
    }

    fn swiglu(&mut self, gate: &mut CudaAct, up: &CudaAct, n: usize) -> Result<(), BackendError> {
        elementwise::swiglu(&self.dev, self.sm_count, gate, up, n)
    }

    fn rope<'p>(
        &mut self,
        x: &mut CudaAct,
        t: &CudaRope,
        n_heads: usize,
        pos: impl Into<Position<'p, CudaSlice<i32>>>,
        n: usize,
    ) -> Result<(), BackendError> {
        let pos = self.split_pos(pos.into());
        rope::rope(&self.dev, x, t, n_heads, pos, n)
    }

    fn attention<'p>(
        &mut self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        kv: &mut CudaKv,
        shape: AttnShape,
        pos: impl Into<Position<'p, CudaSlice<i32>>>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let pos = self.split_pos(pos.into());
        // Partials for the split count the launcher will choose (for a device position it
        // sizes the splits for the whole cache).
        let on_host = (pos.0, pos.1.is_null());
        let splits = call_splits(self.sm_count, kv.dtype, &shape, on_host, n, kv.ctx);
        let (slots, acc) = partial_slots(&shape, n, splits);
        self.reserve_partials(slots, acc)?;
        let (Some(acc), Some(max), Some(sum)) = (
            self.part_acc.as_mut(),
            self.part_max.as_mut(),
            self.part_sum.as_mut(),
        ) else {
            return Err(shape_err("attention partials missing".into()));
        };
        let parts = Partials { acc, max, sum };
        attention::attention(
            &self.dev,
            self.sm_count,
            q,
            k,
            v,
            kv,
            shape,
            pos,
            n,
            parts,
            out,
        )
    }

    fn rope_attention<'p>(
        &mut self,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &CudaAct,
        norms: Option<HeadNorms<'_, CudaSlice<f32>>>,
        t: &CudaRope,
        kv: &mut CudaKv,
        shape: AttnShape,
        pos: impl Into<Position<'p, CudaSlice<i32>>>,
        n: usize,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let pos = pos.into();
        if n != 1 {
            // Prefill chunks and verify rows keep the fine kernels (the split attention
            // kernel runs every row at once).
            return rope_attention_unfused(self, q, k, v, norms, t, kv, shape, pos, n, out);
        }
        let pos = self.split_pos(pos);
        let visible = if pos.1.is_null() { pos.0 + 1 } else { kv.ctx };
        let slots = shape.n_heads * max_splits(self.sm_count, &shape, visible);
        self.reserve_partials(slots, slots * shape.head_dim)?;
        ensure(
            &self.dev,
            &mut self.counters,
            head_blocks(&shape),
            "attention counters",
        )?;
        let (Some(acc), Some(max), Some(sum), Some(counters)) = (
            self.part_acc.as_mut(),
            self.part_max.as_mut(),
            self.part_sum.as_mut(),
            self.counters.as_mut(),
        ) else {
            return Err(shape_err("attention scratch missing".into()));
        };
        let scratch = FusedScratch {
            acc,
            max,
            sum,
            counters,
        };
        let norms = norms.map(|nm| Norms {
            q: nm.q,
            k: nm.k,
            eps: nm.eps,
        });
        rope_attention::rope_attention(
            &self.dev,
            self.sm_count,
            q,
            k,
            v,
            norms,
            t,
            kv,
            shape,
            pos,
            scratch,
            out,
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
