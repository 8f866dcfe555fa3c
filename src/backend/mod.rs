//! Backends: where the ops of a forward pass run. The model family decides the graph
//! (`graph::llama`); a backend decides how each op runs. `cpu` is the readable reference every
//! GPU kernel is checked against; `cuda` runs on NVIDIA GPUs.
//!
//! The path through it: the graph asks a backend to upload each `format::Weight` (kept in
//! its block format), to build the rope tables (`format::Rope::fill_angles` on every
//! backend) and a KV cache, then calls the [`Ops`] methods (embed, rmsnorm, matmul, rope,
//! attention, SwiGLU, ...) in the order the model family decides; the engine reads the
//! logits or the picked token back. A fused op (`add_rmsnorm`, `matmul_bias`,
//! `gate_up_swiglu`, `norm_qkv`, `matmul_add`, `norm_gate_up_swiglu`, `rope_attention`) has a
//! default written in the fine ops, which the CPU backend keeps as the readable form; a
//! backend with a fused kernel overrides it.

pub mod cpu;
pub mod cuda;

use crate::format::{Rope, Weight};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Device(String),
    #[error("out of memory allocating {what}")]
    OutOfMemory { what: String },
    /// The device faulted (an illegal address, a failed launch, an uncorrectable ECC
    /// error, ...): the driver fails every later call in that context, so the session is
    /// unusable and must be rebuilt on a fresh context.
    #[error("the GPU faulted: {0}")]
    DeviceFault(String),
}

impl BackendError {
    /// Whether the session that returned this error can no longer run anything.
    pub fn is_device_fault(&self) -> bool {
        matches!(self, BackendError::DeviceFault(_))
    }
}

/// The kernels of one decode step, as a profiling run counted and timed them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepProfile {
    /// Nodes of the step's CUDA graph (`None`: no graph was captured yet).
    pub graph_nodes: Option<usize>,
    /// Per kernel, in the order each first ran.
    pub kernels: Vec<KernelTime>,
}

impl StepProfile {
    /// Kernel launches per token.
    pub fn launches(&self) -> usize {
        self.kernels.iter().map(|k| k.launches).sum()
    }

    /// Launches per token made with programmatic dependent launch.
    pub fn programmatic_launches(&self) -> usize {
        self.kernels.iter().map(|k| k.programmatic).sum()
    }

    /// The kernels' time per token, microseconds (0 when the run was not timed).
    pub fn micros(&self) -> f64 {
        self.kernels.iter().map(|k| k.micros).sum()
    }
}

/// One kernel's share of a step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    pub name: &'static str,
    pub launches: usize,
    /// How many of them were programmatic dependent launches (the kernel may start while
    /// the one before it ends).
    pub programmatic: usize,
    /// Summed over its launches, from events around each (an eager run of the step).
    pub micros: f64,
}

/// The element type of a backend's KV cache. The CPU backend keeps f32 whatever this says;
/// the CUDA backend stores what it is told (`--kv-dtype`), and its kernels widen each element
/// to f32 as they read it, so attention arithmetic stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Full precision, 4 bytes per element (what checks against the CPU use).
    F32,
    F16,
    /// Half the bytes of f32 and f32's range: the default.
    #[default]
    Bf16,
}

impl KvDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
        }
    }
}

/// Shape of the attention of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions a query may look back (None: all).
    pub window: Option<usize>,
}

impl AttnShape {
    /// Every layer's attention shape in a model of `c`.
    pub fn of(c: &crate::format::ModelConfig) -> AttnShape {
        AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            window: c.sliding_window,
        }
    }
}

