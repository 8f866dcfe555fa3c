//! The constraint engine on the real vocabularies (SmolLM2's 49k and Qwen2.5's 152k
//! tokens): valid output is allowed token by token and ends with a stop token, invalid
//! output is refused where it goes wrong, random walks under the mask stay in the
//! language, rollback restores the state, tool calls trigger lazily, and hostile schemas
//! and grammars fail within bounded time. `mask_cost_per_token` (ignored) measures the
//! mask time per token for BENCHMARKS.md.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tachyon::engine::constraint::{
    Constraint, ConstraintError, ConstraintLimits, ConstraintSpec, ConstraintVocab, Tag,
    ToolSchema, mask_allows,
};
use tachyon::format::gguf::GgufFile;
use tachyon::tokenizer::Tokenizer;

fn load(name: &str) -> Option<(Tokenizer, ConstraintVocab)> {
    let path = common::model_path(name)?;
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).expect("open gguf")).expect("tokenizer");
    let t0 = Instant::now();
    let vocab = ConstraintVocab::new(&tok, tok.vocab_size(), ConstraintLimits::default())
        .expect("constraint vocab");
    eprintln!("{name}: constraint vocabulary built in {:?}", t0.elapsed());
    Some((tok, vocab))
}

fn models() -> Vec<(&'static str, Tokenizer, ConstraintVocab)> {
    [common::SMOLLM2, common::QWEN_05B]
        .into_iter()
        .filter_map(|n| load(n).map(|(t, v)| (n, t, v)))
        .collect()
}

fn allows(c: &mut Constraint, t: u32) -> bool {
    match c.compute_mask().expect("mask") {
        Some(m) => mask_allows(m, t),
        None => true,
    }
}

/// Feeds the tokens of `text` one by one; returns how many the mask allowed in a row.
fn force(c: &mut Constraint, tok: &Tokenizer, text: &str) -> usize {
    let ids = tok.encode(text, false).expect("encode");
    for (i, &t) in ids.iter().enumerate() {
        if !allows(c, t) {
            return i;
        }
        c.commit(t).expect("commit");
    }
    ids.len()
}

fn stop_allowed(c: &mut Constraint, vocab: &ConstraintVocab) -> bool {
    let stops = vocab.stop_ids().to_vec();
    let mask = c.compute_mask().expect("mask").expect("active");
    stops.iter().all(|&s| mask_allows(mask, s))
}

fn schema_spec() -> ConstraintSpec {
    ConstraintSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}}
            },
            "required": ["name", "age"],
            "additionalProperties": false
        }),
        strict: true,
    }
}

