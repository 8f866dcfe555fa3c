//! The CPU backend: the reference every GPU kernel is checked against, and what runs where
//! there is no GPU. Weights stay in their file format and are dequantized block by block
//! inside the dot products; activations and the KV cache are f32.
//!
//! The path through it: [`CpuBackend`] implements `backend::Ops` here (mod.rs); `matmul`
//! streams each weight row through `quant::matvec_rows`, `attention` reads the KV cache,
//! `ops` holds the scalar pieces (norms, rope rotation, softmax) the CUDA kernels are
//! tested against, `pool` the fork-join workers of the decode step and `resident` the
//! weights copied into huge-page memory.

pub mod attention;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod resident;

use std::convert::Infallible;

use super::{AttnShape, BackendError, Ops, Position, TokenIds};
use crate::format::{Rope, RopeStyle, Weight};
use crate::quant::{self, DequantizeWeight};
use attention::KvCache;
use matmul::MatmulScratch;

/// An activation matrix: `rows` x `width` f32, row-major.
pub struct CpuAct {
    pub data: Vec<f32>,
    pub width: usize,
}

/// cos/sin of every (position, frequency) pair for the context.
pub struct CpuRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    interleaved: bool,
}

pub struct CpuBackend {
    /// Dequantize weights to f32 inside the dot products instead of quantizing the
    /// activations to 8 bits: slower, closest to exact math.
    pub precise: bool,
    /// The twin of the CUDA backend's int8-activation path (`CudaBackend::set_int8_acts`):
    /// products of at most `quant::INT8_ACT_MAX_ROWS` rows with block-format weights read
    /// their activations rounded to int8 per 32 values (`quant::round_trip_int8`), then run
    /// as set by `precise` (the op tests set both). Off by default.
    pub round_acts_int8: bool,
    /// The rounded activations of the current product (`round_acts_int8`).
    rounded: Vec<f32>,
    scratch: MatmulScratch,
    /// Where uploaded matrices live: `None` reads them through the file mapping.
    resident: Option<resident::Resident>,
}

impl CpuBackend {
    /// `resident_weights`: copy large matrices out of the file mapping into huge-page
    /// memory at load (see `resident`), rather than reading them through the mapping.
    pub fn new(precise: bool, resident_weights: bool) -> CpuBackend {
        let resident = resident_weights.then(resident::Resident::default);
        CpuBackend {
            precise,
            round_acts_int8: false,
            rounded: Vec::new(),
            scratch: MatmulScratch::default(),
            resident,
        }
    }
}

fn alloc(len: usize, what: &str) -> Result<Vec<f32>, BackendError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| BackendError::OutOfMemory {
            what: what.to_string(),
        })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// The position of a CPU call (always on the host).
fn host_pos(pos: Position<'_, Infallible>) -> usize {
    match pos {
        Position::Host(p) => p,
        Position::Device(never) => match *never {},
    }
}

impl Ops for CpuBackend {
    type Act = CpuAct;
    type Mat = Weight;
    type Vector = Vec<f32>;
    type Kv = KvCache;
    type RopeTable = CpuRope;
    /// Every input of the CPU backend is in host memory.
    type DeviceTokens = Infallible;
    type DevicePos = Infallible;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload_matrix(&mut self, w: &Weight) -> Result<Weight, BackendError> {
        match &mut self.resident {
            Some(r) => r.place(w),
            None => Ok(w.clone()),
        }
    }

    fn upload_vector(&mut self, v: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(v.to_vec())
    }

    fn alloc_act(&mut self, rows: usize, width: usize) -> Result<CpuAct, BackendError> {
        Ok(CpuAct {
            data: alloc(rows * width, "activations")?,
            width,
        })
    }

    fn alloc_kv(&mut self, ctx: usize, kv_dim: usize) -> Result<KvCache, BackendError> {
        Ok(KvCache {
            k: alloc(ctx * kv_dim, "KV cache")?,
            v: alloc(ctx * kv_dim, "KV cache")?,
            kv_dim,
        })
    }

    fn rope_table(&mut self, rope: &Rope, ctx: usize) -> Result<CpuRope, BackendError> {
        let half = rope.half();
        let mut cos = alloc(ctx * half, "rope table")?;
        let mut sin = alloc(ctx * half, "rope table")?;
        rope.fill_angles(&mut cos, &mut sin);
        Ok(CpuRope {
            cos,
            sin,
            half,
            interleaved: rope.style == RopeStyle::Interleaved,
        })
    }

