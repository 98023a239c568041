# SPDX-License-Identifier: Apache-2.0
"""zaya_kernels: CUDA (sm_90a) and HIP (gfx942) kernels for ZAYA1-8B, exposed as torch.ops.zaya.*.

Importing the package loads the compiled extension when it was built (registering the op schemas
and device kernels), then registers the fake and CPU reference kernels from ops.py. Without a built
extension, `zaya_kernels.reference` and the model's reference backend still work.
"""
from . import reference
from ._backend import compiled_backend, extension_loaded, has_device_kernel

try:
    from . import _C  # noqa: F401  (registers torch.ops.zaya.*)
except ImportError as _err:  # not built: the reference path still works
    _C = None
    BUILD_ERROR = f"zaya_kernels._C is not built or failed to load ({_err}); run tools/install.sh" 
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
