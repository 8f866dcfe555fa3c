//! The coarse ops a decoder layer is made of on the CUDA backend (`Ops::norm_qkv`,
//! `Ops::matmul_add`, `Ops::norm_gate_up_swiglu`, and the logits' `Ops::norm_matmul`: RMSNorm in the GEMV's prologue, q/k/v
//! stacked into one matrix with their biases, the residual add in the epilogue) against
//! their CPU twins, the `Ops` defaults written in the fine ops, which the CPU backend runs.
//!
//! Each case makes fresh random inputs, gives the same values to both backends, poisons
//! every output and scratch buffer with NaN first on both sides, and compares by relative
//! error (max |gpu - cpu| / max |cpu|, infinite on NaN or inf, so NaN never passes). The
//! shapes keep odd sizes (odd row counts, widths off the 16-byte vector path, a stack whose
//! q, k and v differ in size), the vector path's unrolled step and its tail (8200 columns),
//! the GEMV/GEMM boundary (more than 4 rows: the norm runs first, the epilogue stays), BF16,
//! F16, F32 and two block formats, and q/k/v of different formats (three products).

use tachyon::backend::cpu::{CpuAct, CpuBackend};
use tachyon::backend::cuda::{CudaAct, CudaBackend};
use tachyon::backend::{Ops, QkvWeights};
use tachyon::format::GgmlType;

use super::Rng;
use super::ops::{backend, rel, weight};

/// Largest accepted relative error of a product of `cols` columns over `n` rows. Up to 4
/// rows (the GEMVs) weights are widened to the same f32 values on both sides and
/// activations are f32, so what differs is the order of the f32 sums of up to 8200 terms
/// and the device's `rsqrtf` (2 ulp) in the norm: a few times the worst seen. Past 4 rows
/// the tensor cores keep each activation, and each dequantized block-format weight, to
/// about 16 bits (bf16 hi + lo): about 1e-5 of the largest output with random signs, so
/// 5e-5. All far below what one dropped or doubled term moves a product (about 1 / cols).
fn tolerance(cols: usize, n: usize) -> f64 {
    if n > 4 {
        5e-5
    } else if cols > 2048 {
        4e-5
    } else {
        2e-5
    }
}

/// The int8-activation path (`CudaBackend::set_int8_acts`) against its twin (the CPU's
/// precise products over activations rounded by `quant::round_trip_int8`): without a norm
/// both sides round the same f32 values the same way, so `tolerance` holds; behind a norm,
/// the device's `rsqrtf` (2 ulp) can move a value across a rounding boundary, and each
/// such value moves a product by one code step, d = max|x| / 127 of its 32-value unit,
/// times its weight: a few of them stay under 2e-3 of the largest output (products of
/// more than 4 rows keep f32 activations and `tolerance`), which one
/// dropped unit (of the 2-16 the block-format cases have) or unrounded activations
/// (about 0.5%, see BENCHMARKS.md) exceed.
const INT8_NORMED_TOLERANCE: f64 = 2e-3;

