//! A fault while serving ends that request, never the server: a model whose logits turn
//! NaN fails the request (500, or an error event on a stream) and the next request on the
//! same server succeeds. Runs on the CPU, or on the backend `TACHYON_TEST_BACKEND` names.
//! (GPU faults while serving: tests/emulated_device.rs, under the emulated device.)

mod common;
mod server_harness;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use server_harness::{Server, sse_events, streamed_text};
use tachyon::format::GgmlType;
use tachyon::format::gguf::GgufFile;

/// The token whose embedding row is NaN: rare enough that neither the server's warm-up
/// prompt nor the test's text contains it.
const POISON: u32 = 40_000;

/// A copy of `model` (a GGUF with a Q8_0 embedding) in the test's own folder whose
/// embedding row `token` is NaN: every block's f16 scale is NaN, so a prompt holding
/// `token` makes every logit NaN (the tied head only makes that one logit NaN elsewhere).
fn with_nan_embedding_row(model: &Path, token: u32, name: &str) -> PathBuf {
    let gguf = GgufFile::open(model).unwrap_or_else(|e| panic!("{e}"));
    let t = gguf
        .tensor("token_embd.weight")
        .unwrap_or_else(|| panic!("{} has no token_embd.weight", model.display()));
    assert_eq!(t.ty, GgmlType::Q8_0, "the test poisons Q8_0 blocks");
    let block = 34; // f16 scale + 32 int8
    let row_bytes = (t.row_len() / 32) as usize * block;
    let start = t.offset as usize + token as usize * row_bytes;
    let mut bytes = gguf.bytes().to_vec();
    for b in bytes[start..start + row_bytes].chunks_exact_mut(block) {
        b[..2].copy_from_slice(&[0x00, 0x7E]); // f16 NaN
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
    let Some(model) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let poisoned = with_nan_embedding_row(&model, POISON, "smollm2-nan-row.gguf");
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
