//! Slots (`--slots N`): an interleaved agent workload (4 conversations, 6 turns each, on
//! SmolLM2) reuses each conversation's prefix: every turn after the first has as cached
//! tokens everything its previous turn ran (its prompt and all its generated tokens but the
//! last, which never went through the model), and the outputs equal those of a one-slot
//! server running one conversation at a time. With fewer slots than conversations, slots
//! are evicted and every answer stays the same.

mod common;
mod server_harness;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server_harness::Server;
use tokio_tungstenite::tungstenite::Message;

const CONVERSATIONS: usize = 4;
const TURNS: usize = 6;
const NEW_TOKENS: usize = 6;

/// One turn over the WebSocket: the generated ids and the done frame's usage.
async fn turn(addr: std::net::SocketAddr, prompt: &[u32]) -> (Vec<u32>, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/stream"))
        .await
        .expect("ws connect");
    let req =
        json!({"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": true});
    ws.send(Message::Text(req.to_string().into()))
        .await
        .expect("send");
    let mut ids = Vec::new();
    loop {
        let msg = ws.next().await.expect("frame").expect("frame");
        let f: Value = serde_json::from_str(msg.to_text().expect("text")).expect("json");
        match f["type"].as_str() {
            Some("token") => ids.push(f["token"].as_u64().expect("id") as u32),
            Some("done") => return (ids, f["usage"].clone()),
            _ => panic!("{f}"),
        }
    }
}

fn tokens(s: &Server, text: &str) -> Vec<u32> {
    s.post_json("/tokenize", &json!({"content": text}))["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// Runs the workload: `order` lists (conversation, turn) pairs; returns every turn's
/// generated ids and cached tokens, by conversation and turn.
fn workload(s: &Server, order: &[(usize, usize)]) -> Vec<Vec<(Vec<u32>, usize, usize)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut history: Vec<Vec<u32>> = (0..CONVERSATIONS)
        .map(|c| {
            tokens(
                s,
                &format!(
                    "Agent {c} ({}) starts its task.\n",
                    ["alpha", "bravo", "charlie", "delta"][c]
                ),
            )
        })
        .collect();
    let mut out = vec![Vec::new(); CONVERSATIONS];
    for &(c, t) in order {
        let mut prompt = history[c].clone();
        prompt.extend(tokens(s, &format!("\nTool result {t}: ok.\nNext step:")));
        let (ids, usage) = rt.block_on(turn(s.addr, &prompt));
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached") as usize;
        assert_eq!(ids.len(), NEW_TOKENS);
        out[c].push((ids.clone(), cached, prompt.len()));
        prompt.extend(&ids);
        history[c] = prompt;
    }
    out
}

fn interleaved() -> Vec<(usize, usize)> {
    (0..TURNS)
        .flat_map(|t| (0..CONVERSATIONS).map(move |c| (c, t)))
        .collect()
}

fn one_at_a_time() -> Vec<(usize, usize)> {
    (0..CONVERSATIONS)
        .flat_map(|c| (0..TURNS).map(move |t| (c, t)))
        .collect()
}

#[test]
fn interleaved_agents_reuse_their_prefixes_and_answer_as_one_at_a_time() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let reference = {
        let s = Server::start(&path, &["--slots", "1"]);
        workload(&s, &one_at_a_time())
    };
    let s = Server::start(&path, &["--slots", "4"]);
    let got = workload(&s, &interleaved());
    let (mut prefilled, mut total) = (0, 0);
    for c in 0..CONVERSATIONS {
        for t in 0..TURNS {
            let (ids, cached, prompt_len) = &got[c][t];
            assert_eq!(ids, &reference[c][t].0, "conversation {c} turn {t}");
            if t > 0 {
                let (_, _, prev_prompt) = &got[c][t - 1];
                assert_eq!(
                    *cached,
                    prev_prompt + NEW_TOKENS - 1,
                    "conversation {c} turn {t}"
                );
            }
            prefilled += prompt_len - cached;
            total += prompt_len;
        }
    }
    println!(
        "agent workload ({CONVERSATIONS} x {TURNS} turns): {prefilled} of {total} prompt tokens prefilled with 4 slots"
    );
    assert_eq!(
        s.metric("tachyon_slot_hits_total"),
        ((TURNS - 1) * CONVERSATIONS) as f64
    );
    assert_eq!(s.metric("tachyon_slot_evictions_total"), 0.0);
}

#[test]
fn eviction_under_memory_pressure_keeps_every_answer() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let reference = {
        let s = Server::start(&path, &["--slots", "1"]);
        workload(&s, &one_at_a_time())
    };
    // Two slots for four interleaved conversations: every turn evicts someone.
    let s = Server::start(&path, &["--slots", "2"]);
    let got = workload(&s, &interleaved());
    for c in 0..CONVERSATIONS {
        for t in 0..TURNS {
            assert_eq!(got[c][t].0, reference[c][t].0, "conversation {c} turn {t}");
        }
    }
    assert!(s.metric("tachyon_slot_evictions_total") > 0.0);
}
