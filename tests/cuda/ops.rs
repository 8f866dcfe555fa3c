//! Every op of `CudaBackend` against its CPU twin, table-driven as llama.cpp's
//! test-backend-ops is: [`cases`] is the one list of (op, shape, weight format) cases, and
//! [`Case::run`] runs a case's `Ops` call on both backends from the same fresh random
//! inputs, with every output poisoned with NaN first on both sides, and compares each
//! output by relative error against a threshold set by the op and its precision
//! ([`Case::tolerance`]); NaN never passes. A new op is a new [`Case`] variant, its arm in
//! `run`, and its entries in `cases`. The list keeps odd sizes, every GQA ratio of the
//! supported families, contexts past one flash-decoding split, the GEMV/GEMM boundary and
//! every weight format.
//!
//! The device picks (argmax, sampling) are not `Ops` and are checked against the CPU
//! sampler by their own tests at the end, as is the NaN-propagation case of attention.

use std::sync::Arc;

use tachyon::backend::cpu::attention::KvCache;
use tachyon::backend::cpu::{CpuAct, CpuBackend};
use tachyon::backend::cuda::{self, CudaAct, CudaBackend};
use tachyon::backend::{AttnShape, Ops};
use tachyon::format::GgmlType;
use tachyon::format::weights::HostBytes;
use tachyon::format::{Rope, RopeStyle, Weight};

use super::Rng;

pub fn backend() -> CudaBackend {
    let dev = cuda::probe().unwrap_or_else(|e| panic!("these tests need a usable CUDA GPU: {e}"));
    println!(
        "device: {} (compute {:?})",
        dev.name(),
        dev.compute_capability()
    );
    CudaBackend::new(dev).unwrap_or_else(|e| panic!("{e}"))
}

/// A `rows x cols` matrix of values uniform in ±scale, stored as `ty` (block formats through
/// the CPU quantizer); also returned as the f32 values the stored elements hold (the CPU
/// reference dequantizer's reading).
pub fn weight(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    scale: f32,
) -> (Weight, Vec<f32>) {
    let vals = rng.vec(rows * cols, scale);
    let (bytes, exact): (Vec<u8>, Vec<f32>) = match ty {
        GgmlType::F32 => (
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            vals.clone(),
        ),
        GgmlType::F16 => {
            let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        GgmlType::BF16 => {
            let h: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        block => {
            let mut bytes = Vec::new();
            for r in 0..rows {
                bytes.extend(tachyon::quant::quantize(
                    block,
                    &vals[r * cols..(r + 1) * cols],
                ));
            }
            let mut exact = vec![0f32; rows * cols];
            tachyon::quant::dequantize(block, &bytes, &mut exact).unwrap_or_else(|e| panic!("{e}"));
            (bytes, exact)
        }
    };
    let len = bytes.len();
    let w = Weight::new("test", ty, rows, cols, Arc::new(HostBytes(bytes)), 0, len)
        .unwrap_or_else(|e| panic!("{e}"));
    (w, exact)
}

pub fn up(b: &mut CudaBackend, rows: usize, width: usize, data: &[f32]) -> CudaAct {
    b.act_from_host(rows, width, data)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn poisoned(b: &mut CudaBackend, rows: usize, width: usize) -> CudaAct {
    up(b, rows, width, &vec![f32::NAN; rows * width])
}

pub fn down(b: &mut CudaBackend, x: &CudaAct) -> Vec<f32> {
    b.act_to_host(x)
        .unwrap_or_else(|e| panic!("kernel failed: {e}"))
}

fn cpu_act(width: usize, data: &[f32]) -> CpuAct {
    CpuAct {
        data: data.to_vec(),
        width,
    }
}

/// max |got - want| / max |want| over the first `want.len()` values; infinite on NaN/inf.
pub fn rel(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()))
        .max(f64::MIN_POSITIVE);
    let mut worst = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max((f64::from(g) - f64::from(w)).abs());
    }
    worst / scale
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert!(
        got.len() >= want.len(),
        "{what}: {} values, want {}",
        got.len(),
        want.len()
    );
    let e = rel(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Bit for bit (what a copy or a single f32 operation per value gives); a NaN matches only
/// a NaN (of any payload: the device's NaN constant is not the host's).
fn check_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let same = |g: f32, w: f32| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
    if let Some(i) = (0..got.len()).find(|&i| !same(got[i], want[i])) {
        panic!(
            "{what}: value {i} is {}, the CPU twin's {}",
            got[i], want[i]
        );
    }
}

/// f64 reference of `W x` and the per-output sum of |w x| (the scale rounding errors grow
/// with).
pub fn matvec_f64(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    (0..rows)
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            let dot = row
                .iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>();
            let abs = row
                .iter()
                .zip(x)
                .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                .sum::<f64>();
            (dot, abs)
        })
        .unzip()
}

/// Each output within 4 sqrt(cols) f32 roundings of the sum of |w x|: far below what one
/// dropped or doubled element moves it (about that sum / cols).
pub fn check_matvec(what: &str, got: &[f32], want: &[f64], abs: &[f64], cols: usize) {
    check_matvec_within(what, got, want, abs, cols, 0.0);
}

/// [`check_matvec`] with `extra` more of the sum of |w x| allowed: what a kernel that rounds
/// its activations (the tensor-core path) may add beyond f32 sums.
fn check_matvec_within(
    what: &str,
    got: &[f32],
    want: &[f64],
    abs: &[f64],
    cols: usize,
    extra: f64,
) {
    let k = 4.0 * (cols as f64).sqrt() * f64::from(f32::EPSILON) + extra;
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            g.is_finite() && err <= k * a + 1e-30,
            "{what}: output {i}: got {g}, want {w} (error {err:e}, allowed {:e})",
            k * a
        );
    }
}

