//! `tachyon bench` end to end on the CPU: random weights of a tiny shape (a config.json in
//! tests/data), JSON output with every field present and consistent.

use std::process::Command;

use serde_json::Value;

fn bench_json(extra: &[&str]) -> Value {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny-llama-config.json"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tachyon"))
        .args([
            "bench",
            "--backend",
            "cpu",
            "--threads",
            "2",
            "--json",
            "--random-weights",
            config,
        ])
        .args(extra)
        .output()
        .expect("run tachyon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tachyon bench failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("field {k} missing or not a number in {v}"))
}

#[test]
fn bench_json_has_sane_fields() {
    let v = bench_json(&["--prompt-tokens", "20", "--new-tokens", "12"]);
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["weights"], "BF16");
    assert!(
        v["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("random:")),
        "{v}"
    );
    assert_eq!(num(&v, "prompt_tokens"), 20.0);
    assert_eq!(num(&v, "new_tokens"), 12.0);
    assert_eq!(v["sampling"], "greedy");
    // 2 layers of q 64x64, k and v 32x64, o 64x64, gate and up 128x64, down 64x128, plus
    // the tied 256x64 LM head: 90112 BF16 values.
    assert_eq!(num(&v, "weight_bytes_per_token"), 180_224.0);
    let (ttft, tok_s) = (num(&v, "ttft_ms"), num(&v, "decode_tok_s"));
    let (median, p99) = (num(&v, "median_ms_per_token"), num(&v, "p99_ms_per_token"));
    assert!(ttft > 0.0 && ttft.is_finite(), "{v}");
    assert!(tok_s > 0.0 && tok_s.is_finite(), "{v}");
    assert!(median > 0.0 && median <= p99, "{v}");
    // The mean time per token lies between the fastest and slowest token.
    assert!(1e3 / tok_s <= p99 * 1.0001, "{v}");
    let achieved = num(&v, "achieved_gb_s");
    assert!(
        (achieved - 180_224.0 * tok_s / 1e9).abs() <= 1e-9 * achieved.max(1.0),
        "{v}"
    );
    let copy = num(&v, "copy_gb_s");
    assert!(copy > 0.1 && copy.is_finite(), "{v}");
    assert!(
        (num(&v, "percent_of_copy") - 100.0 * achieved / copy).abs() < 1e-6,
        "{v}"
    );
}

#[test]
fn bench_samples_when_given_a_temperature() {
    let args = [
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "6",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--repeat-penalty",
        "1.1",
    ];
    let v = bench_json(&args);
    assert_eq!(
        v["sampling"],
        "temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1 (last 64)"
    );
    assert_eq!(num(&v, "new_tokens"), 6.0);
    assert!(num(&v, "decode_tok_s") > 0.0, "{v}");
}

#[test]
fn bench_refuses_a_context_too_small_and_unknown_shapes() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny-llama-config.json"
    );
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tachyon"))
            .args(args)
            .output()
            .expect("run tachyon")
    };
    let out = run(&[
        "bench",
        "--backend",
        "cpu",
        "--random-weights",
        config,
        "--prompt-tokens",
        "500",
        "--new-tokens",
        "20",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("positions"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "bench",
        "--backend",
        "cpu",
        "--random-weights",
        "no-such-shape",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("llama-3.2-1b"));
}

/// `--quant` quantizes the random BF16 matrices at load: rows of 64 are whole 32-blocks,
/// so int8 gives Q8_0 (34 bytes per 32 weights) and int4 Q4_0 (18 bytes per 32).
#[test]
fn bench_quantizes_at_load() {
    for (q, ty, bytes_per_block) in [("int8", "Q8_0", 34.0), ("int4", "Q4_0", 18.0)] {
        let v = bench_json(&["--prompt-tokens", "8", "--new-tokens", "4", "--quant", q]);
        assert_eq!(v["weights"], ty, "{v}");
        // The same 90112 weights as the BF16 run, in blocks of 32.
        assert_eq!(
            num(&v, "weight_bytes_per_token"),
            90_112.0 / 32.0 * bytes_per_block,
            "{v}"
        );
        assert!(num(&v, "decode_tok_s") > 0.0, "{v}");
    }
}

/// Replays a recorded acceptance on random weights: the replay must force the recorded
/// steps, so its counts reproduce the record's (up to the few prompts that ended on a stop
/// token, whose last step the replay's fixed budget shortens).
fn replay_reproduces(record_name: &str, extra: &[&str]) {
    let record = format!("{}/tests/data/{record_name}", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["--replay-acceptance", record.as_str()];
    args.extend_from_slice(extra);
    let v = bench_json(&args);
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let (mut steps, mut kept, mut tokens) = (0u64, 0u64, 0u64);
    for p in rec["prompts"].as_array().unwrap() {
        tokens += p["generated"].as_u64().unwrap().saturating_sub(1);
        for s in p["trace"].as_array().unwrap() {
            if s[0].as_u64().unwrap() > 0 {
                steps += 1;
                kept += s[1].as_u64().unwrap();
            }
        }
    }
    let sp = &v["speculation"];
    assert_eq!(num(&v, "tokens") as u64, tokens, "{v}");
    let got_steps = num(sp, "verify_steps");
    assert!(
        (got_steps - steps as f64).abs() <= 0.01 * steps as f64,
        "{got_steps} verify steps, recorded {steps}"
    );
    let got_kept = num(sp, "accepted");
    assert!(
        (got_kept - kept as f64).abs() <= 0.01 * kept as f64,
        "{got_kept} kept, recorded {kept}"
    );
    assert!(
        num(&v, "plain_tokens_per_second") > 0.0 && num(&v, "speculative_tokens_per_second") > 0.0
    );
}

/// The Qwen2.5-Coder 0.5B draft on 1.5B over the 26 code prompts.
#[test]
fn replayed_draft_acceptance_reproduces_the_record() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny-llama-config.json"
    );
    replay_reproduces(
        "acceptance-qwen2.5-coder-0.5b-to-1.5b.json",
        &["--draft-random-weights", config],
    );
}

/// Prompt lookup on Qwen2.5-Coder 1.5B over the 8 edit prompts (no draft).
#[test]
fn replayed_lookup_acceptance_reproduces_the_record() {
    replay_reproduces("acceptance-lookup-qwen2.5-coder-1.5b-edits.json", &[]);
}
