//! The suffix proposer (`--suffix-cache`) keeps greedy output identical: a short keystroke
//! replay (scripts/replay-typing.py over the WebSocket, one request per keystroke with
//! backspaces) on SmolLM2 gives every request the same text as a server without
//! speculation, and the index of earlier requests did propose and have tokens kept.

mod common;
mod server_harness;

use std::path::{Path, PathBuf};

use serde_json::Value;
use server_harness::Server;

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = std::env::var_os("TACHYON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/venv/bin/python"));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("TACHYON_REQUIRE_PY").is_ok_and(|v| v == "1") {
        panic!("{} is missing; run scripts/test.sh", p.display());
    }
    eprintln!("skipping: no Python at {}", p.display());
    None
}

/// Replays typing `file` against `s`; returns the report and every request's text.
fn replay(python: &Path, s: &Server, file: &Path, chars: usize, tag: &str) -> (Value, Value) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let texts =
        std::env::temp_dir().join(format!("tachyon-replay-{}-{tag}.json", std::process::id()));
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/replay-typing.py"))
        .arg("--server")
        .arg(s.addr.to_string())
        .args([
            "--chars",
            &chars.to_string(),
            "--max-tokens",
            "12",
            "--backspace-every",
            "9",
            "--json",
        ])
        .arg("--texts-out")
        .arg(&texts)
        .arg(file)
        .output()
        .expect("run replay-typing.py");
    assert!(
        out.status.success(),
        "replay failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(&texts).expect("texts")).expect("texts json");
    let _ = std::fs::remove_file(&texts);
    (report, t)
}

#[test]
fn keystroke_replay_text_is_unchanged_by_the_suffix_cache() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let Some(python) = python() else { return };
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/engine/spec/lookup.rs");
    let plain = Server::start(&path, &[]);
    let (plain_report, plain_texts) = replay(&python, &plain, &file, 40, "plain");
    drop(plain);
    let cached = Server::start(&path, &["--suffix-cache", "4096"]);
    let (report, texts) = replay(&python, &cached, &file, 40, "suffix");
    println!("no speculation: {plain_report}\nsuffix cache:   {report}");
    let (a, b) = (
        plain_texts.as_array().expect("list"),
        texts.as_array().expect("list"),
    );
    assert!(a.len() >= 40, "{} requests finished", a.len());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["prompt"], y["prompt"]);
        assert_eq!(x["text"], y["text"], "prompt {:?}", x["prompt"]);
    }
    assert_eq!(plain_report["verify_steps"], 0.0);
    let steps = report["verify_steps"].as_f64().unwrap_or(0.0);
    let kept = report["kept_per_verify"].as_f64().unwrap_or(0.0);
    assert!(
        steps > 0.0 && kept > 0.0,
        "the suffix cache proposed nothing: {report}"
    );
}
