#!/usr/bin/env bash
# Install nvcc and the CUDA headers into .toolchain/cuda, and CUDA 12.2's ptxas into
# .toolchain/cuda12 (both git-ignored), from the Python package index, so the CUDA kernels can be
# built on a machine with no CUDA toolkit and no GPU. build.rs finds both there without any
# PATH change; the emulated GPU (scripts/emulated-gpu.sh) compiles against the same headers.
#
# Versions are pinned. The CUDA 13.0 packages of one set go in ONE pip call because
# `pip install --target` replaces the target folder's contents on every call.
#
# Idempotent: a folder whose stamp file records exactly its package set, and whose compiler
# runs, is left alone. Prints the nvcc path on its last line of output.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
DEST=".toolchain/cuda"
NVCC="$DEST/nvidia/cu13/bin/nvcc"
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
)

# install_pinned DEST CHECK_BINARY PACKAGE... : pip-installs the packages into DEST unless DEST's
# stamp records exactly this set and CHECK_BINARY (relative to DEST) runs.
install_pinned() {
  local dest=$1 check=$2
  shift 2
  local want="$*" stamp="$dest/.installed"
  if [ -x "$dest/$check" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$dest/$check" --version >/dev/null 2>&1; then
    return 0
  fi
  # Install into a scratch folder next to the destination and swap it in only when pip
  # succeeded, so an interrupted install never leaves a half-populated toolchain that the
  # stamp check above could mistake for a good one.
  mkdir -p .toolchain
  local tmp
  tmp=$(mktemp -d .toolchain/install.tmp.XXXXXX)
  echo "installing $want into $dest" >&2
  if ! "$PY" -m pip install --quiet --no-deps --disable-pip-version-check --target "$tmp" "$@" \
     || ! "$tmp/$check" --version >/dev/null 2>&1; then
    echo "error: $check from the installed packages does not run" >&2
    rm -rf "$tmp"
    return 1
  fi
  echo "$want" > "$tmp/.installed"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  # cargo reruns build.rs only when something it watches changes, and a build that found no
  # nvcc had no nvcc path to watch: touching build.rs makes the next build pick this one up.
  touch build.rs
}

install_pinned "$DEST" nvidia/cu13/bin/nvcc "${PKGS[@]}"
# The machine code is assembled by CUDA 12.2's ptxas (and the PTX declared as ISA 8.2), so the
# fatbin loads on R535 and newer drivers: CUDA 13's own output needs R580. The CUDA 12 wheels
# ship ptxas but no nvcc, so nvcc 13 stays the front end (build.rs explains the pipeline).
install_pinned .toolchain/cuda12 nvidia/cuda_nvcc/bin/ptxas nvidia-cuda-nvcc-cu12==12.2.140
echo "$PWD/$NVCC"
exit 0
