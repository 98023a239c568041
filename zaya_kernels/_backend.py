# SPDX-License-Identifier: Apache-2.0
"""What was built (cuda / rocm / cpu), for which arch, and what the current machine offers.

The benchmark ceilings are measured in every run (bench/harness.py), never taken from a table."""
from __future__ import annotations

import importlib

import torch


def build_config():
    """The module setup.py wrote at build time, or None when the extension was never built."""
    try:
        return importlib.import_module("zaya_kernels._build_config")
    except ImportError:
        return None


def compiled_backend() -> str | None:
    """'cuda', 'rocm' or 'cpu' as built, or None if zaya_kernels._C is not built."""
    cfg = build_config()
    return cfg.BACKEND if cfg is not None and extension_loaded() else None


def extension_loaded() -> bool:
    return hasattr(torch.ops, "zaya") and hasattr(torch.ops.zaya, "topk_gating")


def has_device_kernel(op: str) -> bool:
    """True when zaya::<op> has a compiled GPU kernel (not ops.py's NotImplemented placeholder)."""
    from . import ops

    return extension_loaded() and op not in ops.DEVICE_PLACEHOLDERS


def gpu_arch() -> str | None:
    """'sm_90' style name of the visible GPU, the gfx name on ROCm, None without a GPU."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    if torch.version.hip:
        return getattr(props, "gcnArchName", "gfx?").split(":")[0]
    return f"sm_{props.major}{props.minor}"