#[derive(Clone, Copy, Debug)]
enum Case {
    /// `norm_qkv`; `stacked`: whether the CUDA backend must have stacked the three.
    NormQkv {
        ty: [GgmlType; 3],
        dim: usize,
        rows: [usize; 3],
        n: usize,
        bias: bool,
        stacked: bool,
    },
    MatmulAdd {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    NormGateUpSwiglu {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
    /// `norm_matmul`: the final norm and the LM head.
    NormMatmul {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
    },
}

fn cases() -> Vec<Case> {
    use Case::*;
    use GgmlType::{BF16, F16, F32, Q4K, Q8_0};
    let mut c = vec![
        // Vector path; scalar path (100 columns) with biases over 3 rows; the unrolled
        // step and its tail; odd block-format rows; a quantized stack past 4 rows (the
        // norm first, then the tensor cores' split epilogue); q/k/v in two formats (three
        // products); prefill (the norm first, then the GEMM's split epilogue).
        NormQkv {
            ty: [BF16; 3],
            dim: 136,
            rows: [96, 32, 32],
            n: 1,
            bias: false,
            stacked: true,
        },
        NormQkv {
            ty: [BF16; 3],
            dim: 100,
            rows: [60, 20, 20],
            n: 3,
            bias: true,
            stacked: true,
        },
        NormQkv {
            ty: [BF16; 3],
            dim: 8200,
            rows: [24, 8, 8],
            n: 1,
            bias: true,
            stacked: true,
        },
        NormQkv {
            ty: [F16; 3],
            dim: 264,
            rows: [40, 12, 12],
            n: 4,
            bias: false,
            stacked: true,
        },
        NormQkv {
            ty: [Q8_0; 3],
            dim: 96,
            rows: [64, 33, 33],
            n: 1,
            bias: true,
            stacked: true,
        },
        NormQkv {
            ty: [Q4K; 3],
            dim: 256,
            rows: [32, 16, 16],
            n: 5,
            bias: false,
            stacked: true,
        },
        NormQkv {
            ty: [BF16, Q8_0, Q8_0],
            dim: 128,
            rows: [64, 32, 32],
            n: 2,
            bias: true,
            stacked: false,
        },
        NormQkv {
            ty: [BF16; 3],
            dim: 136,
            rows: [96, 32, 32],
            n: 6,
            bias: true,
            stacked: true,
        },
        // The tensor-core kernel's split epilogue (BF16, more than 4 rows): a verify step
        // and a partial second token tile, odd q/k/v widths.
        NormQkv {
            ty: [BF16; 3],
            dim: 264,
            rows: [72, 24, 24],
            n: 8,
            bias: true,
            stacked: true,
        },
        NormQkv {
            ty: [BF16; 3],
            dim: 136,
            rows: [40, 17, 17],
            n: 17,
            bias: false,
            stacked: true,
        },
        // Prefill chunks of 64 rows and more: the 64 x 64 tile kernel's split epilogue
        // (BF16), the wide quantized form's (Q4_K).
        NormQkv {
            ty: [BF16; 3],
            dim: 136,
            rows: [72, 24, 24],
            n: 70,
            bias: true,
            stacked: true,
        },
        NormQkv {
            ty: [Q4K; 3],
            dim: 256,
            rows: [32, 16, 16],
            n: 64,
            bias: true,
            stacked: true,
        },
        // The residual add in the epilogue: every format, the unrolled step, the GEMM.
        MatmulAdd {
            ty: BF16,
            rows: 41,
            cols: 8200,
            n: 1,
        },
        MatmulAdd {
            ty: F16,
            rows: 33,
            cols: 100,
            n: 3,
        },
        MatmulAdd {
            ty: F32,
            rows: 20,
            cols: 4100,
            n: 2,
        },
        MatmulAdd {
            ty: Q8_0,
            rows: 65,
            cols: 96,
            n: 1,
        },
        MatmulAdd {
            ty: Q4K,
            rows: 17,
            cols: 512,
            n: 4,
        },
        MatmulAdd {
            ty: BF16,
            rows: 70,
            cols: 136,
            n: 7,
        },
        MatmulAdd {
            ty: BF16,
            rows: 130,
            cols: 264,
            n: 16,
        },
        MatmulAdd {
            ty: BF16,
            rows: 33,
            cols: 136,
            n: 33,
        },
        MatmulAdd {
            ty: BF16,
            rows: 130,
            cols: 264,
            n: 70,
        },
        MatmulAdd {
            ty: Q4K,
            rows: 17,
            cols: 512,
            n: 65,
        },
        // Norm + gate + up + SwiGLU: the unrolled step with two matrices, the scalar path,
        // block formats (past 4 rows too), prefill (norm, two GEMMs, SwiGLU).
        NormGateUpSwiglu {
            ty: BF16,
            rows: 27,
            cols: 8200,
            n: 1,
        },
        NormGateUpSwiglu {
            ty: F16,
            rows: 33,
            cols: 100,
            n: 4,
        },
        NormGateUpSwiglu {
            ty: Q8_0,
            rows: 65,
            cols: 96,
            n: 3,
        },
        NormGateUpSwiglu {
            ty: Q4K,
            rows: 17,
            cols: 256,
            n: 5,
        },
        NormGateUpSwiglu {
            ty: BF16,
            rows: 30,
            cols: 136,
            n: 6,
        },
        // Norm + LM head: the decode row (the unrolled step and its tail), a block format
        // over several rows, verify rows past the GEMV (the norm first, then the GEMM).
        NormMatmul {
            ty: BF16,
            rows: 77,
            cols: 8200,
            n: 1,
        },
        NormMatmul {
            ty: Q8_0,
            rows: 65,
            cols: 96,
            n: 3,
        },
        NormMatmul {
            ty: F16,
            rows: 40,
            cols: 136,
            n: 6,
        },
    ];
    // Prefill-sized block-format products (16 rows: the tensor cores over dequantized
    // tiles) and an LM-head-sized one.
    c.push(MatmulAdd {
        ty: Q8_0,
        rows: 19,
        cols: 640,
        n: 16,
    });
    c.push(NormGateUpSwiglu {
        ty: Q8_0,
        rows: 33,
        cols: 256,
        n: 16,
    });
    c.push(NormMatmul {
        ty: Q8_0,
        rows: 1000,
        cols: 256,
        n: 1,
    });
    // Every block format (the repacked GEMV, gemv_qpack.cu) in each fused form: the norm
    // prologue with the q/k/v split and biases, the residual add, norm + gate + up + SwiGLU;
    // odd row counts, 1-4 activation rows, units split over lanes and a second step.
    for ty in super::ops::BLOCK_TYPES {
        let bl = ty.block_len();
        c.push(NormQkv {
            ty: [ty; 3],
            dim: 2 * bl,
            rows: [37, 9, 9],
            n: 1,
            bias: true,
            stacked: true,
        });
        c.push(MatmulAdd {
            ty,
            rows: 19,
            cols: if bl == 32 { 2080 } else { bl },
            n: 4,
        });
        c.push(NormGateUpSwiglu {
            ty,
            rows: 33,
            cols: 2 * bl,
            n: 2,
        });
    }
    c
}

fn ok<T>(r: Result<T, tachyon::backend::BackendError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Both backends and the random source; each helper makes one input for both.
struct Twins {
    gpu: CudaBackend,
    cpu: CpuBackend,
    rng: Rng,
    /// Both sides on int8 activations for block-format weights.
    int8: bool,
    /// The largest error seen (int8 runs report it).
    worst: f64,
}

impl Twins {
    fn act(&mut self, rows: usize, width: usize, scale: f32) -> (CudaAct, CpuAct) {
        let data = self.rng.vec(rows * width, scale);
        (
            ok(self.gpu.act_from_host(rows, width, &data)),
            CpuAct { data, width },
        )
    }

    fn poisoned(&mut self, rows: usize, width: usize) -> (CudaAct, CpuAct) {
        let data = vec![f32::NAN; rows * width];
        (
            ok(self.gpu.act_from_host(rows, width, &data)),
            CpuAct { data, width },
        )
    }

    fn vector(&mut self, len: usize, scale: f32) -> Vec<f32> {
        self.rng.vec(len, scale)
    }

    /// The accepted error of a product of `cols` columns over `n` rows, `normed` when a
    /// norm runs in front of it (int8 activations: only up to 4 rows).
    fn tolerance(&self, cols: usize, n: usize, normed: bool) -> f64 {
        if self.int8 && normed && n <= 4 {
            INT8_NORMED_TOLERANCE
        } else {
            tolerance(cols, n)
        }
    }

    /// The first `n` rows of an output on both sides, compared.
    fn compare(&mut self, case: &Case, what: &str, g: &CudaAct, c: &CpuAct, n: usize, tol: f64) {
        let len = n * c.width;
        let gpu = ok(self.gpu.act_to_host(g));
        let cpu = &c.data[..len];
        assert!(
            cpu.iter().all(|v| v.is_finite()),
            "{case:?}: {what}: the CPU twin gave a non-finite value"
        );
        let e = rel(&gpu[..len], cpu);
        self.worst = self.worst.max(e);
        assert!(e <= tol, "{case:?}: {what}: relative error {e:e} > {tol:e}");
    }
}

impl Case {
    fn run(&self, t: &mut Twins) {
        match *self {
            Case::NormQkv {
                ty,
                dim,
                rows,
                n,
                bias,
                stacked,
            } => {
                let scale = 2.0 / (dim as f32).sqrt();
                let ws: Vec<_> = (0..3)
                    .map(|i| weight(&mut t.rng, ty[i], rows[i], dim, scale).0)
                    .collect();
                let biases: Vec<Option<Vec<f32>>> = (0..3)
                    .map(|i| bias.then(|| t.vector(rows[i], 0.5)))
                    .collect();
                let b = [0, 1, 2].map(|i| biases[i].as_deref());
                let gw = ok(t.gpu.upload_qkv(&ws[0], &ws[1], &ws[2], b));
                let cw = ok(t.cpu.upload_qkv(&ws[0], &ws[1], &ws[2], b));
                assert_eq!(
                    matches!(gw, QkvWeights::Stacked { .. }),
                    stacked,
                    "{self:?}: the CUDA backend's q/k/v form"
                );
                assert!(matches!(cw, QkvWeights::Separate { .. }));
                // Residual-stream magnitudes far from 1 catch a norm that is not applied.
                let mag = t.rng.log_uniform(-2.0, 2.0);
                let (gx, cx) = t.act(n, dim, mag);
                let norm = t.vector(dim, 2.0);
                let gn = ok(t.gpu.upload_vector(&norm));
                let cn = ok(t.cpu.upload_vector(&norm));
                let (mut ghn, mut chn) = t.poisoned(n, dim);
                let (mut gq, mut cq) = t.poisoned(n, rows[0]);
                let (mut gk, mut ck) = t.poisoned(n, rows[1]);
                let (mut gv, mut cv) = t.poisoned(n, rows[2]);
                let eps = 1e-5;
                ok(t.gpu
                    .norm_qkv(&gx, &gn, eps, &gw, n, &mut ghn, &mut gq, &mut gk, &mut gv));
                ok(t.cpu
                    .norm_qkv(&cx, &cn, eps, &cw, n, &mut chn, &mut cq, &mut ck, &mut cv));
                let tol = t.tolerance(dim, n, true);
                t.compare(self, "q", &gq, &cq, n, tol);
                t.compare(self, "k", &gk, &ck, n, tol);
                t.compare(self, "v", &gv, &cv, n, tol);
            }
            Case::MatmulAdd { ty, rows, cols, n } => {
                let (w, _) = weight(&mut t.rng, ty, rows, cols, 2.0 / (cols as f32).sqrt());
                let gw = ok(t.gpu.upload_matrix(&w));
                let (ga, ca) = t.act(n, cols, 1.0);
                let (mut gx, mut cx) = t.act(n, rows, 3.0);
                let (mut gs, mut cs) = t.poisoned(n, rows);
                ok(t.gpu.matmul_add(&ga, &gw, n, &mut gx, &mut gs));
                ok(t.cpu.matmul_add(&ca, &w, n, &mut cx, &mut cs));
                t.compare(self, "x", &gx, &cx, n, t.tolerance(cols, n, false));
            }
            Case::NormGateUpSwiglu { ty, rows, cols, n } => {
                let scale = 2.0 / (cols as f32).sqrt();
                let (wg, _) = weight(&mut t.rng, ty, rows, cols, scale);
                let (wu, _) = weight(&mut t.rng, ty, rows, cols, scale);
                let (gg_w, gu_w) = (ok(t.gpu.upload_matrix(&wg)), ok(t.gpu.upload_matrix(&wu)));
                let mag = t.rng.log_uniform(-2.0, 2.0);
                let (gx, cx) = t.act(n, cols, mag);
                let norm = t.vector(cols, 2.0);
                let gn = ok(t.gpu.upload_vector(&norm));
                let (mut ghn, mut chn) = t.poisoned(n, cols);
                let (mut gg, mut cg) = t.poisoned(n, rows);
                let (mut gu, mut cu) = t.poisoned(n, rows);
                let eps = 1e-6;
                ok(t.gpu.norm_gate_up_swiglu(
                    &gx, &gn, eps, &gg_w, &gu_w, n, &mut ghn, &mut gg, &mut gu,
                ));
                ok(t.cpu
                    .norm_gate_up_swiglu(&cx, &norm, eps, &wg, &wu, n, &mut chn, &mut cg, &mut cu));
                // `hn` and `up` are scratch: only the gate rows are the op's output.
                t.compare(self, "gate", &gg, &cg, n, t.tolerance(cols, n, true));
            }
            Case::NormMatmul { ty, rows, cols, n } => {
                let (w, _) = weight(&mut t.rng, ty, rows, cols, 2.0 / (cols as f32).sqrt());
                let gw = ok(t.gpu.upload_matrix(&w));
                let mag = t.rng.log_uniform(-2.0, 2.0);
                let (gx, cx) = t.act(n, cols, mag);
                let norm = t.vector(cols, 2.0);
                let gn = ok(t.gpu.upload_vector(&norm));
                let (mut ghn, mut chn) = t.poisoned(n, cols);
                let (mut go, mut co) = t.poisoned(n, rows);
                let eps = 1e-5;
                ok(t.gpu.norm_matmul(&gx, &gn, eps, &gw, n, &mut ghn, &mut go));
                ok(t.cpu.norm_matmul(&cx, &norm, eps, &w, n, &mut chn, &mut co));
                t.compare(self, "logits", &go, &co, n, t.tolerance(cols, n, true));
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn fused_layer_ops_match_their_cpu_twins() {
    let mut t = Twins {
        gpu: backend(),
        cpu: CpuBackend::new(true, false),
        rng: Rng::from_env_or_clock("fused layer ops"),
        int8: false,
        worst: 0.0,
    };
    let cases = cases();
    for case in &cases {
        case.run(&mut t);
    }
    println!("fused layer ops: {} cases", cases.len());
}

impl Case {
    fn block_format(&self) -> bool {
        match *self {
            Case::NormQkv { ty, .. } => ty.iter().all(|t| t.is_quantized()),
            Case::MatmulAdd { ty, .. }
            | Case::NormGateUpSwiglu { ty, .. }
            | Case::NormMatmul { ty, .. } => ty.is_quantized(),
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn fused_layer_ops_on_int8_activations_match_their_cpu_twins() {
    // Every block-format case again with the dp4a kernels (quantize_act.cu, then
    // gemv_qpack.cu's `_q8` forms) against the CPU over the same rounded activations.
    let mut gpu = backend();
    gpu.set_int8_acts(true);
    let mut cpu = CpuBackend::new(true, false);
    cpu.round_acts_int8 = true;
    let mut t = Twins {
        gpu,
        cpu,
        rng: Rng::from_env_or_clock("fused layer ops, int8 activations"),
        int8: true,
        worst: 0.0,
    };
    let cases: Vec<Case> = cases().into_iter().filter(Case::block_format).collect();
    assert!(cases.len() >= 3 * super::ops::BLOCK_TYPES.len());
    for case in &cases {
        case.run(&mut t);
    }
    println!(
        "fused layer ops on int8 activations: {} cases, largest relative error {:e}",
        cases.len(),
        t.worst
    );
    // A NaN or an infinity in an activation row makes its unit's scale NaN: that row's
    // outputs are NaN (never a silently rounded value), the other row's stay finite.
    for bad in [f32::NAN, f32::INFINITY] {
        let (w, _) = weight(&mut t.rng, GgmlType::Q4K, 24, 512, 0.1);
        let gw = ok(t.gpu.upload_matrix(&w));
        let mut data = t.rng.vec(2 * 512, 1.0);
        data[512 + 77] = bad;
        let gx = ok(t.gpu.act_from_host(2, 512, &data));
        let (mut go, _) = t.poisoned(2, 24);
        ok(t.gpu.matmul(&gx, &gw, 2, &mut go));
        let out = ok(t.gpu.act_to_host(&go));
        assert!(
            out[..24].iter().all(|v| v.is_finite()),
            "{bad}: row 0 {out:?}"
        );
        assert!(
            out[24..48].iter().all(|v| v.is_nan()),
            "{bad}: row 1 {out:?}"
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn fused_norm_qkv_refuses_mismatched_outputs() {
    // Stacked weights with outputs of the wrong widths: an error, nothing launched.
    let mut t = Twins {
        gpu: backend(),
        cpu: CpuBackend::new(true, false),
        rng: Rng::from_env_or_clock("fused norm_qkv refusal"),
        int8: false,
        worst: 0.0,
    };
    let ws: Vec<_> = [48, 16, 16]
        .iter()
        .map(|&r| weight(&mut t.rng, GgmlType::BF16, r, 64, 0.1).0)
        .collect();
    let gw = ok(t.gpu.upload_qkv(&ws[0], &ws[1], &ws[2], [None; 3]));
    let (gx, _) = t.act(1, 64, 1.0);
    let gn = ok(t.gpu.upload_vector(&[1.0; 64]));
    let (mut ghn, _) = t.poisoned(1, 64);
    let (mut gq, _) = t.poisoned(1, 48);
    let (mut gk, _) = t.poisoned(1, 32);
    let (mut gv, _) = t.poisoned(1, 16);
    let r = t
        .gpu
        .norm_qkv(&gx, &gn, 1e-5, &gw, 1, &mut ghn, &mut gq, &mut gk, &mut gv);
    assert!(
        r.is_err(),
        "outputs of widths 48/32/16 for a 48/16/16 stack"
    );
}
