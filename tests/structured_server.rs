//! Structured output and tool calls end to end: `tachyon serve` on Qwen2.5-Coder-0.5B (CPU)
//! driven by the official `openai` Python client (tests/openai_structured.py).

mod common;
mod server_harness;

#[test]
fn structured_output_and_tools_through_the_openai_client() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".cache/venv/bin/python");
    if !python.is_file() {
        if std::env::var("TACHYON_REQUIRE_PY").is_ok_and(|v| v == "1") {
            panic!("{} is missing; run scripts/test.sh", python.display());
        }
        eprintln!(
            "skipping: {} is missing (scripts/test.sh creates it)",
            python.display()
        );
        return;
    }
    let Some(model) = common::model_path(common::QWEN_05B) else {
        return;
    };
    let s = server_harness::Server::start(&model, &[]);
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/openai_structured.py"))
        .arg(format!("http://{}", s.addr))
        .output()
        .expect("run python");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tests/openai_structured.py failed:\n{stdout}"
    );
    assert!(
        stdout.contains("all structured output checks passed"),
        "{stdout}"
    );
}
