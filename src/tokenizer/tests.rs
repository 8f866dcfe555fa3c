//! Unit tests on small hand-made vocabularies (the real-vocabulary checks live in
//! `tests/tokenizer_conformance.rs`).

use super::pieces::byte_level_chars;
use super::*;

/// A byte-level vocabulary: the 256 byte characters, a few merges, two control tokens and
/// one user-defined token.
fn byte_level_vocab() -> GgufVocab {
    let mut tokens: Vec<String> = byte_level_chars().iter().map(|c| c.to_string()).collect();
    let merged = [
        "he",
        "ll",
        "hell",
        "hello",
        "\u{120}w",
        "\u{120}wo",
        "or",
        "\u{120}wor",
    ];
    tokens.extend(merged.iter().map(|s| s.to_string()));
    tokens.extend(
        ["<|im_start|>", "<|im_end|>", "<tool>"]
            .iter()
            .map(|s| s.to_string()),
    );
    let n = tokens.len();
    let mut token_types = vec![TokenType::Normal; n];
    token_types[n - 3] = TokenType::Control;
    token_types[n - 2] = TokenType::Control;
    token_types[n - 1] = TokenType::UserDefined;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens,
        token_types,
        merges: [
            "h e",
            "l l",
            "he ll",
            "hell o",
            "\u{120} w",
            "o r",
            "\u{120}w or",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        eos_id: Some(n as u32 - 2),
        bos_id: Some(n as u32 - 3),
        add_bos: Some(false),
        ..GgufVocab::default()
    }
}

/// A SentencePiece vocabulary with byte fallback.
fn spm_vocab() -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(TokenType::Byte);
        scores.push(0.0);
    }
    let words = [
        ("\u{2581}", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("ll", -3.0),
        ("\u{2581}h", -4.0),
        ("\u{2581}he", -5.0),
        ("llo", -6.0),
        ("\u{2581}hello", -7.0),
        ("\u{2581}w", -8.0),
    ];
    for (w, s) in words {
        tokens.push(w.to_string());
        token_types.push(TokenType::Normal);
        scores.push(s);
    }
    GgufVocab {
        model: "llama".into(),
        tokens,
        token_types,
        scores: Some(scores),
        unk_id: Some(0),
        bos_id: Some(1),
        eos_id: Some(2),
        // As real SentencePiece GGUFs do: BOS comes only from this flag.
        add_bos: Some(true),
        ..GgufVocab::default()
    }
}

fn assert_stream_matches(tok: &Tokenizer, ids: &[u32]) {
    let mut stream = tok.stream_decoder();
    let mut text = String::new();
    for &id in ids {
        text.push_str(&stream.push(id).unwrap());
    }
    text.push_str(&stream.finish());
    assert_eq!(text, tok.decode(ids).unwrap(), "ids {ids:?}");
}

#[test]
fn byte_level_encode_decode() {
    let tok = Tokenizer::from_vocab(&byte_level_vocab()).unwrap();
    let ids = tok.encode("hello world", true).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_piece(i).unwrap()).collect();
    assert_eq!(pieces, ["hello", "\u{120}wor", "l", "d"]);
    assert_eq!(tok.decode(&ids).unwrap(), "hello world");
    // Special tokens in the text are single ids; control tokens decode to nothing,
    // user-defined ones to their text.
    let ids = tok
        .encode("<|im_start|>hello<tool><|im_end|>", false)
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(tok.decode(&ids).unwrap(), "hello<tool>");
    assert!(
        tok.stop_ids()
            .contains(&tok.token_id("<|im_end|>").unwrap())
    );
    assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
    // A well-known end piece that is plain text is not a stop token.
    let mut v = byte_level_vocab();
    v.tokens.push("</s>".into());
    v.token_types.push(TokenType::Normal);
    let plain = Tokenizer::from_vocab(&v).unwrap();
    assert_eq!(plain.stop_ids(), &[plain.token_id("<|im_end|>").unwrap()]);
    // add_bos is false in the metadata: never added.
    assert_eq!(tok.encode("hello", true).unwrap().len(), 1);
    let text = "héllo 😀 wörld\n\tcode();";
    assert_eq!(tok.decode(&tok.encode(text, false).unwrap()).unwrap(), text);
    assert!(tok.describe().starts_with(
        "byte-level BPE (pre-tokenizer gpt-2), 267 tokens, bos none, eos 265 <|im_end|>"
    ));
}

