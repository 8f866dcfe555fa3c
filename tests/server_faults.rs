//! A fault while serving ends that request, never the server: a model whose logits turn
//! NaN fails the request (500, or an error event on a stream) and the next request on the
//! same server succeeds. Runs on SmolLM2 on the CPU, or on the backend and model
//! `TACHYON_TEST_BACKEND` / `TACHYON_TEST_SERVER_MODEL` name (scripts/test.sh runs it on the
//! CUDA backend under the emulated device too). GPU faults while serving:
//! tests/emulated_device.rs.

mod common;
mod server_harness;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use server_harness::{Server, sse_events, streamed_text};
use tachyon::format::GgmlType;
use tachyon::format::gguf::GgufFile;

/// The token whose embedding row is NaN ("ogen" in SmolLM2's vocabulary, and in the tiny
/// model's): neither the server's warm-up prompt nor the test's text holds it.
const POISON: u32 = 4000;

/// A copy of `model` in the test's own folder whose embedding row `token` is NaN (every
/// value, or every block's f16 scale), so a prompt holding `token` makes every logit NaN
/// (a tied head makes only that one logit NaN elsewhere, which every pick skips).
fn with_nan_embedding_row(model: &Path, token: u32, name: &str) -> PathBuf {
    let gguf = GgufFile::open(model).unwrap_or_else(|e| panic!("{e}"));
    let t = gguf
        .tensor("token_embd.weight")
        .unwrap_or_else(|| panic!("{} has no token_embd.weight", model.display()));
    // (bytes of a block of `per` values, the NaN its first bytes become)
    let (block, per, nan): (usize, u64, &[u8]) = match t.ty {
        GgmlType::Q8_0 => (34, 32, &[0x00, 0x7E]), // f16 scale + 32 int8
        GgmlType::BF16 => (2, 1, &[0xC0, 0x7F]),
        GgmlType::F16 => (2, 1, &[0x00, 0x7E]),
        GgmlType::F32 => (4, 1, &[0x00, 0x00, 0xC0, 0x7F]),
        other => panic!("the test cannot poison a {other} embedding"),
    };
    let row_bytes = (t.row_len() / per) as usize * block;
    let start = t.offset as usize + token as usize * row_bytes;
    let mut bytes = gguf.bytes().to_vec();
    for b in bytes[start..start + row_bytes].chunks_exact_mut(block) {
        b[..nan.len()].copy_from_slice(nan);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server_faults");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join(name);
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("{e}"));
    out
}

fn completion(prompt: Value, stream: bool) -> String {
    json!({"model": "m", "prompt": prompt, "max_tokens": 3, "temperature": 0, "stream": stream})
        .to_string()
}

#[test]
fn nan_logits_end_that_request_and_the_server_serves_the_next() {
    let Some(model) = server_harness::server_model() else {
        return;
    };
    let poisoned = with_nan_embedding_row(&model, POISON, "nan-row.gguf");
    let server = Server::start(&poisoned, &[]);
    let healthy = |s: &Server| {
        let r = s.post("/v1/completions", &completion(json!("The sky is"), false));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
        v["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = healthy(&server);

    // Not streamed: a 500 with an OpenAI-style error that says what happened.
    let r = server.post("/v1/completions", &completion(json!([1, POISON, 2]), false));
    assert_eq!(r.status, 500, "{}", r.text());
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("are all NaN"), "{msg}");
    assert_eq!(healthy(&server), before, "the next request after a NaN");

    // Streamed: an error event, then the end of the stream; no token was sent.
    let r = server.post("/v1/completions", &completion(json!([1, POISON, 2]), true));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    let events = sse_events(body.as_bytes());
    assert!(
        events.iter().any(|e| e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NaN"))),
        "{body}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(streamed_text(&events), "", "{body}");

    // The slot is free and the server healthy: the same text as before the faults.
    assert_eq!(
        healthy(&server),
        before,
        "the next request after a streamed NaN"
    );
    let h = server.get("/health", &[]);
    assert_eq!(h.status, 200, "{}", h.text());
}
