//! Clients written for llama.cpp's server: `/infill` in llama.cpp's request shape gives the
//! text `/v1/completions` with `suffix` gives (streamed and not), `input_extra` files are
//! laid out with the model's repository and file-separator tokens, llama.cpp-style
//! `/tokenize` and `/detokenize` bodies work, and the WebSocket stream carries top
//! log-probabilities.

mod common;
mod server_harness;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server_harness::Server;
use tokio_tungstenite::tungstenite::Message;

const PREFIX: &str = "def add(a, b):\n    return ";
const SUFFIX: &str = "\n\nprint(add(1, 2))\n";

#[test]
fn infill_in_llama_cpp_shape_equals_completions_with_suffix() {
    let Some(path) = common::model_path(common::QWEN_05B) else {
        return;
    };
    let s = Server::start(&path, &["--ctx", "512"]);
    let openai = s.post_json(
        "/v1/completions",
        &json!({"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12, "temperature": 0}),
    );
    let want = openai["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!want.is_empty(), "{openai}");
    let body = json!({
        "input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 12, "temperature": 0,
        "cache_prompt": true, "samplers": ["top_k", "top_p"], "t_max_predict_ms": 2500,
    });
    let r = s.post_json("/infill", &body);
    assert_eq!(r["content"].as_str(), Some(want.as_str()), "{r}");
    assert_eq!(r["stop"], true);
    assert_eq!(r["tokens_predicted"], openai["usage"]["completion_tokens"]);
    assert_eq!(r["tokens_evaluated"], openai["usage"]["prompt_tokens"]);
    assert!(
        r["timings"]["predicted_n"].is_u64() && r["stop_type"].is_string(),
        "{r}"
    );

    // Streamed: llama.cpp's events (no [DONE]), the same text.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let raw = s.post("/infill", &sb.to_string());
    assert_eq!(raw.status, 200, "{}", raw.text());
    let text = raw.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<Value> = text
        .split_terminator("\n\n")
        .map(|e| {
            let payload = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}"));
            serde_json::from_str(payload).unwrap_or_else(|err| panic!("{err}: {payload}"))
        })
        .collect();
    let (last, tokens) = events.split_last().expect("events");
    assert_eq!(last["stop"], true, "{last}");
    assert!(
        tokens
            .iter()
            .all(|e| e["stop"] == false && e["tokens"].is_array())
    );
    let streamed: String = events
        .iter()
        .map(|e| e["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(streamed, want);

    // input_extra: the repository name, then each file after a file separator, then the
    // current file's separator, then the FIM layout.
    let count = |t: &str| {
        s.post_json("/tokenize", &json!({"content": t}))["tokens"]
            .as_array()
            .map_or(0, Vec::len) as u64
    };
    let extra = [
        ("util.py", "def sub(a, b):\n    return a - b\n"),
        ("x.py", "X = 1\n"),
    ];
    let mut eb = body.clone();
    eb["input_extra"] = json!(
        extra
            .iter()
            .map(|(f, t)| json!({"filename": f, "text": t}))
            .collect::<Vec<_>>()
    );
    let r = s.post_json("/infill", &eb);
    let mut expect =
        3 + count(PREFIX) + count(SUFFIX) + 1 + count("myproject\n") + 1 + count("filename\n");
    for (f, t) in extra {
        expect += 1 + count(&format!("{f}\n")) + count(t);
    }
    assert_eq!(r["tokens_evaluated"].as_u64(), Some(expect), "{r}");
    assert!(r["content"].is_string());

    // Bad input: an OpenAI-style 400 naming the field.
    let bad = s.post("/infill", r#"{"input_prefix": 3}"#);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "input_prefix");
}

#[test]
fn llama_cpp_tokenize_and_detokenize_bodies() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let s = Server::start(&path, &[]);
    let text = "Hello world, this is tachyon.";
    let plain = s.post_json("/tokenize", &json!({"content": text}));
    let ours = s.post_json(
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    );
    assert_eq!(plain["tokens"], ours["tokens"]);
    let ids: Vec<u64> = plain["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect();
    assert!(ids.len() > 3);
    let pieces = s.post_json("/tokenize", &json!({"content": text, "with_pieces": true}));
    let pieces = pieces["tokens"].as_array().expect("tokens");
    assert_eq!(pieces.len(), ids.len());
    let joined: String = pieces
        .iter()
        .zip(&ids)
        .map(|(p, &id)| {
            assert_eq!(p["id"].as_u64(), Some(id), "{p}");
            p["piece"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(joined, text);
    let back = s.post_json("/detokenize", &json!({"tokens": ids}));
    assert_eq!(back["content"].as_str(), Some(text));
    assert_eq!(back["prompt"].as_str(), Some(text));
}

#[test]
fn websocket_frames_carry_top_logprobs() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let s = Server::start(&path, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", s.addr))
            .await
            .expect("ws connect");
        let req = json!({"id": 1, "prompt": "def add(a, b):", "max_tokens": 5, "temperature": 0, "logprobs": 3});
        ws.send(Message::Text(req.to_string().into()))
            .await
            .expect("send");
        let mut tokens = 0;
        loop {
            let msg = ws.next().await.expect("frame").expect("frame");
            let f: Value = serde_json::from_str(msg.to_text().expect("text")).expect("json");
            if f["type"] != "token" {
                assert_eq!(f["type"], "done", "{f}");
                break;
            }
            tokens += 1;
            let top = f["top_logprobs"].as_array().unwrap_or_else(|| panic!("{f}"));
            assert_eq!(top.len(), 3, "{f}");
            // Greedy: the token is the most likely one, and its logprob is the top one's.
            assert_eq!(top[0]["id"], f["token"], "{f}");
            assert_eq!(top[0]["logprob"], f["logprob"], "{f}");
            assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
            assert!(top.iter().all(|t| t["token"].is_string()));
        }
        assert!(tokens > 0);
    });
}
