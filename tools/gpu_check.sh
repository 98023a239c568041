#!/usr/bin/env bash
# The full GPU check in one device call (the H200): build in place against the machine's torch,
# the CPU + GPU test tiers (GPU tests may not skip: --require-gpu), the benchmark suites, the 8B
# model run, then compute-sanitizer memcheck and racecheck over every op with a kernel.
# Everything printed goes to $OUT/log.txt; results to $OUT/h200/ (the device tool returns at most
# 8 files, so plots and tables are left out: `python -m bench.report X.json` redraws them).
#   usage: tools/gpu_check.sh [build] [test] [bench:SUITE,...] [model] [sanitize]
#   e.g.   ZAYA_COMMIT=<full sha> tools/gpu_check.sh build test bench:topk,route model sanitize
#   BENCH_ARGS is passed to every bench suite, e.g. BENCH_ARGS="--no-compile" or "--compile-budget 120"
# Name the commit: the results record it, and the GPU machine's copy of .git can be stale.
set -uo pipefail
OUT=${OUT:-/tmp/zaya_out}
mkdir -p "$OUT/h200"
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1
status=0
stage() { echo "=== $1 ($(date +%T))" | tee -a "$LOG"; }
run() { "$@" >> "$LOG" 2>&1 || { echo "FAILED ($?): $*" | tee -a "$LOG"; status=1; }; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee -a "$LOG"
[ $# -gt 0 ] || set -- build test
for arg in "$@"; do
  case $arg in
    build)
      stage build
      ZAYA_BACKEND=cuda MAX_JOBS=16 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      grep -E "ptxas info    : Used|spill|serialized" "$OUT/build.log" | sort | uniq -c | sort -rn >> "$LOG"
      rm "$OUT/build.log" ;;
    test)
      stage test
      run python -m pytest -q -m "gpu or not gpu" --require-gpu -p no:cacheprovider tests
      grep -E "passed|failed" "$LOG" | tail -1 ;;
    bench:*)
      IFS=, read -ra suites <<< "${arg#bench:}"
      for suite in "${suites[@]}"; do
        stage "bench $suite"
        run python -m zaya_kernels.cli bench --suite "$suite" --out "$OUT/h200" ${BENCH_ARGS:-}
      done
      rm -f "$OUT"/h200/*.png "$OUT"/h200/*.md ;;  # JSON only (the file limit); bench.report redraws both
    model)
      stage model
      run python bench/model_h200.py --out "$OUT/h200/model_reference.json" ;;
    sanitize)
      for tool in memcheck racecheck; do
        stage "compute-sanitizer $tool"
        run timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 python tools/sanitize_ops.py
        tail -2 "$LOG"
      done ;;
    *) echo "unknown stage $arg"; exit 2 ;;
  esac
done
stage "done, status $status"
exit $status
