#!/usr/bin/env python3
"""Independent check of a GGUF written by `tachyon quantize`.

Reads the file with the `gguf` Python package (not tachyon's reader), dequantizes the
listed tensors with `gguf.quants.dequantize`, and compares them with the float32 values
tachyon's own dequantizer produced (raw little-endian f32 files, one per tensor, named
after the tensor). Also checks every tensor's type and shape against the manifest.

    python3 tools/check_quantized.py OUT.gguf DIR
DIR/manifest.json: {"tensor name": {"type": "Q4_K", "rows": R, "cols": C, "values": "file.f32" | null}}
Exit status 0 when everything matches exactly, 1 otherwise.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main() -> int:
    path, ref_dir = sys.argv[1], sys.argv[2]
    with open(f"{ref_dir}/manifest.json") as f:
        manifest = json.load(f)
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    bad = 0
    checked = 0
    for name, want in manifest.items():
        t = tensors.get(name)
        if t is None:
            print(f"{name}: missing from the file")
            bad += 1
            continue
        ty = t.tensor_type.name
        shape = [int(x) for x in t.shape]  # innermost first
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        cols = shape[0]
        if ty != want["type"] or (rows, cols) != (want["rows"], want["cols"]):
            print(f"{name}: {ty} [{rows}, {cols}] in the file, tachyon wrote {want['type']} [{want['rows']}, {want['cols']}]")
            bad += 1
            continue
        if want.get("values") is None:
            continue
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        ref = np.fromfile(f"{ref_dir}/{want['values']}", dtype="<f4")
        if values.shape != ref.shape:
            print(f"{name}: {values.size} values dequantized, tachyon gave {ref.size}")
            bad += 1
            continue
        diff = np.abs(values - ref)
        if not np.all(np.isfinite(values)) or diff.max() > 0:
            i = int(np.argmax(diff))
            print(f"{name} ({ty}): max |diff| {diff.max():.3g} at {i}: gguf {values[i]} vs tachyon {ref[i]}")
            bad += 1
        checked += 1
    print(f"{len(manifest)} tensors in the manifest, {checked} compared value by value, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
