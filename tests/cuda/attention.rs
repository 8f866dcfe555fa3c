//! The fused decode attention (`Ops::rope_attention` on one row: kernels/rope_attention.cu)
//! against its CPU twin, the default form in the fine ops (head norms, rope, rope,
//! attention), on fresh random inputs: every instantiated head size, GQA ratios 1, 4, 7, 8
//! and 16 (two head blocks per kv head), contexts from the first position to past many
//! splits, sliding windows, qwen3's q/k norms, both rope pairings and partial rotation, the
//! position from the host and from device memory (a replayed graph's), f32, bf16 and f16
//! caches (the CPU keeps f32 and reads what the GPU's cache holds). Outputs are poisoned
//! with NaN first; NaN never passes. Each case runs twice: the second run must give the same
//! bits (the splits merge in a fixed order, and the completion counters are left at zero).

use cudarc::driver::CudaSlice;
use tachyon::backend::cpu::attention::KvCache;
use tachyon::backend::cpu::{CpuAct, CpuBackend};
use tachyon::backend::cuda::{CudaAct, CudaBackend, kv_decode, kv_encode};
use tachyon::backend::{AttnShape, HeadNorms, KvDtype, Ops, Position};
use tachyon::format::{Rope, RopeStyle};

use super::Rng;
use super::ops::{backend, rel};

/// One fused call: a query row at `pos` over a cache holding `pos` random positions.
#[derive(Clone, Copy, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Leading dimensions of each head that rotate.
    rope_dim: usize,
    pos: usize,
    window: Option<usize>,
    norms: bool,
    style: RopeStyle,
    /// The position read from device memory.
    device_pos: bool,
    /// The GPU cache's element type (the CPU's is f32).
    kv: KvDtype,
}

fn case(heads: usize, kv_heads: usize, head_dim: usize, pos: usize) -> Case {
    Case {
        heads,
        kv_heads,
        head_dim,
        rope_dim: head_dim,
        pos,
        window: None,
        norms: false,
        style: if pos.is_multiple_of(2) {
            RopeStyle::Neox
        } else {
            RopeStyle::Interleaved
        },
        device_pos: pos.is_multiple_of(3),
        kv: KvDtype::F32,
    }
}

/// The case list: small shapes that still cover each kernel path (odd group sizes, a
/// position group with idle lanes at head sizes 80 and 96, the new position alone in its
/// split, chunks past `MIN_CHUNK`, many splits).
fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    for hd in [16usize, 32, 64, 80, 96, 128, 256] {
        c.push(case(4, 4, hd, 100)); // GQA 1
        c.push(case(8, 2, hd, 257)); // GQA 4, a few splits
        c.push(case(7, 1, hd, 40)); // GQA 7, two chunks
    }
    c.push(case(8, 1, 64, 0)); // GQA 8, the first position
    c.push(case(8, 1, 128, 31)); // one chunk, exactly MIN_CHUNK positions
    c.push(case(8, 1, 64, 32)); // the new position alone in the second split
    c.push(case(16, 1, 64, 129)); // GQA 16: two head blocks per kv head
    c.push(case(32, 8, 64, 4100)); // the 1B shape past 4k: every split
    c.push(Case {
        window: Some(50),
        ..case(8, 2, 64, 300)
    });
    c.push(Case {
        window: Some(16),
        ..case(8, 2, 128, 10)
    });
    c.push(Case {
        window: Some(1),
        ..case(4, 2, 32, 77)
    });
    for (h, kvh, hd, pos) in [
        (8usize, 4usize, 128usize, 200usize),
        (4, 2, 64, 65),
        (16, 8, 128, 3),
    ] {
        c.push(Case {
            norms: true,
            ..case(h, kvh, hd, pos)
        });
    }
    c.push(Case {
        rope_dim: 64,
        ..case(4, 2, 96, 90)
    });
    c.push(Case {
        rope_dim: 10,
        ..case(2, 1, 16, 5)
    });
    // The 16-bit caches: every head size once, GQA 4 and 7, a window, the norms.
    for hd in [16usize, 32, 64, 80, 96, 128, 256] {
        for kv in [KvDtype::Bf16, KvDtype::F16] {
            let (h, kvh) = if hd.is_multiple_of(32) {
                (8, 2)
            } else {
                (7, 1)
            };
            c.push(Case {
                kv,
                ..case(h, kvh, hd, 70 + hd)
            });
        }
    }
    c.push(Case {
        kv: KvDtype::Bf16,
        window: Some(40),
        norms: true,
        ..case(8, 2, 128, 301)
    });
    c.push(Case {
        kv: KvDtype::Bf16,
        ..case(32, 8, 64, 4100)
    });
    c
}

