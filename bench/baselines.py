# SPDX-License-Identifier: Apache-2.0
"""The PyTorch baselines, written as a careful PyTorch user would run them, and the suites that time
them beside the ceilings they are read against (DESIGN.md §7, issue 11 finding 2).

Every op family has up to three baselines, all timed by harness.measure with the same cold cache and
the same rotated input sets as ours:
  eager          the plain PyTorch code, launched op by op (CUDA events; host syncs included where the
                 natural code has them, e.g. the router's bincount);
  torch_graph    the same math written capturable (no host sync: counts by scatter_add, offsets by
                 cumsum, the sort by a stable argsort) and replayed in a CUDA graph;
  torch_compile  torch.compile of the torch_graph code (harness.Compiler: per shape, fullgraph,
                 "max-autotune-no-cudagraphs" by default), replayed in the harness's CUDA graph.
Library baselines (torch._grouped_mm, F.scaled_dot_product_attention) are graph replays too. Speedups
are stated against the best of them (report.BASELINE_IMPLS).

run(results):      route (eager, torch_graph, torch_compile), grouped_gemm_fc1 (bench_experts' baselines:
                   torch_mm_loop, torch_grouped_mm, torch_compile, dense_mm), attention_prefill and
                   attention_decode (bench_attention's SDPA rows).
run_topk(results): topk_gating, ours ("zaya", when built) against eager / torch_graph / torch_compile.

On a GPU the grids are PERF.md's; on the CPU every grid shrinks to tiny sizes, which exercises each
code path but measures nothing worth keeping. A backend that fails on a shape leaves a row with
"error" instead of stopping the run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import zaya_kernels
from zaya_kernels import reference

from .harness import (Compiler, ProgressFn, Results, error_text, gemm_agrees, generator, note, record,
                      record_compiled, release_memory, rotation_count, run_cases)

# ZAYA1-8B geometry (ZAYA1_ARCHITECTURE.md)
HIDDEN = 2048
ROUTER_WIDTH = 256
EXPERTS = 16
ROUTES = EXPERTS + 1  # the experts + the skip route
FC1_OUT = 4096        # gate | up, 2 x 2048
Q_HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128
ROUTE_BLOCK_M = 64    # moe_align's block (zaya_kernels.model.state.MOE_BLOCK_M)
TOPK_CONFIGS = ((17, 1), (64, 2), (256, 8))  # (E' routes, k): ZAYA1, then wider MoE routers
TIE_MARGIN = 1e-3     # route tokens whose reference top-2 biased scores are closer are not checked
__all__ = ["gemm_agrees"]  # re-exported for the tests and older callers


@dataclass(frozen=True)
class Grid:
    route_tokens: tuple
    gemm_tokens: tuple
    prefill: tuple  # (batch, seqlen)
    decode: tuple   # (batch, cached keys)
    topk_tokens: tuple
    warmup: int
    iters: int


def grid_for(device: torch.device, quick: bool) -> Grid:
    if device.type == "cpu":
        return Grid((1, 16), (1, 16, 64), ((1, 64), (2, 32)), ((1, 128), (2, 64)), (1, 128), 1, 3)
    if quick:
        return Grid((1, 1024, 65536), (1, 128, 4096, 65536), ((4, 4096),), ((1, 32768), (32, 32768)), (1, 65536),
                    5, 30)
    return Grid((1, 16, 128, 1024, 4096, 65536), (1, 16, 128, 1024, 4096, 16384, 65536),
                ((16, 1024), (4, 4096), (1, 16384)), ((1, 4096), (1, 32768), (32, 32768), (128, 8192)),
                (1, 128, 1024, 65536), 10, 100)


@contextlib.contextmanager
def shape_guard(results: Results, op: str, shape: dict, impls):
    """If building a shape's inputs fails (e.g. out of memory), every impl without a row gets an error row."""
    first = len(results.rows)
    try:
        yield
    except Exception as err:  # noqa: BLE001
        done = {r["impl"] for r in results.rows[first:] if r["op"] == op}
        for impl in impls:
            if impl not in done:
                results.add_row(op, impl, shape, None, error=error_text(err))
        release_memory(results.torch_device)


# ---------------------------------------------------------------------------------------------
# route: the ZAYA1 router (eager, and capturable with moe_align's schedule)
# ---------------------------------------------------------------------------------------------

