//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN_05B: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const QWEN_15B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The path of a real model from `scripts/fetch-models.sh`, or None (with a note) when it is
/// missing. With TACHYON_REQUIRE_MODELS=1 (set by CI) a missing model fails the test instead.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TACHYON_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let p = dir.join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("TACHYON_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{} is missing; run scripts/fetch-models.sh", p.display());
    }
    eprintln!(
        "skipping: {} is missing (run scripts/fetch-models.sh)",
        p.display()
    );
    None
}