/// Largest accepted relative error of the output: the CPU reads the cache the GPU holds
/// (its elements widened to f32), so what differs is the order of the f32 sums and, with a
/// 16-bit cache, the new k and v, which the GPU rounds to the cache's type before using
/// them (2^-9 relative for bf16, 2^-12 for f16, through one score and one value).
fn tolerance(kv: KvDtype) -> (f64, f64) {
    // (output, the new k and v against the CPU's f32)
    match kv {
        KvDtype::F32 => (5e-5, 1e-5),
        KvDtype::F16 => (2e-3, 1e-3),
        KvDtype::Bf16 => (1e-2, 4e-3),
    }
}

fn rope(c: &Case) -> Rope {
    Rope {
        style: c.style,
        theta: 10_000.0,
        dim: c.rope_dim,
        linear_factor: 1.0,
        freq_factors: None,
    }
}

fn up(b: &mut CudaBackend, rows: usize, width: usize, data: &[f32]) -> CudaAct {
    b.act_from_host(rows, width, data)
        .unwrap_or_else(|e| panic!("{e}"))
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

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    assert!(
        want.iter().all(|v| v.is_finite()),
        "{what}: the CPU twin gave a non-finite value"
    );
    let e = rel(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// What one case's inputs are, made once and given to both backends.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
}

fn inputs(rng: &mut Rng, c: &Case, ctx: usize) -> Inputs {
    let (hd, kvd) = (c.head_dim, c.kv_heads * c.head_dim);
    // Scores with a standard deviation near 1: softmax neither flat nor one-hot.
    let q_scale = if c.norms { 1.0 } else { 3.0 };
    let mut k_cache = rng.vec(ctx * kvd, 1.0);
    let mut v_cache = rng.vec(ctx * kvd, 1.0);
    // The new position and past it hold NaN: the kernel writes the one and never reads the
    // others.
    for cache in [&mut k_cache, &mut v_cache] {
        cache[c.pos * kvd..].fill(f32::NAN);
    }
    // What the GPU's cache holds, so that both sides read the same cached values.
    let round = |v: &[f32]| kv_decode(c.kv, &kv_encode(c.kv, v));
    let (k_cache, v_cache) = (round(&k_cache), round(&v_cache));
    Inputs {
        q: rng.vec(c.heads * hd, q_scale),
        k: rng.vec(kvd, 1.0),
        v: rng.vec(kvd, 1.0),
        k_cache,
        v_cache,
        q_norm: rng.vec(hd, 2.0),
        k_norm: rng.vec(hd, 2.0),
    }
}

/// The fused call on the GPU: the output and the caches.
fn gpu_run(
    b: &mut CudaBackend,
    c: &Case,
    x: &Inputs,
    ctx: usize,
    pos_buf: &CudaSlice<i32>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, kvd) = (c.head_dim, c.kv_heads * c.head_dim);
    let shape = shape(c);
    let table = b
        .rope_table(&rope(c), ctx)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut q = up(b, 1, c.heads * hd, &x.q);
    let mut k = up(b, 1, kvd, &x.k);
    let v = up(b, 1, kvd, &x.v);
    let qn = b.upload_vector(&x.q_norm).unwrap_or_else(|e| panic!("{e}"));
    let kn = b.upload_vector(&x.k_norm).unwrap_or_else(|e| panic!("{e}"));
    let norms = c.norms.then_some(HeadNorms {
        q: &qn,
        k: &kn,
        eps: 1e-6,
    });
    b.set_kv_dtype(c.kv);
    let mut kv = b
        .kv_from_host(ctx, kvd, &x.k_cache, &x.v_cache)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = up(b, 1, c.heads * hd, &vec![f32::NAN; c.heads * hd]);
    let pos = if c.device_pos {
        Position::Device(pos_buf)
    } else {
        Position::Host(c.pos)
    };
    b.rope_attention(
        &mut q, &mut k, &v, norms, &table, &mut kv, shape, pos, 1, &mut out,
    )
    .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let out = down(b, &out);
    let (kc, vc) = b.kv_to_host(&kv).unwrap_or_else(|e| panic!("{e}"));
    (out, kc, vc)
}

fn shape(c: &Case) -> AttnShape {
    AttnShape {
        n_heads: c.heads,
        n_kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        window: c.window,
    }
}

