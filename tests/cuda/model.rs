//! Whole-model logits on the GPU against the CPU backend, on random weights of small shapes
//! of each family flavour (GQA llama with llama3 rope scaling, qwen2 with q/k/v biases), for
//! a prompt and then token-by-token decoding, so prefill and the decode path are both
//! covered.

use serde_json::{Value, json};
use tachyon::backend::KvDtype;
use tachyon::engine::{Pick, Rows, SessionOptions, StepInput, cpu_session, cuda_session};
use tachyon::format::GgmlType;
use tachyon::format::random::{Shape, random_weights};

use super::Rng;
use super::ops::rel;

pub(super) fn tiny_llama() -> Value {
    json!({"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8,
        "num_key_value_heads": 2, "num_hidden_layers": 3, "intermediate_size": 688,
        "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": true,
        "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_type": "llama3"}})
}

pub(super) fn tiny_qwen2() -> Value {
    json!({"model_type": "qwen2", "hidden_size": 448, "num_attention_heads": 7,
        "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 1200,
        "vocab_size": 1537, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": false})
}

/// qwen3: per-head q/k RMSNorm, head_dim set apart from hidden / heads, no biases.
pub(super) fn tiny_qwen3() -> Value {
    json!({"model_type": "qwen3", "hidden_size": 192, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": 2,
        "intermediate_size": 512, "vocab_size": 777, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": true})
}

/// mistral: a sliding window shorter than the test's 91 positions, so it cuts.
fn tiny_mistral() -> Value {
    json!({"model_type": "mistral", "hidden_size": 256, "num_attention_heads": 8,
        "num_key_value_heads": 4, "num_hidden_layers": 2, "intermediate_size": 640,
        "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 4096, "sliding_window": 24,
        "tie_word_embeddings": false})
}

/// The weights `compare` runs: random in a float type, or those quantized at load as
/// `--quant` does (int8 / int4 matrices, float vectors: the quantized mix).
#[derive(Clone, Copy, Debug)]
enum Weights {
    Float(GgmlType),
    Quant(tachyon::quant::at_load::LoadQuant),
}

/// Largest accepted relative logit error of [`compare`]: f32 KV caches differ from the CPU
/// only in the order of f32 sums; BF16 caches round every cached K and V to 8 bits of
/// mantissa (a relative 2^-9 per element), which the logits see through every layer.
fn logit_tolerance(kv: KvDtype) -> f64 {
    match kv {
        KvDtype::F32 => 2e-3,
        KvDtype::F16 | KvDtype::Bf16 => 3e-2,
    }
}

/// `int8`: both sessions on int8 activations for block-format matrices (the GPU's dp4a
/// path, the CPU's rounded twin).
/// Largest accepted relative logit error on int8 activations. The two sides round the same
/// activations, but those differ between them in the last bits (f32 sums in another order,
/// rsqrtf), and a value that lands on the other side of a rounding boundary moves its
/// product by one code step (1/127 of its 32-value unit's max) times its weight: on these
/// tiny shapes a few such steps move the logits by up to about 3e-3 (seen: 3.2e-3, many
/// runs 1e-7). The op test (tests/cuda/fused.rs) holds each product to the tight bound.
const INT8_LOGIT_TOLERANCE: f64 = 1e-2;

fn compare(shape: &Shape, kind: Weights, kv: KvDtype, int8: bool, rng: &mut Rng) {
    let name = &shape.name;
    let (weights, ty) = match kind {
        Weights::Float(ty) => (
            random_weights(shape, ty, rng.next_u64()).unwrap_or_else(|e| panic!("{e}")),
            format!("{ty}"),
        ),
        Weights::Quant(q) => {
            let w = random_weights(shape, GgmlType::BF16, rng.next_u64())
                .unwrap_or_else(|e| panic!("{e}"));
            (
                tachyon::quant::at_load::quantize_weights(&w, q).unwrap_or_else(|e| panic!("{e}")),
                format!("{q:?}"),
            )
        }
    };
    // Prefill chunks: a verify-sized 16 rows, a short 5 (the attention's split path) and a
    // 64-row chunk (the prefill tile kernels), then 6 single-token steps.
    let chunks = [16usize, 5, 64];
    let opts = SessionOptions {
        ctx: 256,
        max_batch: 64,
        precise: true,
        kv_dtype: kv,
        int8_acts: int8,
        ..Default::default()
    };
    let mut cpu = cpu_session(&shape.config, &weights, &opts).unwrap_or_else(|e| panic!("{e}"));
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let mut gpu =
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    let vocab = shape.config.vocab_size;
    let prompt: Vec<u32> = (0..chunks.iter().sum::<usize>())
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    let (mut lc, mut lg) = (vec![0f32; vocab], vec![f32::NAN; vocab]);
    let mut pos = 0;
    for len in chunks {
        let chunk = &prompt[pos..pos + len];
        cpu.step(
            StepInput { tokens: chunk, pos },
            Pick::Logits(&mut lc),
            Rows::Last,
        )
        .unwrap();
        gpu.step(
            StepInput { tokens: chunk, pos },
            Pick::Logits(&mut lg),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        pos += chunk.len();
    }
    let mut step = 0;
    loop {
        let e = rel(&lg, &lc);
        println!("{name} {ty} {kv:?} KV int8 {int8} position {pos}: relative logit error {e:e}");
        let tol = if int8 {
            INT8_LOGIT_TOLERANCE
        } else {
            logit_tolerance(kv)
        };
        assert!(
            e < tol,
            "{name} {ty} {kv:?} KV at position {pos}: GPU logits differ from the CPU's by {e:e}"
        );
        if step == 6 {
            break;
        }
        let next = tachyon::engine::sampler::argmax(&lc);
        lg.fill(f32::NAN);
        cpu.step(
            StepInput {
                tokens: &[next],
                pos,
            },
            Pick::Logits(&mut lc),
            Rows::Last,
        )
        .unwrap();
        gpu.step(
            StepInput {
                tokens: &[next],
                pos,
            },
            Pick::Logits(&mut lg),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        pos += 1;
        step += 1;
    }
}

#[test]
#[ignore = "needs a GPU"]
fn whole_model_logits_match_cpu_on_random_weights() {
    let mut rng = Rng::from_env_or_clock("whole_model_logits_match_cpu_on_random_weights");
    use LoadQuant::{Int4, Int8};
    use tachyon::quant::at_load::LoadQuant;
    // Every family with BF16 weights and the f32 cache (the tight bound). On a GPU every
    // family also runs both quantized mixes and the default BF16 cache; under the emulated
    // GPU (seconds per session) those spread over the families instead of crossing them:
    // a family's code (biases, q/k norms, windows, rope) does not depend on the weights'
    // type.
    let full = !super::emulated();
    let families = [
        ("tiny-llama", tiny_llama(), Int8, true),
        ("tiny-qwen2", tiny_qwen2(), Int4, false),
        ("tiny-qwen3", tiny_qwen3(), Int8, true),
        ("tiny-mistral", tiny_mistral(), Int4, false),
    ];
    for (name, cfg, quant, bf16_cache) in families {
        let shape = Shape::from_json(name, &cfg).unwrap_or_else(|e| panic!("{e}"));
        compare(
            &shape,
            Weights::Float(GgmlType::BF16),
            KvDtype::F32,
            false,
            &mut rng,
        );
        let quants: &[LoadQuant] = if full { &[Int8, Int4] } else { &[quant] };
        for &q in quants {
            compare(&shape, Weights::Quant(q), KvDtype::F32, false, &mut rng);
        }
        if bf16_cache || full {
            compare(
                &shape,
                Weights::Float(GgmlType::BF16),
                KvDtype::Bf16,
                false,
                &mut rng,
            );
        }
    }
    // F16 storage once (its conversion path differs from BF16's).
    let shape = Shape::from_json("tiny-qwen2", &tiny_qwen2()).unwrap_or_else(|e| panic!("{e}"));
    compare(
        &shape,
        Weights::Float(GgmlType::F16),
        KvDtype::F32,
        false,
        &mut rng,
    );
    compare(
        &shape,
        Weights::Float(GgmlType::F16),
        KvDtype::F16,
        false,
        &mut rng,
    );
}

/// The int8-activation path (`--int8-acts`) through whole models: prefill chunks and graph
/// decode steps with the dp4a products, against the CPU over the same rounded activations.
#[test]
#[ignore = "needs a GPU"]
fn whole_model_logits_on_int8_activations_match_cpu() {
    use tachyon::quant::at_load::LoadQuant::{Int4, Int8};
    let mut rng = Rng::from_env_or_clock("whole_model_logits_on_int8_activations_match_cpu");
    for (name, cfg, quant) in [
        ("tiny-llama", tiny_llama(), Int4),
        ("tiny-qwen2", tiny_qwen2(), Int8),
    ] {
        let shape = Shape::from_json(name, &cfg).unwrap_or_else(|e| panic!("{e}"));
        compare(&shape, Weights::Quant(quant), KvDtype::F32, true, &mut rng);
    }
}

/// The real 1B / 1.5B shapes (random weights), a short prompt and a few decode steps.
#[test]
#[ignore = "needs a GPU"]
fn whole_model_logits_match_cpu_on_real_shapes() {
    let mut rng = Rng::from_env_or_clock("whole_model_logits_match_cpu_on_real_shapes");
    for name in ["llama-3.2-1b", "qwen2.5-1.5b"] {
        let shape = Shape::resolve(name).unwrap_or_else(|e| panic!("{e}"));
        compare(
            &shape,
            Weights::Float(GgmlType::BF16),
            KvDtype::F32,
            false,
            &mut rng,
        );
    }
}

/// Logits against HF transformers on the same random weights: a checkpoint and reference
/// logits made on the GPU machine by `tools/hf_logits.py`, the directory in
/// `TACHYON_HF_REF`. The prompt is decoded one token at a time (the CUDA-graph path) and
/// the logits compared at each position the reference recorded. HF runs in BF16
/// throughout, tachyon keeps activations in f32, hence the loose bound; the greedy token
/// must agree unless the reference's top two are closer than that bound.
#[test]
#[ignore = "needs a GPU and TACHYON_HF_REF (see tools/hf_logits.py)"]
fn hf_reference_logits_match() {
    let Some(dir) = std::env::var_os("TACHYON_HF_REF") else {
        panic!("set TACHYON_HF_REF to a directory written by tools/hf_logits.py");
    };
    let dir = std::path::PathBuf::from(dir);
    let text = std::fs::read_to_string(dir.join("reference.json"))
        .unwrap_or_else(|e| panic!("reference.json: {e}"));
    let reference: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("reference.json: {e}"));
    let tokens: Vec<u32> = reference["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens"))
        .iter()
        .map(|t| t.as_u64().unwrap_or_else(|| panic!("bad token")) as u32)
        .collect();
    let (config, weights, _src) =
        tachyon::format::load_weights(&dir).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: tokens.len() + 8,
        max_batch: 16,
        precise: true,
        ..Default::default()
    };
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let mut gpu =
        cuda_session(&config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    let mut logits = vec![f32::NAN; config.vocab_size];
    for (pos, &t) in tokens.iter().enumerate() {
        logits.fill(f32::NAN);
        gpu.step(
            StepInput { tokens: &[t], pos },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Some(want) = reference["logits"].get(pos.to_string()) else {
            continue;
        };
        let want: Vec<f32> = want
            .as_array()
            .unwrap_or_else(|| panic!("bad logits"))
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        let e = rel(&logits, &want);
        println!("position {pos}: relative error vs HF {e:e}");
        assert!(e < 5e-2, "position {pos}: logits differ from HF by {e:e}");
        let (g, w) = (
            tachyon::engine::sampler::argmax(&logits) as usize,
            tachyon::engine::sampler::argmax(&want) as usize,
        );
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            g == w || (want[w] - want[g]).abs() < 5e-2 * scale,
            "position {pos}: greedy token {g}, HF {w}"
        );
    }
}

/// The engine's plain-greedy path takes the argmax inside the replayed decode graph and
/// copies 4 bytes back; it must pick exactly the tokens the host picks from the same
/// session's logits.
#[test]
#[ignore = "needs a GPU"]
fn greedy_on_device_matches_greedy_on_host_logits() {
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams};
    let mut rng = Rng::from_env_or_clock("greedy_on_device_matches_greedy_on_host_logits");
    let shape = Shape::from_json("tiny-llama", &tiny_llama()).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 128,
        max_batch: 16,
        precise: true,
        ..Default::default()
    };
    let session = || {
        let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"))
    };
    let vocab = shape.config.vocab_size;
    let prompt: Vec<u32> = (0..21)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    // Well past the first graph replays; fewer steps under the emulated GPU.
    let params = GenerateParams {
        max_tokens: if super::emulated() { 12 } else { 24 },
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let mut engine = Engine::new(session());
    let mut on_device = Vec::new();
    engine
        .generate(&prompt, &params, &mut |t| {
            on_device.push(t);
            Flow::Continue
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = session();
    let mut logits = vec![0f32; vocab];
    s.step(
        StepInput {
            tokens: &prompt[..16],
            pos: 0,
        },
        Pick::Logits(&mut logits),
        Rows::Last,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    s.step(
        StepInput {
            tokens: &prompt[16..],
            pos: 16,
        },
        Pick::Logits(&mut logits),
        Rows::Last,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut on_host = Vec::new();
    for pos in prompt.len()..prompt.len() + params.max_tokens {
        let t = tachyon::engine::sampler::argmax(&logits);
        on_host.push(t);
        s.step(
            StepInput { tokens: &[t], pos },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(on_device, on_host);
}

/// Greedy decoding with repetition, presence and frequency penalties picks on the device
/// (the token history kept there, no logits copied per token) exactly what the CPU sampler
/// picks from the same session's host logits; a request without penalties in the same
/// session then decodes as plain greedy does (nothing of the last request's penalties left).
/// tiny-llama ties its output to the embedding, so plain greedy repeats its input token (by
/// ~80 nats); a presence penalty of 1000 must make every generated token a new one.
#[test]
#[ignore = "needs a GPU"]
fn penalized_greedy_on_device_matches_the_host_sampler() {
    use tachyon::engine::sampler::Sampler;
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams};
    let mut rng = Rng::from_env_or_clock("penalized_greedy_on_device_matches_the_host_sampler");
    let shape = Shape::from_json("tiny-llama", &tiny_llama()).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 128,
        max_batch: 16,
        precise: true,
        ..Default::default()
    };
    let session = || {
        let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"))
    };
    let vocab = shape.config.vocab_size;
    let prompt: Vec<u32> = (0..9)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    let max_tokens = if super::emulated() { 12 } else { 24 };
    let penalized = SamplingParams {
        repetition_penalty: 1.5,
        presence_penalty: 1000.0,
        frequency_penalty: 3.0,
        penalty_last_n: 6,
        ..SamplingParams::greedy()
    };
    let run = |e: &mut Engine, sampling: &SamplingParams| {
        let params = GenerateParams {
            max_tokens,
            sampling: sampling.clone(),
            stop_ids: vec![],
        };
        let before = e.logits_rows_copied();
        let mut out = Vec::new();
        e.generate(&prompt, &params, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .unwrap_or_else(|err| panic!("{err}"));
        e.forget_cache();
        (out, e.logits_rows_copied() - before)
    };
    let mut engine = Engine::new(session());
    let (on_device, copied) = run(&mut engine, &penalized);
    assert_eq!(copied, 1, "only the prompt's last row of logits comes back");
    // The host twin: the logits of each step back on the host, the CPU sampler picks.
    let mut s = session();
    let mut logits = vec![0f32; vocab];
    s.step(
        StepInput {
            tokens: &prompt,
            pos: 0,
        },
        Pick::Logits(&mut logits),
        Rows::Last,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut sampler = Sampler::new(penalized.clone(), &prompt);
    let mut on_host = Vec::new();
    for pos in prompt.len()..prompt.len() + max_tokens {
        let t = sampler.sample(&mut logits);
        sampler.accept(t);
        on_host.push(t);
        if on_host.len() == max_tokens {
            break;
        }
        s.step(
            StepInput { tokens: &[t], pos },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(on_device, on_host, "penalized greedy, device and host");
    let (plain, _) = run(&mut engine, &SamplingParams::greedy());
    let (fresh, _) = run(&mut Engine::new(session()), &SamplingParams::greedy());
    assert_eq!(plain, fresh, "plain greedy after a penalized request");
    assert!(
        plain.windows(2).any(|w| w[0] == w[1]),
        "plain greedy on tiny-llama repeats a token: {plain:?}"
    );
    let mut seen = on_device.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        on_device.len(),
        "a penalized token came again: {on_device:?}"
    );
    let (again, _) = run(&mut engine, &penalized);
    assert_eq!(again, on_device, "penalized again, same session");
}

/// Sampled decoding draws on the device inside the replayed graph: the same seed must give
/// the same tokens, another seed other tokens, and a switch between greedy and sampled
/// requests in one session (a new capture) must not disturb either.
#[test]
#[ignore = "needs a GPU"]
fn sampled_decoding_on_device_is_seeded() {
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams};
    let mut rng = Rng::from_env_or_clock("sampled_decoding_on_device_is_seeded");
    // Untied output weights: tiny-llama ties them to the embedding, so its logits favour
    // repeating the input token by ~80 nats and every seed draws the same (one-hot) token.
    let shape = Shape::from_json("tiny-qwen2", &tiny_qwen2()).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 128,
        max_batch: 16,
        precise: true,
        ..Default::default()
    };
    let engine = || {
        let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
        Engine::new(
            cuda_session(&shape.config, &weights, &opts, dev, false)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let vocab = shape.config.vocab_size;
    let prompt: Vec<u32> = (0..9)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    // Six generations: fewer tokens each under emulation (still well past one graph replay).
    let max_tokens = if super::emulated() { 10 } else { 24 };
    let run = |e: &mut Engine, sampling: SamplingParams| {
        let params = GenerateParams {
            max_tokens,
            sampling,
            stop_ids: vec![],
        };
        let mut out = Vec::new();
        e.generate(&prompt, &params, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .unwrap_or_else(|err| panic!("{err}"));
        out
    };
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..Default::default()
    };
    let mut a = engine();
    // Each run prefills the whole prompt, as a fresh session's does: with the cache kept, a
    // run would step only the prompt's last token (1 row, rounded unlike the 9-row
    // prefill), and its first pick could fall on the other side of a near tie. What is
    // checked is the seed, not the prefix cache.
    let first = run(&mut a, sampled(5));
    a.forget_cache();
    let greedy = run(&mut a, SamplingParams::greedy());
    a.forget_cache();
    let again = run(&mut a, sampled(5));
    assert_eq!(first, again, "same seed, same session");
    assert_eq!(
        first,
        run(&mut engine(), sampled(5)),
        "same seed, fresh session"
    );
    assert_eq!(
        greedy,
        run(&mut engine(), SamplingParams::greedy()),
        "greedy after sampling"
    );
    assert_ne!(first, run(&mut engine(), sampled(6)), "another seed");
    assert!(first.iter().all(|&t| (t as usize) < vocab));
}

/// Greedy speculation on the GPU: the verify pass picks each row's argmax on the device
/// (`Pick::Argmax` over `Rows::All`), which must equal the host's argmax of the same pass's logits;
/// and speculative greedy output must be plain greedy output, token for token, with a draft
/// that always agrees (the target itself) and one that rarely does (other random weights).
#[test]
#[ignore = "needs a GPU"]
fn speculative_greedy_on_device_matches_plain_greedy() {
    use tachyon::engine::spec::DraftModel;
    use tachyon::engine::spec::PromptLookup;
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams, Speculation};
    let mut rng = Rng::from_env_or_clock("speculative_greedy_on_device_matches_plain_greedy");
    let shape = Shape::from_json("tiny-llama", &tiny_llama()).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let other =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 256,
        max_batch: 16,
        ..Default::default()
    };
    let session = |w| {
        let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
        cuda_session(&shape.config, w, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"))
    };
    let vocab = shape.config.vocab_size;
    let prompt: Vec<u32> = (0..19)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();

    // Device picks against host picks of one verify pass.
    let mut s = session(&weights);
    let mut logits = vec![0f32; vocab];
    // A forward pass takes at most max_batch (16) rows: the 19-token prompt in two.
    for (i, chunk) in prompt.chunks(16).enumerate() {
        s.step(
            StepInput {
                tokens: chunk,
                pos: i * 16,
            },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Each row count's first pass runs eagerly from the device-side inputs, and its later
    // passes replay the graph captured from it: every one must pick the host's argmax of
    // an eager pass over the same rows (new random rows each time, so a replay that read
    // stale inputs would pick other tokens).
    let counts = [9, 3, 9, 1, 3, 16, 9];
    for (round, n) in counts.into_iter().enumerate() {
        let rows: Vec<u32> = (0..n)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        let verify = StepInput {
            tokens: &rows,
            pos: prompt.len(),
        };
        let picks = s
            .step(verify, Pick::Argmax, Rows::All)
            .unwrap_or_else(|e| panic!("{e}"))
            .tokens()
            .to_vec();
        assert_eq!(picks.len(), n, "one device pick per verify row");
        let mut all = vec![f32::NAN; n * vocab];
        s.step(verify, Pick::Logits(&mut all), Rows::All)
            .unwrap_or_else(|e| panic!("{e}"));
        let host: Vec<u32> = all
            .chunks_exact(vocab)
            .map(tachyon::engine::sampler::argmax)
            .collect();
        assert_eq!(
            picks, host,
            "pass {round} ({n} rows): device and host argmax"
        );
    }
    if std::env::var_os("TACHYON_NO_CUDA_GRAPH").is_none() {
        assert_eq!(
            s.verify_graph_rows(),
            [9, 3, 1, 16],
            "one graph per row count"
        );
    }

    // Several rounds of 6 proposals; fewer under the emulated GPU.
    let params = GenerateParams {
        max_tokens: if super::emulated() { 24 } else { 40 },
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let run = |engine: &mut Engine| {
        let mut out = Vec::new();
        engine
            .generate(&prompt, &params, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        out
    };
    let want = run(&mut Engine::new(session(&weights)));
    for (name, draft_weights, lookup) in [
        ("self draft", &weights, false),
        ("random draft + lookup", &other, true),
    ] {
        let mut e = Engine::new(session(&weights));
        let draft =
            DraftModel::new(session(draft_weights), vocab).unwrap_or_else(|e| panic!("{e}"));
        e.set_speculation(Some(Speculation::new(
            Some(draft),
            lookup.then(PromptLookup::default),
            6,
            true,
        )));
        assert_eq!(run(&mut e), want, "{name}");
    }
}

/// Constrained greedy decoding on the device gives the CPU's text: a tiny random llama with
/// SmolLM2's vocabulary (the constraint's token trie is built from a real tokenizer) under a
/// small JSON schema, the same per-step mask applied to each backend's logits. Few tokens:
/// under the emulated GPU each step runs the 49k-row LM head on the host.
#[test]
#[ignore = "needs a GPU"]
fn constrained_greedy_on_device_matches_the_cpu() {
    use tachyon::engine::constraint::{ConstraintLimits, ConstraintSpec, ConstraintVocab};
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams, StreamOptions};
    use tachyon::format::gguf::GgufFile;
    use tachyon::tokenizer::Tokenizer;
    let Some(path) = super::common::model_path(super::common::SMOLLM2) else {
        return;
    };
    let tok = GgufFile::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|g| Tokenizer::from_gguf(&g).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::from_env_or_clock("constrained_greedy_on_device_matches_the_cpu");
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
                "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
                "required": ["id", "ok"], "additionalProperties": false}),
            strict: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Token-for-token equality with the CPU: the f32 cache (a BF16 one may flip a near tie).
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 16,
        precise: true,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    let prompt = tok
        .encode("A record as JSON:", false)
        .unwrap_or_else(|e| panic!("{e}"));
    let params = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_ids: tok.stop_ids().to_vec(),
    };
    let run = |session| {
        let mut out = Vec::new();
        let stream = StreamOptions {
            constraint: Some(&constraint),
            ..Default::default()
        };
        Engine::new(session)
            .generate_stream(&prompt, &params, &stream, &mut |step| {
                out.push(step.id);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        out
    };
    let on_cpu = run(cpu_session(&shape.config, &weights, &opts).unwrap_or_else(|e| panic!("{e}")));
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let on_device =
        run(cuda_session(&shape.config, &weights, &opts, dev, false)
            .unwrap_or_else(|e| panic!("{e}")));
    let text = |ids: &[u32]| tok.decode(ids).unwrap_or_else(|e| panic!("{e}"));
    assert!(!on_cpu.is_empty(), "no output");
    assert!(text(&on_cpu).starts_with('{'), "{:?}", text(&on_cpu));
    assert_eq!(text(&on_device), text(&on_cpu));
    assert_eq!(on_device, on_cpu);
}

/// The real SmolLM2-135M (Q4_1 GGUF) through the CUDA backend, greedy for 16 tokens (6
/// under the emulated GPU, where one token of this model costs about 17 s of CPU; the tiny
/// random models cover the long decodes there): the same tokens as the CPU backend's
/// precise path (`generate --precise`), which accumulates matrix products in the order
/// the kernels do.
#[test]
#[ignore = "needs a GPU"]
fn smollm2_greedy_on_device_equals_cpu_precise_greedy() {
    use tachyon::engine::spec::SpeculationOptions;
    use tachyon::engine::{
        BackendChoice, EngineOptions, Flow, GenerateParams, ModelSpec, SamplingParams, build,
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tokens = if super::emulated() { 6 } else { 16 };
    let params = GenerateParams {
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    // Built as `generate --backend cpu|cuda --precise --ctx 128` builds it.
    let run = |backend: BackendChoice| {
        let opts = EngineOptions {
            backend,
            session: SessionOptions {
                ctx: 128,
                precise: true,
                // Token-for-token equality with the CPU: the f32 cache.
                kv_dtype: KvDtype::F32,
                ..Default::default()
            },
            tokenizer: true,
            ..Default::default()
        };
        let mut built = build(
            &ModelSpec::File(path.clone()),
            &opts,
            &SpeculationOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let tokenizer = built
            .model
            .tokenizer
            .take()
            .unwrap_or_else(|| panic!("no tokenizer in {}", path.display()));
        let prompt = tokenizer
            .encode("Once upon a time", true)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        built
            .engine
            .generate(&prompt, &params, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let text = tokenizer.decode(&out).unwrap_or_else(|e| panic!("{e}"));
        (out, text)
    };
    let (want, want_text) = run(BackendChoice::Cpu);
    let (got, got_text) = run(BackendChoice::Cuda);
    assert_eq!(want.len(), tokens, "the CPU stopped early: {want_text:?}");
    assert_eq!(
        got, want,
        "GPU greedy {got_text:?} vs CPU precise {want_text:?}"
    );
}

/// Greedy tokens of a tiny random llama from `seed`, decoded through a CUDA session.
fn tiny_greedy_tokens(seed: u64) -> Vec<u32> {
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams};
    let shape = Shape::from_json("tiny-llama", &tiny_llama()).unwrap_or_else(|e| panic!("{e}"));
    let weights = random_weights(&shape, GgmlType::BF16, seed).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 128,
        max_batch: 16,
        ..Default::default()
    };
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let session =
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    let vocab = shape.config.vocab_size as u64;
    let prompt: Vec<u32> = (0..11u64)
        .map(|i| ((seed ^ (i * 0x9E37_79B9)) % vocab) as u32)
        .collect();
    let params = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let mut out = Vec::new();
    Engine::new(session)
        .generate(&prompt, &params, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// The CUDA-graph decode path and the eager one (`TACHYON_NO_CUDA_GRAPH=1`: the same
/// kernels, one launch each) give the same greedy tokens. The variable is read when a
/// session is made, so the eager run is this test binary re-run on this test with it set,
/// printing its tokens.
#[test]
#[ignore = "needs a GPU"]
fn graph_and_eager_decoding_agree() {
    const CHILD: &str = "TACHYON_TEST_EAGER_CHILD_SEED";
    if let Ok(seed) = std::env::var(CHILD) {
        let seed: u64 = seed.parse().unwrap_or_else(|e| panic!("{CHILD}: {e}"));
        println!("EAGER_TOKENS {:?}", tiny_greedy_tokens(seed));
        return;
    }
    assert!(
        std::env::var_os("TACHYON_NO_CUDA_GRAPH").is_none(),
        "run without TACHYON_NO_CUDA_GRAPH: this test compares both paths itself"
    );
    let seed = Rng::from_env_or_clock("graph_and_eager_decoding_agree").next_u64();
    let graph = tiny_greedy_tokens(seed);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(exe)
        .args([
            "model::graph_and_eager_decoding_agree",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, seed.to_string())
        .env("TACHYON_NO_CUDA_GRAPH", "1")
        .output()
        .unwrap_or_else(|e| panic!("re-running the test binary: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eager run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eager = stdout
        .lines()
        .find_map(|l| {
            l.split_once("EAGER_TOKENS ")
                .map(|(_, t)| t.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no tokens from the eager run:\n{stdout}"));
    assert_eq!(format!("{graph:?}"), eager, "graph vs eager decoding");
}

/// NaN logits on the device (a NaN embedding row) end that request with an error, and the
/// next request on the same engine succeeds with the tokens a fresh device engine gives it
/// (the CPU backend's run of the same check is tests/nan_logits.rs).
#[test]
#[ignore = "needs a GPU"]
fn nan_logits_end_the_request_and_the_next_one_succeeds_on_the_device() {
    let seed = Rng::from_env_or_clock("nan_logits_on_the_device").next_u64();
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 8,
        precise: true,
        ..Default::default()
    };
    super::common::nan_logits_fail_one_request_only(
        &|config, weights| {
            let dev =
                tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
            cuda_session(config, weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"))
        },
        seed,
        6,
    );
}

/// Slots on the GPU: two sequences interleaved in a two-slot session, each decode after a
/// switch replaying a graph captured anew over that slot's KV cache, give the logits a
/// two-slot CPU session gives. A prefill step stopped by its cancel flag (set before, or by
/// another thread while it runs) leaves the cache usable: the same chunk run again matches
/// the CPU.
#[test]
#[ignore = "needs a GPU"]
fn slots_keep_each_sequence_and_a_cancelled_prefill_leaves_the_cache_usable() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tachyon::engine::Session;
    let mut rng = Rng::from_env_or_clock("slots_keep_each_sequence");
    let shape = Shape::from_json("tiny-llama", &tiny_llama()).unwrap_or_else(|e| panic!("{e}"));
    let weights =
        random_weights(&shape, GgmlType::BF16, rng.next_u64()).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 128,
        max_batch: 16,
        precise: true,
        slots: 2,
        ..Default::default()
    };
    let mut cpu = cpu_session(&shape.config, &weights, &opts).unwrap_or_else(|e| panic!("{e}"));
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let mut gpu =
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((cpu.slots(), gpu.slots()), (2, 2));
    let vocab = shape.config.vocab_size;
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect()
    };
    let (mut lc, mut lg) = (vec![0f32; vocab], vec![f32::NAN; vocab]);
    // Runs `ids` at `pos` on both, compares the logits, returns the next greedy token.
    fn both(
        (cpu, gpu): (&mut Box<dyn Session>, &mut Box<dyn Session>),
        (lc, lg): (&mut [f32], &mut [f32]),
        ids: &[u32],
        pos: usize,
        what: &str,
    ) -> u32 {
        lg.fill(f32::NAN);
        cpu.step(StepInput { tokens: ids, pos }, Pick::Logits(lc), Rows::Last)
            .unwrap_or_else(|e| panic!("{e}"));
        gpu.step(StepInput { tokens: ids, pos }, Pick::Logits(lg), Rows::Last)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = rel(lg, lc);
        println!("{what} at {pos}: relative logit error {e:e}");
        assert!(e < 2e-3, "{what} at {pos}: GPU logits differ by {e:e}");
        tachyon::engine::sampler::argmax(lc)
    }
    // Each sequence: its tokens so far and its next token.
    let mut seqs: Vec<(Vec<u32>, u32)> = Vec::new();
    for (slot, len) in [(0, 21), (1, 19)] {
        cpu.use_slot(slot).unwrap_or_else(|e| panic!("{e}"));
        gpu.use_slot(slot).unwrap_or_else(|e| panic!("{e}"));
        let prompt = tokens(len);
        both(
            (&mut cpu, &mut gpu),
            (&mut lc, &mut lg),
            &prompt[..16],
            0,
            "prefill",
        );
        let next = both(
            (&mut cpu, &mut gpu),
            (&mut lc, &mut lg),
            &prompt[16..],
            16,
            "prefill",
        );
        seqs.push((prompt, next));
    }
    // Interleave decode steps: every switch makes the GPU capture its step anew.
    for round in 0..3 {
        for slot in [0, 1, 0, 1] {
            cpu.use_slot(slot).unwrap_or_else(|e| panic!("{e}"));
            gpu.use_slot(slot).unwrap_or_else(|e| panic!("{e}"));
            let (seq, next) = &mut seqs[slot];
            let pos = seq.len();
            seq.push(*next);
            let what = format!("slot {slot} decode, round {round}");
            *next = both(
                (&mut cpu, &mut gpu),
                (&mut lc, &mut lg),
                &[*next],
                pos,
                &what,
            );
        }
    }
    // Cancelled prefill chunks on slot 1, then the same chunk uncancelled.
    cpu.use_slot(1).unwrap_or_else(|e| panic!("{e}"));
    gpu.use_slot(1).unwrap_or_else(|e| panic!("{e}"));
    let pos = seqs[1].0.len();
    let chunk = tokens(16);
    let set = AtomicBool::new(true);
    let ran = gpu
        .step_until_cancelled(
            StepInput {
                tokens: &chunk,
                pos,
            },
            &mut lg,
            &set,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !ran,
        "a step whose cancel was set before it ran all the same"
    );
    let flag = Arc::new(AtomicBool::new(false));
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(2));
            flag.store(true, Ordering::Relaxed);
        })
    };
    let ran = gpu
        .step_until_cancelled(
            StepInput {
                tokens: &chunk,
                pos,
            },
            &mut lg,
            &flag,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    setter.join().unwrap_or_else(|_| panic!("setter"));
    println!("a prefill chunk with its cancel set 2 ms in: ran to the end: {ran}");
    both(
        (&mut cpu, &mut gpu),
        (&mut lc, &mut lg),
        &chunk,
        pos,
        "the chunk again after a cancel",
    );
    // Uncancelled, the interruptible step gives what `step` gives.
    let more = tokens(5);
    let unset = AtomicBool::new(false);
    lg.fill(f32::NAN);
    let ran = gpu
        .step_until_cancelled(
            StepInput {
                tokens: &more,
                pos: pos + 16,
            },
            &mut lg,
            &unset,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    cpu.step(
        StepInput {
            tokens: &more,
            pos: pos + 16,
        },
        Pick::Logits(&mut lc),
        Rows::Last,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = rel(&lg, &lc);
    assert!(
        ran && e < 2e-3,
        "uncancelled interruptible step: ran {ran}, error {e:e}"
    );
}