    fn embed<'t>(
        &mut self,
        table: &Weight,
        tokens: impl Into<TokenIds<'t, Infallible>>,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let tokens = match tokens.into() {
            TokenIds::Host(t) => t,
            TokenIds::Device(never, _) => match *never {},
        };
        let d = out.width;
        for (i, &t) in tokens.iter().enumerate() {
            let row = &mut out.data[i * d..(i + 1) * d];
            // As kernels/embed.cu: an id past the table is a NaN row (loud, never a read
            // out of bounds), so its logits end the request as NaN logits do.
            if t as usize >= table.rows {
                row.fill(f32::NAN);
                continue;
            }
            table
                .dequantize_row(t as usize, row)
                .map_err(|e| BackendError::Device(e.to_string()))?;
        }
        Ok(())
    }

    fn rmsnorm(
        &mut self,
        x: &CpuAct,
        w: &Vec<f32>,
        eps: f32,
        n: usize,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let d = x.width;
        for i in 0..n {
            ops::rmsnorm(
                &x.data[i * d..(i + 1) * d],
                w,
                eps,
                &mut out.data[i * d..(i + 1) * d],
            );
        }
        Ok(())
    }

    fn head_rmsnorm(
        &mut self,
        x: &mut CpuAct,
        w: &Vec<f32>,
        head_dim: usize,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        for head in x.data[..n * x.width].chunks_mut(head_dim) {
            ops::rmsnorm_inplace(head, w, eps);
        }
        Ok(())
    }

    fn matmul(
        &mut self,
        x: &CpuAct,
        w: &Weight,
        n: usize,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let int8 = self.round_acts_int8 && w.ty.is_quantized() && n <= quant::INT8_ACT_MAX_ROWS;
        let x = if int8 {
            let len = n * w.cols;
            self.rounded.clear();
            self.rounded.extend_from_slice(&x.data[..len]);
            quant::round_trip_int8(&mut self.rounded);
            &self.rounded
        } else {
            &x.data
        };
        matmul::matmul(w, x, n, &mut out.data, self.precise, &mut self.scratch);
        Ok(())
    }

    fn add_bias(&mut self, x: &mut CpuAct, b: &Vec<f32>, n: usize) -> Result<(), BackendError> {
        for row in x.data[..n * x.width].chunks_mut(x.width) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
        Ok(())
    }

    fn add(&mut self, x: &mut CpuAct, y: &CpuAct, n: usize) -> Result<(), BackendError> {
        let len = n * x.width;
        for (a, b) in x.data[..len].iter_mut().zip(&y.data[..len]) {
            *a += b;
        }
        Ok(())
    }

    fn swiglu(&mut self, gate: &mut CpuAct, up: &CpuAct, n: usize) -> Result<(), BackendError> {
        let len = n * gate.width;
        ops::swiglu(&mut gate.data[..len], &up.data[..len]);
        Ok(())
    }

    fn rope<'p>(
        &mut self,
        x: &mut CpuAct,
        t: &CpuRope,
        n_heads: usize,
        pos: impl Into<Position<'p, Infallible>>,
        n: usize,
    ) -> Result<(), BackendError> {
        let pos = host_pos(pos.into());
        let hd = x.width / n_heads;
        for i in 0..n {
            let p = pos + i;
            let (c, s) = (
                &t.cos[p * t.half..(p + 1) * t.half],
                &t.sin[p * t.half..(p + 1) * t.half],
            );
            for head in x.data[i * x.width..(i + 1) * x.width].chunks_mut(hd) {
                ops::rope_head(&mut head[..2 * t.half], c, s, t.interleaved);
            }
        }
        Ok(())
    }

    fn attention<'p>(
        &mut self,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        kv: &mut KvCache,
        shape: AttnShape,
        pos: impl Into<Position<'p, Infallible>>,
        n: usize,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let pos = host_pos(pos.into());
        attention::attention(&q.data, &k.data, &v.data, kv, shape, pos, n, &mut out.data);
        Ok(())
    }

    fn copy_row(
        &mut self,
        src: &CpuAct,
        src_row: usize,
        dst: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let w = src.width;
        dst.data[..w].copy_from_slice(&src.data[src_row * w..(src_row + 1) * w]);
        Ok(())
    }

    fn read_row(&mut self, x: &CpuAct, out: &mut [f32]) -> Result<(), BackendError> {
        out.copy_from_slice(&x.data[..out.len()]);
        Ok(())
    }
}
