#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60), one after
# another (all at once with FUZZ_PARALLEL=1), at the lowest CPU priority, and print the
# executions per target from libFuzzer's final stats. Needs nightly Rust and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz --locked
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Each target starts from its committed regression inputs (tests/data/fuzz-regressions/T/)
# and keeps what it discovers in fuzz/corpus/T/ (not committed). A crash leaves its input in
# fuzz/artifacts/T/; once fixed, copy it into tests/data/fuzz-regressions/T/ so the normal
# test suite (tests/fuzz_regressions.rs) replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
export TACHYON_NO_CUDA=1 # the targets never touch a GPU; skip nvcc
cd fuzz
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
nice -n 19 cargo +nightly fuzz build
mkdir -p artifacts corpus
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')

# One target: libFuzzer's output goes to artifacts/T.log; prints the summary line.
run_one() {
  local t=$1 log="artifacts/$1.log" outcome execs
  mkdir -p "corpus/$t" "artifacts/$t"
  # -timeout: one input running this long is a hang (generous: under AddressSanitizer on a
  # busy machine a template that burns its whole fuel budget takes tens of seconds).
  # -malloc_limit_mb: no input this small may allocate 1 GiB in one go (the memory bound).
  if nice -n 19 "target/$triple/release/$t" "corpus/$t" "../tests/data/fuzz-regressions/$t" \
    -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=60 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    outcome=ok
  else
    outcome="CRASH (see fuzz/$log and fuzz/artifacts/$t/)"
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "$t: ${execs:-?} executions in ${secs}s: $outcome"
}

if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  for t in "${targets[@]}"; do run_one "$t" >"artifacts/$t.summary" & done
  wait
else
  for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    run_one "$t" | tee "artifacts/$t.summary"
  done
fi
echo "== summary"
status=0
for t in "${targets[@]}"; do
  cat "artifacts/$t.summary"
  grep -q ': ok$' "artifacts/$t.summary" || status=1
done
exit $status
