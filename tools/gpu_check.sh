#!/usr/bin/env bash
# The full GPU check in one device call (the H200): build in place against the machine's torch,
# run the CPU + GPU test tiers (GPU tests may not skip: --require-gpu), compute-sanitizer memcheck
# and racecheck over every op with a kernel, then the benchmark suites. Logs and JSON go to $OUT.
#   usage: tools/gpu_check.sh [build] [test] [sanitize] [bench] [model]   (default: all but model)
set -uo pipefail
OUT=${OUT:-/tmp/zaya_out}
mkdir -p "$OUT"
STAGES=${*:-build test sanitize bench}
export PYTHONUNBUFFERED=1 ZAYA_COMMIT=${ZAYA_COMMIT:-$(cat .commit 2>/dev/null || echo unknown)}
status=0
stage() { echo "=== $1 ($(date +%T))"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if has build; then
  stage build
  ZAYA_BACKEND=cuda MAX_JOBS=16 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  grep -E "ptxas info    : Used|spill|serialized" "$OUT/build.log" | sort | uniq -c | sort -rn | head -20
fi
if has test; then
  stage test
  python -m pytest -q -m "gpu or not gpu" --require-gpu -p no:cacheprovider --junitxml="$OUT/junit.xml" tests \
    > "$OUT/pytest.log" 2>&1 || status=1
  tail -15 "$OUT/pytest.log"
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    stage "compute-sanitizer $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 9 python tools/sanitize_ops.py > "$OUT/sanitize_$tool.log" 2>&1 \
      || status=1
    tail -3 "$OUT/sanitize_$tool.log"
  done
fi
if has bench; then
  stage bench
  python -m zaya_kernels.cli bench --suite all --out "$OUT/results" > "$OUT/bench.log" 2>&1 || status=1
  tail -40 "$OUT/bench.log"
fi
if has model; then
  stage model
  python bench/model_h200.py --out "$OUT/results/model.json" > "$OUT/model.log" 2>&1 || status=1
  tail -20 "$OUT/model.log"
fi
stage "done, status $status"
exit $status
