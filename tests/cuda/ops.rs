//! Every op of `CudaBackend` against its CPU twin (`CpuBackend`, the same `Ops` call) and,
//! where cheap, a float64 reference, on fresh random inputs: odd sizes, every GQA ratio of
//! the supported families, contexts from 1 to 32k. Outputs are poisoned with NaN before
//! each launch, and NaN never passes.

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

/// A `rows x cols` matrix of values uniform in ±scale, stored as `ty`; also returned as the
/// f32 values the stored elements round to.
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
        other => panic!("no test weights in {other}"),
    };
    let len = bytes.len();
    let w = Weight::new("test", ty, rows, cols, Arc::new(HostBytes(bytes)), 0, len)
        .unwrap_or_else(|e| panic!("{e}"));
    (w, exact)
}

fn up(b: &mut CudaBackend, rows: usize, width: usize, data: &[f32]) -> CudaAct {
    b.act_from_host(rows, width, data)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn poisoned(b: &mut CudaBackend, rows: usize, width: usize) -> CudaAct {
    up(b, rows, width, &vec![f32::NAN; rows * width])
}

fn down(b: &mut CudaBackend, x: &CudaAct) -> Vec<f32> {
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

const DTYPES: [GgmlType; 3] = [GgmlType::BF16, GgmlType::F16, GgmlType::F32];

#[test]
#[ignore = "needs a GPU"]
fn embed_matches_cpu_and_poisons_bad_ids() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("embed_matches_cpu_and_poisons_bad_ids");
    for ty in DTYPES {
        for &(vocab, dim) in &[(1usize, 1usize), (1001, 17), (300, 896), (50, 2048)] {
            let (w, _) = weight(&mut rng, ty, vocab, dim, 1.0);
            let tokens: Vec<u32> = (0..5)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect();
            let table = b.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
            let mut out = poisoned(&mut b, 5, dim);
            b.embed(&table, &tokens, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut want = cpu_act(dim, &vec![0.0; 5 * dim]);
            cpu.embed(&w, &tokens, &mut want)
                .unwrap_or_else(|e| panic!("{e}"));
            let got = down(&mut b, &out);
            assert!(
                got.iter()
                    .zip(&want.data)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{ty} vocab {vocab} dim {dim}: embedding rows differ"
            );
            // An id past the table gives a NaN row, not an out-of-bounds read.
            let mut out = up(&mut b, 1, dim, &vec![0.0; dim]);
            b.embed(&table, &[vocab as u32], &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(down(&mut b, &out).iter().all(|v| v.is_nan()));
        }
    }
}

/// f64 reference of `W x` and the per-output sum of |w x| (the scale rounding errors grow
/// with).
fn matvec_f64(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
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
fn check_matvec(what: &str, got: &[f32], want: &[f64], abs: &[f64], cols: usize) {
    let k = 4.0 * (cols as f64).sqrt() * f64::from(f32::EPSILON);
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            g.is_finite() && err <= k * a + 1e-30,
            "{what}: output {i}: got {g}, want {w} (error {err:e}, allowed {:e})",
            k * a
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn matmul_matches_f64_and_cpu_on_odd_shapes() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("matmul_matches_f64_and_cpu_on_odd_shapes");
    let shapes = [
        (1usize, 8usize),
        (3, 17),
        (64, 64),
        (7, 4104),
        (896, 4864),
        (4097, 136),
        (151, 2048),
        (512, 2048),
    ];
    for ty in DTYPES {
        for &(rows, cols) in &shapes {
            // 1-4 rows run the GEMV, more the tiled GEMM (33 and 64: partial and full tiles).
            for n in [1usize, 3, 4, 5, 9, 33, 64] {
                let (w, wf) = weight(&mut rng, ty, rows, cols, 1.0 / (cols as f32).sqrt());
                let x = rng.vec(n * cols, 1.0);
                let m = b.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
                let xd = up(&mut b, n, cols, &x);
                let mut out = poisoned(&mut b, n, rows);
                b.matmul(&xd, &m, n, &mut out)
                    .unwrap_or_else(|e| panic!("{e}"));
                let got = down(&mut b, &out);
                let mut want_cpu = cpu_act(rows, &vec![0.0; n * rows]);
                cpu.matmul(&cpu_act(cols, &x), &w, n, &mut want_cpu)
                    .unwrap_or_else(|e| panic!("{e}"));
                for t in 0..n {
                    let (want, abs) = matvec_f64(&wf, rows, cols, &x[t * cols..(t + 1) * cols]);
                    let what = format!("{ty} [{rows}, {cols}] row {t} of {n}");
                    check_matvec(&what, &got[t * rows..(t + 1) * rows], &want, &abs, cols);
                    check_matvec(
                        &format!("{what} (cpu twin)"),
                        &want_cpu.data[t * rows..(t + 1) * rows],
                        &want,
                        &abs,
                        cols,
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn fused_bias_and_swiglu_match_the_separate_ops() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("fused_bias_and_swiglu_match_the_separate_ops");
    for ty in [GgmlType::BF16, GgmlType::F16] {
        for &(rows, cols, n) in &[
            (17usize, 24usize, 1usize),
            (4864, 896, 1),
            (8960, 1536, 3),
            (33, 23, 2),
            (100, 72, 17),
        ] {
            let (wg, _) = weight(&mut rng, ty, rows, cols, 2.0 / (cols as f32).sqrt());
            let (wu, _) = weight(&mut rng, ty, rows, cols, 2.0 / (cols as f32).sqrt());
            let x = rng.vec(n * cols, 1.0);
            let bias = rng.vec(rows, 0.5);
            let (mg, mu) = (b.upload_matrix(&wg).unwrap(), b.upload_matrix(&wu).unwrap());
            let xd = up(&mut b, n, cols, &x);
            // SwiGLU fused vs the CPU's matmul, matmul, swiglu.
            let mut gate = poisoned(&mut b, n, rows);
            let mut scratch = poisoned(&mut b, n, rows);
            b.gate_up_swiglu(&xd, &mg, &mu, n, &mut gate, &mut scratch)
                .unwrap_or_else(|e| panic!("{e}"));
            let (mut cg, mut cu) = (
                cpu_act(rows, &vec![0.0; n * rows]),
                cpu_act(rows, &vec![0.0; n * rows]),
            );
            cpu.gate_up_swiglu(&cpu_act(cols, &x), &wg, &wu, n, &mut cg, &mut cu)
                .unwrap();
            check(
                &format!("{ty} swiglu [{rows}, {cols}] x {n}"),
                &down(&mut b, &gate),
                &cg.data,
                2e-5,
            );
            // Bias fused into the GEMV vs matmul then add_bias.
            let bd = b.upload_vector(&bias).unwrap();
            let mut out = poisoned(&mut b, n, rows);
            b.matmul_bias(&xd, &mg, &bd, n, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut want = cpu_act(rows, &vec![0.0; n * rows]);
            cpu.matmul(&cpu_act(cols, &x), &wg, n, &mut want).unwrap();
            cpu.add_bias(&mut want, &bias, n).unwrap();
            check(
                &format!("{ty} bias [{rows}, {cols}] x {n}"),
                &down(&mut b, &out),
                &want.data,
                2e-5,
            );
            // And the unfused Ops path on the GPU.
            let mut bx = up(&mut b, n, rows, &want.data);
            let mut cx = cpu_act(rows, &want.data);
            b.add_bias(&mut bx, &bd, n).unwrap();
            cpu.add_bias(&mut cx, &bias, n).unwrap();
            check("add_bias", &down(&mut b, &bx), &cx.data, 1e-6);
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn elementwise_and_norms_match_cpu() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("elementwise_and_norms_match_cpu");
    for &(n, width) in &[(1usize, 1usize), (3, 17), (5, 896), (2, 8960)] {
        let (x, y) = (rng.vec(n * width, 3.0), rng.vec(n * width, 3.0));
        let mut gx = up(&mut b, n, width, &x);
        let gy = up(&mut b, n, width, &y);
        let mut cx = cpu_act(width, &x);
        let cy = cpu_act(width, &y);
        b.add(&mut gx, &gy, n).unwrap();
        cpu.add(&mut cx, &cy, n).unwrap();
        check("add", &down(&mut b, &gx), &cx.data, 0.0);
        b.swiglu(&mut gx, &gy, n).unwrap();
        cpu.swiglu(&mut cx, &cy, n).unwrap();
        check("swiglu", &down(&mut b, &gx), &cx.data, 1e-6);
        let w = rng.vec(width, 2.0);
        let wd = b.upload_vector(&w).unwrap();
        let mut out = poisoned(&mut b, n, width);
        b.rmsnorm(&gx, &wd, 1e-5, n, &mut out).unwrap();
        let mut cout = cpu_act(width, &vec![0.0; n * width]);
        cpu.rmsnorm(&cx, &w, 1e-5, n, &mut cout).unwrap();
        check("rmsnorm", &down(&mut b, &out), &cout.data, 1e-5);
    }
    // Per-head RMSNorm (qwen3's q/k norm), in place.
    for &(n, heads, hd) in &[(1usize, 16usize, 128usize), (3, 2, 64), (2, 7, 18)] {
        let x = rng.vec(n * heads * hd, 2.0);
        let w = rng.vec(hd, 1.5);
        let mut gx = up(&mut b, n, heads * hd, &x);
        let mut cx = cpu_act(heads * hd, &x);
        let wd = b.upload_vector(&w).unwrap();
        b.head_rmsnorm(&mut gx, &wd, hd, 1e-6, n).unwrap();
        cpu.head_rmsnorm(&mut cx, &w, hd, 1e-6, n).unwrap();
        check("head_rmsnorm", &down(&mut b, &gx), &cx.data, 1e-5);
    }
}

fn rope(style: RopeStyle, head_dim: usize, rope_dim: usize, llama3: bool) -> Rope {
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

#[test]
#[ignore = "needs a GPU"]
fn rope_matches_cpu_both_styles_and_scalings() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("rope_matches_cpu_both_styles_and_scalings");
    let ctx = 32_768;
    for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
        for &(heads, hd, rd, llama3) in &[
            (32usize, 64usize, 64usize, true),
            (2, 128, 128, false),
            (3, 18, 10, false),
            (14, 64, 64, false),
        ] {
            let r = rope(style, hd, rd, llama3);
            let gt = b.rope_table(&r, ctx).unwrap();
            let ct = cpu.rope_table(&r, ctx).unwrap();
            for &(pos, n) in &[(0usize, 1usize), (5, 7), (ctx - 1, 1), (ctx - 64, 64)] {
                let x = rng.vec(n * heads * hd, 2.0);
                let mut gx = up(&mut b, n, heads * hd, &x);
                let mut cx = cpu_act(heads * hd, &x);
                b.rope(&mut gx, &gt, heads, pos, n).unwrap();
                cpu.rope(&mut cx, &ct, heads, pos, n).unwrap();
                check(
                    &format!("rope {style:?} heads {heads} hd {hd} dim {rd} pos {pos} n {n}"),
                    &down(&mut b, &gx),
                    &cx.data,
                    1e-6,
                );
            }
        }
    }
}

/// Attention after writing `n` new rows at `pos` into caches already holding `pos` random
/// positions: GPU vs CPU twin, output and cache contents.
#[allow(clippy::too_many_arguments)]
fn attention_case(
    b: &mut CudaBackend,
    cpu: &mut CpuBackend,
    rng: &mut Rng,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    pos: usize,
    n: usize,
    window: Option<usize>,
) {
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
    let q = rng.vec(n * heads * hd, 3.0);
    let k = rng.vec(n * kvd, 1.0);
    let v = rng.vec(n * kvd, 1.0);
    let mut kc = rng.vec(ctx * kvd, 1.0);
    let mut vc = rng.vec(ctx * kvd, 1.0);
    // Positions past the new rows hold NaN: reading them would poison the output.
    for c in [&mut kc, &mut vc] {
        c[(pos + n) * kvd..].fill(f32::NAN);
    }
    let mut gkv = b.kv_from_host(ctx, kvd, &kc, &vc).unwrap();
    let mut ckv = KvCache {
        k: kc,
        v: vc,
        kv_dim: kvd,
    };
    let (gq, gk, gv) = (
        up(b, n, heads * hd, &q),
        up(b, n, kvd, &k),
        up(b, n, kvd, &v),
    );
    let mut gout = poisoned(b, n, heads * hd);
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
    let what = format!(
        "attention heads {heads}/{kv_heads} hd {hd} pos {pos} n {n} window {window:?} (splits {})",
        b.attn_splits(&shape, pos + n, n)
    );
    check(&what, &down(b, &gout), &cout.data, 5e-5);
    let (gk_all, gv_all) = b.kv_to_host(&gkv).unwrap();
    let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let live = (pos + n) * kvd;
    assert!(
        bits(&gk_all[..live]) == bits(&ckv.k[..live])
            && bits(&gv_all[..live]) == bits(&ckv.v[..live]),
        "{what}: caches differ"
    );
}

#[test]
#[ignore = "needs a GPU"]
fn attention_matches_cpu_for_every_gqa_ratio_and_context() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("attention_matches_cpu_for_every_gqa_ratio_and_context");
    // (heads, kv heads): ratios 1, 4, 6, 7, 8, and 16 (two head groups per kv head).
    let heads = [
        (4usize, 4usize),
        (32, 8),
        (12, 2),
        (14, 2),
        (32, 4),
        (16, 1),
    ];
    for &(h, kvh) in &heads {
        for hd in [64usize, 128] {
            for pos in [0usize, 1, 15, 16, 127, 1000, 4095] {
                attention_case(&mut b, &mut cpu, &mut rng, h, kvh, hd, pos, 1, None);
            }
            attention_case(&mut b, &mut cpu, &mut rng, h, kvh, hd, 37, 9, None);
        }
    }
    // Odd head sizes take the partial-lane paths; long contexts the most splits.
    attention_case(&mut b, &mut cpu, &mut rng, 6, 3, 18, 300, 2, None);
    attention_case(&mut b, &mut cpu, &mut rng, 8, 8, 256, 77, 1, None);
    attention_case(&mut b, &mut cpu, &mut rng, 32, 8, 64, 32_767, 1, None);
    attention_case(&mut b, &mut cpu, &mut rng, 12, 2, 128, 20_000, 3, None);
    // Sliding window.
    attention_case(&mut b, &mut cpu, &mut rng, 8, 2, 64, 100, 4, Some(7));
    attention_case(&mut b, &mut cpu, &mut rng, 8, 2, 64, 3, 1, Some(16));
}

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
fn sampler_probs(logits: &[f32], t: f32, top_k: usize, top_p: f32, min_p: f32) -> Vec<f64> {
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
    let mut work = s.alloc_zeros::<f32>(vocab).unwrap();
    let mut out = s.alloc_zeros::<u32>(1).unwrap();
    let mut state = s.clone_htod(&vec![rng.next_u64()]).unwrap();
    // Under emulation one draw is a 1024-thread block run on the CPU (~5 ms): fewer draws,
    // the same 5-sigma bound (it widens with 1/sqrt(draws)).
    let draws = if super::emulated() { 2_000 } else { 20_000 };
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
    let mut work = s.alloc_zeros::<f32>(big).unwrap();
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
    let mut work = s.alloc_zeros::<f32>(vocab).unwrap();
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
        let mut work = s.alloc_zeros::<f32>(vocab).unwrap();
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
    let mut work = s.alloc_zeros::<f32>(vocab).unwrap();
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

// ---------------------------------------------------------------- GGML block formats

const BLOCK_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// A `rows x cols` matrix quantized to `ty` by the CPU quantizer from values uniform in
/// ±scale, and the values its blocks hold (the CPU reference dequantizer's reading).
fn quant_weight(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    scale: f32,
) -> (Weight, Vec<f32>) {
    let vals = rng.vec(rows * cols, scale);
    let mut bytes = Vec::new();
    for r in 0..rows {
        bytes.extend(tachyon::quant::quantize(
            ty,
            &vals[r * cols..(r + 1) * cols],
        ));
    }
    let mut exact = vec![0f32; rows * cols];
    tachyon::quant::dequantize(ty, &bytes, &mut exact).unwrap_or_else(|e| panic!("{e}"));
    let len = bytes.len();
    let w = Weight::new("test", ty, rows, cols, Arc::new(HostBytes(bytes)), 0, len)
        .unwrap_or_else(|e| panic!("{e}"));
    (w, exact)
}

/// The quantized GEMV (dequantizing in registers) against a float64 dot product over the
/// values the blocks hold and against the CPU backend's exact path, for every block format,
/// odd row counts and 1 to 33 activation rows; the fused SwiGLU and bias forms; and the
/// embedding gather from a quantized table, bit for bit against the CPU dequantizer.
#[test]
#[ignore = "needs a GPU"]
fn quantized_matmul_and_embed_match_the_reference_dequantizer() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng =
        Rng::from_env_or_clock("quantized_matmul_and_embed_match_the_reference_dequantizer");
    for ty in BLOCK_TYPES {
        let qk = ty.block_len();
        let shapes = [
            (1usize, qk),
            (3, 2 * qk),
            (7, 4096),
            (151, 2048),
            (896, 4864),
            (4097, qk),
        ];
        for &(rows, cols) in &shapes {
            for n in [1usize, 3, 4, 5, 9, 33] {
                let (w, wf) = quant_weight(&mut rng, ty, rows, cols, 1.0 / (cols as f32).sqrt());
                let x = rng.vec(n * cols, 1.0);
                let m = b.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
                let xd = up(&mut b, n, cols, &x);
                let mut out = poisoned(&mut b, n, rows);
                b.matmul(&xd, &m, n, &mut out)
                    .unwrap_or_else(|e| panic!("{e}"));
                let got = down(&mut b, &out);
                let mut want_cpu = cpu_act(rows, &vec![0.0; n * rows]);
                cpu.matmul(&cpu_act(cols, &x), &w, n, &mut want_cpu)
                    .unwrap_or_else(|e| panic!("{e}"));
                for t in 0..n {
                    let (want, abs) = matvec_f64(&wf, rows, cols, &x[t * cols..(t + 1) * cols]);
                    let what = format!("{ty} [{rows}, {cols}] row {t} of {n}");
                    check_matvec(&what, &got[t * rows..(t + 1) * rows], &want, &abs, cols);
                    check_matvec(
                        &format!("{what} (cpu twin)"),
                        &want_cpu.data[t * rows..(t + 1) * rows],
                        &want,
                        &abs,
                        cols,
                    );
                }
            }
        }
        // Fused gate/up SwiGLU and bias on a quantized pair, against the separate products.
        let (rows, cols, n) = (67usize, 4 * qk, 3usize);
        let (wg, _) = quant_weight(&mut rng, ty, rows, cols, 0.2);
        let (wu, _) = quant_weight(&mut rng, ty, rows, cols, 0.2);
        let x = rng.vec(n * cols, 1.0);
        let (mg, mu) = (
            b.upload_matrix(&wg).unwrap_or_else(|e| panic!("{e}")),
            b.upload_matrix(&wu).unwrap_or_else(|e| panic!("{e}")),
        );
        let xd = up(&mut b, n, cols, &x);
        let (mut gate, mut upo) = (poisoned(&mut b, n, rows), poisoned(&mut b, n, rows));
        b.gate_up_swiglu(&xd, &mg, &mu, n, &mut gate, &mut upo)
            .unwrap_or_else(|e| panic!("{e}"));
        let fused = down(&mut b, &gate);
        let (mut g2, mut u2) = (poisoned(&mut b, n, rows), poisoned(&mut b, n, rows));
        b.matmul(&xd, &mg, n, &mut g2)
            .unwrap_or_else(|e| panic!("{e}"));
        b.matmul(&xd, &mu, n, &mut u2)
            .unwrap_or_else(|e| panic!("{e}"));
        let (g2, u2) = (down(&mut b, &g2), down(&mut b, &u2));
        let want: Vec<f32> = g2
            .iter()
            .zip(&u2)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        check(&format!("{ty} fused SwiGLU"), &fused, &want, 1e-5);

        // Embedding rows from a quantized table: the same values as the CPU dequantizer.
        let (vocab, dim) = (300usize, 3 * qk);
        let (w, _) = quant_weight(&mut rng, ty, vocab, dim, 1.0);
        let tokens: Vec<u32> = (0..5)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        let table = b.upload_matrix(&w).unwrap_or_else(|e| panic!("{e}"));
        let mut out = poisoned(&mut b, 5, dim);
        b.embed(&table, &tokens, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut want = cpu_act(dim, &vec![0.0; 5 * dim]);
        cpu.embed(&w, &tokens, &mut want)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = down(&mut b, &out);
        assert!(
            got.iter()
                .zip(&want.data)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{ty}: quantized embedding rows differ from the CPU dequantizer"
        );
    }
}
