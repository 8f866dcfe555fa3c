//! Speculative decoding is lossless: greedy output with a draft model and/or prompt lookup
//! is token for token the target's plain greedy output (real models, CPU), and sampled
//! output follows the target's distribution (chi-square over many seeded runs of tiny
//! random-weight models). A draft with another vocabulary is refused. Under a constraint,
//! greedy output with speculation is token for token the constrained plain output, and
//! sampled output stays inside the constraint.

mod common;

use serde_json::json;

use tachyon::engine::constraint::{
    Constraint, ConstraintLimits, ConstraintSpec, ConstraintVocab, mask_allows,
};
use tachyon::engine::spec::DraftModel;
use tachyon::engine::spec::PromptLookup;
use tachyon::engine::{
    Engine, FinishReason, Flow, GenerateParams, GenerateStats, ModelSpec, SamplingParams,
    SessionOptions, SpecStats, Speculation, SpeculationOptions, StreamOptions, cpu_session,
};
use tachyon::format::GgmlType;
use tachyon::format::random::{Shape, random_weights};
use tachyon::format::{ModelConfig, ModelWeights, load_weights};
use tachyon::graph::Model;
use tachyon::quant::model_quantizer::{QuantMix, quantize_to_gguf};

fn opts(ctx: usize) -> SessionOptions {
    SessionOptions {
        ctx,
        ..Default::default()
    }
}

fn engine(cfg: &ModelConfig, w: &ModelWeights, ctx: usize) -> Engine {
    Engine::new(cpu_session(cfg, w, &opts(ctx)).unwrap_or_else(|e| panic!("{e}")))
}

fn run(engine: &mut Engine, prompt: &[u32], params: &GenerateParams) -> (Vec<u32>, GenerateStats) {
    let mut out = Vec::new();
    let stats = engine
        .generate(prompt, params, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.generated_tokens, out.len());
    (out, stats)
}

fn greedy(max_tokens: usize, stop_ids: &[u32]) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_ids: stop_ids.to_vec(),
    }
}

fn spec(
    draft: Option<DraftModel>,
    lookup: bool,
    max_len: usize,
    adaptive: bool,
) -> Option<Speculation> {
    Some(Speculation::new(
        draft,
        lookup.then(PromptLookup::default),
        max_len,
        adaptive,
    ))
}

/// A draft made of random weights with the target's vocabulary: it proposes nonsense, so
/// almost every proposal is rejected.
fn nonsense_draft(vocab: usize) -> (ModelConfig, ModelWeights) {
    let cfg = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 128,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": true});
    let shape = Shape::from_json("nonsense", &cfg).unwrap_or_else(|e| panic!("{e}"));
    let w = random_weights(&shape, GgmlType::F32, 7).unwrap_or_else(|e| panic!("{e}"));
    (shape.config, w)
}

