#!/usr/bin/env bash
# Run a command against the emulated GPU: tachyon's CUDA backend, kernels and graphs run on
# the CPU through a stand-in libcuda.so.1 (emulator/README.md).
#
#   scripts/emulated-gpu.sh COMMAND [ARGS...]
#   scripts/emulated-gpu.sh cargo test --release --test cuda_kernels -- --ignored
#   scripts/emulated-gpu.sh target/release/tachyon generate --backend cuda --model M --prompt P
#
# 1. Makes sure the CUDA headers exist (scripts/install-cuda-toolchain.sh), since the
#    kernels are compiled for the host with them and cargo builds need nvcc for the fatbin.
# 2. Rebuilds target/emulated-gpu/ with emulator/build.sh when the hash of kernels/* and
#    emulator/** differs from the one recorded in target/emulated-gpu/stamp.
# 3. Runs COMMAND with LD_LIBRARY_PATH=target/emulated-gpu:$LD_LIBRARY_PATH (so the stand-in
#    libcuda is the one found), TACHYON_EMU_KERNELS (the host-compiled kernels library),
#    TACHYON_EMU_SOURCE_DIR (kernels/, whose stamp that library must match) and
#    TACHYON_EMULATED_GPU=1 (for tests that only make sense on the emulator).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/target/emulated-gpu"

if [[ $# -eq 0 ]]; then
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

if [[ ! -f "$repo/.toolchain/cuda/nvidia/cu13/include/cuda.h" ]]; then
    "$repo/scripts/install-cuda-toolchain.sh" >&2
fi

# emulator/build.sh --stamp hashes every file of kernels/ and emulator/ (names and
# contents); a build records that hash in target/emulated-gpu/stamp.
want="$("$repo/emulator/build.sh" --stamp)"
have="$(cat "$out/stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -e "$out/libcuda.so.1" || ! -e "$out/libtachyon_emu_kernels.so" ]]; then
    echo "emulated-gpu: building $out" >&2
    "$repo/emulator/build.sh" "$out" >&2
fi

export LD_LIBRARY_PATH="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TACHYON_EMU_KERNELS="$out/libtachyon_emu_kernels.so"
export TACHYON_EMU_SOURCE_DIR="$repo/kernels"
export TACHYON_EMULATED_GPU=1
# A cargo build run through here must embed kernels, or the CUDA backend reports none.
export TACHYON_REQUIRE_CUDA="${TACHYON_REQUIRE_CUDA:-1}"
exec "$@"
