# SPDX-License-Identifier: Apache-2.0
"""A small workload of every routing kernel for compute-sanitizer (not a pytest module):

    compute-sanitizer --tool memcheck  python -m tests.sanitize_routing
    compute-sanitizer --tool racecheck python -m tests.sanitize_routing

topk_gating (bf16/fp32, E' 17/256, k 1/8), moe_align (one chunk and several), zaya_router (both
variants, with and without r_prev, T not a multiple of any tile). Exits non-zero if a result is wrong."""
from __future__ import annotations

import os

import torch

from zaya_kernels import ops, reference

from .test_routing_gpu import make_router_inputs, random_ids, router_args


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(7)
    for routes, k, dtype in ((17, 1, torch.bfloat16), (256, 8, torch.float32)):
        logits = torch.randn(333, routes, generator=gen, device="cuda").to(dtype)
        bias = torch.randn(routes, generator=gen, device="cuda") * 0.01
        weights, ids = ops.topk_gating(logits, bias, k, True, routes - 1)
        assert ((ids >= 0) & (ids < routes)).all() and torch.isfinite(weights).all()
    for tokens, k in ((300, 1), (9000, 2)):
        ids = random_ids(tokens, k, 16, gen)
        for got, want in zip(ops.moe_align(ids, 16, 64), reference.moe_align(ids, 16, 64)):
            assert torch.equal(got, want)
    for variant, tokens in (("cluster", 77), ("cluster", 700), ("split", 300), ("tile", 300)):
        os.environ["ZAYA_ROUTER_VARIANT"] = variant
        for eda in (True, False):
            x, r_prev, w = make_router_inputs(tokens, gen, eda=eda)
            weights, ids, _ = ops.zaya_router(*router_args(x, r_prev, w))
            assert torch.equal(ids, reference.zaya_router(*router_args(x, r_prev, w))[1]), (variant, tokens, eda)
    torch.cuda.synchronize()
    print("sanitize_routing: all kernels ran, results correct")


if __name__ == "__main__":
    main()
