#!/usr/bin/env bash
# Run the GPU checks from binaries built by scripts/gpu-pack.sh: every ignored GPU test,
# the end-to-end bench on the 1B and 8B shapes (BF16 random weights) and the kernel
# benches. Usage: scripts/gpu-check.sh [BIN_DIR] [LOG_DIR]
set -uo pipefail
bin=${1:-target/gpu-carry}
logs=${2:-gpu-logs}
mkdir -p "$logs"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
"$bin/cuda_kernels_test" --ignored --test-threads 1 --nocapture > "$logs/tests.txt" 2>&1
echo "tests: exit $?" | tee -a "$logs/summary.txt"
for shape in llama-3.2-1b llama-3.1-8b qwen2.5-1.5b; do
    "$bin/tachyon" bench --backend cuda --random-weights "$shape" --json --profile > "$logs/bench-$shape.json" 2> "$logs/bench-$shape.err"
    echo "bench $shape: exit $?" | tee -a "$logs/summary.txt"
done
"$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --prompt-tokens 512 --new-tokens 2 --json \
    > "$logs/ttft-512.json" 2> "$logs/ttft-512.err"
TACHYON_NO_CUDA_GRAPH=1 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json \
    > "$logs/bench-llama-3.2-1b-nograph.json" 2>&1
"$bin/bench_cuda_kernels" --bench > "$logs/bench-kernels.txt" 2>&1
"$bin/bench_rmsnorm" --bench > "$logs/bench-rmsnorm.txt" 2>&1
cat "$logs/summary.txt"