#[test]
fn spm_encode_decode() {
    let tok = Tokenizer::from_vocab(&spm_vocab()).unwrap();
    let ids = tok.encode("hello", true).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_piece(i).unwrap()).collect();
    // BOS is added because the metadata asks for it.
    assert_eq!(pieces, ["<s>", "\u{2581}hello"]);
    // Without the flag there is no BOS, whatever the vocabulary kind.
    let no_flag = Tokenizer::from_vocab(&GgufVocab {
        add_bos: None,
        ..spm_vocab()
    })
    .unwrap();
    assert_eq!(
        no_flag.encode("hello", true).unwrap(),
        tok.encode("hello", false).unwrap()
    );
    assert_eq!(tok.decode(&ids).unwrap(), "hello");
    // "é" is not in the vocabulary: byte fallback.
    let ids = tok.encode("hé", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_piece(i).unwrap()).collect();
    assert_eq!(pieces, ["\u{2581}h", "<0xC3>", "<0xA9>"]);
    assert_eq!(tok.decode(&ids).unwrap(), "hé");
    assert_stream_matches(&tok, &ids);
    for text in ["hello w", " hello", "hello  hello", "", "é😀"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
        assert_stream_matches(&tok, &ids);
    }
    assert_eq!(
        tok.describe(),
        "SentencePiece BPE, 271 tokens, bos 1 <s>, eos 2 </s>"
    );
}

#[test]
fn spm_without_space_prefix() {
    let mut v = spm_vocab();
    v.add_space_prefix = Some(false);
    let tok = Tokenizer::from_vocab(&v).unwrap();
    let ids = tok.encode("hello", false).unwrap();
    assert_eq!(tok.id_to_piece(ids[0]).as_deref(), Some("h"));
    assert_eq!(
        tok.decode(&tok.encode(" hello", false).unwrap()).unwrap(),
        " hello"
    );
}

#[test]
fn stream_holds_partial_characters() {
    let tok = Tokenizer::from_vocab(&spm_vocab()).unwrap();
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).unwrap();
    let smile: Vec<u32> = "😀".bytes().map(byte).collect();
    let mut s = tok.stream_decoder();
    for &id in &smile[..3] {
        assert_eq!(s.push(id).unwrap(), "");
    }
    assert_eq!(s.push(smile[3]).unwrap(), "😀");
    assert_eq!(s.finish(), "");
    // A broken sequence: lead byte then ASCII -> U+FFFD then the letter, as in decode.
    let ids = [
        byte(0xF0),
        byte(0x9F),
        tok.token_id("h").unwrap(),
        byte(0xE2),
    ];
    assert_stream_matches(&tok, &ids);
    assert_eq!(tok.decode(&ids).unwrap(), "\u{FFFD}h\u{FFFD}");
    // Out-of-range ids are errors, not panics.
    assert!(matches!(
        s.push(100_000),
        Err(TokenizerError::InvalidId { .. })
    ));
    assert!(tok.decode(&[u32::MAX]).is_err());
}

#[test]
fn stream_random_sequences() {
    for tok in [
        Tokenizer::from_vocab(&spm_vocab()).unwrap(),
        Tokenizer::from_vocab(&byte_level_vocab()).unwrap(),
    ] {
        let n = tok.vocab_size() as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            let ids: Vec<u32> = (0..12)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % n) as u32
                })
                .collect();
            assert_stream_matches(&tok, &ids);
        }
    }
}

#[test]
fn hostile_metadata_is_rejected() {
    let err = |v: GgufVocab| {
        Tokenizer::from_vocab(&v)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let mut v = byte_level_vocab();
    v.merges[3] = "hello".into();
    assert!(err(v).contains("merges entry 3 has no space"));
    let mut v = byte_level_vocab();
    v.tokens.clear();
    assert!(err(v).contains("tokenizer.ggml.tokens is empty"));
    let mut v = spm_vocab();
    v.scores.as_mut().unwrap().pop();
    assert!(err(v).contains("scores has 270 entries but there are 271 tokens"));
    let mut v = spm_vocab();
    v.scores = None;
    assert!(err(v).contains("scores missing"));
    let mut v = spm_vocab();
    v.token_types.push(TokenType::Normal);
    assert!(err(v).contains("token_type has 272 entries"));
    let mut v = spm_vocab();
    v.eos_id = Some(5000);
    assert!(err(v).contains("eos_token_id 5000 is out of range"));
    let mut v = spm_vocab();
    v.model = "bert".into();
    assert!(err(v).contains("unsupported tokenizer model 'bert'"));
    // Merges naming unknown pieces are skipped, not fatal.
    let mut v = byte_level_vocab();
    v.merges.push("zz qq".into());
    assert!(Tokenizer::from_vocab(&v).is_ok());
}

#[test]
fn unknown_pre_tokenizer_falls_back() {
    let mut v = byte_level_vocab();
    v.pre = Some("brand-new".into());
    let tok = Tokenizer::from_vocab(&v).unwrap();
    assert!(
        tok.describe()
            .contains("pre-tokenizer gpt-2 (fallback for unknown 'brand-new')")
    );
    assert_eq!(
        tok.decode(&tok.encode("hello world", false).unwrap())
            .unwrap(),
        "hello world"
    );
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi!"),
    ]
}

