# SPDX-License-Identifier: Apache-2.0
"""Routing benchmark (suite "route"): the fused ZAYA1 router + moe_align against the PyTorch baselines
of the same math, measured in the same run.

Rows (shape T, H=2048, R=256, E'=17; inputs rotated so the weights come from HBM, as in a 40-layer model):
  route        zaya   zaya_route (router + moe_align as one op; T <= 1024: the align inside the router's
                      last kernel), CUDA-graph replay (the issue's combined figure)
  route        zaya_two_ops  zaya_router, then moe_align, as two ops (graph): what the fusion saves
  route        eager  bench.baselines.eager_route (linear/rms_norm/gelu/softmax/argmax/argsort/bincount),
                      CUDA events (bincount syncs with the host, so it cannot be captured)
  route        torch_graph    bench.baselines.graph_route: the same router math, then moe_align written
                      capturable (scatter_add counts, cumsum offsets, stable argsort), CUDA-graph replay
  route        torch_compile  torch.compile of graph_route (harness.Compiler), replayed in a CUDA graph
  zaya_router  zaya   the router alone (graph); zaya_cluster / zaya_split / zaya_tile: a variant forced
                      through ZAYA_ROUTER_VARIANT near the crossovers (kRouterClusterMaxTokens,
                      kRouterSplitMaxTokens in params.h)
  moe_align    zaya   the align alone on the router's ids (graph), E = 16, block_m = 64
The zaya route row carries speedup_vs_best (the fastest of eager / torch_graph / torch_compile over ours)
and speedup_vs_eager. floor_us (T = 65536): PERF.md's floor of the part no router can skip: x read once at
the measured copy bandwidth, the down-projection at the measured bf16 matmul rate (the larger of the two).

    python -m bench.bench_route [--quick] [--no-compile] [--out DIR]   # from the repo root, after a build
"""
from __future__ import annotations

import os

import torch

import zaya_kernels
from zaya_kernels import ops

from .baselines import (EXPERTS, HIDDEN, ROUTE_BLOCK_M, ROUTER_WIDTH, ROUTES, make_router_weights, route_agrees,
                        route_args, route_baseline_rows)
from .harness import (Compiler, ProgressFn, Results, floor_us, generator, measure, release_memory, rotation_count,
                      run_cases, safe_ratio, standalone_main)

TOKENS = (1, 16, 128, 256, 512, 768, 960, 1024, 4096, 65536)
QUICK_TOKENS = (1, 1024, 65536)
CPU_TOKENS = (1, 16)
BLOCK_M = ROUTE_BLOCK_M        # rows per grouped-GEMM tile: moe_align pads each expert's segment to it
VARIANT_TOKENS = (128, 256, 1024, 4096)  # sizes where every router variant is timed (the crossovers' evidence)
BASELINES = ("eager", "torch_graph", "torch_compile")


def zaya_router(*args):
    return ops.zaya_router(*args, 1e-5)


def zaya_two_ops(*args):
    weights, ids, r_out = ops.zaya_router(*args, 1e-5)
    return (weights, ids, r_out) + tuple(ops.moe_align(ids, EXPERTS, BLOCK_M))


def route_op(workspace: torch.Tensor):
    """zaya_route on one workspace (a model keeps one per stream)."""
    return lambda *args: ops.zaya_route(*args, workspace, BLOCK_M)


def _make_sets(device: torch.device, tokens: int, seed: int) -> list[tuple]:
    """Enough independent input sets (weights included; each = baselines.route_args) that cycling through
    them overflows the cache."""
    weight_bytes = 2 * (ROUTER_WIDTH * HIDDEN + 2 * ROUTER_WIDTH * ROUTER_WIDTH + ROUTES * ROUTER_WIDTH)
    set_bytes = weight_bytes + 2 * tokens * (HIDDEN + 2 * ROUTER_WIDTH)
    gen = generator(device, seed)
    return [route_args(torch.randn(tokens, HIDDEN, generator=gen, device=device).bfloat16(),       # x [T, H]
                       torch.randn(tokens, ROUTER_WIDTH, generator=gen, device=device).bfloat16(),  # r_prev [T, R]
                       make_router_weights(device, gen)) for _ in range(rotation_count(device, set_bytes))]


def _time(device: torch.device, fn, sets, *, iters: int, warmup: int) -> dict:
    """The harness's stats of a graph replay, with the way they were taken under "timing"."""
    stats, how = measure(device, fn, rotate=sets, graph=True, iters=iters, warmup=warmup)
    return {**stats, "timing": how}


def _add(results: Results, op: str, impl: str, shape: dict, stats: dict, **extra) -> dict:
    return results.add_row(op, impl, shape, stats["median_us"], p20_us=stats["p20_us"], p80_us=stats["p80_us"],
                           timing=stats["timing"], **extra)


