#!/usr/bin/env bash
# setup_hip_toolchain.sh: the HIP/gfx942 compiler for a GPU-less Debian 12 box (TOOLCHAIN.md §1, §5).
#   * clang-19 + lld-19 (compiler, code-object linker) and llvm-19 (llvm-dis/as, readelf, cxxfilt) from apt.
#     Debian's own hipcc is pinned to clang-15, which rejects gfx942, so it is not used.
#   * HIP 5.2.3 headers (libamdhip64-dev) and device bitcode (rocm-device-libs), unpacked with
#     `dpkg -x` into .toolchain/rocm: 5 MB, no dependencies, nothing installed system-wide.
#   * bookworm's device libs stop at gfx940; oclc_isa_version_941/942.bc are generated from the 940 one.
# Idempotent: each step is skipped when its result is already there. Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
ROCM_DIR=${ROCM_DIR:-$PWD/.toolchain/rocm}
BC=$ROCM_DIR/usr/lib/x86_64-linux-gnu/amdgcn/bitcode
T0=$SECONDS

apt_updated=0
apt_update_once() {  # a fresh image has empty apt lists; update only when something must be fetched
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
}

# 1. compilers --------------------------------------------------------------------------------------
if command -v clang-19 >/dev/null && command -v ld.lld-19 >/dev/null && command -v llvm-as-19 >/dev/null; then
  echo "setup_hip_toolchain: clang-19, lld-19, llvm-19 already installed"
else
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang-19 lld-19 llvm-19 >/dev/null
  echo "setup_hip_toolchain: installed clang-19 lld-19 llvm-19 ($((SECONDS - T0)) s)"
fi

# 2. HIP headers + device libs, unpacked without their dependencies ----------------------------------
if [ -f "$ROCM_DIR/usr/include/hip/hip_runtime.h" ] && [ -f "$BC/oclc_isa_version_940.bc" ]; then
  echo "setup_hip_toolchain: HIP headers and device libs already in $ROCM_DIR"
else
  apt_update_once
  mkdir -p "$ROCM_DIR"
  tmp=$(mktemp -d)
  # As root, apt would drop to the _apt user, which cannot write into a private mktemp dir.
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root libamdhip64-dev rocm-device-libs)
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$ROCM_DIR"; done
  rm -rf "$tmp"
  echo "setup_hip_toolchain: unpacked libamdhip64-dev + rocm-device-libs into $ROCM_DIR"
fi

# 3. gfx941/942 ISA-version bitcode: the 940 module with its version constant changed ----------------
for a in 941:9401 942:9402; do
  out=$BC/oclc_isa_version_${a%%:*}.bc
  [ -f "$out" ] && continue
  llvm-dis-19 "$BC/oclc_isa_version_940.bc" -o - | sed "s/i32 9400/i32 ${a#*:}/" | llvm-as-19 -o "$out.tmp"
  mv "$out.tmp" "$out"  # never leave a half-written .bc that step 3 would then skip
  echo "setup_hip_toolchain: generated $(basename "$out")"
done

echo "setup_hip_toolchain: ok ($(clang-19 --version | head -1); $((SECONDS - T0)) s)"