#[test]
fn chatml_template_renders() {
    let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&conversation()[1..], false).unwrap(),
        "<|im_start|>user\nHi!<|im_end|>\n"
    );
}

#[test]
fn template_whitespace_and_python_methods() {
    let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}|{{ m.content.split()|length }}|{{ m.content.startswith(' H') }}]\n  {% endif %}\n{% endfor %}\n{{ {'a': 1, 'b': 'x<'}|tojson }} {{ {'k': 2}.items()|list }} {{ {'k': 2}.get('z', 'none') }}";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let out = t
        .render(&[ChatMessage::new("user", " Hi there ")], false)
        .unwrap();
    assert_eq!(
        out,
        "<s>\n[HI THERE|2|True]\n{\"a\": 1, \"b\": \"x<\"} [[\"k\", 2]] none"
    );
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
    let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
    assert!(year >= 2024);
}

#[test]
fn tojson_indent_by_position_or_name() {
    let render = |src: &str| ChatTemplate::new(src, "", "").and_then(|t| t.render(&[], false));
    let want = "{\n  \"a\": [\n    1\n  ]\n}";
    assert_eq!(render("{{ {'a': [1]}|tojson(indent=2) }}").unwrap(), want);
    assert_eq!(render("{{ {'a': [1]}|tojson(2) }}").unwrap(), want);
    assert!(render("{{ {'a': 1}|tojson(width=2) }}").is_err());
}

#[test]
fn hostile_templates_fail_cleanly() {
    let fails = |src: &str| {
        let result = ChatTemplate::new(src, "", "").and_then(|t| t.render(&conversation(), true));
        match result {
            Err(TokenizerError::Template(msg)) => msg,
            other => panic!("template {src:?} gave {other:?}"),
        }
    };
    assert!(fails("{{ raise_exception('no system role') }}").contains("no system role"));
    let msg =
        fails("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    assert!(msg.contains("ran too long"), "{msg}");
    let msg = fails("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
    assert!(msg.contains("output exceeds"), "{msg}");
    fails("{% include 'other.jinja' %}");
    fails("{% include 'chat_template' %}");
    fails("{% import '/etc/passwd' as x %}");
    fails("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");
    fails("{{ messages[0].content.nosuchmethod() }}");
    fails("{% for %}");
}

mod from_gguf_file {
    use super::*;
    use crate::format::gguf::{GgufBuilder, MetaValue};

    fn strings(items: &[&str]) -> MetaValue {
        MetaValue::Array(
            items
                .iter()
                .map(|s| MetaValue::String(s.to_string()))
                .collect(),
        )
    }

    /// A byte-level vocabulary written to GGUF metadata, with `extra` keys added.
    fn file(extra: Vec<(&str, MetaValue)>) -> Result<Tokenizer, TokenizerError> {
        let tokens: Vec<String> = byte_level_chars()
            .iter()
            .map(|c| c.to_string())
            .chain(["he".into(), "<|im_end|>".into()])
            .collect();
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut types = vec![MetaValue::I32(1); tokens.len()];
        types[257] = MetaValue::I32(3);
        let mut meta: Vec<(&str, MetaValue)> = vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("qwen2".into())),
            ("tokenizer.ggml.tokens", strings(&token_refs)),
            ("tokenizer.ggml.token_type", MetaValue::Array(types)),
            ("tokenizer.ggml.merges", strings(&["h e"])),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(257)),
            (
                "tokenizer.chat_template",
                MetaValue::String("{{ messages[0].content }}".into()),
            ),
        ];
        // `extra` replaces keys of the same name (a GGUF file has each key once).
        for (k, v) in extra {
            meta.retain(|(key, _)| *key != k);
            meta.push((k, v));
        }
        let b = meta
            .into_iter()
            .fold(GgufBuilder::new(), |b, (k, v)| b.meta(k, v));
        let g = b
            .build_file()
            .map_err(|e| TokenizerError::Metadata(e.to_string()))?;
        Tokenizer::from_gguf(&g)
    }

    #[test]
    fn reads_metadata() {
        let tok = file(vec![(
            "tokenizer.ggml.bos_token_id",
            MetaValue::U32(9_999_999),
        )])
        .unwrap();
        assert_eq!(tok.vocab_size(), 258);
        assert_eq!(tok.eos_id(), Some(257));
        // An out-of-range id is dropped, not trusted.
        assert_eq!(tok.bos_id(), None);
        assert_eq!(tok.encode("he<|im_end|>", false).unwrap(), vec![256, 257]);
        assert_eq!(tok.chat_template(), Some("{{ messages[0].content }}"));
        assert!(
            tok.describe()
                .starts_with("byte-level BPE (pre-tokenizer qwen2), 258 tokens")
        );
    }

    #[test]
    fn rejects_wrong_types() {
        let err = |key: &str, v: MetaValue| {
            file(vec![(key, v)])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            err("tokenizer.ggml.token_type", strings(&["x"]))
                .contains("token_type is not an int32 array")
        );
        assert!(
            err("tokenizer.ggml.merges", MetaValue::U32(3))
                .contains("merges is not a string array")
        );
        assert!(
            err(
                "tokenizer.ggml.scores",
                MetaValue::Array(vec![MetaValue::F32(0.0)])
            )
            .contains("scores has 1 entries")
        );
        assert!(
            err("tokenizer.chat_template", MetaValue::U32(1))
                .contains("chat_template is not a string")
        );
        let missing = GgufBuilder::new()
            .meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
            .build_file()
            .unwrap();
        assert!(
            Tokenizer::from_gguf(&missing)
                .unwrap_err()
                .to_string()
                .contains("tokenizer.ggml.tokens missing")
        );
    }
}