def _with_variant(variant: str | None, fn):
    """Run fn with ZAYA_ROUTER_VARIANT set (graph capture bakes the variant in), restoring it after."""
    saved = os.environ.get("ZAYA_ROUTER_VARIANT")
    if variant is None:
        os.environ.pop("ZAYA_ROUTER_VARIANT", None)
    else:
        os.environ["ZAYA_ROUTER_VARIANT"] = variant
    try:
        return fn()
    finally:
        if saved is None:
            os.environ.pop("ZAYA_ROUTER_VARIANT", None)
        else:
            os.environ["ZAYA_ROUTER_VARIANT"] = saved


def _route_case(results: Results, compiler: Compiler, tokens: int, quick: bool) -> None:
    device = results.torch_device
    iters, warmup = (30, 5) if quick else (100, 10)
    sets = _make_sets(device, tokens, seed=1000 + tokens)
    shape = {"T": tokens, "H": HIDDEN, "R": ROUTER_WIDTH, "E'": ROUTES}
    router_flops = 2 * tokens * (HIDDEN * ROUTER_WIDTH + 2 * ROUTER_WIDTH * ROUTER_WIDTH + ROUTER_WIDTH * ROUTES)
    weight_bytes = 2 * (ROUTER_WIDTH * HIDDEN + 2 * ROUTER_WIDTH * ROUTER_WIDTH + ROUTES * ROUTER_WIDTH)
    io_bytes = weight_bytes + tokens * (2 * HIDDEN + 4 * ROUTER_WIDTH + 8)  # x, r_prev, r_out, weights + ids
    # The floor at T = 65536 (PERF.md's rule): x once at the copy ceiling, the down-projection at the matmul one.
    floor = floor_us(results.ceilings, flops=2 * tokens * HIDDEN * ROUTER_WIDTH, bytes=2 * tokens * HIDDEN) \
        if tokens == 65536 and device.type == "cuda" else None
    rates = dict(flops=router_flops, bytes=io_bytes, floor_us=floor)
    route_baseline_rows(results, compiler, shape, sets, warmup=warmup, iters=iters, **rates)
    if device.type != "cuda" or not zaya_kernels.has_device_kernel("zaya_router"):
        return
    workspace = ops.route_workspace(device)
    correct = route_agrees(route_op(workspace)(*sets[0]), sets[0], BLOCK_M) and not bool(workspace.any())
    route = _time(device, route_op(workspace), sets, iters=iters, warmup=warmup)
    baselines = [r for r in results.rows if r["op"] == "route" and r["shape"] == shape and r["impl"] in BASELINES
                 and r.get("median_us")]
    best = min(baselines, key=lambda r: r["median_us"]) if baselines else None
    eager = next((r for r in baselines if r["impl"] == "eager"), None)
    _add(results, "route", "zaya", shape, route, correct=correct, **rates,
         speedup_vs_best=safe_ratio(best and best["median_us"], route["median_us"]),
         best_baseline=best and best["impl"],
         speedup_vs_eager=safe_ratio(eager and eager["median_us"], route["median_us"]),
         of_floor=safe_ratio(route["median_us"], floor))
    two_ops = _time(device, zaya_two_ops, sets, iters=iters, warmup=warmup)
    _add(results, "route", "zaya_two_ops", shape, two_ops, flops=router_flops, bytes=io_bytes)
    router = _time(device, zaya_router, sets, iters=iters, warmup=warmup)
    _add(results, "zaya_router", "zaya", shape, router, flops=router_flops, bytes=io_bytes)
    if tokens in VARIANT_TOKENS:
        for variant in ("cluster", "split", "tile"):
            stats = _with_variant(variant, lambda: _time(device, zaya_router, sets, iters=iters, warmup=warmup))
            _add(results, "zaya_router", f"zaya_{variant}", shape, stats, flops=router_flops, bytes=io_bytes)
    ids = [(zaya_router(*s)[1],) for s in sets]  # [T, 1] int32 each: the router's real choice distribution
    align = _time(device, lambda i: ops.moe_align(i, EXPERTS, BLOCK_M), ids, iters=iters, warmup=warmup)
    _add(results, "moe_align", "zaya", {"T": tokens, "k": 1, "E": EXPERTS, "block_m": BLOCK_M}, align,
         bytes=4 * (2 * tokens + EXPERTS * BLOCK_M))
    del sets, ids
    release_memory(device)


def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None,
        compiler: Compiler | None = None) -> None:
    """Rows of the route suite on results.torch_device (tiny CPU sizes exercise the code path only)."""
    compiler = compiler or Compiler(None)
    device = results.torch_device
    tokens = CPU_TOKENS if device.type == "cpu" else QUICK_TOKENS if quick else TOKENS
    run_cases([(f"route T={t}", lambda t=t: _route_case(results, compiler, t, quick)) for t in tokens], progress)


if __name__ == "__main__":
    standalone_main("route", run, __doc__)
