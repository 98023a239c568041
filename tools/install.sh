#!/usr/bin/env bash
# install.sh: from a fresh Debian 12 machine with python3.11 to an editable, built zaya_kernels in .venv.
#   1. .venv in the repo root (created only if absent);
#   2. torch 2.14.1 (+cu130) and the tools, plus nvcc 13.0 from PyPI (cuda-toolkit 13.0.3.0 is what torch 2.14.1
#      itself depends on, so nvcc matches torch's CUDA and the image's nvcc wrapper is never involved);
#   3. CUDA_HOME = the venv's nvidia/cu13 (it also has cusparse.h/cublas headers that ATen's CUDAContext.h needs);
#   4. `pip install -e .` with ZAYA_BACKEND (default auto), sm_90a, the whole build output in ./build.log.
# Idempotent: rerunning reuses .venv, pip skips what is installed, and the extension is rebuilt.
# Env: ZAYA_BACKEND (auto|cuda|rocm|cpu), PYTHON (the interpreter for a new venv), MAX_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
stage() { echo "install: $1: $((SECONDS - T)) s"; }

# 0. system prerequisites a bare image may lack: a C++ compiler, venv/ensurepip, Python headers. ---------
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
T=$SECONDS
need_apt=()
command -v c++ >/dev/null || need_apt+=(g++)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
fi
# torch_bindings.cpp includes <Python.h>: Debian's python3.11 ships it in python3.11-dev only.
[ -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] ||
  need_apt+=("python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev")
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  stage "apt-get install ${need_apt[*]}"
fi

# 1. the venv ---------------------------------------------------------------------------------------------
T=$SECONDS
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  stage "created .venv with $("$PYTHON" --version)"
else
  echo "install: reusing .venv ($(.venv/bin/python --version))"
fi
PY=$PWD/.venv/bin/python
export PATH=$PWD/.venv/bin:$PATH  # torch's builder runs `ninja` from PATH

# 2. dependencies (pip's config caps torch<=2.14.1; that wheel comes from the local disk) ------------------
T=$SECONDS
"$PY" -m pip install -q --progress-bar off "setuptools>=64" wheel \
  torch==2.14.1 ninja pytest pytest-benchmark numpy safetensors typer rich tqdm matplotlib transformers==5.23.0 \
  "cuda-toolkit[nvcc,crt,cccl,cudart]==13.0.3.0" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
stage "pip dependencies, torch $("$PY" -c 'import torch; print(torch.__version__)')"

# 3. CUDA_HOME: the pip toolkit; its wheels ship only libcudart.so.13, and the link step needs -lcudart ----
CUDA_HOME=$("$PY" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
export CUDA_HOME
ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
echo "install: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*'))"

# 4. build + editable install. -v: without it pip swallows the compiler output, and build.log must carry
#    the ptxas lines (registers, spills, C7511) that tools/check_cuda.sh reads. -------------------------------
T=$SECONDS
if ! ZAYA_BACKEND=${ZAYA_BACKEND:-auto} TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=${MAX_JOBS:-2} \
     "$PY" -m pip install --no-build-isolation -v -e . 2>&1 | tee build.log; then  # pipefail: pip's status
  echo "install: FAIL: the build failed; see build.log" >&2; exit 1
fi
stage "built zaya_kernels ($(grep -o 'building the [a-z]* backend' build.log | head -1)), log in build.log"
echo "install: $(grep -c 'ptxas info    : Used' build.log || true) ptxas resource lines in build.log"
echo "install: done in $((SECONDS - T0)) s"
