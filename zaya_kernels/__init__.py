# SPDX-License-Identifier: Apache-2.0
"""zaya_kernels: CUDA (sm_90a) and HIP (gfx942) kernels for ZAYA1-8B, exposed as torch.ops.zaya.*.

Importing the package loads the compiled extension when it was built (registering the op schemas
and device kernels), then registers the fake and CPU reference kernels from ops.py. Without a built
extension, `zaya_kernels.reference` and the model's reference backend still work.
"""
import importlib as _importlib

from . import reference
from ._backend import build_config, compiled_backend, extension_loaded, has_device_kernel


def _check_torch(built: str | None, running: str) -> None:
    """_C links against torch's C++ API, which has no stable ABI between releases: it loads only under the torch
    release it was built with (major.minor.patch equal; the local tag, e.g. +cu130, is not compared)."""
    if built is not None and built.split("+")[0] != running.split("+")[0]:
        raise ImportError(f"zaya_kernels was built against torch {built}, but torch {running} is installed: install "
                          f"torch=={built.split('+')[0]} or rebuild zaya_kernels against this torch")


_check_torch(getattr(build_config(), "TORCH_VERSION", None), _importlib.import_module("torch").__version__)

try:
    # import_module, not `from . import _C`: when the module is absent, the latter reports a "partially
    # initialized module ... (most likely due to a circular import)", which sends users the wrong way.
    _C = _importlib.import_module(f"{__name__}._C")  # registers torch.ops.zaya.*
except ImportError as _err:  # the reference path still works without it
    _C = None
    if isinstance(_err, ModuleNotFoundError) and _err.name == f"{__name__}._C":
        BUILD_ERROR = "the compiled extension zaya_kernels._C is not built: run tools/install.sh"
    else:  # built, but does not load (e.g. against another torch)
        BUILD_ERROR = f"the compiled extension zaya_kernels._C failed to load ({_err}): rebuild it with " \
                      "tools/install.sh"
else:
    BUILD_ERROR = None

from . import ops  # noqa: E402

if _C is not None:
    ops.register_all()
    from .ops import (attention_decode, attention_prefill, cca_prep, grouped_gemm, moe_align, moe_mlp,  # noqa: E402
                      route_workspace, topk_gating, zaya_route, zaya_router)

__all__ = ["reference", "ops", "compiled_backend", "extension_loaded", "has_device_kernel", "topk_gating",
           "zaya_router", "moe_align", "zaya_route", "route_workspace", "grouped_gemm", "moe_mlp", "cca_prep",
           "attention_prefill", "attention_decode"]
__version__ = "0.1.0"