/// The random seed of a sampled pick at position `pos` of a generation seeded with `seed`:
/// a fresh, reproducible stream per position. The engine seeds its picks with it, and a GPU
/// decode step derives the next position's seed on the device with the same formula
/// (`step_advance` in kernels/penalty.cu), so a replayed step needs no seed from the host.
pub fn position_seed(seed: u64, pos: usize) -> u64 {
    seed ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The token ids of a forward call: given by the host, or already in device memory (what a
/// replayed CUDA graph reads: a decode step's one token, a verify pass's rows, so the graph
/// need not change).
#[derive(Debug)]
pub enum TokenIds<'a, D> {
    Host(&'a [u32]),
    /// The first `n` token ids of a backend buffer ([`Ops::DeviceTokens`]).
    Device(&'a D, usize),
}

// By hand: both cases are references, so copies whatever `D` is (a derive would ask
// `D: Copy`).
impl<D> Clone for TokenIds<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for TokenIds<'_, D> {}

impl<D> Clone for Position<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for Position<'_, D> {}

impl<D> TokenIds<'_, D> {
    /// How many rows the call runs.
    pub fn len(&self) -> usize {
        match self {
            TokenIds::Host(t) => t.len(),
            TokenIds::Device(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a, D> From<&'a [u32]> for TokenIds<'a, D> {
    fn from(t: &'a [u32]) -> Self {
        TokenIds::Host(t)
    }
}

impl<'a, D> From<&'a Vec<u32>> for TokenIds<'a, D> {
    fn from(t: &'a Vec<u32>) -> Self {
        TokenIds::Host(t)
    }
}

impl<'a, D, const N: usize> From<&'a [u32; N]> for TokenIds<'a, D> {
    fn from(t: &'a [u32; N]) -> Self {
        TokenIds::Host(t)
    }
}

/// The position of a forward call's first row: given by the host, or in device memory
/// (a replayed CUDA graph's step input). A device position is only known on the device, so
/// the caller that writes it checks it against the context.
#[derive(Debug)]
pub enum Position<'a, D> {
    Host(usize),
    /// A position in a backend buffer ([`Ops::DevicePos`]).
    Device(&'a D),
}

impl<D> From<usize> for Position<'_, D> {
    fn from(p: usize) -> Self {
        Position::Host(p)
    }
}

impl<D> Position<'_, D> {
    /// The host position, if the host knows it.
    pub fn host(&self) -> Option<usize> {
        match self {
            Position::Host(p) => Some(*p),
            Position::Device(_) => None,
        }
    }
}

/// A layer's q, k and v projections in a backend's form ([`Ops::upload_qkv`]).
pub enum QkvWeights<M, V> {
    /// Three matrices, each with its bias when the family has one: three products (the
    /// readable form, and the fallback when the three differ in format).
    Separate {
        q: M,
        k: M,
        v: M,
        bias: [Option<V>; 3],
    },
    /// The q, k then v rows stacked into one matrix (their biases into one vector, zeros
    /// where a projection has none): one product whose rows `rows[0]`, `rows[1]`,
    /// `rows[2]` go to q, k and v. Only the backend that stacked it runs it.
    Stacked {
        qkv: M,
        bias: Option<V>,
        rows: [usize; 3],
    },
}

/// The readable form of [`Ops::upload_qkv`]: each projection uploaded on its own.
pub fn separate_qkv<B: Ops + ?Sized>(
    b: &mut B,
    q: &Weight,
    k: &Weight,
    v: &Weight,
    bias: [Option<&[f32]>; 3],
) -> Result<QkvWeights<B::Mat, B::Vector>, BackendError> {
    let mut up = |v: Option<&[f32]>| v.map(|v| b.upload_vector(v)).transpose();
    let bias = [up(bias[0])?, up(bias[1])?, up(bias[2])?];
    Ok(QkvWeights::Separate {
        q: b.upload_matrix(q)?,
        k: b.upload_matrix(k)?,
        v: b.upload_matrix(v)?,
        bias,
    })
}

/// qwen3's per-head q/k RMSNorm weights (`head_dim` each) and epsilon.
pub struct HeadNorms<'a, V> {
    pub q: &'a V,
    pub k: &'a V,
    pub eps: f32,
}

// By hand, as for `TokenIds`: references only, whatever `V` is.
impl<V> Clone for HeadNorms<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for HeadNorms<'_, V> {}

/// [`Ops::rope_attention`] in the fine ops: head norms, rope of q, rope of k, attention.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention_unfused<B: Ops>(
    b: &mut B,
    q: &mut B::Act,
    k: &mut B::Act,
    v: &B::Act,
    norms: Option<HeadNorms<'_, B::Vector>>,
    table: &B::RopeTable,
    kv: &mut B::Kv,
    shape: AttnShape,
    pos: Position<'_, B::DevicePos>,
    n: usize,
    out: &mut B::Act,
) -> Result<(), BackendError> {
    if let Some(nm) = norms {
        b.head_rmsnorm(q, nm.q, shape.head_dim, nm.eps, n)?;
        b.head_rmsnorm(k, nm.k, shape.head_dim, nm.eps, n)?;
    }
    b.rope(q, table, shape.n_heads, pos, n)?;
    b.rope(k, table, shape.n_kv_heads, pos, n)?;
    b.attention(q, k, v, kv, shape, pos, n, out)
}

