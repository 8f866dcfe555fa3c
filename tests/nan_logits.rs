//! A model that produces NaN logits ends that request with an error and serves the next:
//! on the CPU backend here, on the CUDA backend in tests/cuda/model.rs.

mod common;

use tachyon::engine::{SessionOptions, cpu_session};

#[test]
fn nan_logits_end_the_request_and_the_next_one_succeeds() {
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 8,
        ..Default::default()
    };
    common::nan_logits_fail_one_request_only(
        &|config, weights| cpu_session(config, weights, &opts).unwrap_or_else(|e| panic!("{e}")),
        0x5eed,
        6,
    );
}
