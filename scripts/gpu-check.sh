#!/usr/bin/env bash
# Run the GPU checks from binaries built by scripts/gpu-pack.sh: every ignored GPU test,
# the end-to-end bench on the 1B and 8B shapes (BF16 random weights) and the kernel
# benches; then one summary of every figure, a markdown table plus JSON, in
# LOG_DIR/summary.md (scripts/gpu-summary.py). Usage: scripts/gpu-check.sh [BIN_DIR] [LOG_DIR]
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
# Sampled against greedy (the same shape and prompt), and attention's share at 8k context.
"$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json --profile \
    --temperature 0.8 --top-k 40 --top-p 0.95 --repeat-penalty 1.1 \
    > "$logs/sampled-llama-3.2-1b.json" 2> "$logs/sampled-llama-3.2-1b.err"
echo "sampled: exit $?" | tee -a "$logs/summary.txt"
"$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --prompt-tokens 8000 --new-tokens 64 --json --profile \
    > "$logs/ctx8k-llama-3.2-1b.json" 2> "$logs/ctx8k-llama-3.2-1b.err"
echo "8k context: exit $?" | tee -a "$logs/summary.txt"
TACHYON_NO_CUDA_GRAPH=1 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json \
    > "$logs/bench-llama-3.2-1b-nograph.json" 2>&1
"$bin/bench_cuda_kernels" --bench > "$logs/bench-kernels.txt" 2>&1
"$bin/bench_rmsnorm" --bench > "$logs/bench-rmsnorm.txt" 2>&1
here=$(dirname "$0")
if command -v python3 > /dev/null; then
    python3 "$here/gpu-summary.py" "$logs" > "$logs/summary.md" 2>> "$logs/summary.txt"
else
    # No python here: the raw reports, one after another.
    cat "$logs/summary.txt" "$logs"/*.json > "$logs/summary.md"
fi
cat "$logs/summary.txt"
