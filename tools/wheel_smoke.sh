#!/usr/bin/env bash
# wheel_smoke.sh: build the CPU wheel of zaya_kernels and smoke-test it in a fresh venv (CI stage, issue 16).
#   1. copy the tracked + untracked-unignored files to a temp dir (setup.py writes zaya_kernels/_build_config.py
#      and build/ next to the sources: the checkout is never touched);
#   2. `pip wheel . --no-build-isolation --no-deps` with ZAYA_BACKEND=cpu against .venv's torch;
#   3. check the wheel carries _C.abi3.so and _build_config.py with TORCH_VERSION = .venv's torch;
#   4. a fresh venv (no system site-packages) that sees .venv's site-packages through a plain .pth path line
#      (torch without a 2 GB reinstall; a path line does not run .venv's .pth hooks, so the editable checkout
#      stays invisible), the wheel installed into it, then from a neutral directory: the package comes from
#      the wheel, an op runs on the CPU (moe_align: exact offsets), a torch release mismatch fails at import
#      naming both versions.
# Env: PY (default .venv/bin/python), MAX_JOBS (default 2), KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
T0=$SECONDS
TMP=$(mktemp -d /tmp/zaya_wheel.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT

git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$TMP" 2>/dev/null || true
mkdir -p "$TMP/src"
(cd "$TMP" && find . -mindepth 1 -maxdepth 1 ! -name src -exec mv -t src {} +)
echo "wheel_smoke: sources copied to $TMP/src: $((SECONDS - T0)) s"

(cd "$TMP/src" && ZAYA_BACKEND=cpu MAX_JOBS=${MAX_JOBS:-2} PATH="$(dirname "$PY"):$PATH" \
   "$PY" -m pip wheel . --no-build-isolation --no-deps -q -w "$TMP/dist" > "$TMP/wheel.log" 2>&1) ||
  { tail -40 "$TMP/wheel.log"; echo "wheel_smoke: FAIL: pip wheel failed" >&2; exit 1; }
WHEEL=$(ls "$TMP"/dist/zaya_kernels-*.whl)
echo "wheel_smoke: built $(basename "$WHEEL"): $((SECONDS - T0)) s"

TORCH=$("$PY" -c 'import torch; print(torch.__version__)')
"$PY" - "$WHEEL" "$TORCH" <<'PYEOF'
import sys, zipfile
wheel, torch_version = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
assert "zaya_kernels/_C.abi3.so" in names, f"no compiled extension in the wheel: {names}"
assert "zaya_kernels/integrations/transformers.py" in names, "the integrations package is missing"
config = zipfile.ZipFile(wheel).read("zaya_kernels/_build_config.py").decode()
assert f"TORCH_VERSION = {torch_version!r}" in config and "BACKEND = 'cpu'" in config, config
print(f"wheel_smoke: the wheel carries _C.abi3.so and records torch {torch_version}")
PYEOF

BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
"$BASE" -m venv --without-pip "$TMP/venv"
SITE=$("$TMP/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/zaya_smoke_torch.pth"
"$PY" -m pip --python "$TMP/venv/bin/python" install -q --no-deps "$WHEEL" 2>/dev/null ||
  "$PY" -m pip install -q --no-deps --target "$SITE" "$WHEEL"
echo "wheel_smoke: installed into a fresh venv: $((SECONDS - T0)) s"

cd "$TMP"
"$TMP/venv/bin/python" - "$SITE" <<'PYEOF'
import sys
import torch
import zaya_kernels
site = sys.argv[1]
assert zaya_kernels.__file__.startswith(site), f"zaya_kernels came from {zaya_kernels.__file__}, not the wheel"
assert zaya_kernels.compiled_backend() == "cpu", zaya_kernels.compiled_backend()
ids = torch.tensor([[2], [0], [2], [1], [3]], dtype=torch.int32)
sorted_ids, block_ids, offsets, padded = zaya_kernels.moe_align(ids, 3, 4)
assert offsets.tolist() == [0, 4, 8, 12], offsets.tolist()   # expert 0: 1 pair, 1: 1, 2: 2 (+ skip id 3: none)
assert padded.tolist() == [12] and sorted_ids[8:10].tolist() == [0, 2], (padded, sorted_ids)
print(f"wheel_smoke: import from the wheel and moe_align on the CPU: ok (torch {torch.__version__})")
PYEOF
if out=$("$TMP/venv/bin/python" -c 'import torch; torch.__version__ = "2.99.0+cpu"; import zaya_kernels' 2>&1); then
  echo "wheel_smoke: FAIL: zaya_kernels imported under a mismatched torch" >&2; exit 1
fi
grep -q "built against torch $TORCH, but torch 2.99.0+cpu is installed" <<< "$out" ||
  { echo "$out" | tail -5; echo "wheel_smoke: FAIL: the mismatch error does not name both versions" >&2; exit 1; }
echo "wheel_smoke: a mismatched torch fails at import naming both versions: ok"
echo "wheel_smoke: done in $((SECONDS - T0)) s"
