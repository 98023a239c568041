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


# ---------------------------------------------------------------------------------------------
# zaya_router inputs on any device (the generator's): the CPU and GPU routing tests share them
# ---------------------------------------------------------------------------------------------

# Tie-free: best minus second biased score of the fp32 reference, per token. Why 1e-3 is enough only
# at fan-in scaled weights: the kernel's fp32 sums run in another order than the reference's, so an
# element of n (rounded to bf16) can land on the other side of a rounding boundary, and that one-ulp
# step cascades through the bf16 roundings of h1 and h2. Measured on the H200 with out_w 4x the fan-in
# scale: 1 token of 65536 chose differently at a reference gap of 1.73e-3 (logits 4x larger, so the
# cascade moves the scores 4x more); at fan-in scale (router_weights, bench/baselines.py) the estimate
# is ~3e-4.
ROUTER_TIE_MARGIN = 1e-3

def router_weights(gen: torch.Generator, routes: int = 17, bias_scale: float = 0.01, hidden: int = 2048,
                   width: int = 256) -> dict:
    """Random ZAYA1-shaped router parameters on gen's device: bf16, fan-in scaled so activations stay
    O(1); balancing_bias [E'] fp32. down_w [R, H], out_w [E', R]."""
    device = gen.device

    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    return dict(down_w=rand(width, hidden, scale=hidden ** -0.5), down_b=rand(width, scale=0.1),
                eda_scale=rand(width, scale=0.5), norm_w=(1 + rand(width, scale=0.1, dtype=torch.float32)).bfloat16(),
                fc1_w=rand(width, width, scale=width ** -0.5), fc1_b=rand(width, scale=0.1),
                fc2_w=rand(width, width, scale=width ** -0.5), fc2_b=rand(width, scale=0.1),
                out_w=rand(routes, width, scale=width ** -0.5),
                balancing_bias=rand(routes, scale=bias_scale, dtype=torch.float32))


def router_args(x, r_prev, w: dict, eps: float = 1e-5) -> tuple:
    """zaya_router's positional arguments; eda_scale only with r_prev (the contract: both or neither)."""
    return (x, r_prev, w["down_w"], w["down_b"], w["eda_scale"] if r_prev is not None else None, w["norm_w"],
            w["fc1_w"], w["fc1_b"], w["fc2_w"], w["fc2_b"], w["out_w"], w["balancing_bias"], eps)


def reference_scores(x, r_prev, w: dict, eps: float = 1e-5) -> torch.Tensor:
    """The fp32 reference's biased scores p + bias [T, E'] (reference.zaya_router's steps, before the top-1)."""
    import torch.nn.functional as F

    from zaya_kernels import reference

    d = x.float() @ w["down_w"].float().T + w["down_b"].float()
    r = d if r_prev is None else d + w["eda_scale"].float() * r_prev.float()
    n = reference.rms_norm(r, w["norm_w"], eps).bfloat16().float()
    h1 = F.gelu(n @ w["fc1_w"].float().T + w["fc1_b"].float()).bfloat16().float()
    h2 = F.gelu(h1 @ w["fc2_w"].float().T + w["fc2_b"].float()).bfloat16().float()
    return torch.softmax(h2 @ w["out_w"].float().T, dim=-1) + w["balancing_bias"]


def redraw_ties_(x, r_prev, w: dict, gen: torch.Generator, margin: float = ROUTER_TIE_MARGIN, eps: float = 1e-5,
                 rounds: int = 100, row_scale: torch.Tensor | None = None) -> None:
    """Redraw (in place) every token whose best and second biased scores are closer than `margin`.
    row_scale [T] (powers of two) keeps each redrawn row at its token's magnitude."""
    for _ in range(rounds):
        top2 = reference_scores(x, r_prev, w, eps).topk(2, dim=-1).values
        close = (top2[:, 0] - top2[:, 1] < margin).nonzero().flatten()
        if close.numel() == 0:
            return
        scale = 1.0 if row_scale is None else row_scale[close, None]
        x[close] = (torch.randn(close.numel(), x.shape[1], generator=gen, device=x.device) * scale).bfloat16()
        if r_prev is not None:
            r_prev[close] = (torch.randn(close.numel(), r_prev.shape[1], generator=gen, device=x.device)
                             * scale).bfloat16()
    raise AssertionError(f"could not make the inputs tie-free within {rounds} rounds")


def eps_sensitive_rows(tokens: int, gen: torch.Generator) -> torch.Tensor:
    """Per-token magnitudes 2^0 .. 2^-14 (exact in bf16): x and r_prev scaled by them (with down_b = 0)
    scale r, so mean(r^2) spans ~1 down to ~1e-9 and RMSNorm's eps decides n for a good part of the
    tokens at eps = 1e-2 (mean(r^2) <= ~1e-2) and at eps = 1e-8 against 1e-5 (mean(r^2) <= ~1e-5)."""
    exponents = torch.randint(0, 15, (tokens,), generator=gen, device=gen.device)
    return torch.pow(2.0, -exponents.float())


def eps_router_case(tokens: int, eps: float, margin: float = ROUTER_TIE_MARGIN, seed: int = 11, hidden: int = 2048,
                    width: int = 256, routes: int = 17):
    """(x, r_prev, weights) on the CPU (move them to the device under test: the same numbers everywhere, so
    the CPU tier checks what the GPU test relies on) whose routing depends on eps: down_b = 0 and rows
    of eps_sensitive_rows magnitudes, tie-free by `margin` at this eps."""
    gen = torch.Generator().manual_seed(seed)
    w = router_weights(gen, routes=routes, hidden=hidden, width=width)
    w["down_b"] = torch.zeros_like(w["down_b"])
    scale = eps_sensitive_rows(tokens, gen)
    x = (torch.randn(tokens, hidden, generator=gen) * scale[:, None]).bfloat16()     # [T, H] bf16
    r_prev = (torch.randn(tokens, width, generator=gen) * scale[:, None]).bfloat16()  # [T, R] bf16
    redraw_ties_(x, r_prev, w, gen, margin, eps, row_scale=scale)
    return x, r_prev, w


# Routes made exactly equal by tie_weights (the first of each is the lower index, so the winner); the
# skip route (16 of ZAYA1's 17) in two of them.
TIED_ROUTES = ((3, 7), (2, 9, 16), (0, 1), (5, 16))


def tie_weights(gen: torch.Generator, tied=(3, 7), bias: float = 1.0) -> dict:
    """Router weights whose out_w rows `tied` are one row and whose balancing biases for them are equal and
    high (1.0, against p + ~0.01 elsewhere): those routes' scores are exactly equal (equal logits, equal
    p, equal bias) and beat every other route for every token."""
    w = router_weights(gen)
    for route in tied[1:]:
        w["out_w"][route] = w["out_w"][tied[0]]
    w["balancing_bias"][list(tied)] = bias
    return w