@dataclass
class RouterWeights:
    down_w: torch.Tensor          # [R, H] bf16
    down_b: torch.Tensor          # [R] bf16
    eda_scale: torch.Tensor       # [R] bf16
    norm_w: torch.Tensor          # [R] bf16
    fc1_w: torch.Tensor           # [R, R] bf16
    fc1_b: torch.Tensor           # [R] bf16
    fc2_w: torch.Tensor           # [R, R] bf16
    fc2_b: torch.Tensor           # [R] bf16
    out_w: torch.Tensor           # [E', R] bf16
    balancing_bias: torch.Tensor  # [E'] fp32


def make_router_weights(device, gen: torch.Generator) -> RouterWeights:
    """Random router weights scaled by fan_in^-1/2, so every activation stays O(1)."""
    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    return RouterWeights(
        down_w=rand(ROUTER_WIDTH, HIDDEN, scale=HIDDEN ** -0.5), down_b=rand(ROUTER_WIDTH, scale=0.1),
        eda_scale=rand(ROUTER_WIDTH, scale=0.5),
        norm_w=(1 + rand(ROUTER_WIDTH, scale=0.1, dtype=torch.float32)).bfloat16(),
        fc1_w=rand(ROUTER_WIDTH, ROUTER_WIDTH, scale=ROUTER_WIDTH ** -0.5), fc1_b=rand(ROUTER_WIDTH, scale=0.1),
        fc2_w=rand(ROUTER_WIDTH, ROUTER_WIDTH, scale=ROUTER_WIDTH ** -0.5), fc2_b=rand(ROUTER_WIDTH, scale=0.1),
        out_w=rand(ROUTES, ROUTER_WIDTH, scale=ROUTER_WIDTH ** -0.5),
        balancing_bias=rand(ROUTES, scale=0.01, dtype=torch.float32))


def eager_route(x: torch.Tensor, r_prev: torch.Tensor, w: RouterWeights, eps: float = 1e-5):
    """The router as a PyTorch user writes it: x [T, H] bf16, r_prev [T, R] bf16 -> weights [T] fp32,
    ids [T] int64, order [T] int64 (token indices sorted by route), counts [E'] int64, r [T, R] bf16.
    bincount reads max(ids) on the host: a sync, so this cannot be captured in a CUDA graph."""
    d = F.linear(x, w.down_w, w.down_b)                                      # [T, R] bf16
    r = d + w.eda_scale * r_prev                                             # [T, R] bf16 (EDA)
    n = F.rms_norm(r.float(), (r.shape[-1],), w.norm_w.float(), eps).bfloat16()
    h1 = F.gelu(F.linear(n, w.fc1_w, w.fc1_b))                               # [T, R] bf16
    h2 = F.gelu(F.linear(h1, w.fc2_w, w.fc2_b))                              # [T, R] bf16
    p = torch.softmax(F.linear(h2, w.out_w).float(), dim=-1)                 # [T, E'] fp32
    ids = torch.argmax(p + w.balancing_bias, dim=-1)                         # [T] int64, top-1
    weights = p.gather(1, ids[:, None]).squeeze(1)                           # [T] fp32, unbiased p
    order = torch.argsort(ids, stable=True)                                  # [T] int64
    counts = torch.bincount(ids, minlength=p.shape[1])                       # [E'] int64
    return weights, ids, order, counts, r


def router_probs(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, eps: float = 1e-5):
    """The router's math up to the route probabilities, as plain torch ops: -> (p [T, E'] fp32, r [T, R] bf16)."""
    r = F.linear(x, down_w, down_b) + eda_scale * r_prev                     # [T, R] bf16 (EDA)
    n = F.rms_norm(r.float(), (r.shape[-1],), norm_w.float(), eps).bfloat16()
    h1 = F.gelu(F.linear(n, fc1_w, fc1_b))                                   # [T, R] bf16
    h2 = F.gelu(F.linear(h1, fc2_w, fc2_b))                                  # [T, R] bf16
    return torch.softmax(F.linear(h2, out_w).float(), dim=-1), r             # [T, E'] fp32


