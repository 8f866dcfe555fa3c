//! The tensor-core prefill attention (kernels/attention_prefill.cu: `Ops::attention` of
//! 16+ rows over a BF16 cache at head sizes 64 and 128) against its CPU twin, on fresh
//! random inputs: GQA ratios 1, 2 and 7, chunks that are not a multiple of the 64-pair
//! tile or the 32-position key tile (16, 17, 33, 70, 130 rows), a prompt continuing a
//! cached prefix (pos > 0) and sliding windows. The new k and v and the cached prefix are
//! BF16 values already, so both sides attend over the same numbers and what differs is the
//! kernel's arithmetic alone. Outputs are poisoned with NaN first; NaN never passes. Each
//! case runs twice: the kernel has no atomics and a fixed summation order, so the second
//! run must give the same bits.

use tachyon::backend::cpu::attention::KvCache;
use tachyon::backend::cpu::{CpuAct, CpuBackend};
use tachyon::backend::cuda::{
    CudaAct, CudaBackend, MAX_ATTN_SPLITS, attn_splits, call_splits, kv_decode, kv_encode,
    max_split_rows, prefill_on_tensor_cores, prefill_splits,
};
use tachyon::backend::{AttnShape, KvDtype, Ops};

use super::Rng;
use super::ops::{backend, rel};

#[derive(Clone, Copy, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Cached positions before the chunk.
    pos: usize,
    /// Rows of the chunk.
    n: usize,
    window: Option<usize>,
}

const fn case(heads: usize, kv_heads: usize, head_dim: usize, pos: usize, n: usize) -> Case {
    Case {
        heads,
        kv_heads,
        head_dim,
        pos,
        n,
        window: None,
    }
}

/// Small shapes (the emulator runs each thread as a fiber; a case is ~1 s on 2 cores) that
/// cover each path: the threshold row count, a single partial pair tile, several pair tiles
/// whose rows straddle tiles (GQA 7), a prefix not aligned to the key tile, windows that
/// start mid-tile and that skip whole tiles, and long prefixes that cut each block's key
/// tiles into splits merged by `attn_decode_reduce` (some splits of a block empty).
const CASES: [Case; 10] = [
    case(4, 4, 64, 0, 17),   // GQA 1, the first chunk
    case(8, 4, 128, 37, 70), // GQA 2 after a prefix
    case(7, 1, 64, 5, 130),  // GQA 7: pairs straddle the 64-pair tiles
    case(7, 1, 128, 0, 33),  // GQA 7 at 128
    case(2, 2, 128, 64, 16), // the fewest rows that take this path, tile-aligned prefix
    Case {
        window: Some(24),
        ..case(4, 2, 64, 90, 40)
    },
    Case {
        window: Some(7),
        ..case(7, 1, 128, 3, 20)
    },
    Case {
        window: Some(100),
        ..case(6, 3, 64, 150, 70)
    },
    case(4, 2, 128, 600, 20), // 5 splits
    Case {
        window: Some(300),
        ..case(7, 1, 64, 700, 24) // 3 splits of a window
    },
];

/// The emulated H200's SM count (what the split counts below assume).
const EMULATED_SMS: usize = 132;

/// Largest accepted relative error (of the largest |output|). Q and P enter the MMAs as
/// bf16 hi + lo, ~2^-16 of each value lost (K and V are exact); a score is then off by at
/// most 2^-16 of sum |q k| / sqrt(hd) (~2^-16 * 0.75 sqrt(hd) <= 1.3e-4 for these inputs,
/// random signs give ~100x less), an output by that through the softmax plus 2^-16 of
/// sum p |v| <= 1, over outputs of ~0.3+ at these short ranges. Measured under the
/// emulator: 2.4e-6 to 4.8e-6 (the test prints it); 1e-4 leaves room for the GPU's
/// unspecified MMA summation order while still failing a one-bf16 path (Q and P as hi
/// only: 1.9e-3 measured on the first case).
const TOLERANCE: f64 = 1e-4;

