//! Programmatic dependent launch (PDL) in the decode step: with it on, every launch of the
//! step is programmatic and the tokens are those of plain launches, greedy and sampled with
//! penalties (the draw's passes and the penalty kernels), for a model with q/k norms too.
//! Under the emulated GPU each programmatic kernel is also held to the rule that makes the
//! overlap safe on a GPU (nothing before its `griddepcontrol.wait` touches what the kernels
//! before it write: emulator/README.md), so a kernel that reads an activation too early
//! fails this test there.

use tachyon::backend::StepProfile;
use tachyon::backend::cuda::Pdl;
use tachyon::engine::{Engine, Flow, GenerateParams, SamplingParams, SessionOptions, cuda_session};
use tachyon::format::GgmlType;
use tachyon::format::random::{Shape, random_weights};

use super::model::{tiny_llama, tiny_qwen3};

/// The tokens of a greedy and of a sampled, penalized generation, and a profile of the
/// step, with PDL as the probe decided (`pdl`) or turned off.
fn generate(config: &serde_json::Value, pdl: bool) -> (Vec<u32>, Vec<u32>, StepProfile) {
    let shape = Shape::from_json("tiny", config).unwrap_or_else(|e| panic!("{e}"));
    let weights = random_weights(&shape, GgmlType::BF16, 5).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        ctx: 32,
        max_batch: 8,
        ..Default::default()
    };
    let mut dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    if !pdl {
        dev.disable_pdl();
    }
    let session =
        cuda_session(&shape.config, &weights, &opts, dev, false).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(session);
    let mut run = |sampling: SamplingParams| {
        let params = GenerateParams {
            max_tokens: 3,
            sampling,
            stop_ids: vec![],
        };
        let mut out = Vec::new();
        engine
            .generate(&[1, 2, 3], &params, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
        engine.forget_cache();
        out
    };
    let greedy = run(SamplingParams::greedy());
    let sampled = run(SamplingParams {
        temperature: 0.9,
        top_k: 20,
        repetition_penalty: 1.3,
        presence_penalty: 0.5,
        seed: 7,
        ..Default::default()
    });
    let profile = engine
        .profile_step(false)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a CUDA session profiles its step");
    (greedy, sampled, profile)
}

#[test]
#[ignore = "needs a GPU"]
fn decode_with_pdl_gives_the_tokens_of_plain_launches() {
    let dev = tachyon::backend::cuda::probe().unwrap_or_else(|e| panic!("needs a GPU: {e}"));
    let decided = dev.pdl();
    drop(dev);
    if super::emulated() {
        // The emulated device is an H200 with a CUDA 13 driver: CI must take the PDL path.
        assert_eq!(decided, Pdl::On, "the emulated device runs PDL");
    }
    // Under the emulator one small model (q/k norms, one layer); every other emulated test
    // runs with PDL on too, and so under the rule.
    let mut families = vec![("qwen3", tiny_qwen3())];
    if super::emulated() {
        families[0].1["num_hidden_layers"] = 1.into();
    } else {
        families.push(("llama", tiny_llama()));
    }
    for (family, config) in families {
        let (greedy_off, sampled_off, off) = generate(&config, false);
        assert_eq!(off.programmatic_launches(), 0, "{family}: PDL turned off");
        if decided != Pdl::On {
            eprintln!("PDL is {decided} here: only the plain launches ran");
            return;
        }
        let (greedy_on, sampled_on, on) = generate(&config, true);
        assert_eq!(
            greedy_on, greedy_off,
            "{family}: greedy tokens with and without PDL"
        );
        assert_eq!(
            sampled_on, sampled_off,
            "{family}: sampled tokens with and without PDL"
        );
        let plain: Vec<&str> = on
            .kernels
            .iter()
            .filter(|k| k.programmatic != k.launches)
            .map(|k| k.name)
            .collect();
        assert!(
            plain.is_empty() && on.launches() == off.launches(),
            "{family}: every launch of the step is programmatic; plain: {plain:?}"
        );
    }
}

#[test]
fn pdl_needs_hopper_a_new_driver_and_no_opt_out() {
    use tachyon::backend::cuda::pdl_decision;
    assert_eq!(pdl_decision((9, 0), 12030, None), Pdl::On);
    assert_eq!(pdl_decision((9, 0), 13000, Some("1")), Pdl::On);
    assert_eq!(pdl_decision((9, 0), 13000, Some("0")), Pdl::OffByRequest);
    assert_eq!(
        pdl_decision((9, 0), 12020, None),
        Pdl::OffForDriver { driver: 12020 }
    );
    // sm_80 code and the compute_80 PTX a newer GPU compiles have no griddepcontrol.wait.
    for cc in [(8, 0), (8, 9), (10, 0), (12, 0)] {
        assert_eq!(
            pdl_decision(cc, 13000, None),
            Pdl::OffForGpu {
                major: cc.0,
                minor: cc.1
            }
        );
    }
}