/// The ops a decoder-only forward pass is made of. Activations are row-major matrices of
/// `rows` tokens x `width` values; every op works on the first `n` rows.
pub trait Ops {
    /// An activation matrix.
    type Act;
    /// A weight matrix in the backend's own form.
    type Mat;
    /// A small f32 vector (norm weight, bias).
    type Vector;
    /// One layer's KV cache.
    type Kv;
    /// Precomputed rotary tables.
    type RopeTable;
    /// Token ids in device memory ([`TokenIds::Device`]); a backend without device inputs
    /// uses `std::convert::Infallible`, so that case cannot be built.
    type DeviceTokens;
    /// A position in device memory ([`Position::Device`]); `Infallible` likewise.
    type DevicePos;

    fn name(&self) -> &'static str;

    /// A matrix the products ([`Ops::matmul`] and the fused forms) read; a backend may
    /// store it in its own layout (CUDA repacks GGML blocks for its quantized GEMV).
    fn upload_matrix(&mut self, w: &Weight) -> Result<Self::Mat, BackendError>;
    /// An embedding table, which [`Ops::embed`] reads row by row (and no product does).
    fn upload_table(&mut self, w: &Weight) -> Result<Self::Mat, BackendError> {
        self.upload_matrix(w)
    }
    fn upload_vector(&mut self, v: &[f32]) -> Result<Self::Vector, BackendError>;
    fn alloc_act(&mut self, rows: usize, width: usize) -> Result<Self::Act, BackendError>;
    fn alloc_kv(&mut self, ctx: usize, kv_dim: usize) -> Result<Self::Kv, BackendError>;
    fn rope_table(&mut self, rope: &Rope, ctx: usize) -> Result<Self::RopeTable, BackendError>;

