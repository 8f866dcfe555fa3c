#!/usr/bin/env bash
# CPU decode and prefill speed of the three real models, as in BENCHMARKS.md:
# greedy, a fixed code prompt, 128 new tokens, end-of-sequence ignored, N threads (default 2).
# Prints the stats line `tachyon generate` writes to stderr, once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
RUNS="${RUNS:-3}"
cargo build --release --quiet
for m in SmolLM2-135M-Instruct.Q4_1.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; do
  for _ in $(seq "$RUNS"); do
    printf '%s: ' "$m"
    ./target/release/tachyon generate --model "models/$m" --backend cpu --threads "$THREADS" \
      --prompt "def quicksort(items):" --max-tokens 128 --temperature 0 --ignore-eos 2>&1 >/dev/null | tail -1
  done
done