fn bf16(v: &[f32]) -> Vec<f32> {
    kv_decode(KvDtype::Bf16, &kv_encode(KvDtype::Bf16, v))
}

fn shape(c: &Case) -> AttnShape {
    AttnShape {
        n_heads: c.heads,
        n_kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        window: c.window,
    }
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

fn inputs(rng: &mut Rng, c: &Case, ctx: usize) -> Inputs {
    let kvd = c.kv_heads * c.head_dim;
    let mut k_cache = bf16(&rng.vec(ctx * kvd, 1.0));
    let mut v_cache = bf16(&rng.vec(ctx * kvd, 1.0));
    // The chunk's positions and past them hold NaN: the append writes the ones, the kernel
    // must never read the others.
    for cache in [&mut k_cache, &mut v_cache] {
        cache[c.pos * kvd..].fill(f32::NAN);
    }
    Inputs {
        // Scores with a standard deviation near 1: softmax neither flat nor one-hot.
        q: rng.vec(c.n * c.heads * c.head_dim, 3.0),
        k: bf16(&rng.vec(c.n * kvd, 1.0)),
        v: bf16(&rng.vec(c.n * kvd, 1.0)),
        k_cache,
        v_cache,
    }
}

fn up(b: &mut CudaBackend, rows: usize, width: usize, data: &[f32]) -> CudaAct {
    b.act_from_host(rows, width, data)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The output and the two caches after one GPU call on a fresh cache.
fn gpu_run(b: &mut CudaBackend, c: &Case, x: &Inputs, ctx: usize) -> [Vec<f32>; 3] {
    let (width, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    b.set_kv_dtype(KvDtype::Bf16);
    let mut kv = b
        .kv_from_host(ctx, kvd, &x.k_cache, &x.v_cache)
        .unwrap_or_else(|e| panic!("{e}"));
    let q = up(b, c.n, width, &x.q);
    let k = up(b, c.n, kvd, &x.k);
    let v = up(b, c.n, kvd, &x.v);
    let mut out = up(b, c.n, width, &vec![f32::NAN; c.n * width]);
    b.attention(&q, &k, &v, &mut kv, shape(c), c.pos, c.n, &mut out)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let out = b
        .act_to_host(&out)
        .unwrap_or_else(|e| panic!("{c:?}: kernel failed: {e}"));
    let (kc, vc) = b.kv_to_host(&kv).unwrap_or_else(|e| panic!("{e}"));
    [out, kc, vc]
}

fn cpu_run(cpu: &mut CpuBackend, c: &Case, x: &Inputs) -> (Vec<f32>, KvCache) {
    let (width, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let act = |w: usize, d: &[f32]| CpuAct {
        data: d.to_vec(),
        width: w,
    };
    let mut kv = KvCache {
        k: x.k_cache.clone(),
        v: x.v_cache.clone(),
        kv_dim: kvd,
    };
    let mut out = act(width, &vec![f32::NAN; c.n * width]);
    cpu.attention(
        &act(width, &x.q),
        &act(kvd, &x.k),
        &act(kvd, &x.v),
        &mut kv,
        shape(c),
        c.pos,
        c.n,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (out.data, kv)
}

#[test]
#[ignore = "needs a GPU"]
fn prefill_attention_matches_cpu() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("prefill_attention_matches_cpu");
    let mut split = false;
    for c in &CASES {
        let splits = prefill_splits(EMULATED_SMS, &shape(c), c.pos, c.n);
        split |= splits > 1;
        assert!(
            prefill_on_tensor_cores(KvDtype::Bf16, &shape(c), c.n, true).is_some(),
            "{c:?} must take the tensor-core path"
        );
        let ctx = c.pos + c.n + 5;
        let live = (c.pos + c.n) * c.kv_heads * c.head_dim;
        let x = inputs(&mut rng, c, ctx);
        let [out, kc, vc] = gpu_run(&mut b, c, &x, ctx);
        let (want, ckv) = cpu_run(&mut cpu, c, &x);
        assert!(
            want.iter().all(|v| v.is_finite()),
            "{c:?}: the CPU twin gave a non-finite value"
        );
        let e = rel(&out, &want);
        println!("{c:?}: {splits} splits on the emulator, relative error {e:.2e}");
        assert!(
            e <= TOLERANCE,
            "{c:?}: relative error {e:e} > {TOLERANCE:e}"
        );
        // The appended rows are bf16 values already: the caches agree exactly.
        for (what, g, w) in [("k", &kc, &ckv.k), ("v", &vc, &ckv.v)] {
            let same = g[..live]
                .iter()
                .zip(&w[..live])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{c:?}: the {what} cache differs from the CPU's");
        }
        let [again, _, _] = gpu_run(&mut b, c, &x, ctx);
        let same = out
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{c:?}: a second run gave other bits");
    }
    assert!(
        split || !super::emulated(),
        "no case ran more than one split"
    );
}

/// A NaN score comes out as NaN, never hidden: one cached key of kv head 0 holds a NaN, so
/// every (row, head) of that kv head whose window reaches its position gives NaN (as the CPU
/// twin does), the rest match the CPU. Cases: the NaN in the first key tile of one split,
/// in a later split of five, and in a new row that later rows' windows have passed (those
/// rows' block still multiplies it: the mask must drop the NaN score, not add it).
#[test]
#[ignore = "needs a GPU"]
fn prefill_attention_keeps_a_nan_score() {
    let mut b = backend();
    let mut cpu = CpuBackend::new(true, false);
    let mut rng = Rng::from_env_or_clock("prefill_attention_keeps_a_nan_score");
    // (case, the NaN key's position, whether every row of kv head 0 sees it)
    for (c, bad, all_see) in [
        (case(8, 2, 64, 10, 20), 3usize, true),
        (case(4, 2, 128, 600, 20), 450, true),
        (
            Case {
                window: Some(16),
                ..case(4, 2, 64, 30, 30)
            },
            35, // in the new rows; rows 21.. no longer see it, but their block loads it
            false,
        ),
    ] {
        let ctx = c.pos + c.n + 1;
        let kvd = c.kv_heads * c.head_dim;
        let mut x = inputs(&mut rng, &c, ctx);
        if bad < c.pos {
            x.k_cache[bad * kvd + 5] = f32::NAN;
        } else {
            x.k[(bad - c.pos) * kvd + 5] = f32::NAN;
        }
        let [out, _, _] = gpu_run(&mut b, &c, &x, ctx);
        let (want, _) = cpu_run(&mut cpu, &c, &x);
        let (hd, group) = (c.head_dim, c.heads / c.kv_heads);
        let mut nan_rows = 0;
        for row in 0..c.n {
            for h in 0..c.heads {
                let at = (row * c.heads + h) * hd;
                let (g, w) = (&out[at..at + hd], &want[at..at + hd]);
                if w.iter().all(|v| v.is_nan()) {
                    assert!(h < group, "{c:?}: the CPU twin gave NaN at head {h}");
                    nan_rows += 1;
                    assert!(
                        g.iter().all(|v| v.is_nan()),
                        "{c:?}: row {row} head {h} sees the NaN key but gave {:?}",
                        &g[..4]
                    );
                } else {
                    let e = rel(g, w);
                    assert!(
                        e <= TOLERANCE,
                        "{c:?} row {row} head {h}: relative error {e:e}"
                    );
                }
            }
        }
        assert!(nan_rows > 0, "{c:?}: no row saw the NaN key");
        assert_eq!(
            nan_rows == c.n * group,
            all_see,
            "{c:?}: {nan_rows} NaN (row, head) pairs"
        );
    }
}

/// The dispatch rule: BF16 cache, head size 64 or 128, the position on the host, 16+ rows.
#[test]
fn prefill_dispatch_rule() {
    let s = |hd| AttnShape {
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: hd,
        window: None,
    };
    assert_eq!(
        prefill_on_tensor_cores(KvDtype::Bf16, &s(64), 16, true),
        Some(0)
    );
    assert_eq!(
        prefill_on_tensor_cores(KvDtype::Bf16, &s(128), 500, true),
        Some(1)
    );
    assert_eq!(
        prefill_on_tensor_cores(KvDtype::Bf16, &s(128), 15, true),
        None
    );
    assert_eq!(
        prefill_on_tensor_cores(KvDtype::Bf16, &s(128), 64, false),
        None
    );
    for kv in [KvDtype::F32, KvDtype::F16] {
        assert_eq!(prefill_on_tensor_cores(kv, &s(64), 64, true), None);
    }
    for hd in [32, 80, 96, 256] {
        assert_eq!(
            prefill_on_tensor_cores(KvDtype::Bf16, &s(hd), 64, true),
            None
        );
    }
    // Splits: a 64-row chunk of 8 kv heads x 4 makes 32 blocks; 132 SMs want 9 splits, a
    // 4k prefix allows them, a short one or a window caps them at a split per 128
    // positions, a long chunk needs none.
    let llama = AttnShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        window: None,
    };
    assert_eq!(prefill_splits(132, &llama, 4096, 64), 9);
    assert_eq!(prefill_splits(132, &llama, 100, 64), 2);
    assert_eq!(prefill_splits(132, &llama, 0, 2048), 1);
    let windowed = AttnShape {
        window: Some(128),
        ..llama
    };
    assert_eq!(prefill_splits(132, &windowed, 4096, 64), 2);
    // The split count of a call: the prefill kernel's when it takes the call.
    assert_eq!(
        call_splits(132, KvDtype::Bf16, &llama, (4096, true), 64, 8192),
        9
    );
    assert_eq!(
        call_splits(132, KvDtype::F32, &llama, (4096, true), 64, 8192),
        attn_splits(132, &llama, 4160, 64)
    );
}

/// The partials reserved at load (`max_split_rows`) cover every attention call of up to
/// `max_batch` rows at any position, host or device, whichever kernel takes it; and for a
/// long prefill chunk they stay far below one `MAX_ATTN_SPLITS` per row.
#[test]
fn reserved_partials_cover_every_call() {
    let llama = AttnShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        window: None,
    };
    let shapes = [
        llama,
        AttnShape {
            n_heads: 12,
            n_kv_heads: 2,
            head_dim: 128,
            window: None,
        },
        AttnShape {
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            window: Some(100),
        },
        AttnShape {
            n_heads: 7,
            n_kv_heads: 7,
            head_dim: 80,
            window: None,
        },
    ];
    for s in &shapes {
        for sm in [1, 16, 132] {
            for kv in [KvDtype::Bf16, KvDtype::F32] {
                for max_batch in [1, 16, 65, 300] {
                    let bound = max_split_rows(sm, kv, s, max_batch);
                    for n in 1..=max_batch {
                        for pos in [0, 1, 100, 4096, 1 << 20] {
                            let need = n * call_splits(sm, kv, s, (pos, true), n, pos + n);
                            assert!(need <= bound, "{s:?} sm {sm} {kv:?} n {n} pos {pos}");
                        }
                    }
                    for ctx in [16, 4096, 1 << 20] {
                        let need = call_splits(sm, kv, s, (0, false), 1, ctx);
                        assert!(need <= bound, "{s:?} sm {sm} {kv:?} device pos, ctx {ctx}");
                    }
                }
            }
        }
    }
    let whole_prompt = max_split_rows(132, KvDtype::Bf16, &llama, 2048);
    assert!(
        (2048..2048 * MAX_ATTN_SPLITS / 16).contains(&whole_prompt),
        "{whole_prompt}"
    );
}
