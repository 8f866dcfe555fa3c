//! `tachyon quantize` on the real models: the written GGUF loads back as the same model
//! (config, tokenizer, template), every tensor stays within its type's re-quantization
//! error of the source, and an independent reader (the `gguf` Python package) dequantizes
//! the file to exactly the values tachyon's dequantizer gives.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use tachyon::engine::{Engine, Pick, Rows, SessionOptions, StepInput, cpu_session};
use tachyon::format::GgmlType;
use tachyon::format::gguf::GgufFile;
use tachyon::format::load_weights;
use tachyon::graph::Model;
use tachyon::quant;
use tachyon::quant::model_quantizer::{QuantMix, quantize_to_gguf};

/// Largest relative RMS error allowed when re-quantizing already-quantized weights.
fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 0.005,
        GgmlType::Q8_0 => 0.01,
        GgmlType::Q6K => 0.04,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 0.08,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => 0.15,
    }
}

fn dequantized(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut v = vec![f32::NAN; t.n_elements() as usize];
    quant::dequantize(t.ty, g.tensor_bytes(t), &mut v).unwrap();
    v
}

fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += f64::from(x - y).powi(2);
        den += f64::from(*y).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Run the independent dequantizer over `out`, on up to two tensors of each type.
fn independent_check(out: &Path, g: &GgufFile, dir: &Path) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    if !python.is_file() {
        assert!(
            !std::env::var("TACHYON_REQUIRE_PY").is_ok_and(|v| v == "1"),
            "{} is missing; run scripts/test.sh (it creates the venv with the gguf package)",
            python.display()
        );
        eprintln!(
            "skipping the independent check: {} is missing (run scripts/test.sh)",
            python.display()
        );
        return;
    }
    let mut manifest = serde_json::Map::new();
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    for t in g.tensors() {
        let seen = per_type.entry(t.ty.name()).or_insert(0);
        let values = if *seen < 2 {
            *seen += 1;
            let file = format!("{}.f32", t.name);
            let v = dequantized(g, &t.name);
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(dir.join(&file), bytes).unwrap();
            serde_json::Value::String(file)
        } else {
            serde_json::Value::Null
        };
        let rows = t.n_rows();
        manifest.insert(
            t.name.clone(),
            serde_json::json!({"type": t.ty.name().to_ascii_uppercase(), "rows": rows, "cols": t.row_len(), "values": values}),
        );
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_quantized.py");
    let o = std::process::Command::new(&python)
        .arg(script)
        .arg(out)
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "independent check failed:\n{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains(" 0 mismatches"), "{text}");
}

fn check(model: &str, mix: &str, want_types: &[GgmlType]) {
    let Some(src_path) = common::model_path(model) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let (cfg, w, src) = load_weights(&src_path).unwrap();
    let mix = QuantMix::parse(mix).unwrap();
    let report = quantize_to_gguf(&cfg, &w, Some(&src), mix, &out, |_, _| {}).unwrap();
    for t in want_types {
        assert!(
            report.types.contains_key(t.name()),
            "{model}: no {} tensor in {:?}",
            t.name(),
            report.types
        );
    }

    // The same model: config, tokenizer, chat template.
    let a = Model::load(&src_path).unwrap();
    let b = Model::load(&out).unwrap();
    assert_eq!(format!("{:?}", a.config), format!("{:?}", b.config));
    let text = "def fibonacci(n):\n    return n";
    assert_eq!(
        a.tokenizer.encode(text, false).unwrap(),
        b.tokenizer.encode(text, false).unwrap()
    );
    assert_eq!(a.tokenizer.chat_template(), b.tokenizer.chat_template());

    // Every tensor near its source.
    let gs = GgufFile::open(&src_path).unwrap();
    let go = GgufFile::open(&out).unwrap();
    assert_eq!(go.tensors().len(), report.tensors);
    for t in go.tensors() {
        let e = rel_rms(&dequantized(&go, &t.name), &dequantized(&gs, &t.name));
        assert!(
            e <= bound(t.ty),
            "{model}: {} as {}: relative RMS error {e:.4} > {}",
            t.name,
            t.ty,
            bound(t.ty)
        );
    }
    independent_check(&out, &go, dir.path());
}