fn rope_config(style: RopeStyle, head_dim: usize, rope_dim: usize, llama3: bool) -> Rope {
    let freq_factors = llama3.then(|| {
        tachyon::format::config::llama3_freq_factors(500_000.0, rope_dim, 32.0, 1.0, 4.0, 8192.0)
    });
    Rope {
        style,
        theta: if llama3 { 500_000.0 } else { 10_000.0 },
        dim: rope_dim.min(head_dim),
        linear_factor: 1.0,
        freq_factors,
    }
}

// ---------------------------------------------------------------------------- the cases

/// One `Ops` call on one shape. `n` is the number of rows the call runs.
#[derive(Clone, Debug)]
pub enum Case {
    Embed {
        ty: GgmlType,
        vocab: usize,
        dim: usize,
        n: usize,
    },
    /// `Ops::matmul`, also checked against a float64 product.
    Matmul {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    /// [`Case::Matmul`] of a block matrix uploaded as stored (`upload_table`): the
    /// readable quantized GEMV (gemv_quant.cu), the fallback of the repacked one.
    MatmulStored {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    MatmulBias {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    GateUpSwiglu {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    Add {
        n: usize,
        width: usize,
    },
    AddBias {
        n: usize,
        width: usize,
    },
    Swiglu {
        n: usize,
        width: usize,
    },
    Rmsnorm {
        n: usize,
        width: usize,
    },
    AddRmsnorm {
        n: usize,
        width: usize,
    },
    HeadRmsnorm {
        n: usize,
        heads: usize,
        head_dim: usize,
    },
    Rope {
        style: RopeStyle,
        heads: usize,
        head_dim: usize,
        rope_dim: usize,
        llama3: bool,
        ctx: usize,
        pos: usize,
        n: usize,
    },
    /// `Ops::attention` after `pos` random cached positions; the cache is compared too.
    Attention {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        pos: usize,
        n: usize,
        window: Option<usize>,
    },
    CopyRow {
        rows: usize,
        width: usize,
        row: usize,
    },
}

/// The F32/F16/BF16 weight formats.
const DTYPES: [GgmlType; 3] = [GgmlType::BF16, GgmlType::F16, GgmlType::F32];

/// The GGML block formats.
pub const BLOCK_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// The case list: every op, every shape it is checked on.
pub fn cases() -> Vec<Case> {
    use Case::*;
    let mut c = Vec::new();
    // Embedding gather, every weight format; odd widths and a one-entry table.
    for ty in DTYPES {
        for &(vocab, dim) in &[(1usize, 1usize), (1001, 17), (300, 896), (50, 2048)] {
            c.push(Embed {
                ty,
                vocab,
                dim,
                n: 5,
            });
        }
    }
    for ty in BLOCK_TYPES {
        c.push(Embed {
            ty,
            vocab: 300,
            dim: 3 * ty.block_len(),
            n: 5,
        });
    }
    // Matrix products: 1-4 rows run the GEMV, more the tiled GEMM (33 and 64: partial and
    // full tiles); block formats past 4 rows the tensor cores (gemm_mma.cu's qpack kernels:
    // a partial 64-column chunk at 2 * 32 columns, partial 16-row and token tiles).
    for ty in DTYPES {
        for &(rows, cols) in &[
            (1usize, 8usize),
            (3, 17),
            (64, 64),
            (7, 4104),
            (896, 4864),
            (4097, 136),
            (151, 2048),
            (512, 2048),
        ] {
            for n in [1usize, 3, 4, 5, 9, 33, 64] {
                c.push(Matmul { ty, rows, cols, n });
            }
        }
    }
    // BF16 past 4 rows runs the tensor-core kernel (gemm_mma.cu) when cols is a multiple
    // of 8: verify sizes (5-16 rows: one token tile), 17 and 33 (partial second and third
    // tiles); odd weight rows (partial 16-row tiles) and 264 columns (a partial 64-column
    // chunk); 132 columns fall back to gemm.cu. From 64 rows the 64 x 64 tile kernel
    // (gemm_tile_bf16): one full token tile, a full and a partial one (70), partial weight
    // row tiles (72, 130 rows) and 32-column chunks (136, 264 columns).
    for &(rows, cols) in &[(72usize, 136usize), (130, 264), (130, 132)] {
        for n in [5usize, 8, 16, 17, 33, 64, 70] {
            c.push(Matmul {
                ty: GgmlType::BF16,
                rows,
                cols,
                n,
            });
        }
    }
    for ty in BLOCK_TYPES {
        let qk = ty.block_len();
        for &(rows, cols) in &[
            (1usize, qk),
            (3, 2 * qk),
            (7, 4096),
            (151, 2048),
            (896, 4864),
            (4097, qk),
        ] {
            for n in [1usize, 2, 3, 4, 5, 33] {
                c.push(Matmul { ty, rows, cols, n });
            }
        }
        // Prefill chunks of 64 rows and more run the wide tensor-core form (64 tokens a
        // block): one full block, a full and a partial one (6 tokens: one n8 tile).
        for &(rows, cols, n) in &[(3usize, 2 * qk, 64usize), (151, 2048, 70)] {
            c.push(Matmul { ty, rows, cols, n });
        }
    }
    for &(ty, rows, cols, n) in &[
        (GgmlType::Q4K, 151usize, 2048usize, 1usize),
        (GgmlType::Q6K, 7, 4096, 5),
        (GgmlType::Q8_0, 3, 64, 4),
        (GgmlType::Q5_1, 33, 96, 2),
    ] {
        c.push(MatmulStored { ty, rows, cols, n });
    }
    // The fused products: decode (fused kernels) and prefill (the separate ops) row counts.
    for ty in [GgmlType::BF16, GgmlType::F16] {
        for &(rows, cols, n) in &[
            (17usize, 24usize, 1usize),
            (4864, 896, 1),
            (8960, 1536, 3),
            (33, 23, 2),
            (100, 72, 17),
            (130, 264, 16),
            (130, 264, 70),
        ] {
            c.push(MatmulBias { ty, rows, cols, n });
            c.push(GateUpSwiglu { ty, rows, cols, n });
        }
    }
    for ty in BLOCK_TYPES {
        let (rows, cols) = (67, 4 * ty.block_len());
        for n in [3, 9] {
            c.push(MatmulBias { ty, rows, cols, n });
            c.push(GateUpSwiglu { ty, rows, cols, n });
        }
    }
    // Elementwise and norms.
    for &(n, width) in &[(1usize, 1usize), (3, 17), (5, 896), (2, 8960)] {
        c.push(Add { n, width });
        c.push(AddBias { n, width });
        c.push(Swiglu { n, width });
        c.push(Rmsnorm { n, width });
        c.push(AddRmsnorm { n, width });
    }
    // RMSNorm's scalar and float4 paths at model widths, and many rows.
    for &(n, width) in &[(1usize, 576usize), (5, 4097), (1, 8192), (33, 1536)] {
        c.push(Rmsnorm { n, width });
        c.push(AddRmsnorm { n, width });
    }
    for &(n, heads, head_dim) in &[(1usize, 16usize, 128usize), (3, 2, 64), (2, 7, 18)] {
        c.push(HeadRmsnorm { n, heads, head_dim });
    }
    // Rope: both pairings, llama3 scaling, partial rotation, the end of a 32k table.
    let ctx = 32_768;
    for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
        for &(heads, head_dim, rope_dim, llama3) in &[
            (32usize, 64usize, 64usize, true),
            (2, 128, 128, false),
            (3, 18, 10, false),
            (14, 64, 64, false),
        ] {
            for &(pos, n) in &[(0usize, 1usize), (5, 7), (ctx - 1, 1), (ctx - 64, 64)] {
                c.push(Rope {
                    style,
                    heads,
                    head_dim,
                    rope_dim,
                    llama3,
                    ctx,
                    pos,
                    n,
                });
            }
        }
    }
    // Attention: (heads, kv heads) with GQA ratios 1, 4, 6, 7, 8 and 16 (two head groups
    // per kv head); contexts from the first position to past one split; verify rows.
    for &(heads, kv_heads) in &[
        (4usize, 4usize),
        (32, 8),
        (12, 2),
        (14, 2),
        (32, 4),
        (16, 1),
    ] {
        for head_dim in [64usize, 128] {
            for pos in [0usize, 1, 15, 16, 127, 1000, 4095] {
                c.push(Attention {
                    heads,
                    kv_heads,
                    head_dim,
                    pos,
                    n: 1,
                    window: None,
                });
            }
            c.push(Attention {
                heads,
                kv_heads,
                head_dim,
                pos: 37,
                n: 9,
                window: None,
            });
        }
    }
    // Odd head sizes take the partial-lane paths; long contexts the most splits; windows.
    for &(heads, kv_heads, head_dim, pos, n, window) in &[
        (6usize, 3usize, 18usize, 300usize, 2usize, None),
        (8, 8, 256, 77, 1, None),
        (32, 8, 64, 32_767, 1, None),
        (12, 2, 128, 20_000, 3, None),
        (8, 2, 64, 100, 4, Some(7usize)),
        (8, 2, 64, 3, 1, Some(16)),
    ] {
        c.push(Attention {
            heads,
            kv_heads,
            head_dim,
            pos,
            n,
            window,
        });
    }
    for &(rows, width, row) in &[(1usize, 1usize, 0usize), (5, 896, 4), (16, 17, 9)] {
        c.push(CopyRow { rows, width, row });
    }
    c
}

/// One output of a case: the GPU's values and the CPU twin's.
struct Output {
    what: &'static str,
    gpu: Vec<f32>,
    cpu: Vec<f32>,
}

/// Both backends, and the inputs of a case made once and given to each.
struct Twins<'a> {
    gpu: &'a mut CudaBackend,
    cpu: &'a mut CpuBackend,
    rng: &'a mut Rng,
}

impl Twins<'_> {
    /// Random activations, the same on both backends.
    fn act(&mut self, rows: usize, width: usize, scale: f32) -> (CudaAct, CpuAct, Vec<f32>) {
        let data = self.rng.vec(rows * width, scale);
        (
            up(self.gpu, rows, width, &data),
            cpu_act(width, &data),
            data,
        )
    }

    /// An output buffer poisoned with NaN on both backends.
    fn poisoned(&mut self, rows: usize, width: usize) -> (CudaAct, CpuAct) {
        (
            poisoned(self.gpu, rows, width),
            cpu_act(width, &vec![f32::NAN; rows * width]),
        )
    }

    /// A random matrix uploaded to the GPU, and the CPU's (the weight itself).
    fn mat(
        &mut self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> (cuda::CudaMat, Weight, Vec<f32>) {
        let (w, exact) = weight(self.rng, ty, rows, cols, scale);
        let m = self.gpu.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
        (m, w, exact)
    }

    /// [`Twins::mat`] uploaded as an embedding table (the file's layout, not repacked).
    fn table(
        &mut self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> (cuda::CudaMat, Weight, Vec<f32>) {
        let (w, exact) = weight(self.rng, ty, rows, cols, scale);
        let m = self.gpu.upload_table(&w).unwrap_or_else(|e| panic!("{e}"));
        (m, w, exact)
    }

    fn vector(&mut self, len: usize, scale: f32) -> (cudarc::driver::CudaSlice<f32>, Vec<f32>) {
        let v = self.rng.vec(len, scale);
        let g = self.gpu.upload_vector(&v).unwrap_or_else(|e| panic!("{e}"));
        (g, v)
    }

    /// The first `n` rows of an output on both backends.
    fn out(&mut self, what: &'static str, g: &CudaAct, c: &CpuAct, n: usize) -> Output {
        let len = n * c.width;
        let mut gpu = down(self.gpu, g);
        gpu.truncate(len);
        Output {
            what,
            gpu,
            cpu: c.data[..len].to_vec(),
        }
    }
}

fn ok<T>(r: Result<T, tachyon::backend::BackendError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Case {
    /// The family a test runs: one test per family, so they run in parallel and can be
    /// picked by name.
    pub fn family(&self) -> &'static str {
        match self {
            Case::Embed { .. } | Case::CopyRow { .. } => "embed",
            Case::Matmul { ty, .. } if BLOCK_TYPES.contains(ty) => "matmul_quant",
            Case::MatmulStored { .. } => "matmul_quant",
            Case::Matmul { .. } => "matmul",
            Case::MatmulBias { .. } | Case::GateUpSwiglu { .. } => "fused_matmul",
            Case::Add { .. }
            | Case::AddBias { .. }
            | Case::Swiglu { .. }
            | Case::Rmsnorm { .. }
            | Case::AddRmsnorm { .. }
            | Case::HeadRmsnorm { .. } => "elementwise_norm",
            Case::Rope { .. } => "rope",
            Case::Attention { .. } => "attention",
        }
    }

    /// Largest accepted relative error (max |gpu - cpu| / max |cpu|) of the case's outputs;
    /// 0 means bit for bit. Activations are f32 on both sides and 16-bit or block weights
    /// are widened to the same f32 values on both, so what differs is the order of the f32
    /// sums (and the host's vs the device's `expf`/`rsqrtf`): each threshold is a few times
    /// the worst seen over random inputs and well below what one dropped or doubled term
    /// moves the result (about 1 / the summed length).
    pub fn tolerance(&self) -> f64 {
        match self {
            // A copy, or one f32 add per value.
            Case::Embed { .. } | Case::CopyRow { .. } | Case::Add { .. } | Case::AddBias { .. } => {
                0.0
            }
            Case::Swiglu { .. } | Case::Rope { .. } => 1e-6,
            Case::Rmsnorm { .. } | Case::AddRmsnorm { .. } | Case::HeadRmsnorm { .. } => 1e-5,
            // Dot products of up to 8960 terms in another order (a plain `Matmul`'s output is
            // bounded against f64 in `run` instead).
            Case::Matmul { .. }
            | Case::MatmulStored { .. }
            | Case::MatmulBias { .. }
            | Case::GateUpSwiglu { .. } => 2e-5,
            // Softmax over up to 32k positions, merged across splits.
            Case::Attention { .. } => 5e-5,
        }
    }

    /// Runs the case on both backends and returns each output.
    fn run(&self, t: &mut Twins<'_>) -> Vec<Output> {
        match *self {
            Case::Embed { ty, vocab, dim, n } => {
                let (table, w, _) = t.table(ty, vocab, dim, 1.0);
                let ids: Vec<u32> = (0..n)
                    .map(|_| (t.rng.next_u64() % vocab as u64) as u32)
                    .collect();
                let (mut g, mut c) = t.poisoned(n, dim);
                ok(t.gpu.embed(&table, &ids, &mut g));
                ok(t.cpu.embed(&w, &ids, &mut c));
                let mut outs = vec![t.out("rows", &g, &c, n)];
                // An id past the table gives a NaN row, not an out-of-bounds read.
                let mut g = up(t.gpu, 1, dim, &vec![0.0; dim]);
                ok(t.gpu.embed(&table, &[vocab as u32], &mut g));
                outs.push(Output {
                    what: "an id past the table",
                    gpu: down(t.gpu, &g),
                    cpu: vec![f32::NAN; dim],
                });
                outs
            }
            Case::Matmul { ty, rows, cols, n } | Case::MatmulStored { ty, rows, cols, n } => {
                let scale = 1.0 / (cols as f32).sqrt();
                let (m, w, exact) = if matches!(self, Case::MatmulStored { .. }) {
                    t.table(ty, rows, cols, scale)
                } else {
                    t.mat(ty, rows, cols, scale)
                };
                let (gx, cx, x) = t.act(n, cols, 1.0);
                let (mut g, mut c) = t.poisoned(n, rows);
                ok(t.gpu.matmul(&gx, &m, n, &mut g));
                ok(t.cpu.matmul(&cx, &w, n, &mut c));
                let out = t.out("out (checked against f64)", &g, &c, n);
                // The tensor-core path (BF16, more than 4 rows, cols a multiple of 8) keeps
                // each activation to 2^-16 (its bf16 hi + lo split, gemm_mma.cu's header);
                // for repacked block formats each dequantized weight too (twice that).
                let packed = matches!(self, Case::Matmul { .. }) && ty.is_quantized();
                let split = if ty == GgmlType::BF16 && n > 4 && cols.is_multiple_of(8) {
                    2f64.powi(-16)
                } else if packed && n > 4 {
                    2.0 * 2f64.powi(-16)
                } else {
                    0.0
                };
                // Both against float64 over the values the weights hold, each output within
                // a bound scaled by its own sum of |w x|. This replaces the family's
                // max-relative check: with one to three outputs a dot product that cancels
                // to near zero makes max |cpu| tiny and that ratio meaningless.
                for r in 0..n {
                    let (want, abs) = matvec_f64(&exact, rows, cols, &x[r * cols..(r + 1) * cols]);
                    let row = r * rows..(r + 1) * rows;
                    let what = format!("{self:?}: row {r}");
                    check_matvec_within(&what, &out.gpu[row.clone()], &want, &abs, cols, split);
                    check_matvec(
                        &format!("{what} (cpu twin)"),
                        &out.cpu[row],
                        &want,
                        &abs,
                        cols,
                    );
                }
                vec![out]
            }
            Case::MatmulBias { ty, rows, cols, n } => {
                let (m, w, _) = t.mat(ty, rows, cols, 2.0 / (cols as f32).sqrt());
                let (gb, cb) = t.vector(rows, 0.5);
                let (gx, cx, _) = t.act(n, cols, 1.0);
                let (mut g, mut c) = t.poisoned(n, rows);
                ok(t.gpu.matmul_bias(&gx, &m, &gb, n, &mut g));
                ok(t.cpu.matmul_bias(&cx, &w, &cb, n, &mut c));
                vec![t.out("out", &g, &c, n)]
            }
            Case::GateUpSwiglu { ty, rows, cols, n } => {
                let scale = 2.0 / (cols as f32).sqrt();
                let (mg, wg, _) = t.mat(ty, rows, cols, scale);
                let (mu, wu, _) = t.mat(ty, rows, cols, scale);
                let (gx, cx, _) = t.act(n, cols, 1.0);
                let (mut gg, mut cg) = t.poisoned(n, rows);
                let (mut gu, mut cu) = t.poisoned(n, rows);
                ok(t.gpu.gate_up_swiglu(&gx, &mg, &mu, n, &mut gg, &mut gu));
                ok(t.cpu.gate_up_swiglu(&cx, &wg, &wu, n, &mut cg, &mut cu));
                // `up` is scratch: only the gate rows are the op's output.
                vec![t.out("gate", &gg, &cg, n)]
            }
            Case::Add { n, width } => {
                let (mut gx, mut cx, _) = t.act(n, width, 3.0);
                let (gy, cy, _) = t.act(n, width, 3.0);
                ok(t.gpu.add(&mut gx, &gy, n));
                ok(t.cpu.add(&mut cx, &cy, n));
                vec![t.out("x", &gx, &cx, n)]
            }
            Case::AddBias { n, width } => {
                let (mut gx, mut cx, _) = t.act(n, width, 3.0);
                let (gb, cb) = t.vector(width, 1.0);
                ok(t.gpu.add_bias(&mut gx, &gb, n));
                ok(t.cpu.add_bias(&mut cx, &cb, n));
                vec![t.out("x", &gx, &cx, n)]
            }
            Case::Swiglu { n, width } => {
                let (mut gx, mut cx, _) = t.act(n, width, 6.0);
                let (gy, cy, _) = t.act(n, width, 3.0);
                ok(t.gpu.swiglu(&mut gx, &gy, n));
                ok(t.cpu.swiglu(&mut cx, &cy, n));
                vec![t.out("gate", &gx, &cx, n)]
            }
            Case::Rmsnorm { n, width } => {
                let scale = t.rng.log_uniform(-3.0, 3.0);
                let (gx, cx, _) = t.act(n, width, scale);
                let (gw, cw) = t.vector(width, 2.0);
                let (mut g, mut c) = t.poisoned(n, width);
                ok(t.gpu.rmsnorm(&gx, &gw, 1e-5, n, &mut g));
                ok(t.cpu.rmsnorm(&cx, &cw, 1e-5, n, &mut c));
                vec![t.out("out", &g, &c, n)]
            }
            Case::AddRmsnorm { n, width } => {
                let scale = t.rng.log_uniform(-3.0, 3.0);
                let (mut gx, mut cx, _) = t.act(n, width, scale);
                let (gy, cy, _) = t.act(n, width, scale);
                let (gw, cw) = t.vector(width, 2.0);
                let (mut g, mut c) = t.poisoned(n, width);
                ok(t.gpu.add_rmsnorm(&mut gx, &gy, &gw, 1e-5, n, &mut g));
                ok(t.cpu.add_rmsnorm(&mut cx, &cy, &cw, 1e-5, n, &mut c));
                // The residual stream is one f32 add per value: checked bit for bit below.
                vec![t.out("out", &g, &c, n), t.out("x (exact)", &gx, &cx, n)]
            }
            Case::HeadRmsnorm { n, heads, head_dim } => {
                let (mut gx, mut cx, _) = t.act(n, heads * head_dim, 2.0);
                let (gw, cw) = t.vector(head_dim, 1.5);
                ok(t.gpu.head_rmsnorm(&mut gx, &gw, head_dim, 1e-6, n));
                ok(t.cpu.head_rmsnorm(&mut cx, &cw, head_dim, 1e-6, n));
                vec![t.out("x", &gx, &cx, n)]
            }
            Case::Rope {
                style,
                heads,
                head_dim,
                rope_dim,
                llama3,
                ctx,
                pos,
                n,
            } => {
                let r = rope_config(style, head_dim, rope_dim, llama3);
                let gt = ok(t.gpu.rope_table(&r, ctx));
                let ct = ok(t.cpu.rope_table(&r, ctx));
                let (mut gx, mut cx, _) = t.act(n, heads * head_dim, 2.0);
                ok(t.gpu.rope(&mut gx, &gt, heads, pos, n));
                ok(t.cpu.rope(&mut cx, &ct, heads, pos, n));
                vec![t.out("x", &gx, &cx, n)]
            }
            Case::Attention {
                heads,
                kv_heads,
                head_dim,
                pos,
                n,
                window,
            } => attention_outputs(t, heads, kv_heads, head_dim, pos, n, window),
            Case::CopyRow { rows, width, row } => {
                let (gx, cx, _) = t.act(rows, width, 1.0);
                let (mut g, mut c) = t.poisoned(1, width);
                ok(t.gpu.copy_row(&gx, row, &mut g));
                ok(t.cpu.copy_row(&cx, row, &mut c));
                vec![t.out("row", &g, &c, 1)]
            }
        }
    }
}

/// Attention after writing `n` new rows at `pos` into caches already holding `pos` random
/// positions: the output and the caches' live positions.
fn attention_outputs(
    t: &mut Twins<'_>,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    pos: usize,
    n: usize,
    window: Option<usize>,
) -> Vec<Output> {
    let ctx = pos + n + 3;
    let kvd = kv_heads * hd;
    let shape = AttnShape {
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        window,
    };
    // Scores (q.k / sqrt(hd)) with a standard deviation of about 1: softmax neither flat
    // nor one-hot.
    let (gq, cq, _) = t.act(n, heads * hd, 3.0);
    let (gk, ck, _) = t.act(n, kvd, 1.0);
    let (gv, cv, _) = t.act(n, kvd, 1.0);
    let mut kc = t.rng.vec(ctx * kvd, 1.0);
    let mut vc = t.rng.vec(ctx * kvd, 1.0);
    // Positions past the new rows hold NaN: reading them would poison the output.
    for c in [&mut kc, &mut vc] {
        c[(pos + n) * kvd..].fill(f32::NAN);
    }
    let mut gkv = ok(t.gpu.kv_from_host(ctx, kvd, &kc, &vc));
    let mut ckv = KvCache {
        k: kc,
        v: vc,
        kv_dim: kvd,
    };
    let (mut g, mut c) = t.poisoned(n, heads * hd);
    ok(t.gpu
        .attention(&gq, &gk, &gv, &mut gkv, shape, pos, n, &mut g));
    ok(t.cpu
        .attention(&cq, &ck, &cv, &mut ckv, shape, pos, n, &mut c));
    let out = t.out("out", &g, &c, n);
    let (gk_all, gv_all) = ok(t.gpu.kv_to_host(&gkv));
    let live = (pos + n) * kvd;
    vec![
        out,
        Output {
            what: "k cache (exact)",
            gpu: gk_all[..live].to_vec(),
            cpu: ckv.k[..live].to_vec(),
        },
        Output {
            what: "v cache (exact)",
            gpu: gv_all[..live].to_vec(),
            cpu: ckv.v[..live].to_vec(),
        },
    ]
}

/// Runs every case of `family` on a fresh backend pair.
fn run_family(family: &str) {
    let mut gpu = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock(&format!("ops {family}"));
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.family() == family)
        .collect();
    assert!(!cases.is_empty(), "no cases in family {family}");
    for case in &cases {
        let mut twins = Twins {
            gpu: &mut gpu,
            cpu: &mut cpu,
            rng: &mut rng,
        };
        let tol = case.tolerance();
        for out in case.run(&mut twins) {
            let what = format!("{case:?}: {}", out.what);
            // A NaN on the CPU side is only expected where the case asks for NaN.
            if out.what.ends_with("(checked against f64)") {
                // `Case::run` has bounded both sides against the f64 reference.
                continue;
            }
            if tol == 0.0 || out.what.ends_with("(exact)") || out.cpu.iter().all(|v| v.is_nan()) {
                check_bits(&what, &out.gpu, &out.cpu);
            } else {
                assert!(
                    out.cpu.iter().all(|v| v.is_finite()),
                    "{what}: the CPU twin gave a non-finite value"
                );
                check(&what, &out.gpu, &out.cpu, tol);
            }
        }
    }
    println!("ops {family}: {} cases", cases.len());
}

#[test]
fn the_case_list_covers_every_family() {
    let families: std::collections::BTreeSet<&str> = cases().iter().map(Case::family).collect();
    let tested = [
        "attention",
        "elementwise_norm",
        "embed",
        "fused_matmul",
        "matmul",
        "matmul_quant",
        "rope",
    ];
    assert_eq!(families.into_iter().collect::<Vec<_>>(), tested);
}

#[test]
#[ignore = "needs a GPU"]
fn ops_embed_and_copy_match_cpu() {
    run_family("embed");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_matmul_matches_cpu_and_f64() {
    run_family("matmul");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_quantized_matmul_matches_cpu_and_f64() {
    run_family("matmul_quant");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_fused_matmul_match_cpu_default_forms() {
    run_family("fused_matmul");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_elementwise_and_norms_match_cpu() {
    run_family("elementwise_norm");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_rope_matches_cpu() {
    run_family("rope");
}

#[test]
#[ignore = "needs a GPU"]
fn ops_attention_matches_cpu() {
    run_family("attention");
}

// ------------------------------------------------------------------- beyond the table

/// A NaN score comes out as NaN, never as a finite answer: one cached key holds a NaN, so
/// every query head of its kv head that sees that position must give NaN (as the CPU twin
/// does), and the other kv head's heads match the CPU. With two visible positions, the
/// warp that sees only the NaN position kept max = fmaxf(-inf, NaN) = -inf and was merged
/// as "saw nothing", hiding the NaN.
#[test]
#[ignore = "needs a GPU"]
fn attention_keeps_a_nan_score() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("attention_keeps_a_nan_score");
    let (heads, kv_heads, hd) = (8usize, 2usize, 64usize);
    let kvd = kv_heads * hd;
    let shape = AttnShape {
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        window: None,
    };
    // (cached positions, new rows, poisoned position): a short context where one warp sees
    // only the NaN, a longer one, and one past a split.
    for (pos, n, bad) in [(1usize, 1usize, 0usize), (9, 2, 4), (3000, 1, 17)] {
        let ctx = pos + n + 1;
        let q = rng.vec(n * heads * hd, 3.0);
        let k = rng.vec(n * kvd, 1.0);
        let v = rng.vec(n * kvd, 1.0);
        let mut kc = rng.vec(ctx * kvd, 1.0);
        let vc = rng.vec(ctx * kvd, 1.0);
        kc[bad * kvd + 5] = f32::NAN; // kv head 0, one dimension
        let mut gkv = b.kv_from_host(ctx, kvd, &kc, &vc).unwrap();
        let mut ckv = KvCache {
            k: kc,
            v: vc,
            kv_dim: kvd,
        };
        let (gq, gk, gv) = (
            up(&mut b, n, heads * hd, &q),
            up(&mut b, n, kvd, &k),
            up(&mut b, n, kvd, &v),
        );
        let mut gout = poisoned(&mut b, n, heads * hd);
        b.attention(&gq, &gk, &gv, &mut gkv, shape, pos, n, &mut gout)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cout = cpu_act(heads * hd, &vec![0.0; n * heads * hd]);
        cpu.attention(
            &cpu_act(heads * hd, &q),
            &cpu_act(kvd, &k),
            &cpu_act(kvd, &v),
            &mut ckv,
            shape,
            pos,
            n,
            &mut cout,
        )
        .unwrap();
        let got = down(&mut b, &gout);
        let what = format!(
            "pos {pos} n {n} NaN key at {bad} (splits {})",
            b.attn_splits(&shape, pos + n, n)
        );
        let group = heads / kv_heads;
        for row in 0..n {
            for h in 0..heads {
                let at = (row * heads + h) * hd;
                let (g, c) = (&got[at..at + hd], &cout.data[at..at + hd]);
                if h < group {
                    assert!(
                        c.iter().all(|x| x.is_nan()),
                        "{what}: the CPU twin hid the NaN"
                    );
                    assert!(
                        g.iter().all(|x| x.is_nan()),
                        "{what}: row {row} head {h} sees the NaN key but gave {:?}",
                        &g[..4]
                    );
                } else {
                    check(&format!("{what} row {row} head {h}"), g, c, 5e-5);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn argmax_on_device_matches_the_sampler() {
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("argmax_on_device_matches_the_sampler");
    for vocab in [1usize, 7, 256, 1000, 151_936] {
        let mut logits = rng.vec(vocab, 10.0);
        // Ties at the maximum (lowest id wins) and NaNs (never chosen).
        if vocab > 10 {
            let m = logits.iter().copied().fold(f32::MIN, f32::max) + 1.0;
            let (a, c) = (vocab / 2, vocab / 3);
            logits[a] = m;
            logits[c] = m;
            logits[vocab - 1] = f32::NAN;
        }
        let want = tachyon::engine::sampler::argmax(&logits);
        let gl = up(&mut b, 1, vocab, &logits);
        let dev = b.device().stream().clone();
        let parts = CudaBackend::argmax_parts(vocab);
        let mut out = dev.clone_htod(&vec![u32::MAX]).unwrap();
        let mut pv = dev.alloc_zeros::<f32>(parts).unwrap();
        let mut pi = dev.alloc_zeros::<i32>(parts).unwrap();
        b.argmax(&gl, &mut out, &mut pv, &mut pi)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = dev.clone_dtoh(&out).unwrap();
        assert_eq!(got[0], want, "vocab {vocab}");
    }
}

/// The CPU sampler's distribution in f64: candidates sorted by logit (lower id first on
/// ties), top-k, softmax at the temperature, min-p, top-p, renormalized.
pub fn sampler_probs(logits: &[f32], t: f32, top_k: usize, top_p: f32, min_p: f32) -> Vec<f64> {
    let mut c: Vec<(usize, f32)> = logits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 {
        c.truncate(top_k);
    }
    let max = f64::from(c[0].1);
    let e: Vec<f64> = c
        .iter()
        .map(|&(_, v)| ((f64::from(v) - max) / f64::from(t)).exp())
        .collect();
    let z: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|v| v / z).collect();
    if min_p > 0.0 {
        let floor = p[0] * f64::from(min_p);
        let keep = p.iter().take_while(|&&v| v >= floor).count().max(1);
        p.truncate(keep);
    }
    if top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = p.len();
        for (i, v) in p.iter().enumerate() {
            acc += v;
            if acc >= f64::from(top_p) {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
    }
    let total: f64 = p.iter().sum();
    let mut out = vec![0.0; logits.len()];
    for (&(id, _), v) in c.iter().zip(&p) {
        out[id] = v / total;
    }
    out
}

#[test]
#[ignore = "needs a GPU"]
fn device_sampling_follows_the_cpu_samplers_distribution() {
    use tachyon::engine::sampler::{Sampler, SamplingParams};
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("device_sampling_follows_the_cpu_samplers_distribution");
    let vocab = 50;
    let mut logits = rng.vec(vocab, 3.0);
    logits[7] = logits[3]; // a tie
    logits[11] = f32::NAN; // never drawn
    let s = b.device().stream().clone();
    let gl = up(&mut b, 1, vocab, &logits);
    let mut work = s
        .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
        .unwrap();
    let mut out = s.alloc_zeros::<u32>(1).unwrap();
    let mut state = s.clone_htod(&vec![rng.next_u64()]).unwrap();
    // Under emulation one draw is 4 launches run on the CPU (~5 ms): fewer draws, the
    // same 5-sigma bound (it widens with 1/sqrt(draws)); sample.rs checks each of the
    // draw's paths against the CPU distribution as well.
    let draws = if super::emulated() { 1_000 } else { 20_000 };
    for &(t, k, p, m) in &[
        (1.0f32, 0usize, 1.0f32, 0.0f32),
        (0.7, 10, 1.0, 0.0),
        (1.3, 0, 0.8, 0.0),
        (1.0, 0, 1.0, 0.1),
        (1.0, 20, 0.9, 0.05),
    ] {
        let want = sampler_probs(&logits, t, k, p, m);
        let mut hist = vec![0usize; vocab];
        for _ in 0..draws {
            b.sample(&gl, &mut work, &mut out, &mut state, t, k, p, m)
                .unwrap_or_else(|e| panic!("{e}"));
            let id = s.clone_dtoh(&out).unwrap()[0] as usize;
            assert!(
                id < vocab && want[id] > 0.0,
                "T {t} k {k} p {p} min_p {m}: drew {id}, which the CPU never draws"
            );
            hist[id] += 1;
        }
        // The reference itself against the real CPU sampler, same filters.
        let params = SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p: m,
            seed: rng.next_u64(),
            ..Default::default()
        };
        let mut cpu = Sampler::new(params, &[]);
        let mut cpu_hist = vec![0usize; vocab];
        for _ in 0..draws {
            cpu_hist[cpu.sample(&mut logits.clone()) as usize] += 1;
        }
        for id in 0..vocab {
            let sd = (want[id] * (1.0 - want[id]) / draws as f64).sqrt();
            let bound = 5.0 * sd + 2e-3;
            for (who, h) in [("gpu", &hist), ("cpu", &cpu_hist)] {
                let got = h[id] as f64 / draws as f64;
                assert!(
                    (got - want[id]).abs() <= bound,
                    "{who} T {t} k {k} p {p} min_p {m}: token {id} drawn {got:.4}, want {:.4}",
                    want[id]
                );
            }
        }
    }
    // top-k 1 is greedy, ties to the lower id.
    let mut tied = logits.clone();
    let best = tied
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::MIN, f32::max);
    tied[40] = best;
    let gl = up(&mut b, 1, vocab, &tied);
    let want = tachyon::engine::sampler::argmax(&tied);
    for _ in 0..100 {
        b.sample(&gl, &mut work, &mut out, &mut state, 1.0, 1, 1.0, 0.0)
            .unwrap();
        assert_eq!(s.clone_dtoh(&out).unwrap()[0], want);
    }
    // A full vocabulary with top-k 40: every draw among the 40 best.
    let big = 151_936;
    let logits = rng.vec(big, 8.0);
    let mut order: Vec<usize> = (0..big).collect();
    order.sort_by(|&a, &c| logits[c].total_cmp(&logits[a]).then(a.cmp(&c)));
    let top: std::collections::HashSet<usize> = order[..40].iter().copied().collect();
    let gl = up(&mut b, 1, big, &logits);
    let mut work = s
        .alloc_zeros::<f32>(CudaBackend::sample_work_len(big))
        .unwrap();
    for _ in 0..if super::emulated() { 50 } else { 500 } {
        b.sample(&gl, &mut work, &mut out, &mut state, 1.0, 40, 0.95, 0.05)
            .unwrap();
        let id = s.clone_dtoh(&out).unwrap()[0] as usize;
        assert!(top.contains(&id), "drew {id}, outside the top 40");
    }
}

/// The uniform draw `sample_logits` makes from an rng state (splitmix64, 24 bits): the
/// kernel adds the golden ratio to the state, mixes, and keeps the top 24 bits.
fn device_draw_bits(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z >> 40
}

/// A draw that lands past every thread's range when the draw is scaled by a total rounded
/// differently from the ranges: one token of weight 1, then 998 tokens each lighter than
/// half an ulp of 1 (a serial running sum absorbs them, a tree sum does not), and the rng
/// state that draws u = 1 - 2^-24. Threads 1000..1023 own no ids; the draw must still be a
/// token with mass, never id 0 (NaN here).
#[test]
#[ignore = "needs a GPU"]
fn device_sampling_draw_at_the_top_of_the_range_picks_a_token_with_mass() {
    let mut b = backend();
    let vocab = 1000;
    let mut logits = vec![0f32; vocab];
    logits[0] = f32::NAN;
    logits[1] = 0.0;
    // e^-17.43 = 2.7e-8 < 2^-25: absorbed when added to 1.
    for l in logits.iter_mut().skip(2) {
        *l = -17.43;
    }
    let state = (0u64..)
        .find(|&s| device_draw_bits(s) == (1 << 24) - 1)
        .unwrap_or_else(|| panic!("no state draws the top value"));
    let s = b.device().stream().clone();
    let gl = up(&mut b, 1, vocab, &logits);
    let mut work = s
        .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
        .unwrap();
    let mut out = s.clone_htod(&[u32::MAX]).unwrap();
    let mut st = s.clone_htod(&[state]).unwrap();
    b.sample(&gl, &mut work, &mut out, &mut st, 1.0, 0, 1.0, 0.0)
        .unwrap_or_else(|e| panic!("{e}"));
    let id = s.clone_dtoh(&out).unwrap()[0] as usize;
    let want = sampler_probs(&logits, 1.0, 0, 1.0, 0.0);
    assert!(
        id < vocab && want[id] > 0.0,
        "drew {id}, which has no mass (the draw fell past the last thread's range)"
    );
}

/// No candidate with mass: every logit -inf (all equally likely in the limit: the lowest id,
/// as greedy), or a +inf logit (whose weight would be inf / inf): the greedy token, written
/// every time, never the previous call's token left in place.
#[test]
#[ignore = "needs a GPU"]
fn device_sampling_without_mass_is_greedy() {
    let mut b = backend();
    let s = b.device().stream().clone();
    let vocab = 300;
    let all_neg_inf = vec![f32::NEG_INFINITY; vocab];
    let mut one_inf = vec![0.5f32; vocab];
    one_inf[7] = f32::INFINITY;
    let mut two_inf = vec![-1f32; vocab];
    two_inf[250] = f32::INFINITY;
    two_inf[251] = f32::INFINITY;
    for (what, logits) in [
        ("every logit -inf", &all_neg_inf),
        ("a +inf logit", &one_inf),
        ("two +inf logits", &two_inf),
    ] {
        let want = tachyon::engine::sampler::argmax(logits);
        let gl = up(&mut b, 1, vocab, logits);
        let mut work = s
            .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
            .unwrap();
        let mut st = s.clone_htod(&[42u64]).unwrap();
        for (t, k, p, m) in [(1.0f32, 0usize, 1.0f32, 0.0f32), (0.8, 40, 0.9, 0.05)] {
            let mut out = s.clone_htod(&[u32::MAX]).unwrap();
            b.sample(&gl, &mut work, &mut out, &mut st, t, k, p, m)
                .unwrap_or_else(|e| panic!("{e}"));
            let got = s.clone_dtoh(&out).unwrap()[0];
            assert_eq!(got, want, "{what}, T {t} k {k} p {p} min_p {m}");
        }
    }
}

/// The same rng state and logits give the same token, call after call: the top-p cut is
/// made from integer (fixed-point) masses, whose sums do not depend on the order of the
/// atomics. Many distinct weights share the top-p bins so float sums would differ by order.
#[test]
#[ignore = "needs a GPU"]
fn device_sampling_is_reproducible_for_a_seed() {
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("device_sampling_is_reproducible_for_a_seed");
    let s = b.device().stream().clone();
    let vocab = 4099;
    let logits = rng.vec(vocab, 2.0);
    let gl = up(&mut b, 1, vocab, &logits);
    let mut work = s
        .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
        .unwrap();
    let mut out = s.alloc_zeros::<u32>(1).unwrap();
    let seed = rng.next_u64();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut st = s.clone_htod(&[seed]).unwrap();
        let mut ids = Vec::new();
        for _ in 0..40 {
            b.sample(&gl, &mut work, &mut out, &mut st, 1.0, 0, 0.6, 0.0)
                .unwrap_or_else(|e| panic!("{e}"));
            ids.push(s.clone_dtoh(&out).unwrap()[0]);
        }
        runs.push(ids);
    }
    assert_eq!(runs[0], runs[1], "the same seed drew different tokens");
}
