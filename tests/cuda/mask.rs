//! Constrained picks on the device: the masked argmax and the masked draw
//! (`argmax_partial_masked`, `sample_logits_masked`) against their CPU twin
//! (`engine::session::pick_masked_on_host`, what the CPU session does) on fresh random
//! logits and masks: one allowed token, dense masks with ties and NaNs, no allowed number
//! (NO_TOKEN), vocabularies that are not a multiple of 32 with garbage bits past the end of
//! the last word. Then the engine: constrained greedy decoding on the device gives the
//! CPU's tokens and copies no logits row after the prompt's.

use serde_json::json;
use tachyon::backend::cuda::CudaBackend;
use tachyon::backend::cuda::launch::sample::SampleFilters;
use tachyon::engine::sampler::{NO_TOKEN, SamplingParams};
use tachyon::engine::session::pick_masked_on_host;
use tachyon::engine::{MaskedPick, SessionOptions, cpu_session, cuda_session};
use tachyon::format::GgmlType;
use tachyon::format::random::{Shape, random_weights};

use super::Rng;
use super::ops::{backend, sampler_probs};

/// A mask for `vocab` tokens allowing each with probability `density`, with the bits past
/// `vocab` in the last word set (the picks must never read them as tokens).
fn random_mask(rng: &mut Rng, vocab: usize, density: f64) -> Vec<u32> {
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for t in 0..vocab {
        if (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= density {
            mask[t / 32] |= 1 << (t % 32);
        }
    }
    if !vocab.is_multiple_of(32)
        && let Some(last) = mask.last_mut()
    {
        *last |= !0u32 << (vocab % 32);
    }
    mask
}

fn only(vocab: usize, token: usize) -> Vec<u32> {
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    mask[token / 32] |= 1 << (token % 32);
    mask
}

fn allows(mask: &[u32], t: usize) -> bool {
    mask[t / 32] & (1 << (t % 32)) != 0
}

/// The CPU twin's pick.
fn cpu_pick(logits: &[f32], mask: &[u32], pick: MaskedPick<'_>) -> u32 {
    let mut row = logits.to_vec();
    pick_masked_on_host(&mut row, Some(mask), pick, &mut Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What the device pick needs: the logits and mask uploaded, a poisoned output.
struct Dev {
    b: CudaBackend,
}

impl Dev {
    fn argmax(&mut self, logits: &[f32], mask: &[u32], poison: u32) -> u32 {
        let vocab = logits.len();
        let b = &mut self.b;
        let s = b.device().stream().clone();
        let gl = b
            .act_from_host(1, vocab, logits)
            .unwrap_or_else(|e| panic!("{e}"));
        let gm = s.clone_htod(mask).unwrap_or_else(|e| panic!("{e}"));
        let parts = CudaBackend::argmax_parts(vocab);
        let mut out = s.clone_htod(&[poison]).unwrap_or_else(|e| panic!("{e}"));
        let mut pv = s
            .alloc_zeros::<f32>(parts)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut pi = s
            .alloc_zeros::<i32>(parts)
            .unwrap_or_else(|e| panic!("{e}"));
        b.argmax_masked(&gl, &gm, &mut out, &mut pv, &mut pi)
            .unwrap_or_else(|e| panic!("{e}"));
        s.clone_dtoh(&out).unwrap_or_else(|e| panic!("{e}"))[0]
    }

    /// `draws` draws from one upload, the generator state starting at `state`.
    fn sample(
        &mut self,
        logits: &[f32],
        mask: &[u32],
        f: SampleFilters,
        state: u64,
        draws: usize,
    ) -> Vec<u32> {
        let vocab = logits.len();
        let b = &mut self.b;
        let s = b.device().stream().clone();
        let gl = b
            .act_from_host(1, vocab, logits)
            .unwrap_or_else(|e| panic!("{e}"));
        let gm = s.clone_htod(mask).unwrap_or_else(|e| panic!("{e}"));
        let mut work = s
            .alloc_zeros::<f32>(CudaBackend::sample_work_len(vocab))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut st = s.clone_htod(&[state]).unwrap_or_else(|e| panic!("{e}"));
        (0..draws)
            .map(|i| {
                let poison = if i % 2 == 0 { u32::MAX - 7 } else { 0 };
                let mut out = s.clone_htod(&[poison]).unwrap_or_else(|e| panic!("{e}"));
                b.sample_masked(&gl, &gm, &mut work, &mut out, &mut st, f)
                    .unwrap_or_else(|e| panic!("{e}"));
                s.clone_dtoh(&out).unwrap_or_else(|e| panic!("{e}"))[0]
            })
            .collect()
    }
}

fn dev() -> Dev {
    Dev { b: backend() }
}

fn filters(t: f32, top_k: usize, top_p: f32, min_p: f32) -> SampleFilters {
    SampleFilters {
        temperature: t,
        top_k,
        top_p,
        min_p,
    }
}

fn params(f: SampleFilters) -> SamplingParams {
    SamplingParams {
        temperature: f.temperature,
        top_k: f.top_k,
        top_p: f.top_p,
        min_p: f.min_p,
        ..Default::default()
    }
}

#[test]
#[ignore = "needs a GPU"]
fn masked_argmax_matches_the_cpu_twin() {
    let mut d = dev();
    let mut rng = Rng::from_env_or_clock("masked_argmax_matches_the_cpu_twin");
    for vocab in [1usize, 45, 1000, 49_157] {
        let mut logits = rng.vec(vocab, 10.0);
        // The overall best refused, NaNs among the allowed, ties at the best allowed.
        let mut mask = random_mask(&mut rng, vocab, 0.5);
        if vocab > 10 {
            let top = logits.iter().copied().fold(f32::MIN, f32::max);
            logits[3] = top + 5.0;
            mask[0] &= !(1 << 3);
            logits[vocab - 2] = f32::NAN;
            mask[(vocab - 2) / 32] |= 1 << ((vocab - 2) % 32);
            for t in [vocab / 2, vocab / 3] {
                logits[t] = top + 1.0;
                mask[t / 32] |= 1 << (t % 32);
            }
        }
        let want = cpu_pick(&logits, &mask, MaskedPick::Argmax);
        assert!(want != NO_TOKEN && allows(&mask, want as usize) || vocab == 1);
        assert_eq!(
            d.argmax(&logits, &mask, u32::MAX - 1),
            want,
            "vocab {vocab}, dense"
        );
        // One allowed token, anywhere (the last one included): that token, whatever its logit.
        for t in [0, vocab - 1, (rng.next_u64() % vocab as u64) as usize] {
            let mask = only(vocab, t);
            assert_eq!(cpu_pick(&logits, &mask, MaskedPick::Argmax), t as u32);
            let got = d.argmax(&logits, &mask, u32::MAX - 1);
            if logits[t].is_nan() {
                assert_eq!(got, NO_TOKEN, "vocab {vocab}: the one allowed token is NaN");
            } else {
                assert_eq!(got, t as u32, "vocab {vocab}: only {t} allowed");
            }
        }
        // No allowed logit is a number (refused ones are): NO_TOKEN, never a refused token.
        let mut nan_allowed = logits.clone();
        for (t, l) in nan_allowed.iter_mut().enumerate() {
            if allows(&mask, t) {
                *l = f32::NAN;
            }
        }
        assert_eq!(cpu_pick(&nan_allowed, &mask, MaskedPick::Argmax), NO_TOKEN);
        assert_eq!(d.argmax(&nan_allowed, &mask, 0), NO_TOKEN, "vocab {vocab}");
        // Nothing allowed at all.
        let none = vec![0u32; vocab.div_ceil(32)];
        assert_eq!(
            d.argmax(&logits, &none, 0),
            NO_TOKEN,
            "vocab {vocab}, empty mask"
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn masked_sampling_follows_the_cpu_twins_distribution() {
    let mut d = dev();
    let mut rng = Rng::from_env_or_clock("masked_sampling_follows_the_cpu_twins_distribution");
    // 45 ids: the last word is partly past the vocabulary.
    let vocab = 45;
    let mut logits = rng.vec(vocab, 2.0);
    let mut mask = random_mask(&mut rng, vocab, 0.6);
    // The best token refused, a NaN allowed (never drawn), a tie among the allowed.
    let top = logits.iter().copied().fold(f32::MIN, f32::max);
    logits[0] = top + 3.0;
    mask[0] &= !1;
    logits[1] = f32::NAN;
    mask[0] |= 1 << 1;
    logits[2] = logits[5];
    mask[0] |= (1 << 2) | (1 << 5);
    let mut excluded = logits.clone();
    for (t, l) in excluded.iter_mut().enumerate() {
        if !allows(&mask, t) {
            *l = f32::NAN;
        }
    }
    let draws = if super::emulated() { 600 } else { 20_000 };
    for f in [filters(1.0, 0, 1.0, 0.0), filters(0.8, 6, 0.9, 0.05)] {
        let want = sampler_probs(&excluded, f.temperature, f.top_k, f.top_p, f.min_p);
        let p = params(f);
        let got = d.sample(&logits, &mask, f, rng.next_u64(), draws);
        let base = rng.next_u64();
        let cpu: Vec<u32> = (0..draws as u64)
            .map(|i| {
                let pick = MaskedPick::Sample {
                    params: &p,
                    seed: base.wrapping_add(i),
                };
                cpu_pick(&logits, &mask, pick)
            })
            .collect();
        for (who, ids) in [("gpu", &got), ("cpu", &cpu)] {
            let mut hist = vec![0usize; vocab];
            for &id in ids.iter() {
                assert!(
                    (id as usize) < vocab && want[id as usize] > 0.0,
                    "{who} {f:?}: drew {id}, refused or without mass"
                );
                hist[id as usize] += 1;
            }
            for id in 0..vocab {
                let sd = (want[id] * (1.0 - want[id]) / draws as f64).sqrt();
                let share = hist[id] as f64 / draws as f64;
                assert!(
                    (share - want[id]).abs() <= 5.0 * sd + 2e-3,
                    "{who} {f:?}: token {id} drawn {share:.4}, want {:.4}",
                    want[id]
                );
            }
        }
    }
    // One allowed token: always it, on both, whatever the filters.
    for f in [filters(1.0, 0, 1.0, 0.0), filters(0.7, 3, 0.5, 0.2)] {
        let t = 44;
        let one = only(vocab, t);
        let p = params(f);
        let cpu = cpu_pick(
            &logits,
            &one,
            MaskedPick::Sample {
                params: &p,
                seed: 9,
            },
        );
        assert_eq!(cpu, t as u32);
        let got = d.sample(&logits, &one, f, rng.next_u64(), 4);
        assert!(got.iter().all(|&id| id == t as u32), "{f:?}: {got:?}");
    }
    // No allowed number: NO_TOKEN on both (the refused tokens are numbers).
    let mut nan_allowed = logits.clone();
    for (t, l) in nan_allowed.iter_mut().enumerate() {
        if allows(&mask, t) {
            *l = f32::NAN;
        }
    }
    let f = filters(1.0, 10, 0.9, 0.0);
    let p = params(f);
    let pick = MaskedPick::Sample {
        params: &p,
        seed: 1,
    };
    assert_eq!(cpu_pick(&nan_allowed, &mask, pick), NO_TOKEN);
    let got = d.sample(&nan_allowed, &mask, f, 5, 2);
    assert!(got.iter().all(|&id| id == NO_TOKEN), "{got:?}");
}

/// A large vocabulary, not a multiple of 32: top-k 1 under a mask is the masked argmax on
/// both sides, and top-k 40 draws only among the 40 best allowed tokens.
#[test]
#[ignore = "needs a GPU"]
fn masked_sampling_on_a_large_vocabulary_keeps_to_the_best_allowed() {
    let mut d = dev();
    let mut rng = Rng::from_env_or_clock("masked_sampling_on_a_large_vocabulary");
    let vocab = 49_157;
    let logits = rng.vec(vocab, 8.0);
    let mask = random_mask(&mut rng, vocab, 0.3);
    let greedy = cpu_pick(&logits, &mask, MaskedPick::Argmax);
    let f = filters(1.0, 1, 1.0, 0.0);
    let p = params(f);
    let pick = MaskedPick::Sample {
        params: &p,
        seed: 3,
    };
    assert_eq!(cpu_pick(&logits, &mask, pick), greedy);
    assert_eq!(
        d.sample(&logits, &mask, f, rng.next_u64(), 2),
        vec![greedy; 2]
    );
    let mut order: Vec<usize> = (0..vocab).filter(|&t| allows(&mask, t)).collect();
    order.sort_by(|&a, &c| logits[c].total_cmp(&logits[a]).then(a.cmp(&c)));
    let best: std::collections::HashSet<u32> = order[..40].iter().map(|&t| t as u32).collect();
    let f = filters(1.0, 40, 0.95, 0.05);
    let draws = if super::emulated() { 6 } else { 200 };
    for id in d.sample(&logits, &mask, f, rng.next_u64(), draws) {
        assert!(best.contains(&id), "drew {id}, outside the 40 best allowed");
    }
}

/// Constrained greedy decoding through the engine on the device gives the CPU's tokens, and
/// the device picks under the mask: after the prompt's logits (the first token is picked on
/// the host from the prefill), no logits row comes back. The same request with a
/// `logit_bias` (which keeps the host path) copies a row per token, so the count is live.
/// Then a sampled constrained request on the device stays inside the constraint, also
/// without a logits copy.
#[test]
#[ignore = "needs a GPU"]
fn constrained_decoding_on_the_device_copies_no_logits() {
    use tachyon::engine::constraint::{
        ConstraintLimits, ConstraintSpec, ConstraintVocab, mask_allows,
    };
    use tachyon::engine::{Engine, Flow, GenerateParams, StreamOptions};
    use tachyon::format::gguf::GgufFile;
    use tachyon::tokenizer::Tokenizer;
    let Some(path) = super::common::model_path(super::common::SMOLLM2) else {
        return;
    };
    let tok = GgufFile::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|g| Tokenizer::from_gguf(&g).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::from_env_or_clock("constrained_decoding_on_the_device_copies_no_logits");
    let cfg = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
        "vocab_size": tok.vocab_size(), "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": true});
    let shape = Shape::from_json("tiny-smol-vocab", &cfg).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let vocab = ConstraintVocab::new(&tok, shape.config.vocab_size, ConstraintLimits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let constraint = vocab
        .compile(&ConstraintSpec::JsonSchema {
            schema: json!({"type": "object",
                "properties": {"id": {"type": "integer"}, "tag": {"enum": ["x", "yz"]}},
                "required": ["id", "tag"], "additionalProperties": false}),
            strict: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 16,
        precise: true,
        ..Default::default()
    };
    let prompt = tok
        .encode("A record as JSON:", false)
        .unwrap_or_else(|e| panic!("{e}"));
    let greedy = GenerateParams {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop_ids: tok.stop_ids().to_vec(),
    };
    let bias = [(7u32, 0.0f32)];
    let run = |engine: &mut Engine, params: &GenerateParams, logit_bias: &[(u32, f32)]| {
        let mut out = Vec::new();
        let stream = StreamOptions {
            constraint: Some(&constraint),
            logit_bias,
            ..Default::default()
        };
        let before = engine.logits_rows_copied();
        engine
            .generate_stream(&prompt, params, &stream, &mut |step| {
                out.push(step.id);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        engine.forget_cache();
        (out, engine.logits_rows_copied() - before)
    };
    let mut cpu =
        Engine::new(cpu_session(&shape.config, &weights, &opts).unwrap_or_else(|e| panic!("{e}")));
    let (on_cpu, _) = run(&mut cpu, &greedy, &[]);
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let mut gpu = Engine::new(
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}")),
    );
    let (on_device, copied) = run(&mut gpu, &greedy, &[]);
    let text = |ids: &[u32]| tok.decode(ids).unwrap_or_else(|e| panic!("{e}"));
    assert!(on_cpu.len() > 3, "too little output: {on_cpu:?}");
    assert!(text(&on_cpu).starts_with('{'), "{:?}", text(&on_cpu));
    assert_eq!(
        on_device,
        on_cpu,
        "{:?} vs {:?}",
        text(&on_device),
        text(&on_cpu)
    );
    assert_eq!(
        copied, 1,
        "logits rows copied: the prompt's one, none per token"
    );
    // A zero logit_bias changes no logit but keeps the host path: a row per decode step.
    let short = GenerateParams {
        max_tokens: 3,
        ..greedy.clone()
    };
    let (biased, copied) = run(&mut gpu, &short, &bias);
    assert_eq!(biased, on_cpu[..3]);
    assert_eq!(copied, 3, "the host path copies a row per token");
    // Sampled under the mask on the device: inside the constraint, no row per token.
    let sampled = GenerateParams {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: rng.next_u64(),
            ..Default::default()
        },
        max_tokens: 4,
        ..greedy.clone()
    };
    let (out, copied) = run(&mut gpu, &sampled, &[]);
    assert_eq!(copied, 1, "sampled: logits rows copied");
    let mut c = constraint.clone();
    for &t in &out {
        let ok = match c.compute_mask().unwrap_or_else(|e| panic!("{e}")) {
            Some(m) => mask_allows(m, t),
            None => true,
        };
        assert!(
            ok,
            "sampled token {t} outside the constraint: {:?}",
            text(&out)
        );
        c.commit(t).unwrap_or_else(|e| panic!("{e}"));
    }
}