    /// `out[i] = table[tokens[i]]`.
    fn embed<'t>(
        &mut self,
        table: &Self::Mat,
        tokens: impl Into<TokenIds<'t, Self::DeviceTokens>>,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>
    where
        Self::DeviceTokens: 't;
    /// Row-wise RMSNorm.
    fn rmsnorm(
        &mut self,
        x: &Self::Act,
        w: &Self::Vector,
        eps: f32,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;
    /// The residual add and the norm after it: `x[i] += y[i]`, then
    /// `out[i] = rmsnorm(x[i]) * w`, for the first `n` rows. A backend may do both in one
    /// pass over the row (CUDA does: `kernels/rmsnorm.cu`).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm(
        &mut self,
        x: &mut Self::Act,
        y: &Self::Act,
        w: &Self::Vector,
        eps: f32,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.add(x, y, n)?;
        self.rmsnorm(x, w, eps, n, out)
    }
    /// RMSNorm over each `head_dim` slice of each row (qwen3's q/k norm).
    fn head_rmsnorm(
        &mut self,
        x: &mut Self::Act,
        w: &Self::Vector,
        head_dim: usize,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError>;
    /// `out[i] = W x[i]` for the first `n` rows.
    fn matmul(
        &mut self,
        x: &Self::Act,
        w: &Self::Mat,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;
    /// `out[i] = W x[i] + b` for the first `n` rows. A backend may add the bias in the
    /// product's epilogue instead of a second pass (CUDA does).
    fn matmul_bias(
        &mut self,
        x: &Self::Act,
        w: &Self::Mat,
        b: &Self::Vector,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.matmul(x, w, n, out)?;
        self.add_bias(out, b, n)
    }
    /// The MLP's first half: `gate = silu(W_gate x) * (W_up x)` for the first `n` rows of
    /// `x`; `up` is scratch the default form uses. A backend may fuse the two products
    /// and the SwiGLU into one pass over both matrices (CUDA does).
    #[allow(clippy::too_many_arguments)]
    fn gate_up_swiglu(
        &mut self,
        x: &Self::Act,
        w_gate: &Self::Mat,
        w_up: &Self::Mat,
        n: usize,
        gate: &mut Self::Act,
        up: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.matmul(x, w_gate, n, gate)?;
        self.matmul(x, w_up, n, up)?;
        self.swiglu(gate, up, n)
    }
    /// Uploads a layer's q, k and v projections and their biases (`bias[i]` for matrix
    /// i, when the family has one). A backend may stack them into one matrix so that
    /// [`Ops::norm_qkv`] is one product (CUDA does, when the three share a format).
    fn upload_qkv(
        &mut self,
        q: &Weight,
        k: &Weight,
        v: &Weight,
        bias: [Option<&[f32]>; 3],
    ) -> Result<QkvWeights<Self::Mat, Self::Vector>, BackendError> {
        separate_qkv(self, q, k, v, bias)
    }
    /// The attention block's input: `hn = rmsnorm(x) * norm`, then `q = Wq hn (+ bq)`,
    /// `k = Wk hn (+ bk)`, `v = Wv hn (+ bv)` for the first `n` rows; `hn` is scratch the
    /// default form uses. A backend may fold the norm into the product's prologue and run
    /// the three projections as one (CUDA does).
    #[allow(clippy::too_many_arguments)]
    fn norm_qkv(
        &mut self,
        x: &Self::Act,
        norm: &Self::Vector,
        eps: f32,
        w: &QkvWeights<Self::Mat, Self::Vector>,
        n: usize,
        hn: &mut Self::Act,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.rmsnorm(x, norm, eps, n, hn)?;
        let QkvWeights::Separate {
            q: wq,
            k: wk,
            v: wv,
            bias,
        } = w
        else {
            return Err(BackendError::Device(format!(
                "{}: stacked q/k/v weights need the backend that stacked them",
                self.name()
            )));
        };
        for (w, b, out) in [(wq, &bias[0], q), (wk, &bias[1], k), (wv, &bias[2], v)] {
            match b {
                Some(b) => self.matmul_bias(hn, w, b, n, out)?,
                None => self.matmul(hn, w, n, out)?,
            }
        }
        Ok(())
    }
    /// The residual add of a block's output projection: `x[i] += W a[i]` for the first
    /// `n` rows; `scratch` (as wide as `x`) holds `W a` in the default form. A backend may
    /// add into `x` in the product's epilogue (CUDA does).
    fn matmul_add(
        &mut self,
        a: &Self::Act,
        w: &Self::Mat,
        n: usize,
        x: &mut Self::Act,
        scratch: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.matmul(a, w, n, scratch)?;
        self.add(x, scratch, n)
    }
    /// The logits' product: `hn = rmsnorm(x) * norm`, then `out = W hn` for the first `n`
    /// rows (the final norm and the LM head); `hn` is scratch the default form uses. A
    /// backend may fold the norm into the product's prologue (CUDA does, for a decode row).
    #[allow(clippy::too_many_arguments)]
    fn norm_matmul(
        &mut self,
        x: &Self::Act,
        norm: &Self::Vector,
        eps: f32,
        w: &Self::Mat,
        n: usize,
        hn: &mut Self::Act,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.rmsnorm(x, norm, eps, n, hn)?;
        self.matmul(hn, w, n, out)
    }
    /// The MLP block's input: `hn = rmsnorm(x) * norm`, then
    /// `gate = silu(W_gate hn) * (W_up hn)` for the first `n` rows; `hn` and `up` are
    /// scratch the default form uses. A backend may fold the norm into the fused gate/up
    /// product's prologue (CUDA does).
    #[allow(clippy::too_many_arguments)]
    fn norm_gate_up_swiglu(
        &mut self,
        x: &Self::Act,
        norm: &Self::Vector,
        eps: f32,
        w_gate: &Self::Mat,
        w_up: &Self::Mat,
        n: usize,
        hn: &mut Self::Act,
        gate: &mut Self::Act,
        up: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.rmsnorm(x, norm, eps, n, hn)?;
        self.gate_up_swiglu(hn, w_gate, w_up, n, gate, up)
    }
    /// `x[i] += b`.
    fn add_bias(
        &mut self,
        x: &mut Self::Act,
        b: &Self::Vector,
        n: usize,
    ) -> Result<(), BackendError>;
    /// `x[i] += y[i]`.
    fn add(&mut self, x: &mut Self::Act, y: &Self::Act, n: usize) -> Result<(), BackendError>;
    /// `gate[i] = silu(gate[i]) * up[i]`.
    fn swiglu(
        &mut self,
        gate: &mut Self::Act,
        up: &Self::Act,
        n: usize,
    ) -> Result<(), BackendError>;
    /// Rotate the `n_heads` heads of each row; row `i` is at position `pos + i`.
    fn rope<'p>(
        &mut self,
        x: &mut Self::Act,
        table: &Self::RopeTable,
        n_heads: usize,
        pos: impl Into<Position<'p, Self::DevicePos>>,
        n: usize,
    ) -> Result<(), BackendError>
    where
        Self::DevicePos: 'p;
    /// Append `k`, `v` (rows at positions `pos..pos+n`) to the cache, then causal attention
    /// of each query row over the cache up to its own position.
    #[allow(clippy::too_many_arguments)]
    fn attention<'p>(
        &mut self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        kv: &mut Self::Kv,
        shape: AttnShape,
        pos: impl Into<Position<'p, Self::DevicePos>>,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>
    where
        Self::DevicePos: 'p;
    /// The attention block after the projections: qwen3's per-head RMSNorm of `q` and `k`
    /// (when `norms` is given), rope of both (row `i` at position `pos + i`), then
    /// [`Ops::attention`]. Afterwards `q` and `k` are scratch: this default leaves them
    /// normed and rotated, a backend that fuses it all into one kernel (CUDA does, for one
    /// row) may leave them as they were. The default is the fused kernel's CPU twin.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention<'p>(
        &mut self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &Self::Act,
        norms: Option<HeadNorms<'_, Self::Vector>>,
        table: &Self::RopeTable,
        kv: &mut Self::Kv,
        shape: AttnShape,
        pos: impl Into<Position<'p, Self::DevicePos>>,
        n: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>
    where
        Self::DevicePos: 'p,
        Self: Sized,
    {
        rope_attention_unfused(self, q, k, v, norms, table, kv, shape, pos.into(), n, out)
    }
    /// Copy row `src_row` of `src` into row 0 of `dst`.
    fn copy_row(
        &mut self,
        src: &Self::Act,
        src_row: usize,
        dst: &mut Self::Act,
    ) -> Result<(), BackendError>;
    /// Read the first `out.len()` values of `x` into host memory: row 0, or the first rows
    /// one after another.
    fn read_row(&mut self, x: &Self::Act, out: &mut [f32]) -> Result<(), BackendError>;
}
