//! The device's penalties (`kernels/penalty.cu` through `backend::cuda::DeviceHistory`)
//! against the CPU sampler's `apply_penalties`, step by step over a generation: the same
//! prompt window, the same accepted tokens, bit-for-bit the same penalized logits.

use tachyon::backend::cuda::{CudaBackend, DeviceHistory, DeviceSampling};
use tachyon::engine::sampler::{Sampler, SamplingParams};

use super::Rng;
use super::ops::backend;

/// Equal as bits, NaN equal to NaN (a NaN logit stays NaN on both sides; any other NaN
/// differs from its number).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// One generation: `prompt`, then `steps` tokens accepted one by one; after each, the device
/// penalizes fresh logits and the CPU sampler with the same history penalizes the same ones.
fn check(b: &mut CudaBackend, rng: &mut Rng, vocab: usize, params: &SamplingParams, what: &str) {
    let dev = b.device().stream().clone();
    // Few distinct ids, so tokens repeat inside the window and among the generated ones.
    let ids = (vocab / 3).clamp(2, 40) as u64;
    let tok = |rng: &mut Rng| (rng.next_u64() % ids) as u32 * 3 % vocab as u32;
    let prompt: Vec<u32> = (0..(7 + rng.next_u64() % 30) as usize)
        .map(|_| tok(rng))
        .collect();
    let steps = 12;
    let ctx = prompt.len() + steps + 3;
    let mut hist = DeviceHistory::new(b.device(), vocab, ctx).unwrap_or_else(|e| panic!("{e}"));
    let s = DeviceSampling {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        min_p: params.min_p,
        repetition_penalty: params.repetition_penalty,
        presence_penalty: params.presence_penalty,
        frequency_penalty: params.frequency_penalty,
        penalty_last_n: params.penalty_last_n,
        seed: params.seed,
    };
    hist.begin(b.device(), s, &prompt)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cpu = Sampler::new(params.clone(), &prompt);
    for step in 0..steps {
        let t = tok(rng);
        let pos = prompt.len() + step;
        cpu.accept(t);
        let mut logits = rng.vec(vocab, 4.0);
        // Zeros (neither side of the sign test) and a NaN among the penalized ids.
        logits[0] = 0.0;
        if vocab > 9 {
            logits[9] = f32::NAN;
        }
        let token = dev.clone_htod(&[t]).unwrap_or_else(|e| panic!("{e}"));
        let at = dev
            .clone_htod(&[pos as i32])
            .unwrap_or_else(|e| panic!("{e}"));
        // Twice at the same position on fresh logits: the second records nothing more.
        let runs = if step == steps / 2 { 2 } else { 1 };
        let mut got = Vec::new();
        for _ in 0..runs {
            let gl = b
                .act_from_host(1, vocab, &logits)
                .unwrap_or_else(|e| panic!("{e}"));
            hist.apply(b.device(), &gl, &token, &at)
                .unwrap_or_else(|e| panic!("{e}"));
            got = b.act_to_host(&gl).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut want = logits.clone();
        cpu.apply_penalties(&mut want);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                same(g, w),
                "{what}: step {step} (pos {pos}), token {i}: device {g} ({:#x}), cpu {w} ({:#x}), logit {}",
                g.to_bits(),
                w.to_bits(),
                logits[i]
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn device_penalties_match_the_cpu_sampler() {
    let mut b = backend();
    let mut rng = Rng::from_env_or_clock("device_penalties_match_the_cpu_sampler");
    for vocab in [1usize, 10, 1000, 5003] {
        let cases = [
            ("repetition", 1.3, 0.0, 0.0, 8),
            ("repetition below 1", 0.7, 0.0, 0.0, 64),
            ("presence and frequency", 1.0, 0.5, 0.25, 64),
            ("all, window 0", 1.2, -0.3, 0.7, 0),
            ("all, window past the prompt", 1.1, 0.4, 0.1, 1000),
            ("none", 1.0, 0.0, 0.0, 64),
        ];
        for (what, rep, presence, frequency, last_n) in cases {
            let params = SamplingParams {
                repetition_penalty: rep,
                presence_penalty: presence,
                frequency_penalty: frequency,
                penalty_last_n: last_n,
                ..SamplingParams::default()
            };
            check(
                &mut b,
                &mut rng,
                vocab,
                &params,
                &format!("{what}, vocab {vocab}"),
            );
        }
    }
}
