//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN_05B: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const QWEN_15B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The path of a real model from `scripts/fetch-models.sh`, or None (with a note) when it is
/// missing. With TACHYON_REQUIRE_MODELS=1 (set by CI) a missing model fails the test instead.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TACHYON_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let p = dir.join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("TACHYON_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{} is missing; run scripts/fetch-models.sh", p.display());
    }
    eprintln!(
        "skipping: {} is missing (run scripts/fetch-models.sh)",
        p.display()
    );
    None
}

/// `weights` with the embedding row of `token` made NaN (BF16, F16 or F32 weights): any
/// sequence holding that token gets NaN hidden states from there on, so every logit after
/// it is NaN, while a sequence without it is untouched. The model a damaged file makes.
pub fn with_nan_embedding_row(
    weights: &tachyon::format::ModelWeights,
    token: u32,
) -> tachyon::format::ModelWeights {
    use tachyon::format::{GgmlType, HostBytes, Weight};
    let e = &weights.embed;
    let mut bytes = e.bytes().to_vec();
    let nan: &[u8] = match e.ty {
        GgmlType::BF16 => &[0xC0, 0x7F],
        GgmlType::F16 => &[0x00, 0x7E],
        GgmlType::F32 => &[0x00, 0x00, 0xC0, 0x7F],
        other => panic!("with_nan_embedding_row: {other} embeddings"),
    };
    let row = e.row_bytes();
    for v in bytes[token as usize * row..(token as usize + 1) * row].chunks_exact_mut(nan.len()) {
        v.copy_from_slice(nan);
    }
    let len = bytes.len();
    let mut out = weights.clone();
    out.embed = Weight::new(
        &e.name,
        e.ty,
        e.rows,
        e.cols,
        std::sync::Arc::new(HostBytes(bytes)),
        0,
        len,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    out
}

/// A tiny qwen2 shape (untied head, biases) for the NaN-logits tests.
pub fn tiny_qwen2() -> tachyon::format::random::Shape {
    tachyon::format::random::Shape::from_json(
        "tiny-qwen2",
        &serde_json::json!({"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 320,
            "vocab_size": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 4096, "tie_word_embeddings": false}),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// On a tiny random model whose embedding row `poison` is NaN, made into a session by
/// `session`: a prompt holding the poisoned token ends with `EngineError::NanLogits` (no
/// token emitted, no panic), and then a prompt without it, on the same engine, generates
/// `max_tokens` tokens: the tokens a fresh engine of the same session gives that prompt, so
/// the failed request left nothing behind. Returns those tokens.
pub fn nan_logits_fail_one_request_only(
    session: &dyn Fn(
        &tachyon::format::ModelConfig,
        &tachyon::format::ModelWeights,
    ) -> Box<dyn tachyon::engine::Session>,
    seed: u64,
    max_tokens: usize,
) -> Vec<u32> {
    use tachyon::engine::{Engine, EngineError, Flow, GenerateParams, SamplingParams};
    use tachyon::format::GgmlType;
    use tachyon::format::random::random_weights;
    let shape = tiny_qwen2();
    let weights = random_weights(&shape, GgmlType::BF16, seed).unwrap_or_else(|e| panic!("{e}"));
    let poison = 7u32;
    let poisoned = with_nan_embedding_row(&weights, poison);
    let mut engine = Engine::new(session(&shape.config, &poisoned));
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let run = |engine: &mut Engine, prompt: &[u32]| {
        let mut out = Vec::new();
        let r = engine.generate(prompt, &params, &mut |t| {
            out.push(t);
            Flow::Continue
        });
        (r, out)
    };
    let (r, out) = run(&mut engine, &[3, 11, poison, 20]);
    assert!(
        matches!(r, Err(EngineError::NanLogits { index: 0 })),
        "a NaN model should end the request: {:?}",
        r.map(|s| s.finish)
    );
    assert!(out.is_empty(), "tokens emitted from NaN logits: {out:?}");
    let clean = [3, 11, 20, 21];
    let (r, out) = run(&mut engine, &clean);
    let stats = r.unwrap_or_else(|e| panic!("the next request failed: {e}"));
    assert_eq!(stats.generated_tokens, max_tokens);
    assert!(
        !out.contains(&poison),
        "the clean request met the poisoned token: {out:?}"
    );
    // Same backend, same kernels, same path: equal token for token, near ties included
    // (another backend's rounding may break a near tie of random weights the other way).
    let (r, fresh) = run(&mut Engine::new(session(&shape.config, &poisoned)), &clean);
    r.unwrap_or_else(|e| panic!("the clean request on a fresh engine failed: {e}"));
    assert_eq!(
        out, fresh,
        "the clean request after the failed one vs on a fresh engine"
    );
    out
}
