# SPDX-License-Identifier: Apache-2.0
"""Run every op that has a GPU kernel once on small random inputs, for compute-sanitizer:
  compute-sanitizer --tool memcheck python tools/sanitize_ops.py
  compute-sanitizer --tool racecheck python tools/sanitize_ops.py
Sizes are small so the instrumented run stays in seconds; each op also runs at a T that is not a
multiple of any tile and at T = 1."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import torch  # noqa: E402

import zaya_kernels  # noqa: E402
from zaya_kernels import ops  # noqa: E402
from tests.samples import sample  # noqa: E402


def main() -> int:
    ran = []
    for op in ops.OP_NAMES:
        if not zaya_kernels.has_device_kernel(op):
            continue
        for seed in (0, 1):
            args, outs = sample(op, device="cuda", seed=seed)
            getattr(ops, op)(*args)
            getattr(ops, op)(*args, out=tuple(outs.values()) if len(outs) > 1 else next(iter(outs.values())))
        ran.append(op)
    if zaya_kernels.has_device_kernel("zaya_router"):  # every variant, not only the one the sample's T picks
        args, _ = sample("zaya_router", device="cuda", seed=2)
        for variant in ("cluster", "split", "tile"):
            os.environ["ZAYA_ROUTER_VARIANT"] = variant
            ops.zaya_router(*args)
        # Every token-group shape of the split variant, with a partial last group.
        for variant in ("split16", "split16p", "split16c", "split32", "split48"):
            os.environ["ZAYA_ROUTER_VARIANT"] = variant
            x = torch.randn(700, args[0].shape[1], device="cuda").to(args[0].dtype)
            r_prev = torch.randn(700, args[1].shape[1], device="cuda").to(args[1].dtype)
            ops.zaya_router(x, r_prev, *args[2:])
        os.environ.pop("ZAYA_ROUTER_VARIANT")
    if zaya_kernels.has_device_kernel("zaya_route"):  # the align in each variant's last kernel, one workspace
        args, _ = sample("zaya_route", device="cuda", seed=3)
        x = torch.randn(700, args[0].shape[1], device="cuda").to(args[0].dtype)
        r_prev = torch.randn(700, args[1].shape[1], device="cuda").to(args[1].dtype)
        for variant in ("cluster", "split", "tile", "split16p", "split16c", "split32"):
            os.environ["ZAYA_ROUTER_VARIANT"] = variant
            ops.zaya_route(*args)
            ops.zaya_route(x, r_prev, *args[2:])
        os.environ.pop("ZAYA_ROUTER_VARIANT")
        assert not args[12].any(), "zaya_route left its workspace non-zero"
    if zaya_kernels.has_device_kernel("grouped_gemm"):  # the tiled experts regime's kernels, every epilogue
        os.environ["ZAYA_EXPERTS_REGIME"] = "tiled"
        a = torch.randn(300, 136, device="cuda").bfloat16()
        w = torch.randn(5, 264, 136, device="cuda").bfloat16()
        ops.grouped_gemm(a, w, torch.tensor([7, 40, 40, 171, 290, 291], dtype=torch.int32, device="cuda"))
        for tokens, k in ((77, 1), (200, 2)):
            x = torch.randn(tokens, 256, device="cuda").bfloat16()
            ids = torch.randint(0, 5, (tokens, k), dtype=torch.int32, device="cuda")  # id 4 = the skip route
            sorted_ids, _, offsets, _ = ops.moe_align(ids, 4, 16)
            ops.moe_mlp(x, torch.rand(tokens, k, device="cuda"), ids, sorted_ids, offsets,
                        torch.randn(4, 272, 256, device="cuda").bfloat16(),
                        torch.randn(4, 256, 136, device="cuda").bfloat16())
        os.environ.pop("ZAYA_EXPERTS_REGIME")
    if zaya_kernels.has_device_kernel("moe_mlp"):  # both regimes; k = 1 and 2, skip and dropped routes, odd shapes
        from tests.test_experts_gpu import gemm_case, moe_case
        for regime in ("small", "tiled"):
            os.environ["ZAYA_EXPERTS_REGIME"] = regime
            shapes = ((1, 1, 2048, 2048, 64), (37, 2, 136, 72, 16), (300, 1, 256, 264, 1))
            for tokens, k, hidden, ffn, block_m in shapes:
                args = moe_case(tokens, k, experts=5, hidden=hidden, ffn=ffn, block_m=block_m, seed=tokens)
                for skip_mode in ("scaled_input", "zero"):
                    ops.moe_mlp(*args, skip_mode)
            for rows, n, k in ((1, 4096, 2048), (300, 100, 72)):
                ops.grouped_gemm(*gemm_case(rows, n, k, 5, seed=rows))
        os.environ.pop("ZAYA_EXPERTS_REGIME")
    if zaya_kernels.has_device_kernel("topk_gating"):
        for tokens, experts, k in ((1, 17, 1), (1000, 256, 8), (333, 64, 2)):
            logits = torch.randn(tokens, experts, device="cuda")
            ops.topk_gating(logits, torch.randn(experts, device="cuda"), k, True, experts - 1)
    if zaya_kernels.has_device_kernel("attention_prefill"):  # TMA page boxes of 16/64/128 slots, the copy path
        for page_size, causal in ((16, True), (64, False), (256, True), (4, True)):
            q_lens, k_lens = [1, 70, 33], [300, 70, 200]  # chunked, partial blocks and tiles, queries over cache
            pages = [-(-n // page_size) for n in k_lens]
            cache = [torch.randn(sum(pages) + 1, page_size, 2, 128, device="cuda").bfloat16() for _ in range(2)]
            order = torch.randperm(sum(pages) + 1, device="cuda").int()
            table = torch.full((3, max(pages)), -1, dtype=torch.int32, device="cuda")
            for b, start in enumerate([0, pages[0], pages[0] + pages[1]]):
                table[b, :pages[b]] = order[start:start + pages[b]]
            cu = torch.tensor([0, 1, 71, 104], dtype=torch.int32, device="cuda")
            q = torch.randn(104, 8, 128, device="cuda").bfloat16()
            ops.attention_prefill(q, *cache, table, cu, torch.tensor(k_lens, dtype=torch.int32, device="cuda"),
                                  None, causal)
    if zaya_kernels.has_device_kernel("cca_prep"):  # several tiles and CTAs per head, chunked, length-1 sequences
        from tests.test_attention_gpu import PrepCase
        for lengths, starts in (([1, 2, 0, 130, 63, 64, 1], [0, 5, 0, 7, 1, 0, 300]), ([1] * 70, list(range(70)))):
            case = PrepCase(lengths, starts, page_size=16, seed=len(lengths))
            case.run_kernel()
    if zaya_kernels.has_device_kernel("attention_decode"):  # one split and many (the combine kernel), length 0
        from tests.test_attention_gpu import DecodeCase
        for lengths, page_size in (([0, 1, 33, 5000], 64), ([9, 31], 16), ([0], 16)):
            case = DecodeCase(lengths, page_size=page_size, seed=len(lengths))
            ops.attention_decode(*case.args())
    torch.cuda.synchronize()
    print(f"sanitize_ops: ran {ran}")
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
