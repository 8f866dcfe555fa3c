//! End-to-end generation on the real SmolLM2 model (CPU): reproducible sampling, chat,
//! prompts over the context, KV prefix reuse giving the same result as a cold start, and
//! `tachyon generate` under a JSON schema, a regex and a grammar.

mod common;

use tachyon::engine::{
    Engine, EngineError, Flow, GenerateParams, SamplingParams, SessionOptions, cpu_session,
};
use tachyon::graph::Model;
use tachyon::tokenizer::{ChatMessage, ChatTemplate};

fn engine(model: &Model, ctx: usize) -> Engine {
    let opts = SessionOptions {
        ctx,
        ..Default::default()
    };
    Engine::new(cpu_session(&model.config, &model.weights, &opts).expect("session"))
}

fn run(engine: &mut Engine, prompt: &[u32], params: &GenerateParams) -> Vec<u32> {
    let mut out = Vec::new();
    engine
        .generate(prompt, params, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .expect("generate");
    out
}

fn sampled(seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..Default::default()
        },
        stop_ids: vec![],
    }
}

#[test]
fn same_seed_gives_same_text_and_other_seeds_differ() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let prompt = model.tokenizer.encode("Once upon a time", true).unwrap();
    // Fresh engines, so nothing is shared between the two runs.
    let a = run(&mut engine(&model, 256), &prompt, &sampled(42));
    let b = run(&mut engine(&model, 256), &prompt, &sampled(42));
    assert_eq!(a, b);
    let others: Vec<Vec<u32>> = (43..46)
        .map(|s| run(&mut engine(&model, 256), &prompt, &sampled(s)))
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "temperature 1 sampling ignored the seed"
    );
}

#[test]
fn prefix_reuse_matches_a_cold_start() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let tok = &model.tokenizer;
    let first = tok
        .encode("def add(a, b):\n    return a + b\n\ndef mul(a, b):", true)
        .unwrap();
    let mut longer = first.clone();
    longer.extend(
        tok.encode("\n    return a * b\n\ndef sub(a, b):", false)
            .unwrap(),
    );
    let greedy = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let mut warm = engine(&model, 256);
    run(&mut warm, &first, &greedy);
    let mut out = Vec::new();
    let stats = warm
        .generate(&longer, &greedy, &mut |t| {
            out.push(t);
            Flow::Continue
        })
        .unwrap();
    assert!(
        stats.cached_tokens >= first.len(),
        "the shared prefix was not reused ({} cached)",
        stats.cached_tokens
    );
    let cold = run(&mut engine(&model, 256), &longer, &greedy);
    assert_eq!(out, cold);
}

#[test]
fn prompt_over_the_context_is_a_clear_error() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let mut e = engine(&model, 16);
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let err = e.generate(
        &prompt,
        &GenerateParams {
            max_tokens: 4,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        },
        &mut |_| Flow::Continue,
    );
    assert!(
        matches!(
            err,
            Err(EngineError::PromptTooLong {
                prompt: 40,
                ctx: 16
            })
        ),
        "{:?}",
        err.err()
    );
    let bad = e.generate(
        &[u32::MAX],
        &GenerateParams {
            max_tokens: 1,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        },
        &mut |_| Flow::Continue,
    );
    assert!(matches!(bad, Err(EngineError::BadToken { .. })));
    // The engine still works after refusing.
    let ok = run(
        &mut e,
        &[100, 200, 300],
        &GenerateParams {
            max_tokens: 3,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        },
    );
    assert_eq!(ok.len(), 3);
}

#[test]
fn generation_stops_at_the_context_end() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let mut e = engine(&model, 12);
    let params = GenerateParams {
        max_tokens: 100,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let mut n = 0;
    let stats = e.generate(&[100, 200, 300, 400], &params, &mut |_| {
        n += 1;
        Flow::Continue
    });
    let stats = stats.unwrap();
    assert_eq!(stats.finish.as_str(), "length");
    assert!(
        n <= 12 - 4 + 1,
        "generated {n} tokens past a 12-token context"
    );
}