/// SmolLM2 as target; drafts: itself re-quantized to Q4_0 (agrees mostly, not always) and
/// random nonsense (agrees almost never); with and without prompt lookup, fixed and
/// adaptive lengths, several prompts, budgets that end mid-proposal, a context that fills,
/// and a second turn that reuses the cache the speculative run left.
#[test]
fn greedy_speculation_reproduces_plain_greedy_smollm2() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let (cfg, w) = (&model.config, &model.weights);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let q4_path = dir.path().join("draft-q4_0.gguf");
    let (scfg, sw, src) = load_weights(&path).unwrap_or_else(|e| panic!("{e}"));
    quantize_to_gguf(
        &scfg,
        &sw,
        Some(&src),
        QuantMix::Uniform(GgmlType::Q4_0),
        &q4_path,
        |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q4 = Model::load(&q4_path).unwrap_or_else(|e| panic!("{e}"));
    let (ncfg, nw) = nonsense_draft(cfg.vocab_size);
    let tok = &model.tokenizer;
    let stops = tok.stop_ids().to_vec();
    let prompts = [
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n# Now iteratively:\ndef fibonacci_iter(n):\n",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "1, 2, 3, 4, 5, 6, 7, 8,",
        "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
    ];
    let draft = |which: &str| -> DraftModel {
        let s = match which {
            "q4" => cpu_session(&q4.config, &q4.weights, &opts(512)),
            _ => cpu_session(&ncfg, &nw, &opts(512)),
        };
        DraftModel::new(s.unwrap_or_else(|e| panic!("{e}")), cfg.vocab_size)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut totals = std::collections::BTreeMap::<&str, SpecStats>::new();
    for text in prompts {
        let prompt = tok.encode(text, false).unwrap_or_else(|e| panic!("{e}"));
        for max_tokens in [1, 2, 40] {
            let params = greedy(max_tokens, &stops);
            let (want, want_stats) = run(&mut engine(cfg, w, 512), &prompt, &params);
            let configs: [(&str, Option<Speculation>); 6] = [
                ("lookup", spec(None, true, 8, true)),
                ("q4 draft", spec(Some(draft("q4")), false, 8, true)),
                (
                    "q4 draft + lookup, fixed 15",
                    spec(Some(draft("q4")), true, 15, false),
                ),
                (
                    "q4 draft, fixed 1",
                    spec(Some(draft("q4")), false, 1, false),
                ),
                (
                    "nonsense draft",
                    spec(Some(draft("nonsense")), false, 4, true),
                ),
                (
                    "nonsense draft, fixed 6",
                    spec(Some(draft("nonsense")), false, 6, false),
                ),
            ];
            for (name, s) in configs {
                let mut e = engine(cfg, w, 512);
                e.set_speculation(s);
                let (got, stats) = run(&mut e, &prompt, &params);
                assert_eq!(got, want, "{name}, {max_tokens} tokens, prompt {text:?}");
                assert_eq!(stats.finish, want_stats.finish, "{name}: finish reason");
                let sp = stats
                    .speculation
                    .unwrap_or_else(|| panic!("{name}: no speculation stats"));
                assert!(sp.off.is_none());
                assert_eq!(sp.histogram.iter().sum::<usize>(), sp.verify_steps);
                // Every emitted token after the first came from one target step.
                assert!(
                    sp.accepted + sp.target_steps() + 1 >= got.len(),
                    "{name}: {sp:?}"
                );
                let t = totals.entry(name).or_default();
                t.verify_steps += sp.verify_steps;
                t.proposed += sp.proposed;
                t.accepted += sp.accepted;
            }
        }
    }
    for (name, t) in &totals {
        println!(
            "{name}: {} verify steps, {} of {} proposals kept",
            t.verify_steps, t.accepted, t.proposed
        );
    }
    // The proposers were really exercised: both acceptance and rejection happened.
    assert!(totals["lookup"].verify_steps > 0);
    assert!(
        totals["q4 draft"].accepted * 2 > totals["q4 draft"].proposed,
        "{:?}",
        totals["q4 draft"]
    );
    assert!(
        totals["nonsense draft, fixed 6"].accepted * 4 < totals["nonsense draft, fixed 6"].proposed
    );

    // A context that fills mid-proposal ends exactly where plain decoding ends.
    let prompt = tok
        .encode(prompts[2], false)
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = prompt.len() + 7;
    let (want, ws) = run(&mut engine(cfg, w, ctx), &prompt, &greedy(100, &[]));
    let mut e = engine(cfg, w, ctx);
    e.set_speculation(spec(Some(draft("q4")), true, 15, false));
    let (got, gs) = run(&mut e, &prompt, &greedy(100, &[]));
    assert_eq!((got, gs.finish), (want, ws.finish));

    // Agent loop: the second turn extends the first turn's text and reuses the KV the
    // speculative run left behind; it must match a fresh plain engine.
    let mut e = engine(cfg, w, 512);
    e.set_speculation(spec(Some(draft("q4")), true, 8, true));
    let first = tok
        .encode(prompts[0], false)
        .unwrap_or_else(|e| panic!("{e}"));
    let (out1, _) = run(&mut e, &first, &greedy(24, &[]));
    let mut second = first.clone();
    second.extend(&out1);
    second.extend(
        tok.encode("\n\n# Tests:\n", false)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let (got, stats) = run(&mut e, &second, &greedy(24, &[]));
    assert!(
        stats.cached_tokens >= first.len(),
        "the first turn's KV was not reused: {stats:?}"
    );
    let (want, _) = run(&mut engine(cfg, w, 512), &second, &greedy(24, &[]));
    assert_eq!(got, want, "second turn");
}

fn run_constrained(
    engine: &mut Engine,
    prompt: &[u32],
    params: &GenerateParams,
    constraint: &Constraint,
) -> (Vec<u32>, GenerateStats) {
    let mut out = Vec::new();
    let opts = StreamOptions {
        constraint: Some(constraint),
        ..Default::default()
    };
    let stats = engine
        .generate_stream(prompt, params, &opts, &mut |step| {
            out.push(step.id);
            Flow::Continue
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.generated_tokens, out.len());
    (out, stats)
}

/// Whether a fresh copy of `constraint` takes every token of `out` under its mask, and
/// (when the output stopped) may end after them.
fn follows(constraint: &Constraint, out: &[u32], stopped: bool) -> bool {
    let mut c = constraint.clone();
    for &t in out {
        let allowed = match c.compute_mask().unwrap_or_else(|e| panic!("{e}")) {
            Some(m) => mask_allows(m, t),
            None => true,
        };
        if !allowed || c.commit(t).is_err() {
            return false;
        }
    }
    !stopped || c.is_accepting()
}

/// Speculation stays lossless under a constraint: constrained greedy output with prompt
/// lookup, a draft that agrees almost always (SmolLM2 itself: its proposals run into the
/// constraint and are cut), a draft that agrees almost never, and both proposers, is
/// token for token the constrained plain greedy output, for a JSON schema and a regex.
/// Sampled constrained output with speculation stays inside the constraint.
#[test]
fn constrained_speculation_reproduces_constrained_plain_decoding_smollm2() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let (cfg, w) = (&model.config, &model.weights);
    let tok = &model.tokenizer;
    let vocab = ConstraintVocab::new(tok, cfg.vocab_size, ConstraintLimits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (ncfg, nw) = nonsense_draft(cfg.vocab_size);
    let draft = |nonsense: bool| -> DraftModel {
        let s = if nonsense {
            cpu_session(&ncfg, &nw, &opts(512))
        } else {
            cpu_session(cfg, w, &opts(512))
        };
        DraftModel::new(s.unwrap_or_else(|e| panic!("{e}")), cfg.vocab_size)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let schema = ConstraintSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "languages": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name", "age", "languages"],
            "additionalProperties": false
        }),
        strict: true,
    };
    let regex = ConstraintSpec::Regex("(19|20)[0-9]{2}-[0-9]{2}-[0-9]{2}( [a-z]+)+\\.".into());
    let cases = [
        (
            "schema",
            schema,
            "<|im_start|>user\nDescribe Ada as JSON like {\"name\": \"Alan\", \"age\": 41, \"languages\": [\"English\"]}.<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "regex",
            regex,
            "Dates: 1912-06-23 alan turing was born. 1815-12-10 ada lovelace was born.\n",
        ),
    ];
    let (mut accepted, mut completed) = (0, 0);
    for (what, spec_, text) in cases {
        let constraint = vocab.compile(&spec_).unwrap_or_else(|e| panic!("{e}"));
        let prompt = tok.encode(text, false).unwrap_or_else(|e| panic!("{e}"));
        let params = greedy(48, tok.stop_ids());
        let (want, want_stats) =
            run_constrained(&mut engine(cfg, w, 512), &prompt, &params, &constraint);
        assert!(
            follows(&constraint, &want, want_stats.finish == FinishReason::Stop),
            "{what}: plain output outside the constraint"
        );
        // The grammar ends the output on its last token: given exactly that many tokens,
        // generation still stops there (it is not cut by the budget), plain and with
        // lookup proposals.
        if want_stats.finish == FinishReason::Stop {
            completed += 1;
            let exact = greedy(want.len(), tok.stop_ids());
            for s in [None, spec(None, true, 8, true)] {
                let mut e = engine(cfg, w, 512);
                let speculating = s.is_some();
                e.set_speculation(s);
                let (got, stats) = run_constrained(&mut e, &prompt, &exact, &constraint);
                assert_eq!(got, want, "{what}, exact budget, speculating {speculating}");
                assert_eq!(
                    stats.finish,
                    FinishReason::Stop,
                    "{what}, exact budget, speculating {speculating}"
                );
            }
        }
        let configs: [(&str, Option<Speculation>); 4] = [
            ("lookup", spec(None, true, 8, true)),
            ("self draft", spec(Some(draft(false)), false, 6, false)),
            ("nonsense draft", spec(Some(draft(true)), false, 4, false)),
            (
                "self draft + lookup",
                spec(Some(draft(false)), true, 8, true),
            ),
        ];
        for (name, s) in configs {
            let mut e = engine(cfg, w, 512);
            e.set_speculation(s);
            let (got, stats) = run_constrained(&mut e, &prompt, &params, &constraint);
            assert_eq!(
                tok.decode(&got).unwrap_or_default(),
                tok.decode(&want).unwrap_or_default(),
                "{what}, {name}"
            );
            assert_eq!(got, want, "{what}, {name}");
            assert_eq!(stats.finish, want_stats.finish, "{what}, {name}: finish");
            let sp = stats
                .speculation
                .unwrap_or_else(|| panic!("{name}: no speculation stats"));
            assert!(sp.off.is_none(), "{what}, {name}: {:?}", sp.off);
            if name == "self draft" {
                assert!(sp.verify_steps > 0 && sp.accepted > 0, "{what}: {sp:?}");
                accepted += sp.accepted;
            }
        }
        // Sampled, with a draft: the kept proposals and each replacement are inside the
        // constraint (the masked rows are the distributions rejection sampling uses).
        for seed in 0..3 {
            let mut params = params.clone();
            params.sampling = SamplingParams {
                temperature: 0.9,
                seed,
                ..Default::default()
            };
            let mut e = engine(cfg, w, 512);
            e.set_speculation(spec(Some(draft(false)), true, 6, false));
            let (got, stats) = run_constrained(&mut e, &prompt, &params, &constraint);
            assert!(
                follows(&constraint, &got, stats.finish == FinishReason::Stop),
                "{what}, seed {seed}: sampled output outside the constraint: {:?}",
                tok.decode(&got)
            );
            let sp = stats.speculation.unwrap_or_else(|| panic!("no stats"));
            assert!(sp.off.is_none() && sp.verify_steps > 0, "{sp:?}");
        }
    }
    assert!(accepted > 10, "the self draft kept only {accepted} tokens");
    assert!(
        completed > 0,
        "no constrained output ended within 48 tokens"
    );
}

/// The real draft/target pair: Qwen2.5-Coder 0.5B proposing for 1.5B on a code prompt.
#[test]
fn greedy_speculation_reproduces_plain_greedy_qwen_pair() {
    let (Some(target), Some(draft)) = (
        common::model_path(common::QWEN_15B),
        common::model_path(common::QWEN_05B),
    ) else {
        return;
    };
    let target = Model::load(&target).unwrap_or_else(|e| panic!("{e}"));
    let args = SpeculationOptions {
        draft: Some(ModelSpec::File(draft)),
        draft_max: 6,
        lookup: true,
        ..Default::default()
    };
    let draft = args
        .load_draft(&target)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no draft"));
    let text =
        "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n";
    let prompt = target
        .tokenizer
        .encode(text, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let params = greedy(32, target.tokenizer.stop_ids());
    let (want, _) = run(
        &mut engine(&target.config, &target.weights, 256),
        &prompt,
        &params,
    );
    let mut e = engine(&target.config, &target.weights, 256);
    let d =
        cpu_session(&draft.config, &draft.weights, &opts(256)).unwrap_or_else(|e| panic!("{e}"));
    e.set_speculation(args.speculation(Some(
        DraftModel::new(d, target.config.vocab_size).unwrap_or_else(|e| panic!("{e}")),
    )));
    let (got, stats) = run(&mut e, &prompt, &params);
    assert_eq!(got, want);
    let sp = stats.speculation.unwrap_or_else(|| panic!("no stats"));
    println!("{}", sp.summary());
    assert!(sp.verify_steps > 0 && sp.accepted > 0, "{sp:?}");
}

#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let (Some(target), Some(draft)) = (
        common::model_path(common::QWEN_05B),
        common::model_path(common::SMOLLM2),
    ) else {
        return;
    };
    let target = Model::load(&target).unwrap_or_else(|e| panic!("{e}"));
    let args = SpeculationOptions {
        draft: Some(ModelSpec::File(draft)),
        ..Default::default()
    };
    let err = args
        .load_draft(&target)
        .err()
        .unwrap_or_else(|| panic!("a SmolLM2 draft for Qwen was accepted"));
    assert!(err.to_string().contains("vocabulary"), "{err}");
    // The engine-level check, on the logits' width.
    let (cfg, w) = nonsense_draft(100);
    let s = cpu_session(&cfg, &w, &opts(64)).unwrap_or_else(|e| panic!("{e}"));
    assert!(DraftModel::new(s, 101).is_err());
}

