#!/usr/bin/env bash
# check_cuda.sh: read what the sm_90a build produced, without a GPU (DESIGN.md §5).
# Inputs: build.log (tools/install.sh tees `pip install -v` into it, so it carries nvcc's -Xptxas=-v lines)
# and the built zaya_kernels/_C*.so. Prints per kernel (from ptxas): source file, registers, shared memory,
# stack frame, spill stores/loads; and per kernel (from the SASS in the .so): HGMMA (wgmma) and HMMA (mma.sync).
# FAILS (exit 1) on:
#   * build.log without any ptxas line (the build skipped CUDA, e.g. ZAYA_BACKEND fell back to cpu);
#   * any nonzero spill store/load or stack frame;
#   * ptxas's "wgmma.mma_async instructions are serialized" warning (C7511 and kin): wgmma then runs one at a time;
#   * a csrc/cuda/*_sm90.cu that contains wgmma.mma_async while none of its kernels has HGMMA in the SASS.
# Usage: tools/check_cuda.sh [build.log] [path/to/_C.so]. Env: VENV (default .venv) for cuobjdump/nvdisasm.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-build.log}
SO=${2:-$(ls zaya_kernels/_C*.so 2>/dev/null | head -1 || true)}
VENV=${VENV:-.venv}
fail=0
problem() { echo "check_cuda: FAIL: $*"; fail=1; }

[ -f "$LOG" ] || { echo "check_cuda: FAIL: no $LOG (run tools/install.sh)"; exit 1; }
[ -n "$SO" ] && [ -f "$SO" ] || { echo "check_cuda: FAIL: no built zaya_kernels/_C*.so"; exit 1; }
if ! grep -q 'ptxas info' "$LOG"; then
  echo "check_cuda: FAIL: $LOG has no ptxas lines: no .cu was compiled (cpu backend?) or -Xptxas=-v is missing"; exit 1
fi

# cuobjdump needs nvdisasm beside it for -sass; both come from PyPI into the venv's nvidia/cu13/bin.
NVBIN=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "bin"))' 2>/dev/null || true)
export PATH=${NVBIN:+$NVBIN:}$PATH
command -v cuobjdump >/dev/null && command -v nvdisasm >/dev/null ||
  { echo "check_cuda: FAIL: cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"; exit 1; }
CXXFILT=$(command -v c++filt || command -v llvm-cxxfilt-19 || echo cat)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

