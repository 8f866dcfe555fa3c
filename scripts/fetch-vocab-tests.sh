#!/usr/bin/env bash
# Fetch llama.cpp's vocab conformance files (ggml-vocab-*.gguf plus the .inp/.out test pairs)
# into models/vocab/ (git-ignored). They ship inside the llama-cpp-python source package on
# the Python package index; we download that one archive (as source: the build tools it
# needs for its metadata come as wheels) and extract only the vocab files.
# Does nothing when every wanted file is already present.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${TACHYON_VOCAB_DIR:-models/vocab}"
PY="${PYTHON:-python3}"
VERSION=0.3.36
# Vocabs whose model/pre-tokenizer our tokenizer supports.
VOCABS=(llama-spm llama-bpe qwen2 gpt-2 starcoder refact mpt falcon command-r phi-3 deepseek-llm deepseek-coder qwen35)

missing=0
for v in "${VOCABS[@]}"; do
  for ext in gguf gguf.inp gguf.out; do
    [ -f "$DEST/ggml-vocab-$v.$ext" ] || missing=1
  done
done
if [ "$missing" = 0 ]; then echo "ok      $DEST (all present)"; exit 0; fi

mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch   llama-cpp-python==$VERSION source package"
"$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
  -d "$tmp" "llama-cpp-python==$VERSION"
"$PY" - "$tmp" "$DEST" "${VOCABS[@]}" <<'PYEOF'
import glob, os, sys, tarfile
tmp, dest, vocabs = sys.argv[1], sys.argv[2], sys.argv[3:]
archives = glob.glob(os.path.join(tmp, "*.tar.gz"))
if not archives:
    sys.exit("error: no source archive downloaded")
wanted = {f"ggml-vocab-{v}.{ext}" for v in vocabs for ext in ("gguf", "gguf.inp", "gguf.out")}
found = set()
with tarfile.open(archives[0]) as tar:
    for m in tar:
        name = os.path.basename(m.name)
        # Only regular files from the vendored models/ folder; never trust archive paths.
        if m.isfile() and name in wanted and "/vendor/llama.cpp/models/" in m.name:
            src = tar.extractfile(m)
            out = os.path.join(dest, name)
            with open(out + ".partial", "wb") as f:
                f.write(src.read())
            os.replace(out + ".partial", out)
            found.add(name)
for name in sorted(wanted - found):
    print(f"warning: {name} not in the archive", file=sys.stderr)
print(f"ok      {dest} ({len(found)} files)")
PYEOF
