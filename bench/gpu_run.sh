#!/usr/bin/env bash
# The one command for the GPU machine (no network, nothing installed): info, the GPU tests, the benchmark and
# an ncu count of the fused kernel's DRAM bytes.
#
#   bash bench/gpu_run.sh [--tests-only | --no-tests] [--sweep] [extra flags for `python -m cupyfused bench` ...]
#
#   --tests-only  info and the GPU tests only
#   --no-tests    skip the tests
#   --sweep       benchmark the default problem, the batch sweep and the second shape set (bench --sweep,
#                 torch.compile in default mode to keep the run short) instead of the default problem alone
#
# Writes under $OUT (default ./out): info.log, pytest_gpu.log, bench.log, the bench JSON (h100.json, or
# h100_sweep.json with --sweep; BENCH_JSON_NAME overrides) and ncu_dram.txt. Build caches go to
# <repo>/.cache/{torch_extensions,cupy}. Exit status: non-zero if the tests or the benchmark failed.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="$REPO/.cache/torch_extensions"
export CUPY_CACHE_DIR="$REPO/.cache/cupy"
export PYTHONUNBUFFERED=1
export CUPYFUSED_REQUIRE_GPU=1  # on the GPU machine a skipped GPU test is a failure

run_tests=1 run_bench=1 sweep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tests-only) run_bench=0 ;;
    --no-tests) run_tests=0 ;;
    --sweep) sweep=1 ;;
    *) break ;;
  esac
  shift
done
if [ "$sweep" = 1 ]; then
  JSON_NAME=${BENCH_JSON_NAME:-h100_sweep.json}
  set -- --sweep --compile-mode default "$@"
else
  JSON_NAME=${BENCH_JSON_NAME:-h100.json}
fi

echo "==== cupyfused info"
"$PY" -m cupyfused info 2>&1 | tee "$OUT/info.log"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee -a "$OUT/info.log"

test_rc=skipped
if [ "$run_tests" = 1 ]; then
  echo "==== pytest -m gpu"
  t0=$SECONDS
  "$PY" -m pytest tests -m gpu -rsfE -q 2>&1 | tee "$OUT/pytest_gpu.log"
  test_rc=${PIPESTATUS[0]}
  echo "[gpu_run] pytest exit $test_rc after $((SECONDS - t0)) s"
fi

bench_rc=skipped
if [ "$run_bench" = 1 ]; then
  echo "==== cupyfused bench"
  t0=$SECONDS
  "$PY" -m cupyfused bench --json "$OUT/$JSON_NAME" "$@" 2>&1 | tee "$OUT/bench.log"
  bench_rc=${PIPESTATUS[0]}
  echo "[gpu_run] bench exit $bench_rc after $((SECONDS - t0)) s"
  if [ "$sweep" = 0 ] && command -v ncu >/dev/null 2>&1; then
    echo "==== ncu: DRAM bytes of one cf_fused_mma launch (default problem, cupy backend)"
    ncu --kernel-name cf_fused_mma --launch-skip 1 --launch-count 1 \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
      "$PY" bench/ncu_forward.py cupy >"$OUT/ncu_dram.txt" 2>&1
    grep -E "dram__|duration|inst_executed|hmma" "$OUT/ncu_dram.txt"
  fi
fi

echo
echo "==== summary"
if [ "$run_tests" = 1 ]; then
  summary=$(grep -E '(^|= )[0-9]+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)|no tests ran' \
    "$OUT/pytest_gpu.log" | tail -n 1)
  echo "pytest -m gpu (exit $test_rc): ${summary:-no summary line found}"
  grep -E "^(FAILED|ERROR) " "$OUT/pytest_gpu.log" || true
else
  echo "pytest -m gpu: not run"
fi
if [ "$run_bench" = 1 ]; then
  echo "bench (exit $bench_rc):"
  sed -n '/^== cupyfused bench:/,$p' "$OUT/bench.log"
fi

rc=0
[ "$test_rc" = skipped ] || [ "$test_rc" = 0 ] || rc=1
[ "$bench_rc" = skipped ] || [ "$bench_rc" = 0 ] || rc=1
exit $rc
