# SPDX-License-Identifier: Apache-2.0
"""Routing benchmark (suite "route"): the fused ZAYA1 router + moe_align against the eager PyTorch
router of PERF.md, measured in the same run.

Rows (shape T, H=2048, R=256, E'=17; inputs rotated so the weights come from HBM, as in a 40-layer model):
  route        zaya   zaya_route (router + moe_align as one op; T <= 1024: the align inside the router's
                      last kernel), CUDA-graph replay (the issue's combined figure)
  route        zaya_two_ops  zaya_router, then moe_align, as two ops (graph): what the fusion saves
  route        eager  bench.baselines.eager_route (linear/rms_norm/gelu/softmax/argmax/argsort/bincount),
                      CUDA events (bincount syncs with the host, so it cannot be captured)
  zaya_router  zaya   the router alone (graph); zaya_cluster / zaya_split / zaya_tile: a variant forced
                      through ZAYA_ROUTER_VARIANT near the crossovers (kRouterClusterMaxTokens,
                      kRouterSplitMaxTokens in params.h)
  moe_align    zaya   the align alone on the router's ids (graph), E = 16, block_m = 64
floor_us (T = 65536): PERF.md's floor of the part no router can skip: x read once at the measured copy
bandwidth, the down-projection at the measured bf16 matmul rate (the larger of the two).

    python -m bench.bench_route [--quick] [--out DIR]     # from the repo root, after an in-place build
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import zaya_kernels
from zaya_kernels import ops, reference

from .baselines import EXPERTS, HIDDEN, ROUTER_WIDTH, ROUTES, RouterWeights, eager_route, make_router_weights
from .harness import ProgressFn, Results, device_name, device_slug, flush_bytes, floor_us, run_cases, time_cpu, time_cuda

TOKENS = (1, 16, 128, 256, 512, 768, 960, 1024, 4096, 65536)
QUICK_TOKENS = (1, 1024, 65536)
CPU_TOKENS = (1, 16)
BLOCK_M = 64                   # rows per grouped-GEMM tile: moe_align pads each expert's segment to it
VARIANT_TOKENS = (128, 256, 1024, 4096)  # sizes where every router variant is timed (the crossovers' evidence)
MAX_SETS = 64
TIE_MARGIN = 1e-3              # tokens whose reference top-2 biased scores are closer are not checked


@dataclass
class RouteInputs:
    x: torch.Tensor       # [T, H] bf16
    r_prev: torch.Tensor  # [T, R] bf16
    w: RouterWeights


def _router_args(s: RouteInputs) -> tuple:
    w = s.w
    return (s.x, s.r_prev, w.down_w, w.down_b, w.eda_scale, w.norm_w, w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, w.out_w,
            w.balancing_bias, 1e-5)


def zaya_router(s: RouteInputs):
    return ops.zaya_router(*_router_args(s))


def zaya_two_ops(s: RouteInputs):
    weights, ids, r_out = ops.zaya_router(*_router_args(s))
    return (weights, ids, r_out) + tuple(ops.moe_align(ids, EXPERTS, BLOCK_M))


def route_op(workspace: torch.Tensor):
    """zaya_route on one workspace (a model keeps one per stream)."""
    return lambda s: ops.zaya_route(*_router_args(s)[:-1], workspace, BLOCK_M)


def _make_sets(device: torch.device, tokens: int, seed: int) -> list[RouteInputs]:
    """Enough independent input sets (weights included) that cycling through them overflows the cache."""
    weight_bytes = 2 * (ROUTER_WIDTH * HIDDEN + 2 * ROUTER_WIDTH * ROUTER_WIDTH + ROUTES * ROUTER_WIDTH)
    set_bytes = weight_bytes + 2 * tokens * (HIDDEN + 2 * ROUTER_WIDTH)
    count = 1 if device.type == "cpu" else max(1, min(MAX_SETS, math.ceil(flush_bytes(device) / set_bytes)))
    gen = torch.Generator(device=device).manual_seed(seed)
    return [RouteInputs(torch.randn(tokens, HIDDEN, generator=gen, device=device).bfloat16(),
                        torch.randn(tokens, ROUTER_WIDTH, generator=gen, device=device).bfloat16(),
                        make_router_weights(device, gen)) for _ in range(count)]


def _route_matches_reference(s: RouteInputs, workspace: torch.Tensor) -> bool:
    """ids equal to the reference's on every token whose top-2 biased scores are >= TIE_MARGIN apart,
    weights within 1e-3 there, moe_align equal to the reference's on the kernel's ids, the workspace
    zero again."""
    weights, ids, _, *align = route_op(workspace)(s)
    ref_w, ref_ids, _ = reference.zaya_router(*_router_args(s))
    d = s.x.float() @ s.w.down_w.float().T + s.w.down_b.float() + s.w.eda_scale.float() * s.r_prev.float()
    n = reference.rms_norm(d, s.w.norm_w, 1e-5).bfloat16().float()
    h1 = torch.nn.functional.gelu(n @ s.w.fc1_w.float().T + s.w.fc1_b.float()).bfloat16().float()
    h2 = torch.nn.functional.gelu(h1 @ s.w.fc2_w.float().T + s.w.fc2_b.float()).bfloat16().float()
    top2 = (torch.softmax(h2 @ s.w.out_w.float().T, dim=-1) + s.w.balancing_bias).topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] >= TIE_MARGIN)[:, None]
    ids_ok = bool(((ids == ref_ids) | ~clear).all())
    weights_ok = bool((((weights - ref_w).abs() <= 1e-3) | ~clear).all())
    align_ok = all(torch.equal(a, b) for a, b in zip(align, reference.moe_align(ids, EXPERTS, BLOCK_M)))
    return ids_ok and weights_ok and align_ok and not bool(workspace.any())


def _time(device: torch.device, fn, sets, *, graph: bool, iters: int, warmup: int) -> dict:
    if device.type == "cpu":
        return time_cpu(fn, rotate=[(s,) for s in sets], warmup=1, iters=3)
    return time_cuda(fn, rotate=[(s,) for s in sets], graph=graph, iters=iters, warmup=warmup)


def _add(results: Results, op: str, impl: str, shape: dict, stats: dict, **extra) -> dict:
    return results.add_row(op, impl, shape, stats["median_us"], p20_us=stats["p20_us"], p80_us=stats["p80_us"],
                           **extra)


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


def _route_case(results: Results, tokens: int, quick: bool) -> None:
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

    eager = _time(device, lambda s: eager_route(s.x, s.r_prev, s.w), sets, graph=False, iters=iters, warmup=warmup)
    _add(results, "route", "eager", shape, eager, flops=router_flops, bytes=io_bytes, floor_us=floor, timing="events")
    if device.type != "cuda" or not zaya_kernels.has_device_kernel("zaya_router"):
        return
    workspace = ops.route_workspace(device)
    correct = _route_matches_reference(sets[0], workspace)
    route = _time(device, route_op(workspace), sets, graph=True, iters=iters, warmup=warmup)
    _add(results, "route", "zaya", shape, route, flops=router_flops, bytes=io_bytes, floor_us=floor, correct=correct,
         timing="graph", speedup_vs_eager=eager["median_us"] / route["median_us"],
         of_floor=route["median_us"] / floor if floor else None)
    two_ops = _time(device, zaya_two_ops, sets, graph=True, iters=iters, warmup=warmup)
    _add(results, "route", "zaya_two_ops", shape, two_ops, flops=router_flops, bytes=io_bytes, timing="graph")
    router = _time(device, zaya_router, sets, graph=True, iters=iters, warmup=warmup)
    _add(results, "zaya_router", "zaya", shape, router, flops=router_flops, bytes=io_bytes, timing="graph")
    if tokens in VARIANT_TOKENS:
        for variant in ("cluster", "split", "tile"):
            stats = _with_variant(variant, lambda: _time(device, zaya_router, sets, graph=True, iters=iters,
                                                         warmup=warmup))
            _add(results, "zaya_router", f"zaya_{variant}", shape, stats, flops=router_flops, bytes=io_bytes,
                 timing="graph")
    ids = [zaya_router(s)[1] for s in sets]  # [T, 1] int32 each: the router's real choice distribution
    align = _time(device, lambda i: ops.moe_align(i, EXPERTS, BLOCK_M), ids, graph=True, iters=iters, warmup=warmup)
    _add(results, "moe_align", "zaya", {"T": tokens, "k": 1, "E": EXPERTS, "block_m": BLOCK_M}, align,
         bytes=4 * (2 * tokens + EXPERTS * BLOCK_M), timing="graph")
    del sets, ids
    torch.cuda.empty_cache()


def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None) -> None:
    """Rows of the route suite on results.torch_device (tiny CPU sizes exercise the code path only)."""
    device = results.torch_device
    tokens = CPU_TOKENS if device.type == "cpu" else QUICK_TOKENS if quick else TOKENS
    run_cases([(f"route T={t}", lambda t=t: _route_case(results, t, quick)) for t in tokens], progress)


def _print_table(results: Results) -> None:
    rows = {(r["op"], r["impl"], r["shape"]["T"]): r for r in results.rows}
    print(f"{'T':>6} {'route zaya us':>14} {'two ops us':>11} {'eager us':>10} {'speedup':>8} {'router us':>10} "
          f"{'align us':>9} {'floor us':>9} correct")
    for t in sorted({key[2] for key in rows}):
        z, e = rows.get(("route", "zaya", t)), rows.get(("route", "eager", t))
        two, r, a = rows.get(("route", "zaya_two_ops", t)), rows.get(("zaya_router", "zaya", t)), \
            rows.get(("moe_align", "zaya", t))
        fmt = lambda row, key="median_us": f"{row[key]:.4g}" if row and row.get(key) is not None else "-"  # noqa: E731
        print(f"{t:>6} {fmt(z):>14} {fmt(two):>11} {fmt(e):>10} {fmt(z, 'speedup_vs_eager'):>8} {fmt(r):>10} "
              f"{fmt(a):>9} {fmt(z, 'floor_us'):>9} {z.get('correct') if z else '-'}")
    for row in results.rows:
        if row["impl"] in ("zaya_cluster", "zaya_split", "zaya_tile"):
            print(f"variant {row['impl']:>13} T={row['shape']['T']:>6}: {row['median_us']:.4g} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and iterations")
    parser.add_argument("--out", type=Path, default=None, help="folder for route.json/.md/.png "
                        "(default bench/results/<device>/)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = Results("route", device=device)
    run(results, quick=args.quick, progress=lambda done, total, label: print(f"[{done}/{total}] {label}", flush=True))
    out = args.out or Path(__file__).resolve().parent / "results" / device_slug(device_name(device))
    for path in results.write(out):
        print(f"wrote {path}")
    _print_table(results)


if __name__ == "__main__":
    main()
