#!/usr/bin/env bash
# compile_hip.sh: compile every csrc/hip/*.hip for MI300X (gfx942) with Debian's clang-19, device code
# only, and read the result. No MI300X is reachable, so this is how HIP kernels are verified (DESIGN.md §5).
# Per file it writes build/hip/<name>.s (asm + kernel metadata), <name>.co (linked code object: proves the
# device libs resolve) and <name>.remarks (-Rpass-analysis=kernel-resource-usage), then prints one line
# per kernel: VGPR / AGPR / SGPR / LDS (group segment) / scratch (private segment) / occupancy.
# It FAILS (exit 1) on: a compile error, any VGPR or SGPR spill, scratch > 0 or a dynamic stack,
# LDS > 64 KiB in one kernel, a file that calls __builtin_amdgcn_mfma* but whose asm has no v_mfma,
# and on no .hip file at all. Run tools/setup_hip_toolchain.sh first.
# Caveat: upstream LLVM 19, not AMD's fork: register numbers are indicative (TOOLCHAIN.md §1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
ROCM=${ROCM:-$PWD/.toolchain/rocm/usr}
DEVLIBS=$ROCM/lib/x86_64-linux-gnu/amdgcn/bitcode
OUT=${OUT:-build/hip}
LDS_LIMIT=65536  # bytes of LDS one workgroup can have on CDNA3
# -mcode-object-version=5: without it clang-19 links the 5.2-era ABI bitcode while emitting COV5.
FLAGS=(-x hip --offload-arch=gfx942 --cuda-device-only -mcode-object-version=5 -O3 -std=c++17
       --rocm-path="$ROCM" --rocm-device-lib-path="$DEVLIBS" -I csrc)

[ -f "$DEVLIBS/oclc_isa_version_942.bc" ] || { echo "compile_hip: FAIL: no gfx942 device libs in $DEVLIBS; run tools/setup_hip_toolchain.sh" >&2; exit 1; }
CXXFILT=$(command -v llvm-cxxfilt-19 || command -v c++filt || echo cat)
mkdir -p "$OUT"
shopt -s nullglob
files=(csrc/hip/*.hip)
if [ ${#files[@]} -eq 0 ]; then echo "compile_hip: FAIL: no csrc/hip/*.hip file to compile" >&2; exit 1; fi

fail=0
problem() { echo "compile_hip: FAIL: $*"; fail=1; }
for f in "${files[@]}"; do
  b=$OUT/$(basename "${f%.hip}")
  echo "== $f"
  if ! clang-19 "${FLAGS[@]}" -Rpass-analysis=kernel-resource-usage -S "$f" -o "$b.s" 2> "$b.remarks"; then
    grep -v 'remark:' "$b.remarks" | grep -vE '^ +[0-9]* \|' | head -30
    problem "$f does not compile for gfx942 (full log: $b.remarks)"; continue
  fi
  if ! clang-19 "${FLAGS[@]}" --no-gpu-bundle-output -c "$f" -o "$b.co" 2> "$b.link.log"; then
    head -30 "$b.link.log"; problem "$f does not link into a gfx942 code object (log: $b.link.log)"; continue
  fi
  grep -E 'warning:' "$b.remarks" | head -20 || true

  # Occupancy exists only in the remarks: name -> waves/SIMD.
  awk '/remark: Function Name:/ {n=$0; sub(/.*Function Name: /,"",n); sub(/ \[-Rpass.*/,"",n)}
       /remark: +Occupancy \[waves\/SIMD\]:/ {o=$0; sub(/.*: /,"",o); sub(/ \[-Rpass.*/,"",o); print n, o}' \
      "$b.remarks" > "$b.occupancy"
  # One record per kernel from the .amdgpu_metadata YAML; a record starts at "  - .<key>".
  awk -v occf="$b.occupancy" -v lim="$LDS_LIMIT" '
    BEGIN { while ((getline l < occf) > 0) { split(l, a, " "); occ[a[1]] = a[2] } }
    function flush() { if (k["name"] != "") print k["name"], k["vgpr_count"], k["agpr_count"], k["sgpr_count"],
        k["vgpr_spill_count"], k["sgpr_spill_count"], k["group_segment_fixed_size"], k["private_segment_fixed_size"],
        k["uses_dynamic_stack"], (k["name"] in occ ? occ[k["name"]] : "?"); delete k }
    /^amdhsa.kernels:/ { inside = 1; next }
    inside && /^[^ ]/ { flush(); inside = 0 }
    inside && /^  - \./ { flush() }
    inside && /^(  - |    )\.[a-z_]+: +[^ ]/ { key = $0; sub(/^ +(- )?\./, "", key); val = key
      sub(/:.*/, "", key); sub(/^[^:]*: +/, "", val); k[key] = val }
    END { if (inside) flush() }' "$b.s" > "$b.kernels"
  if [ ! -s "$b.kernels" ]; then echo "   (no kernels in this file)"; fi
  while read -r name vgpr agpr sgpr vspill sspill lds scratch dyn occ; do
    printf '   %-48s VGPR %3s AGPR %3s SGPR %3s LDS %6s B scratch %4s B occupancy %s waves/SIMD\n' \
      "$(echo "$name" | $CXXFILT | sed -E 's/^void //; s/\(.*\)$//')" "$vgpr" "$agpr" "$sgpr" "$lds" "$scratch" "$occ"
    [ "$vspill" = 0 ] && [ "$sspill" = 0 ] || problem "$f: kernel $name spills (VGPR spill $vspill, SGPR spill $sspill)"
    [ "$scratch" = 0 ] || problem "$f: kernel $name uses $scratch bytes of scratch per lane"
    [ "$dyn" != true ] || problem "$f: kernel $name has a dynamic stack (recursion or an indirect call)"
    [ "$lds" -le "$LDS_LIMIT" ] || problem "$f: kernel $name needs $lds bytes of LDS > $LDS_LIMIT"
  done < "$b.kernels"
  # Non-kernel functions that were not inlined are only in the remarks: catch their spills too.
  awk '/remark: Function Name:/ {n=$0; sub(/.*Function Name: /,"",n); sub(/ \[-Rpass.*/,"",n)}
       /remark: +(VGPRs|SGPRs) Spill: [1-9]/ {s=$0; sub(/.*remark: +/,"",s); sub(/ \[-Rpass.*/,"",s); print n, s}' \
      "$b.remarks" | sort -u | while read -r line; do echo "   remark: $line"; done | tee "$b.spills"
  [ ! -s "$b.spills" ] || problem "$f: the resource-usage remarks report spills (see above)"

  nmfma=$(grep -c 'v_mfma' "$b.s" || true)
  echo "   v_mfma instructions in asm: $nmfma"
  if grep -q '__builtin_amdgcn_mfma' "$f" && [ "$nmfma" = 0 ]; then
    problem "$f calls __builtin_amdgcn_mfma* but its gfx942 asm has no v_mfma instruction"
  fi
done

if [ "$fail" != 0 ]; then echo "compile_hip: FAILED (outputs in $OUT/)"; exit 1; fi
echo "compile_hip: ok, ${#files[@]} file(s) for gfx942 (outputs in $OUT/)"
