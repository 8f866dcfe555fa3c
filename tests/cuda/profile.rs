//! The kernels of one decode step as `tachyon bench --profile` counts and times them: the
//! launches per layer and per token of each family (pinned: a fusion that lowers them
//! updates the numbers here, anything that raises them fails), the graph's node count, and
//! a time for every kernel.

use serde_json::Value;
use tachyon::backend::StepProfile;
use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams, SessionOptions, cuda_session};
use tachyon::format::GgmlType;
use tachyon::format::random::{Shape, random_weights};

use super::model::{tiny_llama, tiny_qwen2, tiny_qwen3};

/// The profile of a decode step of `config` with `layers` layers, after a short greedy run.
fn profile(config: &Value, layers: usize) -> StepProfile {
    let mut config = config.clone();
    config["num_hidden_layers"] = layers.into();
    let shape = Shape::from_json("tiny", &config).unwrap_or_else(|e| panic!("{e}"));
    let weights = random_weights(&shape, GgmlType::BF16, 3).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 32,
        max_batch: 8,
        ..Default::default()
    };
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let session =
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(session);
    let params = GenerateParams {
        max_tokens: 3,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    engine
        .generate(&[1, 2, 3], &params, &mut |_| Flow::Continue)
        .unwrap_or_else(|e| panic!("{e}"));
    engine
        .profile_step(true)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a CUDA session profiles its step")
}

/// Kernels per layer and outside the layers, from a 1- and a 2-layer model.
fn counts(config: &Value) -> (usize, usize, StepProfile) {
    let one = profile(config, 1);
    let two = profile(config, 2);
    let per_layer = two.launches() - one.launches();
    let fixed = one.launches() - per_layer;
    for p in [&one, &two] {
        let nodes = p.graph_nodes.expect("the step was captured as a graph");
        assert!(
            nodes >= p.launches(),
            "{nodes} graph nodes, {} launches",
            p.launches()
        );
        for k in &p.kernels {
            assert!(k.micros > 0.0 && k.micros.is_finite(), "{k:?} has no time");
        }
    }
    (per_layer, fixed, two)
}

#[test]
#[ignore = "needs a GPU"]
fn kernels_per_token_are_counted_and_timed() {
    // (family, its config, kernels per layer, kernels outside the layers). Update these
    // when a fusion lowers them.
    let cases = [
        // Per layer: norm+QKV(+biases); attention (q/k norms, rope, KV append, split and
        // merge) in one kernel; o-proj+add; norm+gate+up+SwiGLU; down+add. Outside: embed,
        // the LM head with the final norm in its prologue, 2 argmax.
        ("llama", tiny_llama(), 5, 4),
        ("qwen2 (biases)", tiny_qwen2(), 5, 4),
        ("qwen3 (q/k norms)", tiny_qwen3(), 5, 4),
    ];
    for (family, config, want_layer, want_fixed) in cases {
        let (per_layer, fixed, two) = counts(&config);
        let names: Vec<&str> = two.kernels.iter().map(|k| k.name).collect();
        assert_eq!(
            (per_layer, fixed),
            (want_layer, want_fixed),
            "{family}: kernels per layer and outside the layers; the step ran {names:?}"
        );
        for want in ["gemv", "attn", "argmax"] {
            assert!(
                names.iter().any(|n| n.contains(want)),
                "{family}: no {want} in {names:?}"
            );
        }
    }
}