/// The CPU twin: the default form of `rope_attention`.
fn cpu_run(cpu: &mut CpuBackend, c: &Case, x: &Inputs, ctx: usize) -> (Vec<f32>, KvCache) {
    let (hd, kvd) = (c.head_dim, c.kv_heads * c.head_dim);
    let table = cpu
        .rope_table(&rope(c), ctx)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut q, mut k, v) = (
        cpu_act(c.heads * hd, &x.q),
        cpu_act(kvd, &x.k),
        cpu_act(kvd, &x.v),
    );
    let mut kv = KvCache {
        k: x.k_cache.clone(),
        v: x.v_cache.clone(),
        kv_dim: kvd,
    };
    let norms = c.norms.then_some(HeadNorms {
        q: &x.q_norm,
        k: &x.k_norm,
        eps: 1e-6,
    });
    let mut out = cpu_act(c.heads * hd, &vec![f32::NAN; c.heads * hd]);
    cpu.rope_attention(
        &mut q,
        &mut k,
        &v,
        norms,
        &table,
        &mut kv,
        shape(c),
        c.pos,
        1,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (out.data, kv)
}

#[test]
#[ignore = "needs a GPU"]
fn fused_rope_attention_matches_cpu() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("fused_rope_attention_matches_cpu");
    let all = cases();
    for c in &all {
        let ctx = c.pos + 3;
        let kvd = c.kv_heads * c.head_dim;
        let x = inputs(&mut rng, c, ctx);
        let pos_buf = b
            .device()
            .stream()
            .clone_htod(&[c.pos as i32])
            .unwrap_or_else(|e| panic!("{e}"));
        let (out, kc, vc) = gpu_run(&mut b, c, &x, ctx, &pos_buf);
        let (want, ckv) = cpu_run(&mut cpu, c, &x, ctx);
        let what = format!("{c:?}");
        let (tol_out, tol_new) = tolerance(c.kv);
        // Softmax over up to 4k positions merged across splits (as Ops::attention's cases).
        check(&format!("{what}: out"), &out, &want, tol_out);
        let (old, live) = (c.pos * kvd, (c.pos + 1) * kvd);
        // The cached rows before the new one are untouched; the new k went through the same
        // norm and rope arithmetic in another order (rope's own tolerance, the norm's), and
        // the new k and v are rounded to the cache's type.
        assert!(
            kc[..old] == ckv.k[..old] && vc[..old] == ckv.v[..old],
            "{what}: the cached positions changed"
        );
        let tol_k = if c.kv == KvDtype::F32 && !c.norms {
            1e-6
        } else {
            tol_new
        };
        check(
            &format!("{what}: new k"),
            &kc[old..live],
            &ckv.k[old..live],
            tol_k,
        );
        if c.kv == KvDtype::F32 {
            assert!(
                vc[old..live] == ckv.v[old..live],
                "{what}: new v not copied"
            );
        } else {
            check(
                &format!("{what}: new v"),
                &vc[old..live],
                &ckv.v[old..live],
                tol_new,
            );
        }
        assert!(
            kc[live..].iter().chain(&vc[live..]).all(|v| v.is_nan()),
            "{what}: wrote past the new position"
        );
        // Again: the same bits (fixed-order merge; the counters were left at zero).
        let (again, _, _) = gpu_run(&mut b, c, &x, ctx, &pos_buf);
        assert!(
            out.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: a second run gave other bits"
        );
    }
    println!("fused attention: {} cases", all.len());
}

/// A NaN in one cached key comes out as NaN in every head of its kv head and only there,
/// whichever split holds it; the other heads match the CPU.
#[test]
#[ignore = "needs a GPU"]
fn fused_rope_attention_keeps_a_nan_score() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("fused_rope_attention_keeps_a_nan_score");
    for (pos, bad) in [(1usize, 0usize), (40, 39), (300, 17)] {
        let c = case(8, 2, 64, pos);
        let ctx = pos + 1;
        let mut x = inputs(&mut rng, &c, ctx);
        x.k_cache[bad * 128 + 5] = f32::NAN; // kv head 0, one dimension
        let pos_buf = b
            .device()
            .stream()
            .clone_htod(&[pos as i32])
            .unwrap_or_else(|e| panic!("{e}"));
        let (out, _, _) = gpu_run(&mut b, &c, &x, ctx, &pos_buf);
        let (want, _) = cpu_run(&mut cpu, &c, &x, ctx);
        for h in 0..8 {
            let (g, w) = (&out[h * 64..(h + 1) * 64], &want[h * 64..(h + 1) * 64]);
            if h < 4 {
                assert!(
                    w.iter().all(|v| v.is_nan()),
                    "pos {pos}: the CPU hid the NaN"
                );
                assert!(
                    g.iter().all(|v| v.is_nan()),
                    "pos {pos} NaN key at {bad}: head {h} gave {:?}",
                    &g[..4]
                );
            } else {
                check(&format!("pos {pos} head {h}"), g, w, 5e-5);
            }
        }
    }
}
