#!/usr/bin/env bash
# Build everything the GPU checks need on a machine with nvcc but no GPU, and gather the
# stripped binaries in target/gpu-carry/ (copy that folder and scripts/gpu-check.sh to the
# GPU machine, which needs no Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
export TACHYON_REQUIRE_CUDA=1
# The executable cargo built for target $1, from its JSON messages on stdin.
exe() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1" | tail -1
}
out=target/gpu-carry
rm -rf "$out" && mkdir -p "$out"
cargo build --release
cp target/release/tachyon "$out/tachyon"
cp "$(cargo test --release --test cuda_kernels --no-run --message-format=json | exe cuda_kernels)" "$out/cuda_kernels_test"
cp "$(cargo bench --bench cuda_kernels --no-run --message-format=json | exe cuda_kernels)" "$out/bench_cuda_kernels"
cp "$(cargo bench --bench rmsnorm --no-run --message-format=json | exe rmsnorm)" "$out/bench_rmsnorm"
cp "$(cargo bench --bench gemv_fused --no-run --message-format=json | exe gemv_fused)" "$out/bench_gemv_fused"
cp "$(cargo bench --bench verify_gemm --no-run --message-format=json | exe verify_gemm)" "$out/bench_verify_gemm"
strip "$out"/* 2>/dev/null || true
du -sh "$out"
