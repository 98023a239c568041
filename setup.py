# SPDX-License-Identifier: Apache-2.0
"""Build of zaya_kernels._C for one backend: ZAYA_BACKEND=auto|cuda|rocm|cpu (DESIGN.md §4).

auto: ROCm torch -> rocm; CUDA torch with a CUDA toolkit -> cuda; else cpu. The choice never looks
at a visible GPU, so wheels build on GPU-less machines. Exactly one of csrc/cuda and csrc/hip is
compiled; the cpu backend compiles only the schemas (the reference kernels register from Python).
"""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("auto", "cuda", "rocm", "cpu")


def choose_backend() -> str:
    want = os.environ.get("ZAYA_BACKEND", "auto").lower()
    if want not in BACKENDS:
        raise SystemExit(f"ZAYA_BACKEND must be one of {BACKENDS}, got {want!r}")
    if want != "auto":
        return want
    if torch.version.hip:
        return "rocm"
    if torch.version.cuda and CUDA_HOME:
        return "cuda"
    return "cpu"


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def rocm_source_copy() -> str:
    """torch's hipify rewrites sources next to themselves and maps 'cuda' in paths to 'hip': build
    from a throwaway copy of csrc/ without csrc/cuda/ so the source tree is never touched."""
    dst = os.path.join(ROOT, "build", "rocm_src")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "csrc"), dst, ignore=shutil.ignore_patterns("cuda"))
    return dst


def make_extension(backend: str):
    debug = os.environ.get("DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    # py_limited_api: torch defines Py_LIMITED_API itself; the .so then loads on any Python >= 3.10.
    common = dict(name="zaya_kernels._C", py_limited_api=True)
    if backend == "cpu":
        return CppExtension(sources=["csrc/torch_bindings.cpp"], extra_compile_args={"cxx": cxx}, **common)
    if backend == "cuda":
        if not (torch.version.cuda and CUDA_HOME):
            raise SystemExit("ZAYA_BACKEND=cuda needs a CUDA build of torch and a CUDA toolkit (set CUDA_HOME)")
        sources = ["csrc/torch_bindings.cpp"] + rel(glob.glob(f"{ROOT}/csrc/ops/*.cpp")) + rel(glob.glob(f"{ROOT}/csrc/cuda/*.cu"))
        nvcc = [
            "-gencode=arch=compute_90a,code=sm_90a",  # wgmma / setmaxnreg need the 'a' target
            "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ] + (["-O0", "-g", "-G"] if debug else ["-O3", "-DNDEBUG"])
        if os.environ.get("ZAYA_NVCC_THREADS"):
            nvcc.append(f"--threads={os.environ['ZAYA_NVCC_THREADS']}")
        return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    if backend == "rocm":
        src = rocm_source_copy()
        sources = ([os.path.relpath(os.path.join(src, "torch_bindings.cpp"), ROOT)]
                   + rel(glob.glob(f"{src}/ops/*.cpp")) + rel(glob.glob(f"{src}/hip/*.hip")))
        hipcc = ["--offload-arch=gfx942", "-std=c++17"] + (["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"])
        return CUDAExtension(sources=sources, include_dirs=[src],
                             extra_compile_args={"cxx": cxx, "nvcc": hipcc}, **common)
    raise AssertionError(backend)


def write_build_config(backend: str, ext) -> None:
    arch = {"cuda": "sm_90a", "rocm": "gfx942", "cpu": None}[backend]
    flags = ext.extra_compile_args.get("nvcc", ext.extra_compile_args.get("cxx"))
    with open(os.path.join(ROOT, "zaya_kernels", "_build_config.py"), "w") as f:
        f.write("# Written by setup.py at build time; describes the compiled zaya_kernels._C.\n")
        f.write(f"BACKEND = {backend!r}\nARCH = {arch!r}\nTORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"DEVICE_FLAGS = {flags!r}\n")


backend = choose_backend()
extension = make_extension(backend)
write_build_config(backend, extension)
print(f"zaya_kernels: building the {backend} backend")

setup(
    packages=find_packages(include=["zaya_kernels", "zaya_kernels.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
