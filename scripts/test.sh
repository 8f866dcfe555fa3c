#!/usr/bin/env bash
# Run the test suite: fetch what the tests need (nvcc from pip so every kernel compiles,
# the real models, the tokenizer conformance files, a Python venv with the openai client and
# the gguf package),
# then `cargo fmt --check`, `cargo clippy --release --all-targets -- -D warnings` and
# `cargo test --profile ci` (release without cross-crate LTO: Cargo.toml says why; its
# binaries land in target/ci/).
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test golden`).
# Tests that need a GPU are marked ignored; run them on a GPU machine with
# `cargo test --release -- --ignored`, and here under the emulated GPU (below).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-cuda-toolchain.sh
scripts/fetch-models.sh
scripts/fetch-vocab-tests.sh
# The server tests drive the real server with the official openai client and websockets;
# the quantizer's output is checked with the `gguf` package (tools/requirements.txt); two
# replicas are driven through LiteLLM's Router (tests/router.rs; no network at run time).
if [ ! -x .cache/venv/bin/python ] || ! .cache/venv/bin/python -c "import openai, websockets, gguf, numpy, litellm" 2>/dev/null; then
  python3 -m venv .cache/venv
  .cache/venv/bin/pip install -q openai==3.51.0 websockets==17.4 litellm==1.110.2 -r tools/requirements.txt
fi
export PATH="$PWD/.toolchain/cuda/nvidia/cu13/bin:$PATH"
# Formatting and lints before the tests: both are cheap next to the build the tests need.
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --profile ci "$@"

# Every GPU test again under the emulated device (emulator/README.md): the kernels and the
# CUDA backend run on the CPU against a stand-in driver, with compute-sanitizer-style
# checks. Only for the whole suite (no cargo arguments); TACHYON_SKIP_EMULATED=1 skips it.
# Not run here: the HF reference comparison (needs a checkpoint made on a GPU machine) and
# the 1B / 1.5B real shapes (hours of emulation); both run on a GPU machine with --ignored.
if [[ $# -eq 0 && "${TACHYON_SKIP_EMULATED:-}" != 1 ]]; then
  emulator/build.sh --selftest target/emulated-gpu
  scripts/emulated-gpu.sh cargo test --profile ci --test emulated_device --test cuda_kernels -- \
    --ignored --skip hf_reference_logits_match --skip whole_model_logits_match_cpu_on_real_shapes
  # The server, slot and fault tests (openai client, SSE, WebSocket, speculation, NaN
  # logits) on the CUDA backend, serving a tiny random model with SmolLM2's tokenizer
  # (tests/server_harness/tiny_model.rs).
  TACHYON_TEST_BACKEND=cuda TACHYON_TEST_SERVER_MODEL=tiny scripts/emulated-gpu.sh cargo test --profile ci --test server --test slots --test server_faults
fi
