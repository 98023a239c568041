# SPDX-License-Identifier: Apache-2.0
"""One small, valid, random argument set per op (functional args + the .out tensors), shared by the
opcheck, compile and bad-input tests. Shapes are ZAYA1's where cheap (17 routes, 8/2 heads of 128),
reduced elsewhere."""
from __future__ import annotations

import torch

from .util import tie_free_logits


def sample(op: str, device="cpu", seed: int = 0):
    """-> (args tuple, dict of .out tensors)."""
    g = torch.Generator().manual_seed(seed)
    bf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(torch.bfloat16).to(device)  # noqa: E731
    i32 = lambda values: torch.tensor(values, dtype=torch.int32, device=device)  # noqa: E731
    empty = lambda *s, dtype=torch.float32: torch.empty(*s, dtype=dtype, device=device)  # noqa: E731
    if op == "topk_gating":
        logits = tie_free_logits(5, 17, g).to(device)
        bias = ((torch.rand(17, generator=g) - 0.5) * 0.01).to(device)
        return (logits, bias, 2, True, 16), {"weights": empty(5, 2), "ids": empty(5, 2, dtype=torch.int32)}
    if op == "zaya_router":
        t, h, r, e = 6, 512, 256, 17  # the kernels' smallest geometry: R = 256, H a multiple of 512
        args = (bf(t, h), bf(t, r), bf(r, h, scale=h ** -0.5), bf(r, scale=0.1), bf(r), bf(r, scale=0.1) + 1,
                bf(r, r, scale=r ** -0.5), bf(r, scale=0.1), bf(r, r, scale=r ** -0.5), bf(r, scale=0.1),
                bf(e, r, scale=r ** -0.5), torch.zeros(e, device=device), 1e-5)
        return args, {"weights": empty(t, 1), "ids": empty(t, 1, dtype=torch.int32),
                      "r_out": empty(t, r, dtype=torch.bfloat16)}
    if op == "zaya_route":
        (args, outs), t, bm = sample("zaya_router", device, seed), 6, 4
        cap = t + 16 * (bm - 1)
        return args[:-1] + (torch.zeros(1024, dtype=torch.uint8, device=device), bm, 1e-5), {
            **outs, "sorted_token_ids": empty(cap, dtype=torch.int32),
            "block_expert_ids": empty(-(-cap // bm), dtype=torch.int32), "expert_offsets": empty(17, dtype=torch.int32),
            "num_padded": empty(1, dtype=torch.int32)}
    if op == "moe_align":
        ids = torch.randint(0, 17, (9, 2), generator=g, dtype=torch.int32).to(device)
        cap = 18 + 16 * 3
        return (ids, 16, 4), {"sorted_token_ids": empty(cap, dtype=torch.int32),
                              "block_expert_ids": empty(-(-cap // 4), dtype=torch.int32),
                              "expert_offsets": empty(17, dtype=torch.int32), "num_padded": empty(1, dtype=torch.int32)}
    if op == "grouped_gemm":
        return (bf(10, 32), bf(3, 16, 32), i32([0, 4, 4, 10])), {"out": empty(10, 16, dtype=torch.bfloat16)}
    if op == "moe_mlp":
        ids = i32([[0], [3], [2], [0], [4]])  # 4 = the skip route of 4 experts
        offsets = i32([0, 2, 2, 3, 4])
        sorted_ids = i32([0, 3, 2, 1])
        return (bf(5, 32), torch.rand(5, 1, generator=g).to(device), ids, sorted_ids, offsets, bf(4, 16, 32, scale=0.2),
                bf(4, 32, 8, scale=0.3), "scaled_input"), {"out": empty(5, 32, dtype=torch.bfloat16)}
    if op == "cca_prep":
        hq, hkv, d = 8, 2, 128
        c, vh = (hq + hkv) * d, hkv * d // 2
        k_cache = bf(6, 4, hkv, d)
        args = (bf(5, c + 2 * vh), i32([0, 2, 5]), i32([0, 3]), torch.randn(2, c, 2, generator=g).to(device),
                torch.randn(2, vh, generator=g).to(device), bf(c, 1, 2), bf(c), bf(c, d, 2, scale=0.1), bf(c),
                bf(hkv), k_cache, k_cache.clone(), i32([[0, 1, 2], [3, 4, 5]]), 5e6, 64)
        return args, {"q": empty(5, hq, d, dtype=torch.bfloat16)}
    if op == "attention_prefill":
        k_cache = bf(6, 4, 2, 128)
        return (bf(5, 8, 128), k_cache, bf(6, 4, 2, 128), i32([[0, 1, 2], [3, 4, 5]]), i32([0, 2, 5]), i32([7, 10]),
                None, True), {"out": empty(5, 8, 128, dtype=torch.bfloat16)}
    if op == "attention_decode":
        return (bf(2, 8, 128), bf(6, 4, 2, 128), bf(6, 4, 2, 128), i32([[0, 1, 2], [3, 4, 5]]), i32([7, 12]), None), \
            {"out": empty(2, 8, 128, dtype=torch.bfloat16)}
    raise KeyError(op)
