#!/usr/bin/env bash
# Run the GPU checks from binaries built by scripts/gpu-pack.sh: every ignored GPU test,
# the end-to-end bench on the 1B and 8B shapes (BF16 random weights; greedy and sampled;
# 8k context with the bf16 and the f32 KV cache; quantized forms; speculation at the
# recorded acceptance) and the kernel
# benches; then one summary of every figure, a markdown table plus JSON, in
# LOG_DIR/summary.md (scripts/gpu-summary.py). Each step has a time limit and the whole
# run a deadline (TACHYON_GPU_CHECK_SECONDS, 450 by default), so it ends within 8 minutes
# whatever hangs: the steps come in order of what matters most, and those past the deadline
# are noted as skipped. Usage: scripts/gpu-check.sh [BIN_DIR] [LOG_DIR]
set -uo pipefail
bin=${1:-target/gpu-carry}
logs=${2:-gpu-logs}
here=$(dirname "$0")
data="$here/../tests/data"
mkdir -p "$logs"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
# step NAME SECONDS CMD...: run CMD with its stdout in NAME.json (or NAME.txt for the
# tests and criterion) and stderr in NAME.err, and note the exit status.
deadline=${TACHYON_GPU_CHECK_SECONDS:-450}
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((deadline - SECONDS))
    if ((left < 10)); then
        echo "$name: skipped (past the run's deadline)" | tee -a "$logs/summary.txt"
        return
    fi
    ((limit > left)) && limit=$left
    local out="$logs/$name.json"
    [[ $name == tests || $name == bench-kernels* ]] && out="$logs/$name.txt"
    timeout "$limit" "$@" > "$out" 2> "$logs/$name.err"
    echo "$name: exit $?" | tee -a "$logs/summary.txt"
}

step tests 150 "$bin/cuda_kernels_test" --ignored --test-threads 1
for shape in llama-3.2-1b llama-3.1-8b qwen2.5-1.5b; do
    step "bench-$shape" 45 "$bin/tachyon" bench --backend cuda --random-weights "$shape" --json --profile
done
# Programmatic dependent launch off (the 1B step above ran with it, where the card and
# driver allow): the same bench with plain launches, for the summary's on/off line.
TACHYON_PDL=0 step nopdl-llama-3.2-1b 30 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json --profile
step ttft-512 20 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --prompt-tokens 512 --new-tokens 2 --json
# The same prompt in 64-token chunks (the GPU default before 512: each chunk reads every
# weight and runs the attention of its rows): what the one-call default saves in TTFT.
step ttft-512-chunk-64 20 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --prompt-tokens 512 --new-tokens 2 --prefill-chunk 64 --json
# Sampled against greedy (the same shape and prompt), and attention's share at 8k context.
step sampled-llama-3.2-1b 30 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json --profile \
    --temperature 0.8 --top-k 40 --top-p 0.95 --repeat-penalty 1.1
step ctx8k-llama-3.2-1b 30 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --prompt-tokens 8000 \
    --new-tokens 64 --json --profile
# The KV cache in f32 (the checking type) against the bf16 default, at 8k where it matters.
step ctx8k-kv-f32-llama-3.2-1b 30 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b \
    --prompt-tokens 8000 --new-tokens 64 --json --profile --kv-dtype f32
TACHYON_NO_CUDA_GRAPH=1 step nograph-llama-3.2-1b 30 "$bin/tachyon" bench --backend cuda --random-weights llama-3.2-1b --json
# Quantized forms of the same shapes, made here from random weights.
for q in "llama-3.2-1b q4_k_m" "llama-3.1-8b q4_k_m"; do
    set -- $q
    file="$logs/../$1-$2.gguf"
    ((deadline - SECONDS < 60)) && break
    timeout 40 "$bin/tachyon" quantize --random-weights "$1" "$file" --type "$2" > /dev/null 2>> "$logs/summary.txt"
    step "bench-$1-$2" 45 "$bin/tachyon" bench --backend cuda --model "$file" --json --profile
    # The same file on int8 activations (quantize_act.cu + the dp4a GEMV) against f32 ones.
    step "bench-$1-$2-int8-acts" 45 "$bin/tachyon" bench --backend cuda --model "$file" --json --profile --int8-acts
    # A 512-token prompt on the quantized 1B: the wide tensor-core form (64 tokens a block).
    [[ $1 == llama-3.2-1b ]] && step "ttft-512-$1-$2" 20 "$bin/tachyon" bench --backend cuda --model "$file" \
        --prompt-tokens 512 --new-tokens 2 --json
    rm -f "$file"
done
# Speculation at the acceptance recorded on the real Qwen2.5-Coder pair, and prompt lookup's.
step spec-draft 45 "$bin/tachyon" bench --backend cuda --random-weights qwen2.5-1.5b --draft-random-weights qwen2.5-0.5b \
    --replay-acceptance "$data/acceptance-qwen2.5-coder-0.5b-to-1.5b.json" --json
step spec-lookup 45 "$bin/tachyon" bench --backend cuda --random-weights qwen2.5-1.5b --lookup \
    --replay-acceptance "$data/acceptance-lookup-qwen2.5-coder-1.5b-edits.json" --json
step bench-kernels-gemv-fused 45 "$bin/bench_gemv_fused" --bench
step bench-kernels 60 "$bin/bench_cuda_kernels" --bench
step bench-kernels-rmsnorm 20 "$bin/bench_rmsnorm" --bench
# The tensor-core products of verify steps and prefill (last: skipped past the deadline).
step bench-kernels-verify-gemm 80 "$bin/bench_verify_gemm" --bench
if command -v python3 > /dev/null; then
    python3 "$here/gpu-summary.py" "$logs" > "$logs/summary.md" 2>> "$logs/summary.txt"
else
    # No python here: the raw reports, one after another.
    cat "$logs/summary.txt" "$logs"/*.json > "$logs/summary.md"
fi
cat "$logs/summary.txt"
