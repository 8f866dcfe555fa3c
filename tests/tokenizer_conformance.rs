//! Tokenizer conformance against llama.cpp's vocabulary tests, plus checks on the real
//! models in `models/`.
//!
//! The vocab files (`ggml-vocab-*.gguf` with `.inp` texts and `.out` expected ids) are fetched
//! by `scripts/fetch-vocab-tests.sh` into `models/vocab/` (or `$TACHYON_VOCAB_DIR`); tests
//! whose files are missing print a note and pass.

use std::path::{Path, PathBuf};

use tachyon::format::gguf::GgufFile;
use tachyon::tokenizer::{ChatMessage, Tokenizer};

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn vocab_dir() -> PathBuf {
    std::env::var_os("TACHYON_VOCAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("models/vocab"))
}

fn load(path: &Path) -> Tokenizer {
    let gguf = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Texts of a `.inp` file: each one is followed by the separator line.
fn parse_inputs(inp: &str) -> Vec<&str> {
    let mut texts: Vec<&str> = inp.split(SEPARATOR).collect();
    // The file ends with a separator, leaving one empty piece after it.
    if texts.last() == Some(&"") {
        texts.pop();
    }
    texts
}

/// Expected ids of a `.out` file: one line of space-separated ids per text.
fn parse_outputs(out: &str) -> Vec<Vec<u32>> {
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("bad id in .out"))
                .collect()
        })
        .collect()
}

/// Runs every case of one vocabulary; fails listing the mismatches.
fn conformance(name: &str) {
    let dir = vocab_dir();
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp_path = dir.join(format!("ggml-vocab-{name}.gguf.inp"));
    let out_path = dir.join(format!("ggml-vocab-{name}.gguf.out"));
    if !base.exists() || !inp_path.exists() || !out_path.exists() {
        if std::env::var("TACHYON_REQUIRE_VOCAB").is_ok_and(|v| v == "1") {
            panic!(
                "{name}: vocab test files missing in {}; run scripts/fetch-vocab-tests.sh",
                dir.display()
            );
        }
        eprintln!(
            "skipping {name}: vocab test files missing in {} (run scripts/fetch-vocab-tests.sh)",
            dir.display()
        );
        return;
    }
    let tok = load(&base);
    let inp = std::fs::read_to_string(&inp_path).expect("read .inp");
    let out = std::fs::read_to_string(&out_path).expect("read .out");
    let texts = parse_inputs(&inp);
    let expected = parse_outputs(&out);
    assert_eq!(
        texts.len(),
        expected.len(),
        "{name}: .inp has {} texts, .out {} lines",
        texts.len(),
        expected.len()
    );
    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(&expected) {
        let got = tok.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!(
                "  text {text:?}\n    expected {want:?}\n    got      {got:?}"
            ));
        }
    }
    eprintln!(
        "{name}: {}/{} cases pass ({})",
        texts.len() - failures.len(),
        texts.len(),
        tok.describe()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
}

