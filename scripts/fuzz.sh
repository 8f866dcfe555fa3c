#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60), one after
# another, at the lowest CPU priority, and print the executions per target from libFuzzer's
# final stats. Needs the nightly toolchain and cargo-fuzz:
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
declare -A result
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t.log"
  echo "== $t: ${secs}s"
  # -timeout: one input running this long is a hang; -malloc_limit_mb: no input this small
  # may allocate 1 GiB in one go (the memory bound on hostile files).
  if nice -n 19 cargo +nightly fuzz run "$t" "corpus/$t" "../tests/data/fuzz-regressions/$t" -- \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -print_final_stats=1 >"$log" 2>&1; then
    outcome=ok
  else
    outcome="CRASH (see fuzz/$log and fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  result[$t]="${execs:-?} executions in ${secs}s: $outcome"
  echo "$t: ${result[$t]}"
done
echo "== summary"
for t in "${targets[@]}"; do echo "$t: ${result[$t]}"; done
exit $status