#[test]
fn valid_json_is_allowed_token_by_token_and_invalid_json_is_refused() {
    for (name, tok, vocab) in models() {
        let mut c = vocab.compile(&schema_spec()).expect("compile");
        let good = r#"{"name": "Ada", "age": 36, "tags": ["a", "b"]}"#;
        let n = tok.encode(good, false).unwrap().len();
        assert_eq!(force(&mut c, &tok, good), n, "{name}: valid JSON refused");
        assert!(
            stop_allowed(&mut c, &vocab),
            "{name}: cannot stop after a whole object"
        );
        assert!(c.is_complete(), "{name}: nothing can follow the object");
        // One line, with `: ` and `, ` as separators: a pretty-printed layout, a missing or
        // doubled space is refused where it departs from that.
        for (spaced, at) in [
            ("{\n  \"name\": \"Ada\"}", "{"),
            (r#"{"name":"Ada"}"#, r#"{"name":"#),
            (r#"{"name": "Ada",  "age": 1}"#, r#"{"name": "Ada", "#),
            (r#"{ "name": "Ada"}"#, "{"),
        ] {
            let mut c = vocab.compile(&schema_spec()).unwrap();
            let ok = force(&mut c, &tok, spaced);
            let ids = tok.encode(spaced, false).unwrap();
            assert!(ok < ids.len(), "{name}: {spaced:?} allowed");
            let kept = tok.decode(&ids[..ok]).unwrap();
            assert!(
                at.starts_with(&kept),
                "{name}: {spaced:?} allowed past its whitespace: {kept:?}"
            );
        }
        // Not finished: no stop token.
        let mut c = vocab.compile(&schema_spec()).unwrap();
        force(&mut c, &tok, r#"{"name": "Ada""#);
        let mask = c.compute_mask().unwrap().unwrap().to_vec();
        assert!(
            vocab.stop_ids().iter().all(|&s| !mask_allows(&mask, s)),
            "{name}"
        );
        // A key outside the schema, a string for the integer, a tag outside the enum.
        for bad in [
            r#"{"nam": 1}"#,
            r#"{"name": "A", "age": "x"}"#,
            r#"{"name": "A", "age": 1, "tags": ["c"]}"#,
            r#"[1]"#,
        ] {
            let mut c = vocab.compile(&schema_spec()).unwrap();
            let ids = tok.encode(bad, false).unwrap();
            assert!(
                force(&mut c, &tok, bad) < ids.len(),
                "{name}: {bad} allowed"
            );
        }
        // json_object: any object, nothing else.
        let mut c = vocab.compile(&ConstraintSpec::JsonObject).unwrap();
        let text = r#"{"x": [1, 2.5, null, {"y": true}]}"#;
        assert_eq!(
            force(&mut c, &tok, text),
            tok.encode(text, false).unwrap().len()
        );
        assert!(stop_allowed(&mut c, &vocab));
        let mut c = vocab.compile(&ConstraintSpec::JsonObject).unwrap();
        assert_eq!(force(&mut c, &tok, "hello"), 0, "{name}: text before JSON");
    }
}

/// Draws tokens at random among the allowed ones (stop as soon as allowed) for at most
/// `steps`; returns the text and whether it stopped.
fn random_walk(
    c: &mut Constraint,
    tok: &Tokenizer,
    vocab: &ConstraintVocab,
    seed: u64,
    steps: usize,
) -> (String, bool) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut ids = Vec::new();
    for _ in 0..steps {
        let mask = c.compute_mask().expect("mask").expect("active").to_vec();
        if vocab.stop_ids().iter().any(|&s| mask_allows(&mask, s)) {
            return (tok.decode(&ids).unwrap(), true);
        }
        let allowed: Vec<u32> = (0..vocab.vocab_size() as u32)
            .filter(|&t| mask_allows(&mask, t))
            .collect();
        assert!(!allowed.is_empty());
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let t = allowed[(rng % allowed.len() as u64) as usize];
        c.commit(t).expect("commit");
        ids.push(t);
    }
    (tok.decode(&ids).unwrap(), false)
}

#[test]
fn random_walks_under_a_regex_and_a_grammar_stay_in_the_language() {
    for (name, tok, vocab) in models() {
        let rx = ConstraintSpec::Regex(r"[0-9]{3}-[a-z]{2}(x|yz)".into());
        for seed in 0..8 {
            let mut c = vocab.compile(&rx).unwrap();
            let (text, done) = random_walk(&mut c, &tok, &vocab, seed, 64);
            assert!(done, "{name}: regex walk did not end: {text:?}");
            let b = text.as_bytes();
            let ok = b.len() >= 7
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b'-'
                && b[4..6].iter().all(u8::is_ascii_lowercase)
                && (&b[6..] == b"x" || &b[6..] == b"yz");
            assert!(ok, "{name}: {text:?} does not match");
        }
        let lark = ConstraintSpec::Lark(
            "start: item (\",\" item)*\nitem: \"yes\" | \"no\" | NUM\nNUM: /[0-9]/\n".into(),
        );
        for seed in 0..8 {
            let mut c = vocab.compile(&lark).unwrap();
            let (text, _) = random_walk(&mut c, &tok, &vocab, seed, 40);
            for item in text.split(',') {
                assert!(
                    matches!(item, "yes" | "no") || item.len() == 1 && item.as_bytes()[0].is_ascii_digit()
                        // the walk may stop mid-item after 40 steps
                        || "yes".starts_with(item) || "no".starts_with(item),
                    "{name}: {text:?}"
                );
            }
        }
    }
}

#[test]
fn rollback_restores_the_masks_and_validate_counts_the_valid_prefix() {
    for (name, tok, vocab) in models() {
        let mut c = vocab.compile(&schema_spec()).unwrap();
        let ids = tok.encode(r#"{"name": "Bo", "age": 7}"#, false).unwrap();
        let mut masks = Vec::new();
        for &t in &ids {
            masks.push(c.compute_mask().unwrap().unwrap().to_vec());
            c.commit(t).unwrap();
        }
        let k = 3.min(ids.len());
        c.rollback(k).unwrap();
        let back = ids.len() - k;
        assert_eq!(
            c.compute_mask().unwrap().unwrap(),
            &masks[back][..],
            "{name}"
        );
        // validate leaves the state alone and stops at the first refused token.
        let mut c = vocab.compile(&schema_spec()).unwrap();
        let bad = tok.encode(r#"{"name": 5}"#, false).unwrap();
        let n = c.validate(&ids);
        assert_eq!(n, ids.len(), "{name}");
        let n_bad = c.validate(&bad);
        assert!(n_bad < bad.len(), "{name}");
        assert_eq!(c.compute_mask().unwrap().unwrap(), &masks[0][..], "{name}");
    }
}

fn tools() -> Vec<ToolSchema> {
    vec![
        ToolSchema {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
        },
        ToolSchema {
            name: "add".into(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"},
                "b": {"type": "integer"}}, "required": ["a", "b"], "additionalProperties": false}),
        },
    ]
}

#[test]
fn tool_calls_trigger_lazily_on_qwen_and_are_constrained_after() {
    let Some((tok, vocab)) = load(common::QWEN_05B) else {
        return;
    };
    let open = tok.token_id("<tool_call>").expect("Qwen has <tool_call>");
    let close = tok.token_id("</tool_call>").expect("Qwen has </tool_call>");
    let spec = |lazy| ConstraintSpec::ToolCalls {
        tools: tools(),
        parallel: true,
        open: Tag::Token(open),
        close: Tag::Token(close),
        lazy,
    };
    let mut c = vocab.compile(&spec(true)).unwrap();
    assert!(
        c.compute_mask().unwrap().is_none(),
        "free before the trigger"
    );
    for t in tok.encode("Let me check.\n", false).unwrap() {
        c.commit(t).unwrap();
    }
    assert!(!c.is_active());
    c.commit(open).unwrap();
    assert!(c.is_active());
    let call = "\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n";
    assert_eq!(
        force(&mut c, &tok, call),
        tok.encode(call, false).unwrap().len()
    );
    assert!(allows(&mut c, close));
    c.commit(close).unwrap();
    assert!(stop_allowed(&mut c, &vocab), "may end after a call");
    assert!(
        allows(&mut c, open) || allows(&mut c, tok.encode("\n", false).unwrap()[0]),
        "parallel: another call may follow"
    );
    // An unknown function or wrong arguments are refused.
    let mut c = vocab.compile(&spec(false)).unwrap();
    assert!(allows(&mut c, open) && !stop_allowed_any(&mut c, &vocab));
    c.commit(open).unwrap();
    let bad = "\n{\"name\": \"remove_all\"";
    assert!(force(&mut c, &tok, bad) < tok.encode(bad, false).unwrap().len());
    let mut c = vocab.compile(&spec(false)).unwrap();
    c.commit(open).unwrap();
    let bad = "\n{\"name\": \"add\", \"arguments\": {\"city\": \"x\"}}";
    assert!(force(&mut c, &tok, bad) < tok.encode(bad, false).unwrap().len());
    // Rolling back over the trigger frees the output again.
    let mut c = vocab.compile(&spec(true)).unwrap();
    c.commit(tok.encode("Hi", false).unwrap()[0]).unwrap();
    c.commit(open).unwrap();
    force(&mut c, &tok, "\n{\"name\"");
    let committed = 2 + tok.encode("\n{\"name\"", false).unwrap().len();
    c.rollback(committed - 1).unwrap();
    assert!(!c.is_active());
    c.commit(open).unwrap();
    assert_eq!(
        force(&mut c, &tok, call),
        tok.encode(call, false).unwrap().len()
    );
}

fn stop_allowed_any(c: &mut Constraint, vocab: &ConstraintVocab) -> bool {
    let stops = vocab.stop_ids().to_vec();
    let mask = c.compute_mask().unwrap().unwrap();
    stops.iter().any(|&s| mask_allows(mask, s))
}

/// Compiles `spec` (and computes the first masks); it must fail, or succeed, within `limit`.
fn bounded(
    vocab: &ConstraintVocab,
    spec: &ConstraintSpec,
    limit: Duration,
) -> Result<(), ConstraintError> {
    let t0 = Instant::now();
    let r = vocab
        .compile(spec)
        .and_then(|mut c| c.compute_mask().map(|_| ()));
    let dt = t0.elapsed();
    assert!(dt < limit, "took {dt:?}: {r:?}");
    r
}

#[test]
fn hostile_schemas_and_grammars_fail_within_bounded_time() {
    let Some((_, vocab)) = load(common::QWEN_05B) else {
        return;
    };
    let limit = Duration::from_secs(10);
    let schema = |schema: Value| ConstraintSpec::JsonSchema {
        schema,
        strict: true,
    };
    // 10 MB schema: refused by size before any work.
    let big: Vec<String> = (0..400_000).map(|i| format!("value-{i:09}")).collect();
    let e = bounded(&vocab, &schema(json!({"enum": big})), limit).unwrap_err();
    assert!(matches!(e, ConstraintError::TooLarge { .. }), "{e}");
    // A huge enum just under the size limit: the grammar-size or lexer limits stop it, or
    // it compiles; either way quickly.
    let many: Vec<String> = (0..20_000).map(|i| format!("v{i}")).collect();
    let _ = bounded(&vocab, &schema(json!({"enum": many})), limit);
    // Deep nesting.
    let mut deep = json!({"type": "integer"});
    for _ in 0..2_000 {
        deep = json!({"type": "array", "items": deep});
    }
    let e = bounded(&vocab, &schema(deep), limit).unwrap_err();
    assert!(e.to_string().contains("nests deeper"), "{e}");
    let parens = format!("start: {}\"a\"{}\n", "(".repeat(500), ")".repeat(500));
    assert!(bounded(&vocab, &ConstraintSpec::Lark(parens), limit).is_err());
    let parens = format!("{}a{}", "(".repeat(500), ")".repeat(500));
    assert!(bounded(&vocab, &ConstraintSpec::Regex(parens), limit).is_err());
    // Exponential blow-up through references to definitions.
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!({"type": "string"}));
    for i in 1..40 {
        let prev = format!("#/$defs/d{}", i - 1);
        defs.insert(
            format!("d{i}"),
            json!({"anyOf": [{"$ref": prev}, {"type": "array", "items": {"$ref": prev}}]}),
        );
    }
    let _ = bounded(
        &vocab,
        &schema(json!({"$defs": defs, "$ref": "#/$defs/d39"})),
        limit,
    );
    // Invalid regexes and grammars: errors that say what is wrong.
    for rx in ["(", "[z-a]", "(?<n>x)\\k<n>", "a{99999999}"] {
        let e = bounded(&vocab, &ConstraintSpec::Regex(rx.into()), limit);
        // A huge repetition count is valid and compiled lazily: bounded time is the point.
        assert!(
            e.is_err() || rx.contains("99999999"),
            "regex {rx:?} compiled"
        );
    }
    // A regex whose DFA explodes.
    let _ = bounded(
        &vocab,
        &ConstraintSpec::Regex("(a|b)*a(a|b){40}".into()),
        limit,
    );
    for g in ["start: ", "start: foo", "start: /(/", "x: \"a\""] {
        let e = bounded(&vocab, &ConstraintSpec::Lark(g.into()), limit);
        assert!(e.is_err(), "grammar {g:?} compiled");
    }
    // An empty rule is valid Lark, but its only output is the empty one: refused as such.
    let e = bounded(&vocab, &ConstraintSpec::Lark("start: ".into()), limit).unwrap_err();
    assert!(e.to_string().contains("only the empty output"), "{e}");
    // Left recursion is fine for an Earley parser: it compiles and works.
    bounded(
        &vocab,
        &ConstraintSpec::Lark("start: start \"a\" | \"a\"\n".into()),
        limit,
    )
    .unwrap();
    // Not a schema at all, or a non-object.
    assert!(bounded(&vocab, &schema(json!(5)), limit).is_err());
    assert!(bounded(&vocab, &schema(json!({"type": "nonsense"})), limit).is_err());
    // Unsatisfiable.
    assert!(
        bounded(
            &vocab,
            &schema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
            limit
        )
        .is_err()
    );
}

/// Mask time per token while following realistic outputs (a schema'd object, a tool call),
/// printed as median and p99 microseconds: `cargo test --release --test constraint --
/// --ignored --nocapture mask_cost`.
#[test]
#[ignore = "a measurement for BENCHMARKS.md, not a check"]
fn mask_cost_per_token() {
    // Every real vocabulary: SmolLM2's and both Qwen2.5 models' (same tokenizer, one
    // logits row count each as the GGUF declares it). Per vocabulary: the compile time of
    // the schema, and the time of each step's mask (llguidance's mask computation and the
    // copy into the logits-row bitmask) while the tokens of a valid object are committed
    // one by one, over 20 runs; on Qwen also the masks of a tool call after its opening tag.
    let all = [common::SMOLLM2, common::QWEN_05B, common::QWEN_15B];
    let quantiles = |times: &mut Vec<Duration>| {
        times.sort();
        let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        (q(0.5), q(0.99))
    };
    for (name, tok, vocab) in all
        .into_iter()
        .filter_map(|n| load(n).map(|(t, v)| (n, t, v)))
    {
        let mut cases = vec![(
            "schema",
            schema_spec(),
            None,
            r#"{"name": "Ada Lovelace", "age": 36, "tags": ["a", "b", "a", "b"]}"#,
        )];
        if let (Some(open), Some(close)) =
            (tok.token_id("<tool_call>"), tok.token_id("</tool_call>"))
        {
            cases.push((
                "tool call",
                ConstraintSpec::ToolCalls {
                    tools: tools(),
                    parallel: false,
                    open: Tag::Token(open),
                    close: Tag::Token(close),
                    lazy: true,
                },
                Some(open),
                "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n",
            ));
        }
        for (what, spec, trigger, text) in cases {
            let ids = tok.encode(text, false).unwrap();
            let (mut compile, mut masks) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let t0 = Instant::now();
                let mut c = vocab.compile(&spec).unwrap();
                compile.push(t0.elapsed());
                if let Some(t) = trigger {
                    c.commit(t).unwrap();
                }
                for &t in &ids {
                    let t0 = Instant::now();
                    let m = c.compute_mask().unwrap();
                    std::hint::black_box(&m);
                    masks.push(t0.elapsed());
                    assert!(
                        m.is_some_and(|m| mask_allows(m, t)),
                        "{name}, {what}: refused"
                    );
                    c.commit(t).unwrap();
                }
            }
            let n = masks.len();
            let mean = masks.iter().sum::<Duration>().as_secs_f64() * 1e6 / n as f64;
            let (c50, c99) = quantiles(&mut compile);
            let (m50, m99) = quantiles(&mut masks);
            println!(
                "{name}: vocab {} tokens, {what}: compile median {c50:.0} us (p99 {c99:.0}); \
                 {n} masks: median {m50:.0} us, mean {mean:.0} us, p99 {m99:.0} us",
                vocab.vocab_size(),
            );
        }
    }
}