def graph_moe_align(ids: torch.Tensor, num_experts: int, block_m: int):
    """moe_align (reference.moe_align's exact outputs) without a host sync: ids [T, k] int -> (sorted_token_ids
    [T*k + E*(block_m-1)], block_expert_ids [ceil(len/block_m)], expert_offsets [E+1], num_padded [1]), int32.
    Counts by scatter_add, padded offsets by cumsum, the order by a stable argsort (pairs keep ascending
    order inside a segment), each pair's slot = its segment's padded start + its rank in the segment,
    each block's expert by searchsorted over the padded segment ends. Every shape is static."""
    num_pairs = ids.numel()
    capacity = num_pairs + num_experts * (block_m - 1)
    flat = ids.reshape(-1).long()                                                       # [P]
    key = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)            # [P], E = no expert
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=ids.device)
    counts = counts.scatter_add_(0, key, torch.ones_like(key))                          # [E+1] pairs per key
    padded = (counts[:num_experts] + block_m - 1) // block_m * block_m                  # [E]
    offsets = F.pad(torch.cumsum(padded, 0), (1, 0))                                    # [E+1] padded starts
    order = torch.argsort(key, stable=True)                                             # [P] pairs by expert
    sorted_key = key[order]
    first_of_key = torch.cumsum(counts, 0) - counts                                     # [E+1] unpadded starts
    rank = torch.arange(num_pairs, device=ids.device) - first_of_key[sorted_key]
    # pairs of no expert go to a scratch slot past the end (index `capacity`), dropped by the slice
    slot = torch.where(sorted_key < num_experts, offsets[sorted_key.clamp(max=num_experts - 1)] + rank, capacity)
    sorted_ids = torch.full((capacity + 1,), num_pairs, dtype=torch.int32, device=ids.device)
    sorted_ids = sorted_ids.index_put((slot,), order.to(torch.int32))[:capacity]
    block_starts = torch.arange(0, capacity, block_m, device=ids.device)                 # [num_blocks]
    block_experts = torch.searchsorted(offsets[1:], block_starts, right=True)
    block_experts = torch.where(block_starts < offsets[-1], block_experts, -1).to(torch.int32)
    return sorted_ids, block_experts, offsets.to(torch.int32), offsets[-1:].to(torch.int32)


def graph_route(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                block_m: int = ROUTE_BLOCK_M, eps: float = 1e-5):
    """zaya_route's outputs as capturable torch ops: (weights [T, 1] fp32, ids [T, 1] int32, r [T, R] bf16,
    then graph_moe_align's four over the E' - 1 experts; the skip route goes to no expert)."""
    p, r = router_probs(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, eps)
    ids = torch.argmax(p + balancing_bias, dim=-1, keepdim=True)                    # [T, 1], lowest index on ties
    return (p.gather(1, ids), ids.to(torch.int32), r) + graph_moe_align(ids, out_w.shape[0] - 1, block_m)


def route_args(x, r_prev, w: RouterWeights) -> tuple:
    """The tensors of one route call, in zaya_router's argument order (eps excluded)."""
    return (x, r_prev, w.down_w, w.down_b, w.eda_scale, w.norm_w, w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, w.out_w,
            w.balancing_bias)


def route_agrees(outputs, args: tuple, block_m: int = ROUTE_BLOCK_M) -> bool:
    """A route's 7 outputs (zaya_route's order) against the reference: ids equal on every token whose
    reference top-2 biased scores are >= TIE_MARGIN apart (bf16 GEMMs in another order may swap closer
    ones), weights within 1e-3 there, and the align equal to reference.moe_align of the route's own ids."""
    weights, ids, _, *align = outputs
    x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias = args
    ref_w, ref_ids, _ = reference.zaya_router(*args, 1e-5)
    d = x.float() @ down_w.float().T + down_b.float() + eda_scale.float() * r_prev.float()
    n = reference.rms_norm(d, norm_w, 1e-5).bfloat16().float()
    h1 = F.gelu(n @ fc1_w.float().T + fc1_b.float()).bfloat16().float()
    h2 = F.gelu(h1 @ fc2_w.float().T + fc2_b.float()).bfloat16().float()
    top2 = (torch.softmax(h2 @ out_w.float().T, dim=-1) + bias).topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] >= TIE_MARGIN)[:, None]
    ids = ids.reshape(ref_ids.shape).to(torch.int32)
    ids_ok = bool(((ids == ref_ids) | ~clear).all())
    weights_ok = bool((((weights.reshape(ref_w.shape) - ref_w).abs() <= 1e-3) | ~clear).all())
    expected = reference.moe_align(ids, out_w.shape[0] - 1, block_m)
    align_ok = all(torch.equal(a.to(torch.int32), b) for a, b in zip(align, expected))
    return ids_ok and weights_ok and align_ok