/// Penalties and log-probabilities need every token's logits as the plain loop sees them:
/// speculation steps aside, says why, and the text is unchanged.
#[test]
fn penalties_turn_speculation_off() {
    let (cfg, w) = nonsense_draft(64);
    let prompt = [1, 2, 3, 1, 2, 3, 1, 2];
    let params = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams {
            repetition_penalty: 1.3,
            ..SamplingParams::greedy()
        },
        stop_ids: vec![],
    };
    let (want, _) = run(&mut engine(&cfg, &w, 64), &prompt, &params);
    let mut e = engine(&cfg, &w, 64);
    e.set_speculation(spec(None, true, 4, true));
    let (got, stats) = run(&mut e, &prompt, &params);
    assert_eq!(got, want);
    let sp = stats.speculation.unwrap_or_else(|| panic!("no stats"));
    assert!(
        sp.off.is_some_and(|why| why.contains("penalties")),
        "{sp:?}"
    );
    assert_eq!(sp.verify_steps, 0);
}

// ---------------------------------------------------------------- sampling

/// A tiny random model with a vocabulary of `vocab` tokens.
fn tiny(vocab: usize, seed: u64) -> (ModelConfig, ModelWeights) {
    let cfg = json!({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 64,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false});
    let shape = Shape::from_json("tiny", &cfg).unwrap_or_else(|e| panic!("{e}"));
    let w = random_weights(&shape, GgmlType::F32, seed).unwrap_or_else(|e| panic!("{e}"));
    (shape.config, w)
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Upper tail of the chi-square distribution with `dof` degrees of freedom at 1e-6
/// (Wilson-Hilferty): above it, the counts do not follow the expected distribution.
fn chi_square_limit(dof: f64) -> f64 {
    let z = 4.753; // standard normal quantile at 1 - 1e-6
    let a = 2.0 / (9.0 * dof);
    dof * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Draws `n` three-token continuations with speculation and compares their joint
/// distribution with the target's exact one, p(t1) p(t2 | t1) p(t3 | t1 t2).
fn sampled_joint_matches_target(name: &str, use_draft: bool, lookup: bool, prompt: &[u32]) {
    let seed = std::env::var("TACHYON_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{name}: seed {seed} (replay with TACHYON_TEST_SEED={seed})");
    let vocab = 6;
    let (tcfg, tw) = tiny(vocab, seed);
    let (dcfg, dw) = tiny(vocab, seed ^ 0xD1B5_4A32_D192_ED03);
    let temperature = 0.9;
    // The exact joint distribution, from the target's logits.
    let mut exact = vec![0f64; vocab * vocab * vocab];
    let mut t = engine(&tcfg, &tw, 64);
    let p1 = softmax(
        t.prompt_logits(prompt).unwrap_or_else(|e| panic!("{e}")),
        temperature,
    );
    for a in 0..vocab {
        let mut pa = prompt.to_vec();
        pa.push(a as u32);
        let p2 = softmax(
            t.prompt_logits(&pa).unwrap_or_else(|e| panic!("{e}")),
            temperature,
        );
        for b in 0..vocab {
            let mut pb = pa.clone();
            pb.push(b as u32);
            let p3 = softmax(
                t.prompt_logits(&pb).unwrap_or_else(|e| panic!("{e}")),
                temperature,
            );
            for c in 0..vocab {
                exact[(a * vocab + b) * vocab + c] = p1[a] * p2[b] * p3[c];
            }
        }
    }
    let mut e = engine(&tcfg, &tw, 64);
    let draft = use_draft.then(|| {
        DraftModel::new(
            cpu_session(&dcfg, &dw, &opts(64)).unwrap_or_else(|e| panic!("{e}")),
            vocab,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    });
    e.set_speculation(spec(draft, lookup, 2, false));
    let n = 40_000;
    let mut counts = vec![0u64; exact.len()];
    let mut stats = SpecStats::default();
    for i in 0..n {
        let params = GenerateParams {
            max_tokens: 3,
            sampling: SamplingParams {
                temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: seed.wrapping_add(i),
                ..SamplingParams::default()
            },
            stop_ids: vec![],
        };
        let (out, s) = run(&mut e, prompt, &params);
        assert_eq!(out.len(), 3);
        counts[(out[0] as usize * vocab + out[1] as usize) * vocab + out[2] as usize] += 1;
        let sp = s.speculation.unwrap_or_else(|| panic!("no stats"));
        stats.verify_steps += sp.verify_steps;
        stats.proposed += sp.proposed;
        stats.accepted += sp.accepted;
    }
    // With a draft every continuation went through one verify step of two proposals;
    // lookup proposes only when the last two tokens occurred before. Some kept, some not.
    if use_draft {
        assert_eq!(stats.verify_steps as u64, n, "{stats:?}");
    }
    assert!(stats.verify_steps > 0, "{stats:?}");
    assert!(
        stats.accepted > 0 && stats.accepted < stats.proposed,
        "{stats:?}"
    );
    // Pool cells expected to hold fewer than 5 draws.
    let (mut chi, mut cells, mut small_e, mut small_o) = (0.0, 0usize, 0.0, 0.0);
    for (&p, &o) in exact.iter().zip(&counts) {
        let expect = p * n as f64;
        if expect < 5.0 {
            small_e += expect;
            small_o += o as f64;
            continue;
        }
        chi += (o as f64 - expect).powi(2) / expect;
        cells += 1;
    }
    if small_e > 0.0 {
        chi += (small_o - small_e).powi(2) / small_e;
        cells += 1;
    }
    let limit = chi_square_limit((cells - 1) as f64);
    println!(
        "{name}: chi-square {chi:.1} over {cells} cells (limit {limit:.1}); {} of {} proposals kept",
        stats.accepted, stats.proposed
    );
    assert!(
        chi < limit,
        "{name}: chi-square {chi:.1} >= {limit:.1}: speculative sampling is not the target's distribution"
    );
}

#[test]
fn sampled_speculation_with_a_draft_follows_the_target_distribution() {
    sampled_joint_matches_target("draft", true, false, &[1, 4, 2]);
}

#[test]
fn sampled_speculation_with_lookup_follows_the_target_distribution() {
    // The prompt repeats, so lookup always has a proposal (a point mass on one token).
    sampled_joint_matches_target("lookup", false, true, &[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]);
}