macro_rules! conformance_tests {
    ($($test:ident => $vocab:literal),* $(,)?) => {
        $( #[test] fn $test() { conformance($vocab); } )*
    };
}

conformance_tests! {
    vocab_llama_spm => "llama-spm",
    vocab_llama_bpe => "llama-bpe",
    vocab_qwen2 => "qwen2",
    vocab_gpt2 => "gpt-2",
    vocab_starcoder => "starcoder",
    vocab_refact => "refact",
    vocab_mpt => "mpt",
    vocab_falcon => "falcon",
    vocab_command_r => "command-r",
    vocab_phi3 => "phi-3",
    vocab_deepseek_coder => "deepseek-coder",
    vocab_qwen35 => "qwen35",
}

#[test]
fn inp_parsing_keeps_newlines() {
    let inp = "a\n__ggml_vocab_test__\n\n\n__ggml_vocab_test__\n \n__ggml_vocab_test__\n";
    assert_eq!(parse_inputs(inp), vec!["a", "\n", " "]);
    assert_eq!(
        parse_outputs(" 1 2\n\n 3\n"),
        vec![vec![1, 2], vec![], vec![3]]
    );
}

// ---- real models ----

const QWEN: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const SMOLLM: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn real_model(rel: &str) -> Option<(GgufFile, Tokenizer)> {
    let path = repo_path(rel);
    if !path.exists() {
        eprintln!("skipping: {rel} not present (run scripts/fetch-models.sh)");
        return None;
    }
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Some((gguf, tok))
}

const ROUND_TRIP: &[&str] = &[
    "Hello, world!",
    "  leading and trailing spaces  ",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n\n\n",
    "Ünïcödé façade — naïve café, Ελληνικά, русский текст",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 and ZWJ sequences",
    "numbers 1234567890 3.14159 -42 1e-9",
    "tabs\tand\r\nwindows newlines\u{a0}nbsp",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
];

fn check_real_model(rel: &str) {
    let Some((_, tok)) = real_model(rel) else {
        return;
    };
    for text in ROUND_TRIP {
        let ids = tok.encode(text, false).unwrap();
        // Control tokens decode to nothing, so compare without them.
        let expect = text.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            expect,
            "{rel}: round trip of {text:?}"
        );
        let mut stream = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, expect, "{rel}: streaming {text:?}");
    }
    // ChatML markers are single tokens.
    let start = tok.token_id("<|im_start|>").expect("<|im_start|> in vocab");
    let end = tok.token_id("<|im_end|>").expect("<|im_end|> in vocab");
    let ids = tok
        .encode("<|im_start|>user\nHello<|im_end|>", false)
        .unwrap();
    assert_eq!(ids.first(), Some(&start));
    assert_eq!(ids.last(), Some(&end));
    assert_eq!(ids.iter().filter(|&&i| i == start || i == end).count(), 2);
    assert!(tok.stop_ids().contains(&end));
    // Neither model adds BOS.
    assert_eq!(
        tok.encode("hi", true).unwrap(),
        tok.encode("hi", false).unwrap()
    );

    // Random id sequences: streaming equals decoding at once.
    let n = tok.vocab_size() as u64;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..300 {
        let ids: Vec<u32> = (0..24)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % n) as u32
            })
            .collect();
        let mut stream = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, tok.decode(&ids).unwrap(), "{rel}: ids {ids:?}");
    }

    // An emoji spelled as four single-byte tokens: nothing until the last byte.
    let byte_token = |b: u8| {
        let c = byte_level_char(b);
        tok.token_id(&c.to_string()).expect("byte token")
    };
    let ids: Vec<u32> = "😀".bytes().map(byte_token).collect();
    let mut stream = tok.stream_decoder();
    let outs: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(outs, ["", "", "", "😀"]);
    assert_eq!(stream.finish(), "");
    // Cut short: the incomplete tail comes out of finish as one U+FFFD, like decode.
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(ids[0]).unwrap(), "");
    assert_eq!(stream.push(ids[1]).unwrap(), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
    assert_eq!(tok.decode(&ids[..2]).unwrap(), "\u{FFFD}");
}

/// GPT-2's byte-to-character mapping (the byte-level vocabularies' single-byte pieces).
fn byte_level_char(b: u8) -> char {
    if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
        return char::from(b);
    }
    let rank = (0..b)
        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
        .count();
    char::from_u32(256 + rank as u32).unwrap()
}

#[test]
fn qwen_tokenizer() {
    check_real_model(QWEN);
    let Some((_, tok)) = real_model(QWEN) else {
        return;
    };
    assert_eq!(
        tok.describe(),
        "byte-level BPE (pre-tokenizer qwen2), 151936 tokens, bos none, eos 151645 <|im_end|>"
    );
    assert!(tok.stop_ids().contains(&151643)); // <|endoftext|>
}

#[test]
fn smollm_tokenizer() {
    check_real_model(SMOLLM);
    let Some((_, tok)) = real_model(SMOLLM) else {
        return;
    };
    assert_eq!(
        tok.describe(),
        "byte-level BPE (pre-tokenizer smollm), 49152 tokens, bos none, eos 2 <|im_end|>"
    );
    assert!(tok.stop_ids().contains(&0)); // <|endoftext|>
}

fn render(tok: &Tokenizer, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let template = tok
        .compile_chat_template()
        .expect("model has a chat template")
        .expect("template compiles");
    template
        .render(messages, add_generation_prompt)
        .expect("template renders")
}

#[test]
fn qwen_chat_template() {
    let Some((_, tok)) = real_model(QWEN) else {
        return;
    };
    let with_system = [
        ChatMessage::new("system", "You write Rust."),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(
        render(&tok, &with_system, true),
        "<|im_start|>system\nYou write Rust.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let no_system = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(
        render(&tok, &no_system, false),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    );
}

#[test]
fn smollm_chat_template() {
    let Some((_, tok)) = real_model(SMOLLM) else {
        return;
    };
    assert_eq!(
        render(&tok, &[ChatMessage::new("user", "Hi")], true),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(
        render(&tok, &with_system, false),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}