def route_baseline_rows(results: Results, compiler: Compiler, shape: dict, sets: list[tuple], *, warmup: int = 10,
                        iters: int = 100, **row) -> None:
    """The route's three baselines on the rotated sets (each set = route_args(...)): eager (eager_route,
    its bincount syncs: CUDA events), torch_graph (graph_route replayed in a CUDA graph) and torch_compile
    (graph_route compiled, replayed in the harness's graph); the last two checked with route_agrees."""
    op = "route"

    def eager(*args):
        x, r_prev, *rest = args
        return eager_route(x, r_prev, RouterWeights(*rest))

    record(results, op, "eager", shape, eager, rotate=sets, warmup=warmup, iters=iters, **row)
    record(results, op, "torch_graph", shape, graph_route, rotate=sets, graph=True, warmup=warmup, iters=iters,
           check=lambda: route_agrees(graph_route(*sets[0]), sets[0]), **row)
    record_compiled(results, compiler, op, shape, graph_route, sets,
                    check=lambda compiled: route_agrees(compiled(*sets[0]), sets[0]), **row)


def _route_case(results: Results, grid: Grid, compiler: Compiler, tokens: int) -> None:
    device, shape = results.torch_device, {"T": tokens}
    with shape_guard(results, "route", shape, ("eager", "torch_graph", "torch_compile")):
        gen = generator(device, 100 + tokens)
        weights = make_router_weights(device, gen)
        x = torch.randn(tokens, HIDDEN, generator=gen, device=device).bfloat16()             # [T, H] bf16
        r_prev = torch.randn(tokens, ROUTER_WIDTH, generator=gen, device=device).bfloat16()  # [T, R] bf16
        route_baseline_rows(results, compiler, shape, [route_args(x, r_prev, weights)], warmup=grid.warmup,
                            iters=grid.iters)


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------

def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None,
        compiler: Compiler | None = None) -> None:
    """Every PyTorch baseline of PERF.md on results.torch_device, rows added to results; the grouped GEMM
    and attention rows come from bench_experts / bench_attention without their zaya rows."""
    from . import bench_attention, bench_experts

    compiler = compiler or Compiler(None)
    grid = grid_for(results.torch_device, quick)
    gemm = bench_experts.grid_for(results.torch_device, quick)
    attention = bench_attention.grid_for(results.torch_device, quick)
    cases = [(f"route T={t}", lambda t=t: _route_case(results, grid, compiler, t)) for t in grid.route_tokens]
    cases += [(f"grouped_gemm_fc1 T={t}",
               lambda t=t: bench_experts.fc1_case(results, gemm, compiler, t, with_zaya=False))
              for t in grid.gemm_tokens]
    cases += [(f"attention_prefill B={b} S={s}",
               lambda b=b, s=s: bench_attention.prefill_case(results, attention, b, s, with_zaya=False))
              for b, s in grid.prefill]
    cases += [(f"attention_decode B={b} L={n}",
               lambda b=b, n=n: bench_attention.decode_case(results, attention, b, n, with_zaya=False))
              for b, n in grid.decode]
    run_cases(cases, progress)


# ---------------------------------------------------------------------------------------------
# topk_gating: our kernel against the PyTorch baselines
# ---------------------------------------------------------------------------------------------

def eager_topk_gating(logits: torch.Tensor, bias: torch.Tensor, k: int):
    """softmax + bias + topk + gather in fp32: logits [T, E'], bias [E'] fp32 -> weights [T, k] fp32,
    ids [T, k] int32."""
    p = torch.softmax(logits.float(), dim=-1)           # [T, E'] fp32
    ids = torch.topk(p + bias, k, dim=-1).indices       # [T, k] int64
    return p.gather(-1, ids), ids.to(torch.int32)