# 1. ptxas lines -> one row per function: source, name, regs, smem, stack, spill stores, spill loads.
#    ninja prints "[i/n] <nvcc command ... -c <file>.cu ...>" and then that command's output, so every ptxas
#    line after it belongs to that file. Device functions that were not inlined get a row with regs "-".
awk '
  match($0, / -c [^ ]+\.cu( |$)/) { src = substr($0, RSTART + 4, RLENGTH - 4); sub(/ $/, "", src); sub(/.*\/csrc\//, "csrc/", src) }
  /ptxas info +: Compiling entry function/ { f = $0; sub(/.*entry function .\047?/, "", f); sub(/\047.*/, "", f); cur = f; file[f] = src; regs[f] = "0"; smem[f] = 0 }
  /ptxas info +: Function properties for / { f = $0; sub(/.*Function properties for /, "", f); cur = f; if (!(f in file)) { file[f] = src; regs[f] = "-"; smem[f] = 0 } }
  /bytes stack frame, .* bytes spill stores, .* bytes spill loads/ { n = split($0, w, " "); for (i = 1; i <= n; i++) {
      if (w[i+1] == "bytes" && w[i+2] == "stack") st[cur] = w[i]; if (w[i+2] == "spill" && w[i+3] ~ /^stores/) ss[cur] = w[i]
      if (w[i+2] == "spill" && w[i+3] ~ /^loads/) sl[cur] = w[i] } }
  /ptxas info +: Used [0-9]+ registers/ { n = split($0, w, " "); for (i = 1; i <= n; i++) { if (w[i+1] ~ /^registers/) regs[cur] = w[i]
      if (w[i+1] == "bytes" && w[i+2] ~ /^smem/) smem[cur] = w[i] } }
  END { for (f in file) print file[f], f, regs[f], smem[f], st[f] + 0, ss[f] + 0, sl[f] + 0 }' "$LOG" | sort > "$TMP/ptxas"

# 2. SASS of the .so -> HGMMA / HMMA count per function.
cuobjdump -sass "$SO" > "$TMP/sass"
awk '/Function : / { f = $NF } /HGMMA\./ { hg[f]++ } /HMMA\./ { hm[f]++ } /Function : / { seen[f] = 1 }
     END { for (f in seen) print f, hg[f] + 0, hm[f] + 0 }' "$TMP/sass" | sort > "$TMP/mma"

echo "check_cuda: $(wc -l < "$TMP/ptxas") functions in $LOG, $(wc -l < "$TMP/mma") kernels in $SO"
printf '%-28s %-48s %5s %7s %6s %8s %8s %6s %5s\n' file kernel regs smem_B stack spill_st spill_ld HGMMA HMMA
while read -r src f regs smem stack sst sld; do
  read -r hg hm < <(awk -v f="$f" '$1 == f { print $2, $3; found = 1 } END { if (!found) print "-", "-" }' "$TMP/mma")
  printf '%-28s %-48s %5s %7s %6s %8s %8s %6s %5s\n' "$src" "$(echo "$f" | $CXXFILT | sed -E 's/^void //; s/\(.*\)$//')" \
    "$regs" "$smem" "$stack" "$sst" "$sld" "$hg" "$hm"
  if [ "$sst" != 0 ] || [ "$sld" != 0 ] || [ "$stack" != 0 ]; then
    problem "$src: $f: $stack bytes stack frame, $sst bytes spill stores, $sld bytes spill loads"
  fi
done < "$TMP/ptxas"
echo "check_cuda: SASS totals: HGMMA (wgmma) $(grep -c 'HGMMA\.' "$TMP/sass" || true), HMMA (mma.sync) $(grep -c 'HMMA\.' "$TMP/sass" || true)"

# 3. serialised wgmma: ptxas says so (C7510-C7515, as an info or warning line) in the log. Other wgmma
#    pipeline notes (e.g. C7517 "warpgroup.wait is injected") are shown but do not fail.
grep -E '\(C75[0-9][0-9]\)' "$LOG" | grep -v 'wgmma.mma_async instructions are serialized' | sed 's/^ */  note: /' | sort -u || true
if grep -q 'wgmma.mma_async instructions are serialized' "$LOG"; then
  grep 'wgmma.mma_async instructions are serialized' "$LOG" | sed 's/^ *//' | sort -u | while read -r l; do echo "  $l"; done
  problem "ptxas serialised wgmma (lines above)"
fi

# 4. a Hopper mainloop written with wgmma must have become HGMMA.
shopt -s nullglob
for cu in csrc/cuda/*_sm90.cu; do
  grep -q 'wgmma.mma_async' "$cu" || continue
  kernels=$(awk -v s="$cu" '$1 == s { print $2 }' "$TMP/ptxas")
  if [ -z "$kernels" ]; then problem "$cu uses wgmma.mma_async but $LOG has no ptxas lines for it"; continue; fi
  n=$(awk 'NR == FNR { k[$1] = 1; next } ($1 in k) { s += $2 } END { print s + 0 }' <(echo "$kernels") "$TMP/mma")
  if [ "$n" = 0 ]; then problem "$cu uses wgmma.mma_async but none of its kernels has HGMMA in the SASS of $SO"
  else echo "check_cuda: $cu: $n HGMMA in SASS"; fi
done

if [ "$fail" != 0 ]; then echo "check_cuda: FAILED"; exit 1; fi
echo "check_cuda: ok"
