#!/usr/bin/env bash
# The one command for the GPU machine (no network, nothing installed): info, the GPU tests, the benchmark.
#
#   bash bench/gpu_run.sh [--no-tests] [extra flags for `python -m cupyfused bench` ...]
#
# Writes under $OUT (default ./out): info.log, pytest_gpu.log, bench.log and h100.json (the JSON that is
# committed as bench/results/h100.json). Build caches go to <repo>/.cache/{torch_extensions,cupy}. The last
# lines printed are the pytest summary line and the bench table. Exit status: non-zero if the tests or the
# benchmark failed (both run regardless).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TORCH_EXTENSIONS_DIR="$REPO/.cache/torch_extensions"
export CUPY_CACHE_DIR="$REPO/.cache/cupy"
export PYTHONUNBUFFERED=1
export CUPYFUSED_REQUIRE_GPU=1  # on the GPU machine a skipped GPU test is a failure
JSON_NAME=${BENCH_JSON_NAME:-h100.json}

run_tests=1
if [ "${1:-}" = "--no-tests" ]; then
  run_tests=0
  shift
fi

echo "==== cupyfused info"
"$PY" -m cupyfused info 2>&1 | tee "$OUT/info.log"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee -a "$OUT/info.log"

test_rc=skipped
if [ "$run_tests" = 1 ]; then
  echo "==== pytest -m gpu"
  t0=$SECONDS
  "$PY" -m pytest tests -m gpu -rs -q 2>&1 | tee "$OUT/pytest_gpu.log"
  test_rc=${PIPESTATUS[0]}
  echo "[gpu_run] pytest exit $test_rc after $((SECONDS - t0)) s"
fi

echo "==== cupyfused bench"
t0=$SECONDS
"$PY" -m cupyfused bench --json "$OUT/$JSON_NAME" "$@" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "[gpu_run] bench exit $bench_rc after $((SECONDS - t0)) s"

echo
echo "==== summary"
if [ "$run_tests" = 1 ]; then
  summary=$(grep -E '(^|= )[0-9]+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)|no tests ran' \
    "$OUT/pytest_gpu.log" | tail -n 1)
  echo "pytest -m gpu (exit $test_rc): ${summary:-no summary line found}"
else
  echo "pytest -m gpu: not run (--no-tests)"
fi
echo "bench (exit $bench_rc):"
sed -n '/^== cupyfused bench:/,$p' "$OUT/bench.log"

rc=0
[ "$test_rc" = skipped ] || [ "$test_rc" = 0 ] || rc=1
[ "$bench_rc" = 0 ] || rc=1
exit $rc