fn chat_answer(file: &str, question: &str) -> Option<String> {
    let path = common::model_path(file)?;
    let model = Model::load(&path).unwrap();
    let tok = &model.tokenizer;
    let tmpl = ChatTemplate::new(
        tok.chat_template().expect("chat template"),
        &tok.bos_token().unwrap_or_default(),
        &tok.eos_token().unwrap_or_default(),
    )
    .unwrap();
    let text = tmpl
        .render(
            &[ChatMessage {
                role: "user".into(),
                content: question.into(),
            }],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let params = GenerateParams {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        stop_ids: tok.stop_ids().to_vec(),
    };
    let ids = run(&mut engine(&model, 512), &prompt, &params);
    Some(tok.decode(&ids).unwrap())
}

#[test]
fn chat_answers_a_simple_question() {
    for file in [common::SMOLLM2, common::QWEN_05B] {
        if let Some(answer) = chat_answer(
            file,
            "What is the capital of France? Answer in one sentence.",
        ) {
            eprintln!("{file}: {answer:?}");
            assert!(answer.contains("Paris"), "{file}: {answer:?}");
        }
    }
}

/// `tachyon generate --json-schema FILE` on the command line: greedy output is JSON matching
/// the schema, and `--lookup` or `--draft-model` (SmolLM2 drafting for itself) give the same
/// bytes with speculation on. A regex and a Lark grammar constrain alike; a bad schema is a
/// clear error.
#[test]
fn generate_follows_a_json_schema_with_and_without_speculation() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20}},
            "required": ["city", "country"], "additionalProperties": false}"#,
    )
    .expect("write schema");
    let grammar = dir.path().join("yes_no.lark");
    std::fs::write(&grammar, "start: (\"yes\" | \"no\") \".\"\n").expect("write grammar");
    let model = path.to_string_lossy().into_owned();
    let run = |extra: &[&str]| -> (bool, String, String, serde_json::Value) {
        let stats = dir.path().join("stats.json");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tachyon"))
            .args(["generate", "--backend", "cpu", "--model", &model, "--chat"])
            .args(["--prompt", "Name a big city and its country, as JSON."])
            .args(["--temperature", "0", "--max-tokens", "48", "--ctx", "512"])
            .arg("--stats-json")
            .arg(&stats)
            .args(extra)
            .output()
            .expect("run tachyon");
        let stats = std::fs::read_to_string(&stats)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            stats,
        )
    };
    let schema_arg = schema.to_string_lossy().into_owned();
    let (ok, plain, err, stats) = run(&["--json-schema", &schema_arg]);
    assert!(ok, "{err}");
    assert_eq!(stats["finish"], "stop", "{stats}");
    let v: serde_json::Value =
        serde_json::from_str(plain.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {plain:?}"));
    assert!(!plain.trim().contains('\n'), "not on one line: {plain:?}");
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(obj.len(), 2, "{v}");
    assert!(obj["city"].is_string() && obj["country"].is_string(), "{v}");
    for extra in [
        &["--lookup"][..],
        &["--draft-model", &model, "--draft-max", "4"][..],
    ] {
        let mut args = vec!["--json-schema", schema_arg.as_str()];
        args.extend_from_slice(extra);
        let (ok, got, err, stats) = run(&args);
        assert!(ok, "{extra:?}: {err}");
        assert_eq!(got, plain, "{extra:?}");
        assert!(stats["speculation"]["off"].is_null(), "{extra:?}: {stats}");
    }
    let (_, with_draft, _, stats) = run(&["--json-schema", &schema_arg, "--draft-model", &model]);
    assert_eq!(with_draft, plain);
    assert!(
        stats["speculation"]["accepted"].as_u64().unwrap_or(0) > 0,
        "the draft kept nothing: {stats}"
    );
    let (ok, out, err, _) = run(&["--grammar-regex", "[A-Z][a-z]{1,15}, [A-Z][a-z]{1,15}"]);
    assert!(ok, "{err}");
    let words: Vec<&str> = out.trim_end_matches('\n').split(", ").collect();
    let capitalized = |w: &&str| {
        let mut c = w.chars();
        c.next().is_some_and(|f| f.is_ascii_uppercase())
            && c.clone().count() > 0
            && c.all(|x| x.is_ascii_lowercase())
    };
    assert!(words.len() == 2 && words.iter().all(capitalized), "{out:?}");
    let grammar_arg = grammar.to_string_lossy().into_owned();
    let (ok, out, err, _) = run(&["--grammar", &grammar_arg]);
    assert!(ok, "{err}");
    assert!(["yes.", "no."].contains(&out.trim_end()), "{out:?}");
    std::fs::write(&schema, r#"{"type": "nonsense"}"#).expect("write schema");
    let (ok, _, err, _) = run(&["--json-schema", &schema_arg]);
    assert!(!ok, "a bad schema was accepted");
    assert!(err.contains("constraint"), "{err}");
}
