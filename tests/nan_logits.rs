//! A model that produces NaN logits ends that request with an error and serves the next:
//! on the CPU backend here, on the CUDA backend in tests/cuda/model.rs.

mod common;

use tachyon::engine::{SessionOptions, cpu_session};

#[test]
fn nan_logits_end_the_request_and_the_next_one_succeeds() {
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 8,
        ..Default::default()
    };
    common::nan_logits_fail_one_request_only(
        &|config, weights| cpu_session(config, weights, &opts).unwrap_or_else(|e| panic!("{e}")),
        0x5eed,
        6,
    );
}

/// A draft model whose logits are NaN proposes nothing (it has no token to propose), so
/// speculative greedy decoding gives the target's own tokens instead of feeding the target
/// an id past its vocabulary.
#[test]
fn a_draft_with_nan_logits_proposes_nothing_and_the_output_is_the_targets() {
    use tachyon::engine::spec::DraftModel;
    use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams, Speculation};
    use tachyon::format::GgmlType;
    use tachyon::format::random::random_weights;
    let shape = common::tiny_qwen2();
    let weights = random_weights(&shape, GgmlType::BF16, 0x5eed).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 8,
        ..Default::default()
    };
    let session = |w| cpu_session(&shape.config, w, &opts).unwrap_or_else(|e| panic!("{e}"));
    let poison = 7u32;
    let prompt = [3, 11, poison, 20];
    let params = GenerateParams {
        max_tokens: 6,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let generate = |engine: &mut Engine| {
        let mut out = Vec::new();
        engine
            .generate(&prompt, &params, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        out
    };
    let plain = generate(&mut Engine::new(session(&weights)));
    let mut engine = Engine::new(session(&weights));
    let draft = DraftModel::new(
        session(&common::with_nan_embedding_row(&weights, poison)),
        engine.vocab_size(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    engine.set_speculation(Some(Speculation::new(Some(draft), None, 4, false)));
    assert_eq!(generate(&mut engine), plain);
}
