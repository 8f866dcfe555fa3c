#!/usr/bin/env bash
# Run the test suite: fetch what the tests need (nvcc from pip so every kernel compiles,
# the real models, the tokenizer conformance files), then `cargo test --release`.
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test golden`).
# Tests that need a GPU are marked ignored; run them on a GPU machine with
# `cargo test --release -- --ignored`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-cuda-toolchain.sh
scripts/fetch-models.sh
scripts/fetch-vocab-tests.sh
export PATH="$PWD/.toolchain/cuda/nvidia/cu13/bin:$PATH"
cargo test --release "$@"
