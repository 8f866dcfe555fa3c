#!/usr/bin/env bash
# Install nvcc, ptxas and the CUDA headers into .toolchain/cuda (git-ignored) from the Python
# package index, so the CUDA kernels can be built on a machine with no CUDA toolkit and no GPU.
# build.rs finds nvcc there (.toolchain/cuda/nvidia/cu13/bin/nvcc) without any PATH change.
#
# The versions are pinned to CUDA 13.0: PTX from a newer nvcc may be refused by a 13.0 driver.
# All five packages go in ONE pip call because `pip install --target` replaces the target
# folder's contents on every call; a second call would drop what the first installed.
#
# Idempotent: if the stamp file records exactly this package set and nvcc runs, it does
# nothing. Prints the nvcc path on its last line of output.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
DEST=".toolchain/cuda"
NVCC="$DEST/nvidia/cu13/bin/nvcc"
STAMP="$DEST/.installed"
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
)
WANT="${PKGS[*]}"

if [ -x "$NVCC" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$NVCC" --version >/dev/null 2>&1; then
  echo "CUDA toolchain already installed" >&2
  echo "$PWD/$NVCC"
  exit 0
fi

# Install into a scratch folder next to the destination and swap it in only when pip
# succeeded, so an interrupted install never leaves a half-populated toolchain that the
# stamp check above could mistake for a good one.
mkdir -p .toolchain
TMP=$(mktemp -d .toolchain/cuda.tmp.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
echo "installing ${PKGS[*]} into $DEST" >&2
"$PY" -m pip install --quiet --no-deps --disable-pip-version-check --target "$TMP" "${PKGS[@]}"
if ! "$TMP/nvidia/cu13/bin/nvcc" --version >/dev/null 2>&1; then
  echo "error: nvcc from the installed packages does not run" >&2
  exit 1
fi
echo "$WANT" > "$TMP/.installed"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
# cargo reruns build.rs only when something it watches changes, and a build that found no
# nvcc had no nvcc path to watch: touching build.rs makes the next build pick this one up.
touch build.rs
echo "$PWD/$NVCC"