#[test]
fn smollm2_to_q8_0_keeps_the_model() {
    check(common::SMOLLM2, "q8_0", &[GgmlType::Q8_0, GgmlType::F32]);
    // Q8_0 re-quantization is close enough that the next token does not change.
    let Some(src_path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    let (cfg, w, src) = load_weights(&src_path).unwrap();
    quantize_to_gguf(
        &cfg,
        &w,
        Some(&src),
        QuantMix::Uniform(GgmlType::Q8_0),
        &out,
        |_, _| {},
    )
    .unwrap();
    let next = |p: &Path| {
        let m = Model::load(p).unwrap();
        let prompt = m
            .tokenizer
            .encode("The capital of France is", false)
            .unwrap();
        let s = cpu_session(
            &m.config,
            &m.weights,
            &SessionOptions {
                ctx: 64,
                ..Default::default()
            },
        )
        .unwrap();
        let mut e = Engine::new(s);
        tachyon::engine::sampler::argmax(e.prompt_logits(&prompt).unwrap())
    };
    assert_eq!(next(&src_path), next(&out));
}

#[test]
fn qwen_05b_to_q4_k_m_uses_the_k_mix() {
    // Rows of 896 are not whole 256-blocks, so most matrices fall back to Q5_0 as in
    // llama.cpp; ffn_down (rows of 4864) takes Q4_K and Q6_K.
    check(
        common::QWEN_05B,
        "q4_k_m",
        &[GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::F32],
    );
}

fn log_softmax(x: &[f32], scale: f64) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64 / scale;
    let lse = x
        .iter()
        .map(|&v| (v as f64 / scale - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    x.iter().map(|&v| v as f64 / scale - lse).collect()
}

/// The logits of `prompt` then of each token of `forced` fed one at a time (a row per
/// position), on a CPU session with `opts`.
fn teacher_forced(
    cfg: &tachyon::format::ModelConfig,
    w: &tachyon::format::ModelWeights,
    opts: &SessionOptions,
    prompt: &[u32],
    forced: &[u32],
) -> Vec<Vec<f32>> {
    let mut s = cpu_session(cfg, w, opts).unwrap();
    let mut logits = vec![0f32; cfg.vocab_size];
    let mut out = Vec::with_capacity(forced.len() + 1);
    for (i, chunk) in std::iter::once(prompt).chain(forced.chunks(1)).enumerate() {
        let pos = if i == 0 { 0 } else { prompt.len() + i - 1 };
        s.step(
            StepInput { tokens: chunk, pos },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap();
        out.push(logits.clone());
    }
    out
}

/// The greedy continuation of `prompt`, `steps` tokens, on a CPU session with `opts`.
fn greedy(
    cfg: &tachyon::format::ModelConfig,
    w: &tachyon::format::ModelWeights,
    opts: &SessionOptions,
    prompt: &[u32],
    steps: usize,
) -> Vec<u32> {
    let mut s = cpu_session(cfg, w, opts).unwrap();
    let mut logits = vec![0f32; cfg.vocab_size];
    s.step(
        StepInput {
            tokens: prompt,
            pos: 0,
        },
        Pick::Logits(&mut logits),
        Rows::Last,
    )
    .unwrap();
    let mut forced = Vec::with_capacity(steps);
    for i in 0..steps {
        let t = tachyon::engine::sampler::argmax(&logits);
        forced.push(t);
        s.step(
            StepInput {
                tokens: &[t],
                pos: prompt.len() + i,
            },
            Pick::Logits(&mut logits),
            Rows::Last,
        )
        .unwrap();
    }
    forced
}

/// Per-position means of KL(reference || got), the same KL with every row divided by the
/// reference row's standard deviation, the logits' RMS error relative to the reference's
/// spread; and the count of positions whose argmax agrees.
fn distances(reference: &[Vec<f32>], got: &[Vec<f32>]) -> (f64, f64, f64, usize) {
    let (mut kl, mut kl_std, mut rms, mut agree) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (r, g) in reference.iter().zip(got) {
        let vocab = r.len() as f64;
        let mean = r.iter().map(|&v| v as f64).sum::<f64>() / vocab;
        let std = (r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / vocab)
            .sqrt()
            .max(1e-12);
        for (scale, acc) in [(1.0, &mut kl), (std, &mut kl_std)] {
            let (lr, lg) = (log_softmax(r, scale), log_softmax(g, scale));
            *acc += lr
                .iter()
                .zip(&lg)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
                .max(0.0);
        }
        let num: f64 = r
            .iter()
            .zip(g)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let den: f64 = r.iter().map(|&a| (a as f64 - mean).powi(2)).sum();
        rms += (num / den.max(1e-30)).sqrt();
        agree +=
            usize::from(tachyon::engine::sampler::argmax(r) == tachyon::engine::sampler::argmax(g));
    }
    let f = reference.len() as f64;
    assert!(kl.is_finite() && kl_std.is_finite() && rms.is_finite());
    (kl / f, kl_std / f, rms / f, agree)
}

/// Teacher-forced comparison of quant mixes against reference weights: the reference's own
/// greedy continuation of `prompt` is fed to every model, and at each position the next-token
/// distributions are compared. Random weights give nearly one-hot distributions, so the KL is
/// also taken with the logits divided by the reference row's standard deviation (a unit-
/// temperature view where many tokens carry mass), next to the logits' relative RMS error.
/// CPU backend, exact f32 dot products, so only the weights' rounding differs.
fn quality_report(
    label: &str,
    cfg: &tachyon::format::ModelConfig,
    w: &tachyon::format::ModelWeights,
    source: Option<&tachyon::format::ModelSource>,
    prompt: &[u32],
) {
    let dir = tempfile::tempdir().unwrap();
    let opts = SessionOptions {
        ctx: 256,
        precise: true,
        resident_weights: false,
        ..Default::default()
    };
    let steps = 32;
    let forced = greedy(cfg, w, &opts, prompt, steps);
    let reference = teacher_forced(cfg, w, &opts, prompt, &forced[..steps - 1]);
    let n = reference.len();
    println!("{label}: {n} positions, teacher-forced on the reference's greedy text");
    println!(
        "{:<8} {:>12} {:>14} {:>14} {:>10}",
        "mix", "KL", "KL (unit std)", "logit rel RMS", "argmax ="
    );
    for mix in ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q5_0", "q4_0"] {
        let out = dir.path().join(format!("{mix}.gguf"));
        quantize_to_gguf(
            cfg,
            w,
            source,
            QuantMix::parse(mix).unwrap(),
            &out,
            |_, _| {},
        )
        .unwrap();
        let (qcfg, qw, _src) = load_weights(&out).unwrap();
        let got = teacher_forced(&qcfg, &qw, &opts, prompt, &forced[..steps - 1]);
        let (kl, kl_std, rms, agree) = distances(&reference, &got);
        println!("{mix:<8} {kl:>12.2e} {kl_std:>14.2e} {rms:>14.4} {agree:>7}/{n}");
    }
}

/// What int8 activations cost on the real models, for BENCHMARKS.md: the CPU twin of the
/// GPU's `--int8-acts` (exact products over activations rounded to int8 per 32 values, in
/// the products of at most 4 rows: decode steps; the prompt keeps f32, as the GPU's tensor
/// cores do) against the same weights on f32 activations, teacher-forced on the f32 run's
/// greedy text.
#[test]
#[ignore = "report for BENCHMARKS.md: run with --ignored --nocapture"]
fn quality_of_int8_activations() {
    println!(
        "{:<42} {:>10} {:>14} {:>14} {:>10}",
        "model", "KL", "KL (unit std)", "logit rel RMS", "argmax ="
    );
    for name in [common::SMOLLM2, common::QWEN_05B, common::QWEN_15B] {
        let Some(path) = common::model_path(name) else {
            println!("{name}: not fetched (scripts/fetch-models.sh)");
            continue;
        };
        let m = Model::load(&path).unwrap();
        let prompt = m
            .tokenizer
            .encode(
                "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                false,
            )
            .unwrap();
        let (cfg, w, _src) = load_weights(&path).unwrap();
        let f32_acts = SessionOptions {
            ctx: 256,
            precise: true,
            resident_weights: false,
            ..Default::default()
        };
        let int8_acts = SessionOptions {
            int8_acts: true,
            ..f32_acts.clone()
        };
        let steps = 32;
        let forced = greedy(&cfg, &w, &f32_acts, &prompt, steps);
        let reference = teacher_forced(&cfg, &w, &f32_acts, &prompt, &forced[..steps - 1]);
        let got = teacher_forced(&cfg, &w, &int8_acts, &prompt, &forced[..steps - 1]);
        let (kl, kl_std, rms, agree) = distances(&reference, &got);
        let n = reference.len();
        println!("{name:<42} {kl:>10.2e} {kl_std:>14.2e} {rms:>14.4} {agree:>7}/{n}");
    }
}

/// Quality of each quant mix, for BENCHMARKS.md: random BF16 weights of a real shape
/// (`TACHYON_QUALITY_SHAPE`, default qwen2.5-0.5b) against their quantized forms, and the
/// real SmolLM2 file (Q4_1) against itself re-quantized, on a real prompt.
#[test]
#[ignore = "report for BENCHMARKS.md: run with --ignored --nocapture"]
fn quality_of_quant_mixes() {
    use tachyon::format::random::{Shape, random_weights};
    let spec = std::env::var("TACHYON_QUALITY_SHAPE").unwrap_or_else(|_| "qwen2.5-0.5b".into());
    let shape = Shape::resolve(&spec).unwrap();
    let w = random_weights(&shape, GgmlType::BF16, 11).unwrap();
    let prompt = tachyon::engine::bench::random_prompt(32, shape.config.vocab_size, 5, None);
    quality_report(
        &format!("random BF16 weights of the {spec} shape"),
        &shape.config,
        &w,
        None,
        &prompt,
    );
    if let Some(path) = common::model_path(common::SMOLLM2) {
        let m = Model::load(&path).unwrap();
        let prompt = m
            .tokenizer
            .encode(
                "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                false,
            )
            .unwrap();
        let (cfg, w, src) = load_weights(&path).unwrap();
        quality_report(
            "SmolLM2-135M (its Q4_1 file as the reference)",
            &cfg,
            &w,
            Some(&src),
            &prompt,
        );
    }
}
