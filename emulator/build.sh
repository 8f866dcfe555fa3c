#!/usr/bin/env bash
# Builds the emulated GPU (see emulator/README.md).
#
#   emulator/build.sh OUT                   OUT/libcuda.so.1 (+ libcuda.so), OUT/emu-stamp and
#                                           OUT/libtachyon_emu_kernels.so from kernels/*.cu;
#                                           writes OUT/stamp (hash of kernels/ and emulator/)
#   emulator/build.sh --kernels DIR OUTLIB  a kernels library from any directory of .cu files
#                                           (the runtime is built next to OUTLIB)
#   emulator/build.sh --selftest OUT        builds OUT as above plus the planted-bug kernels
#                                           and runs the runtime self test
#   emulator/build.sh --stamp               prints the hash OUT/stamp holds for this tree
#
# Environment: CXX (g++), CUDA_INC (the CUDA headers; default .toolchain/cuda/nvidia/cu13/include),
# JOBS (parallel compiles; default nproc).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${JOBS:-$(nproc)}
MK="$ROOT/emulator/tools/emu.mk"

tree_stamp() {
    (cd "$ROOT" && find kernels emulator -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum) | sha256sum | cut -c1-64
}

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

# make's dependency files name sources by absolute path: an output folder copied from
# another checkout would be judged against that checkout's sources. Start it afresh then.
claim_out() {  # OUT
    if [[ -d "$1/obj" && "$(cat "$1/root" 2>/dev/null)" != "$ROOT" ]]; then rm -rf "$1/obj"; fi
    mkdir -p "$1" && printf '%s\n' "$ROOT" >"$1/root"
}

build_runtime() {  # OUT
    claim_out "$1"
    make -s -f "$MK" -j"$JOBS" ROOT="$ROOT" OUT="$1" runtime
}

build_kernels() {  # SRC_DIR OUTLIB RUNTIME_OUT
    local src out klib kgen stamp
    src=$(cd "$1" && pwd)
    out=$3
    klib="$(abs_dir "$(dirname "$2")")/$(basename "$2")"
    kgen="${klib%.so}.gen"
    mkdir -p "$kgen"
    python3 "$ROOT/emulator/tools/gen_registry.py" wrappers "$src" "$kgen"
    stamp=$("$out/emu-stamp" "$src")
    make -s -f "$MK" -j"$JOBS" ROOT="$ROOT" OUT="$out" KSRC="$src" KLIB="$klib" KGEN="$kgen" \
        STAMP="$stamp" kernels
}

case "${1:-}" in
    --stamp)
        tree_stamp
        ;;
    --kernels)
        [ $# -eq 3 ] || { echo "usage: $0 --kernels DIR OUTLIB" >&2; exit 2; }
        out=$(abs_dir "$(dirname "$3")")
        build_runtime "$out"
        build_kernels "$2" "$3" "$out"
        ;;
    --selftest)
        [ $# -eq 2 ] || { echo "usage: $0 --selftest OUT" >&2; exit 2; }
        out=$(abs_dir "$2")
        "$0" "$out"
        build_kernels "$ROOT/emulator/tests/planted" "$out/libplanted_kernels.so" "$out"
        make -s -f "$MK" -j"$JOBS" ROOT="$ROOT" OUT="$out" selftest
        TACHYON_EMU_NO_SYMBOLIZE=${TACHYON_EMU_NO_SYMBOLIZE:-} \
            "$out/runtime_selftest" "$out/libtachyon_emu_kernels.so" "$out/libplanted_kernels.so"
        ;;
    ""|-*)
        echo "usage: $0 OUT | --kernels DIR OUTLIB | --selftest OUT | --stamp" >&2
        exit 2
        ;;
    *)
        out=$(abs_dir "$1")
        build_runtime "$out"
        build_kernels "$ROOT/kernels" "$out/libtachyon_emu_kernels.so" "$out"
        tree_stamp > "$out/stamp"
        ;;
esac
