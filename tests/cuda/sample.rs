//! The device draw's paths (kernels/sample_logits.cu) against the CPU sampler's distribution
//! (`ops::sampler_probs`, itself checked against `Sampler`): each vocabulary and filter set
//! below is chosen to take one path: top-k among sorted candidates (ties at the threshold
//! included), top-p among them, the by-id draw over several blocks (no top-k, no top-p), and
//! the whole-vocabulary fallback (more candidates than the final block sorts). Each path also
//! masked, all-NaN, and replayed from one seed.

use cudarc::driver::CudaSlice;
use tachyon::backend::cuda::CudaBackend;
use tachyon::backend::cuda::launch::sample::SampleFilters;
use tachyon::engine::sampler::NO_TOKEN;

use super::Rng;
use super::ops::{backend, sampler_probs};

fn filters(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SampleFilters {
    SampleFilters {
        temperature,
        top_k,
        top_p,
        min_p,
    }
}

/// The path a draw took, read back from its scratch: the mode word and the candidate count
/// (words 8 and 3 of `SampleScratch`, kernels/sample_draw.cuh).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    TopK,
    TopP,
    ById,
    /// More than the 4096 candidates the final block sorts.
    Fallback,
    /// No token or greedy.
    Other,
}

fn path_of(work: &[f32]) -> Path {
    let (count, mode) = (work[3].to_bits(), work[8].to_bits());
    match mode {
        2 | 3 if count > 4096 => Path::Fallback,
        2 => Path::TopK,
        3 => Path::TopP,
        4 => Path::ById,
        _ => Path::Other,
    }
}

/// `draws` device draws from `logits` (among the ids `mask` allows) starting at rng `state`,
/// and the path the last one took; `out` is poisoned before each.
fn draw(
    b: &mut CudaBackend,
    logits: &[f32],
    mask: Option<&[u32]>,
    f: SampleFilters,
    state: u64,
    draws: usize,
) -> (Vec<u32>, Path) {
    let vocab = logits.len();
    let s = b.device().stream().clone();
    let gl = b
        .act_from_host(1, vocab, logits)
        .unwrap_or_else(|e| panic!("{e}"));
    let gm: Option<CudaSlice<u32>> = mask.map(|m| s.clone_htod(m).unwrap());
    let mut work = s
        .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
        .unwrap();
    let mut st = s.clone_htod(&[state]).unwrap();
    let ids = (0..draws)
        .map(|i| {
            let poison = if i % 2 == 0 { u32::MAX - 7 } else { 0 };
            let mut out = s.clone_htod(&[poison]).unwrap();
            let r = match &gm {
                None => b.sample(
                    &gl,
                    &mut work,
                    &mut out,
                    &mut st,
                    f.temperature,
                    f.top_k,
                    f.top_p,
                    f.min_p,
                ),
                Some(m) => b.sample_masked(&gl, m, &mut work, &mut out, &mut st, f),
            };
            r.unwrap_or_else(|e| panic!("{e}"));
            s.clone_dtoh(&out).unwrap()[0]
        })
        .collect();
    (ids, path_of(&s.clone_dtoh(&work).unwrap()))
}

fn allows(mask: &[u32], t: usize) -> bool {
    mask[t / 32] >> (t % 32) & 1 == 1
}

/// Device draws against the CPU distribution: never a token the CPU never draws, and the
/// frequency of each group of tokens within 5 sigma (+ 2e-3) of its probability. Groups:
/// the tokens in the CPU's order of likelihood, cut wherever 5% of the mass has gathered, so
/// every likely token is tested alone and the thousands of unlikely ones together. The draw
/// must have taken `path`. Then the same seed again: the same tokens.
fn check(
    b: &mut CudaBackend,
    rng: &mut Rng,
    logits: &[f32],
    mask: Option<&[u32]>,
    f: SampleFilters,
    path: Path,
    what: &str,
) {
    let draws = if super::emulated() { 400 } else { 20_000 };
    let mut reference = logits.to_vec();
    if let Some(m) = mask {
        for (t, l) in reference.iter_mut().enumerate() {
            if !allows(m, t) {
                *l = f32::NAN;
            }
        }
    }
    let want = sampler_probs(&reference, f.temperature, f.top_k, f.top_p, f.min_p);
    let state = rng.next_u64();
    let (got, took) = draw(b, logits, mask, f, state, draws);
    assert_eq!(took, path, "{what} {f:?}: the path taken");
    let mut hist = vec![0usize; logits.len()];
    for &id in &got {
        assert!(
            (id as usize) < logits.len() && want[id as usize] > 0.0,
            "{what} {f:?}: drew {id}, which the CPU never draws"
        );
        hist[id as usize] += 1;
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&t| want[t] > 0.0).collect();
    order.sort_by(|&a, &c| want[c].total_cmp(&want[a]));
    let (mut p, mut h, mut first) = (0.0f64, 0usize, 0usize);
    for (i, &t) in order.iter().enumerate() {
        p += want[t];
        h += hist[t];
        if p >= 0.05 || i + 1 == order.len() {
            let freq = h as f64 / draws as f64;
            let bound = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 2e-3;
            assert!(
                (freq - p).abs() <= bound,
                "{what} {f:?}: tokens {:?} drawn {freq:.4}, want {p:.4}",
                &order[first..=i.min(first + 8)]
            );
            (p, h, first) = (0.0, 0, i + 1);
        }
    }
    let (again, _) = draw(b, logits, mask, f, state, 24);
    assert_eq!(
        again,
        got[..24],
        "{what} {f:?}: the same seed drew other tokens"
    );
}

