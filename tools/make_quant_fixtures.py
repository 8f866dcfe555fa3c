#!/usr/bin/env python3
"""Make the dequantization fixtures under tests/data/quant/.

For every weight format tachyon reads, this writes a few blocks of random bytes
(`<TYPE>.bin`) and the floats the `gguf` Python package's independent numpy
dequantizer makes of them (`<TYPE>.f32`, little-endian f32). The Rust tests in
src/quant check `dequantize` against these.

Random bytes exercise every bit pattern of the quant fields; the f16 scale fields
are then overwritten with small finite values so the expected output has no
inf/NaN and stays in a range where a wrong bit shows up clearly.

Usage (from the repository root):

    pip install gguf numpy
    python3 tools/make_quant_fixtures.py

The output is deterministic (fixed seed); rerunning it must leave git clean.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quant"

# Byte offsets of the f16 fields in one block of each quantized format.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}

# File names match GgmlType::name() on the Rust side.
NAMES = {
    T.F32: "F32",
    T.F16: "F16",
    T.BF16: "BF16",
    T.Q4_0: "Q4_0",
    T.Q4_1: "Q4_1",
    T.Q5_0: "Q5_0",
    T.Q5_1: "Q5_1",
    T.Q8_0: "Q8_0",
    T.Q4_K: "Q4_K",
    T.Q5_K: "Q5_K",
    T.Q6_K: "Q6_K",
}


def small_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite f16 values of either sign with magnitudes in [1e-4, 0.5)."""
    mag = np.exp(rng.uniform(np.log(1e-4), np.log(0.5), n))
    sign = rng.choice([-1.0, 1.0], n)
    return (mag * sign).astype(np.float16)


def float_bytes(rng: np.random.Generator, qtype: T, n: int) -> np.ndarray:
    if qtype == T.F32:
        return (rng.standard_normal(n) * 10).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
        # Keep every finite pattern (subnormals included) but no inf/NaN.
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBBFF
        return bits.view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        return bits.view(np.uint8)
    raise ValueError(qtype)


def quant_bytes(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off : off + 2] = small_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def main() -> None:
    rng = np.random.default_rng(20240611)
    OUT.mkdir(parents=True, exist_ok=True)
    for qtype, name in NAMES.items():
        if qtype in F16_FIELDS:
            block_size, _ = GGML_QUANT_SIZES[qtype]
            n_blocks = 3 if block_size == 256 else 8
            raw = quant_bytes(rng, qtype, n_blocks)
        else:
            raw = float_bytes(rng, qtype, 96)
        expected = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        assert np.all(np.isfinite(expected)), name
        (OUT / f"{name}.bin").write_bytes(raw.tobytes())
        (OUT / f"{name}.f32").write_bytes(expected.astype("<f4").tobytes())
        print(f"{name}: {raw.size} bytes -> {expected.size} floats")


if __name__ == "__main__":
    main()