mod from_hf_dir {
    use super::*;
    use serde_json::json;

    /// Writes `tok`'s encoder as tokenizer.json (plus side files) and loads it back.
    fn round_trip(
        tok: &Tokenizer,
        edit: impl Fn(&mut serde_json::Value),
        files: &[(&str, serde_json::Value)],
    ) -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(&tok.inner).unwrap();
        edit(&mut json);
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        for (name, value) in files {
            std::fs::write(dir.path().join(name), value.to_string()).unwrap();
        }
        Tokenizer::from_hf_dir(dir.path()).unwrap()
    }

    fn same_behaviour(a: &Tokenizer, b: &Tokenizer) {
        for text in [
            "hello world",
            " hello  w",
            "hé😀\n",
            "<|im_start|>hello<|im_end|>",
            "",
        ] {
            let ids = a.encode(text, false).unwrap();
            assert_eq!(b.encode(text, false).unwrap(), ids, "{text:?}");
            assert_eq!(b.decode(&ids).unwrap(), a.decode(&ids).unwrap(), "{text:?}");
        }
        assert_eq!(a.vocab_size(), b.vocab_size());
    }

    #[test]
    fn byte_level_directory() {
        let gguf = Tokenizer::from_vocab(&byte_level_vocab()).unwrap();
        let start = gguf.token_id("<|im_start|>").unwrap();
        let end = gguf.token_id("<|im_end|>").unwrap();
        // Llama 3 style: no add_bos_token, but the post-processor inserts BOS.
        let add_bos_processor = |j: &mut serde_json::Value| {
            j["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [start], "tokens": ["<|im_start|>"]}}
            });
        };
        let hf = round_trip(
            &gguf,
            add_bos_processor,
            &[
                (
                    "tokenizer_config.json",
                    json!({
                        "bos_token": {"content": "<|im_start|>", "special": true},
                        "eos_token": "<|im_end|>",
                        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ eos_token }}"}]
                    }),
                ),
                ("generation_config.json", json!({"eos_token_id": [end, 7]})),
            ],
        );
        same_behaviour(&gguf, &hf);
        assert_eq!(hf.bos_id(), Some(start));
        assert_eq!(hf.eos_id(), Some(end));
        assert_eq!(hf.stop_ids(), &[end, 7]);
        // BOS comes from the post-processor, once.
        assert_eq!(
            hf.encode("hello", true).unwrap(),
            vec![start, gguf.encode("hello", false).unwrap()[0]]
        );
        assert_eq!(hf.chat_template(), Some("{{ eos_token }}"));
        assert!(
            hf.describe().starts_with("byte-level BPE (tokenizer.json)"),
            "{}",
            hf.describe()
        );
    }

    #[test]
    fn sentencepiece_directory() {
        let gguf = Tokenizer::from_vocab(&spm_vocab()).unwrap();
        let hf = round_trip(
            &gguf,
            |_| {},
            &[(
                "tokenizer_config.json",
                json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "chat_template": "{{ bos_token }}"}),
            )],
        );
        same_behaviour(&gguf, &hf);
        assert_eq!(
            hf.encode("hello", true).unwrap(),
            gguf.encode("hello", true).unwrap()
        );
        assert!(
            hf.describe()
                .starts_with("SentencePiece BPE (tokenizer.json)"),
            "{}",
            hf.describe()
        );
        let t = hf.compile_chat_template().unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>");
    }

    #[test]
    fn missing_or_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json: not found"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