/// A mask allowing about 3 ids in 4, and the best id refused.
fn mask_for(rng: &mut Rng, logits: &[f32]) -> Vec<u32> {
    let mut m: Vec<u32> = (0..logits.len().div_ceil(32))
        .map(|_| (rng.next_u64() as u32) | (rng.next_u64() as u32))
        .collect();
    let best = tachyon::engine::sampler::argmax(logits) as usize;
    m[best / 32] &= !(1 << (best % 32));
    m
}

#[test]
#[ignore = "needs a GPU"]
fn device_sampling_paths_follow_the_cpu_distribution() {
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("device_sampling_paths_follow_the_cpu_distribution");
    // Several blocks per pass (4096 ids each), an odd tail, NaNs.
    let vocab = 9_001;
    let mut spread = rng.vec(vocab, 8.0);
    for t in (0..vocab).step_by(97) {
        spread[t] = f32::NAN;
    }
    // Ties at the top-k threshold: the 20th best value given to 30 more ids (lower id first).
    let mut tied = spread.clone();
    let mut order: Vec<usize> = (0..vocab).filter(|&t| !tied[t].is_nan()).collect();
    order.sort_by(|&a, &c| tied[c].total_cmp(&tied[a]).then(a.cmp(&c)));
    let kth = tied[order[19]];
    for &t in &order[200..230] {
        tied[t] = kth;
    }
    let cases = [
        // top-k among sorted candidates, with the other filters.
        ("top-k", &spread, filters(1.0, 40, 1.0, 0.0), Path::TopK),
        ("top-k", &spread, filters(0.7, 25, 0.8, 0.05), Path::TopK),
        ("top-k ties", &tied, filters(1.0, 25, 1.0, 0.0), Path::TopK),
        // top-p (no top-k): the mass cut bounds the candidates.
        ("top-p", &spread, filters(1.0, 0, 0.9, 0.0), Path::TopP),
        ("top-p", &spread, filters(1.3, 0, 0.6, 0.02), Path::TopP),
        // by id: no top-k, no top-p, with and without min-p.
        ("by id", &spread, filters(1.0, 0, 1.0, 0.0), Path::ById),
        ("by id", &spread, filters(0.9, vocab, 1.0, 0.1), Path::ById),
    ];
    for (what, logits, f, path) in cases {
        check(&mut b, &mut rng, logits, None, f, path, what);
        let m = mask_for(&mut rng, logits);
        check(
            &mut b,
            &mut rng,
            logits,
            Some(&m),
            f,
            path,
            &format!("{what}, masked"),
        );
    }
}

/// More candidates than the final block sorts (4096): the whole-vocabulary fallback, with
/// the same distribution. A top-k of 4200 (fewer than the ~4500 ids the masks allow, so it is
/// a top-k masked too), every logit equal (all in one threshold bin), and a top-p spread over
/// nearly all of a flat vocabulary.
#[test]
#[ignore = "needs a GPU"]
fn device_sampling_with_too_many_candidates_falls_back() {
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("device_sampling_with_too_many_candidates_falls_back");
    let vocab = 6_000;
    let spread = rng.vec(vocab, 6.0);
    let equal = vec![0.25f32; vocab];
    let flat = rng.vec(vocab, 0.2);
    let big_k = filters(1.0, 4_200, 1.0, 0.0);
    let cases = [
        ("top-k 4200", &spread, big_k),
        ("equal logits, top-k", &equal, filters(1.0, 40, 1.0, 0.0)),
        ("flat, top-p", &flat, filters(1.0, 0, 0.95, 0.0)),
    ];
    let path = Path::Fallback;
    for (what, logits, f) in cases {
        check(&mut b, &mut rng, logits, None, f, path, what);
        let m = mask_for(&mut rng, logits);
        check(
            &mut b,
            &mut rng,
            logits,
            Some(&m),
            f,
            path,
            &format!("{what}, masked"),
        );
    }
}

/// Every logit NaN: TACHYON_NO_TOKEN on every path's filters; every allowed logit NaN
/// under a mask too; and a single number among NaNs is always drawn.
#[test]
#[ignore = "needs a GPU"]
fn device_sampling_of_nan_logits_picks_no_token() {
    let mut b = backend();
    let vocab = 5_000;
    let nan = vec![f32::NAN; vocab];
    let mut one = nan.clone();
    one[4_321] = -3.0;
    let all = vec![u32::MAX; vocab.div_ceil(32)];
    for f in [
        filters(1.0, 40, 0.9, 0.05),
        filters(1.0, 0, 0.9, 0.0),
        filters(1.0, 0, 1.0, 0.0),
    ] {
        assert_eq!(draw(&mut b, &nan, None, f, 3, 2).0, [NO_TOKEN; 2], "{f:?}");
        assert_eq!(
            draw(&mut b, &nan, Some(&all), f, 3, 2).0,
            [NO_TOKEN; 2],
            "{f:?}"
        );
        assert_eq!(draw(&mut b, &one, None, f, 3, 2).0, [4_321; 2], "{f:?}");
        let mut refused = all.clone();
        refused[4_321 / 32] &= !(1 << (4_321 % 32));
        assert_eq!(
            draw(&mut b, &one, Some(&refused), f, 3, 2).0,
            [NO_TOKEN; 2],
            "{f:?}"
        );
    }
}
