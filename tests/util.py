# SPDX-License-Identifier: Apache-2.0
"""Shared test helpers: the tolerance rule, poisoning, tie-free inputs (DESIGN.md §6)."""
from __future__ import annotations

import torch

# The kernel may be at most this many times as wrong as the same reference computed in bf16
# (flash-attention's rule), plus a floor for outputs whose bf16 error happens to be ~0.
ERROR_FACTOR = 2.0


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_2x(out: torch.Tensor, ref: torch.Tensor, ref_lowp: torch.Tensor, floor: float, what: str) -> None:
    """max|out - ref| <= 2 * max|ref_lowp - ref| + floor, ref in fp32/fp64, ref_lowp = same math in bf16."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out.float()).all() or not torch.isfinite(ref.float()).all(), f"{what}: non-finite output"
    err = max_abs(out.cpu(), ref.cpu())
    budget = ERROR_FACTOR * max_abs(ref_lowp.cpu(), ref.cpu()) + floor
    assert err <= budget, f"{what}: max error {err:.3e} > budget {budget:.3e} (2x bf16 reference error + {floor:g})"


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's global similarity: 1 - 2<x,y>/(|x|^2+|y|^2) in float64; ~0 when equal, catches layout bugs."""
    x, y = x.double().flatten().cpu(), y.double().flatten().cpu()
    denom = (x * x + y * y).sum()
    return 0.0 if denom == 0 else float(1 - 2 * (x * y).sum() / denom)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with a value no kernel writes: NaN for floats, a sentinel for ints."""
    return t.fill_(float("nan") if t.is_floating_point() else -7777)


def tie_free_logits(tokens: int, columns: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Rows of distinct logits: a random permutation of a grid of bf16-exact values (step 1/32 or 1/8,
    range <= 8), plus, in fp32, noise of at most a quarter step. No two logits of a row are equal in
    either dtype, so every ranking is strict."""
    step = 1.0 / 32 if columns > 64 else 1.0 / 8
    grid = (torch.arange(columns, dtype=torch.float32) - columns // 2) * step
    perm = torch.argsort(torch.rand(tokens, columns, generator=gen), dim=1)
    logits = grid[perm]
    if dtype == torch.float32:
        logits = logits + (torch.rand(tokens, columns, generator=gen) - 0.5) * (step / 2)
    return logits.to(dtype)
