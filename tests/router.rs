//! Serving behind a router: the vLLM-named gauges on /metrics, readiness (/v1/models) after
//! liveness (/health), and two SmolLM2 replicas behind LiteLLM's Router
//! (tests/litellm_router.py): requests spread over both, a replica killed mid-run loses no
//! request, the survivor's p99 time to first token is printed.

mod common;
mod server_harness;

use std::path::PathBuf;

use server_harness::Server;

/// The Python with the test packages: `TACHYON_TEST_PYTHON`, else scripts/test.sh's venv.
fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = std::env::var_os("TACHYON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/venv/bin/python"));
    let has = |module: &str| {
        std::process::Command::new(&p)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if p.is_file() && has("litellm") {
        return Some(p);
    }
    if std::env::var("TACHYON_REQUIRE_PY").is_ok_and(|v| v == "1") {
        panic!(
            "{} with litellm is missing; run scripts/test.sh (it creates the venv)",
            p.display()
        );
    }
    eprintln!("skipping: no Python with litellm at {}", p.display());
    None
}

#[test]
fn metrics_carry_the_gauges_routers_read() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let s = Server::start(&path, &["--served-model-name", "smol", "--slots", "2"]);
    let label = "{model_name=\"smol\"}";
    let get = |name: &str| s.metric(&format!("{name}{label}"));
    assert_eq!(get("vllm:num_requests_running"), 0.0);
    assert_eq!(get("vllm:num_requests_waiting"), 0.0);
    assert_eq!(get("vllm:kv_cache_usage_perc"), 0.0);
    let r = s.post_json(
        "/v1/completions",
        &serde_json::json!({"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0}),
    );
    let used = r["usage"]["total_tokens"].as_f64().unwrap_or(0.0);
    let ctx = s.get("/v1/models", &[]).json()["data"][0]["max_model_len"]
        .as_f64()
        .unwrap_or(0.0);
    let kv = get("vllm:kv_cache_usage_perc");
    assert!(kv > 0.0 && kv <= 1.0, "kv usage {kv}");
    // One of the two slots holds the prompt and all but the last generated token.
    assert!(
        (kv * 2.0 * ctx - (used - 1.0)).abs() < 1.5,
        "kv usage {kv} of {ctx} positions after {used} tokens"
    );
    assert_eq!(get("vllm:gpu_cache_usage_perc"), kv);
    let text = s.get("/metrics", &[]).text();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ] {
        assert!(text.contains(&format!("# TYPE {name} gauge")), "{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
}

#[test]
fn health_is_liveness_and_models_is_readiness() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    // The ready line comes once the model is loaded and warmed up: then both answer, and
    // the warm-up left nothing a request would count as cached.
    let s = Server::start(&path, &[]);
    assert_eq!(s.get("/health", &[]).status, 200);
    let m = s.get("/v1/models", &[]);
    assert_eq!(m.status, 200, "{}", m.text());
    let r = s.post_json(
        "/v1/completions",
        &serde_json::json!({"prompt": "def warm_up():", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(
        r["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{r}"
    );
}

#[test]
fn two_replicas_behind_litellm_spread_and_fail_over() {
    let Some(path) = common::model_path(common::SMOLLM2) else {
        return;
    };
    let Some(python) = python() else { return };
    let a = Server::start(&path, &[]);
    let b = Server::start(&path, &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/litellm_router.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(a.addr.to_string())
        .arg(b.addr.to_string())
        .arg(a.pid().to_string())
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("\nok"),
        "litellm_router.py failed:\n{stdout}\n{stderr}"
    );
}