def _permuted_grid(rows: int, routes: int, gen: torch.Generator, device) -> torch.Tensor:
    """[rows, E'] fp32: each row a random permutation of distinct values (step 1/32 above 64 routes,
    else 1/8, so a row spans <= 8) plus noise below a quarter step: no two logits of a row are close."""
    step = 1 / 32 if routes > 64 else 1 / 8
    values = (torch.arange(routes, device=device, dtype=torch.float32) - routes // 2) * step
    perm = torch.argsort(torch.rand(rows, routes, generator=gen, device=device), dim=1)
    noise = (torch.rand(rows, routes, generator=gen, device=device) - 0.5) * (step / 2)
    return values[perm] + noise


def tie_free_logits(tokens: int, routes: int, k: int, gen: torch.Generator, device):
    """(logits [T, E'] fp32, bias [E'] fp32) whose scores p + bias are, in every row, at least 1e-5 apart
    among the top k + 1 (float64): far above fp32 softmax rounding (~1e-7), so the chosen ids are unique."""
    bias = torch.randn(routes, generator=gen, device=device) * 0.01
    logits = _permuted_grid(tokens, routes, gen, device)
    for _ in range(20):  # each pass redraws the ~1-10% of rows with a near tie
        score = torch.softmax(logits.double(), dim=-1) + bias.double()
        top = torch.topk(score, min(k + 1, routes), dim=-1).values
        near_tie = ((top[:, :-1] - top[:, 1:]) < 1e-5).any(dim=-1)  # [T] bool; k + 1 >= 2 columns always
        bad = int(near_tie.sum())
        if bad == 0:
            break
        logits[near_tie] = _permuted_grid(bad, routes, gen, device)
    return logits, bias


def _topk_case(results: Results, grid: Grid, compiler: Compiler, tokens: int, routes: int, k: int,
               with_zaya: bool) -> None:
    device, op = results.torch_device, "topk_gating"
    shape = {"T": tokens, "E": routes, "k": k, "dtype": "fp32"}
    impls = ("zaya", "eager", "torch_graph", "torch_compile") if with_zaya else ("eager", "torch_graph",
                                                                                 "torch_compile")
    with shape_guard(results, op, shape, impls):
        gen = generator(device, 500 + tokens * routes + k)
        logits, bias = tie_free_logits(tokens, routes, k, gen, device)
        ref_weights, ref_ids = reference.topk_gating(logits, bias, k)
        nbytes = tokens * routes * 4 + routes * 4 + tokens * k * 8  # logits + bias read, weights + ids written
        timing = dict(warmup=grid.warmup, iters=grid.iters, bytes=nbytes)

        def agrees(weights, ids) -> bool:
            ids_equal = torch.equal(ids.to(torch.int32), ref_ids)
            return ids_equal and bool((weights - ref_weights).abs().max() <= 1e-5)

        # (logits [T, E'] fp32, bias [E'] fp32) per set; the first set's logits are the checked ones
        sets = [(logits, bias)] + [(tie_free_logits(tokens, routes, k, gen, device)[0], bias)
                                   for _ in range(rotation_count(device, tokens * routes * 4) - 1)]

        def torch_topk(x, b):
            return eager_topk_gating(x, b, k)

        if with_zaya:
            def zaya(x, b):
                return torch.ops.zaya.topk_gating(x, b, k, False, -1)
            record(results, op, "zaya", shape, zaya, graph=True, rotate=sets, check=lambda: agrees(*zaya(*sets[0])),
                   **timing)
        record(results, op, "eager", shape, torch_topk, rotate=sets, check=lambda: agrees(*torch_topk(*sets[0])),
               **timing)
        record(results, op, "torch_graph", shape, torch_topk, graph=True, rotate=sets,
               check=lambda: agrees(*torch_topk(*sets[0])), **timing)
        record_compiled(results, compiler, op, shape, torch_topk, sets,
                        check=lambda compiled: agrees(*compiled(*sets[0])), **timing)


def run_topk(results: Results, *, quick: bool = False, progress: ProgressFn | None = None,
             compiler: Compiler | None = None) -> None:
    """topk_gating rows: "zaya" (torch.ops.zaya.topk_gating, only where it has a GPU kernel), eager,
    torch_graph and torch_compile, each with `correct` = ids equal to the reference and weights within
    1e-5, on tie-free logits."""
    compiler = compiler or Compiler(None)
    grid = grid_for(results.torch_device, quick)
    with_zaya = results.torch_device.type == "cuda" and zaya_kernels.has_device_kernel("topk_gating")
    if not with_zaya:
        note("topk_gating: no device kernel here; the zaya rows are skipped, the baselines still timed")
    cases = [(f"topk_gating T={t} E'={e} k={k}",
              lambda t=t, e=e, k=k: _topk_case(results, grid, compiler, t, e, k, with_zaya))
             for e, k in TOPK_CONFIGS for t in grid.topk_tokens]
    run_cases(cases, progress)
