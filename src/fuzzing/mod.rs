//! Byte-level entry points for everything tachyon reads from strangers: model files, the
//! vocabularies and chat templates inside them, and requests to the server.
//!
//! Each entry point takes arbitrary bytes, runs them through the same code a real load or
//! render uses, and returns `Ok` when the input was accepted or `Err` with the reason it was
//! refused. It panics only when a guarantee of the code under test is broken (a tensor view
//! outside its file, output over its limit, ...), which is what a fuzzer reports as a crash.
//! The fuzz targets in `fuzz/` and the regression test over `tests/data/fuzz-regressions/`
//! both call them through [`TARGETS`], so a crash found by fuzzing replays in the test suite.
//!
//! Adding a target: one file here with `pub fn run(data: &[u8]) -> Outcome`, one line in
//! [`TARGETS`], one file in `fuzz/fuzz_targets/` and a `[[bin]]` in `fuzz/Cargo.toml`.

mod bytes;
pub mod chat_template;
pub mod gguf;
pub mod request;
pub mod safetensors;
pub mod tokenizer;

/// Why an input was refused (the message of the error the code under test returned).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// The result of one input: accepted, or refused with a reason.
pub type Outcome = Result<(), Rejected>;

impl Rejected {
    pub(crate) fn from(e: impl std::fmt::Display) -> Rejected {
        Rejected(e.to_string())
    }
}

/// One fuzz target: its name (the fuzz binary and the regression folder) and entry point.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        run: gguf::run,
    },
    Target {
        name: "safetensors",
        run: safetensors::run,
    },
    Target {
        name: "tokenizer",
        run: tokenizer::run,
    },
    Target {
        name: "chat_template",
        run: chat_template::run,
    },
    Target {
        name: "request",
        run: request::run,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
