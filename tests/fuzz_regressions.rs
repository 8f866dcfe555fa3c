//! Replays every committed fuzz input (`tests/data/fuzz-regressions/<target>/`) through the
//! same entry point its fuzz target calls (`tachyon::fuzzing`): crashes found by fuzzing,
//! the CVE-shaped seeds and small valid models. None may panic; `accept-*` inputs must be
//! accepted and `reject-*` inputs refused. The seeds written by recipe must match their
//! recipes (`TACHYON_BLESS_FUZZ_SEEDS=1` rewrites them).

mod common;
mod fuzz_seeds;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tachyon::format::gguf::GgufFile;
use tachyon::fuzzing::{TARGETS, target};
use tachyon::tokenizer::{ChatMessage, Tokenizer};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions")
}

#[test]
fn seeds_match_their_recipes() {
    let bless = std::env::var("TACHYON_BLESS_FUZZ_SEEDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (t, name, bytes) in fuzz_seeds::all() {
        assert!(target(t).is_some(), "seed for unknown target {t}");
        let path = root().join(t).join(&name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(format!("{t}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seeds differ from their recipes (rerun with TACHYON_BLESS_FUZZ_SEEDS=1): {stale:?}"
    );
}

#[test]
fn regression_inputs_replay_cleanly() {
    let mut failures = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for t in TARGETS {
        assert!(
            dirs.contains(&root().join(t.name)),
            "no regression folder for target {}",
            t.name
        );
    }
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let t = target(&name).unwrap_or_else(|| panic!("{} is not a fuzz target", dir.display()));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let (mut accepted, mut refused) = (0, 0);
        for file in files {
            let input = std::fs::read(&file).unwrap();
            let label = format!("{name}/{}", file.file_name().unwrap().to_string_lossy());
            let base = file.file_name().unwrap().to_string_lossy().into_owned();
            match catch_unwind(AssertUnwindSafe(|| (t.run)(&input))) {
                Err(_) => failures.push(format!("{label}: panicked")),
                Ok(Ok(())) => {
                    accepted += 1;
                    if base.starts_with("reject-") {
                        failures.push(format!("{label}: accepted, must be refused"));
                    }
                }
                Ok(Err(e)) => {
                    refused += 1;
                    assert!(!e.to_string().is_empty(), "{label}: empty error message");
                    if base.starts_with("accept-") {
                        failures.push(format!("{label}: refused, must be accepted: {e}"));
                    }
                }
            }
        }
        eprintln!("{name}: {accepted} accepted, {refused} refused");
        assert!(
            accepted > 0 && refused > 0,
            "{name}: the corpus must hold inputs of both kinds"
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The template fuel budget that stops runaway templates must not stop real ones: the real
/// models' templates render a conversation of 1000 turns within it.
#[test]
fn template_fuel_covers_long_real_conversations() {
    let turns: Vec<ChatMessage> = (0..1000)
        .map(|i| ChatMessage::new(["user", "assistant"][i % 2], format!("message number {i}")))
        .collect();
    let mut conversation = vec![ChatMessage::new("system", "You are a helpful assistant.")];
    conversation.extend(turns);
    for name in [common::SMOLLM2, common::QWEN_05B] {
        let Some(path) = common::model_path(name) else {
            continue;
        };
        let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let template = tok
            .compile_chat_template()
            .expect("has a template")
            .unwrap();
        let out = template
            .render(&conversation, true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.contains("message number 999"), "{name}");
    }
}
