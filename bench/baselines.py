# SPDX-License-Identifier: Apache-2.0
"""The PyTorch baselines of PERF.md, all measured in one run next to the ceilings they are read against.

run(results):      route (eager router), grouped_gemm_fc1 (mm loop / torch._grouped_mm / one dense mm),
                   attention_prefill and attention_decode (SDPA with the flash and cuDNN backends).
run_topk(results): topk_gating, our kernel ("zaya", when built) against eager PyTorch, checked exactly.

On a GPU the grids are PERF.md's; on the CPU every grid shrinks to tiny sizes, which exercises each
code path but measures nothing worth keeping. A backend that fails on a shape leaves a row with
"error" instead of stopping the run.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import zaya_kernels
from zaya_kernels import reference

from .harness import (ProgressFn, Results, attention_flops, flush_bytes, floor_us, gemm_flops, grouped_gemm_bytes,
                      run_cases, time_cpu, time_cuda)

# ZAYA1-8B geometry (ZAYA1_ARCHITECTURE.md)
HIDDEN = 2048
ROUTER_WIDTH = 256
EXPERTS = 16
ROUTES = EXPERTS + 1  # the experts + the skip route
FC1_OUT = 4096        # gate | up, 2 x 2048
Q_HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128
SDPA_IMPLS = (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION))
GEMM_IMPLS = ("torch_mm_loop", "torch_grouped_mm", "dense_mm")
TOPK_CONFIGS = ((17, 1), (64, 2), (256, 8))  # (E' routes, k): ZAYA1, then wider MoE routers
MAX_ROTATION_SETS = 64


@dataclass(frozen=True)
class Grid:
    route_tokens: tuple
    gemm_tokens: tuple
    gemm_experts: int
    gemm_k: int
    gemm_n: int
    prefill: tuple  # (batch, seqlen)
    decode: tuple   # (batch, cached keys)
    topk_tokens: tuple
    warmup: int
    iters: int


def grid_for(device: torch.device, quick: bool) -> Grid:
    if device.type == "cpu":
        return Grid((1, 16), (1, 16, 64), 4, 64, 128, ((1, 64), (2, 32)), ((1, 128), (2, 64)), (1, 128), 1, 3)
    if quick:
        return Grid((1, 1024, 65536), (1, 128, 4096, 65536), EXPERTS, HIDDEN, FC1_OUT, ((4, 4096),),
                    ((1, 32768), (32, 32768)), (1, 65536), 5, 30)
    return Grid((1, 16, 128, 1024, 4096, 65536), (1, 16, 128, 1024, 4096, 16384, 65536), EXPERTS, HIDDEN, FC1_OUT,
                ((16, 1024), (4, 4096), (1, 16384)), ((1, 4096), (1, 32768), (32, 32768), (128, 8192)),
                (1, 128, 1024, 65536), 10, 100)


# ---------------------------------------------------------------------------------------------
# measuring one row, surviving failures
# ---------------------------------------------------------------------------------------------

def _error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


def _time(device: torch.device, fn, grid: Grid, graph: bool, rotate) -> tuple[dict, str]:
    """Timing stats and how they were taken: 'wall' (CPU), 'graph' (replay) or 'events'."""
    kwargs = dict(warmup=grid.warmup, iters=grid.iters, rotate=rotate)
    if device.type == "cpu":
        return time_cpu(fn, **kwargs), "wall"
    if graph:
        try:
            return time_cuda(fn, graph=True, **kwargs), "graph"
        except RuntimeError as err:  # this op cannot be captured: time it eagerly, inputs still rotated
            torch.cuda.synchronize()
            return time_cuda(fn, **kwargs), f"events (graph capture failed: {_error_text(err)[:120]})"
    return time_cuda(fn, **kwargs), "events"


def _measure(results: Results, grid: Grid, op: str, impl: str, shape: dict, fn, *, graph=False, rotate=None,
             check=None, **row) -> None:
    """Time fn (after running check(), whose bool becomes `correct`) and add its row, or an error row."""
    try:
        correct = check() if check is not None else None
        stats, how = _time(results.torch_device, fn, grid, graph, rotate)
    except Exception as err:  # noqa: BLE001  (any backend failure becomes a row, not a crash)
        results.add_row(op, impl, shape, None, error=_error_text(err))
        _release_memory(results.torch_device)
        return
    results.add_row(op, impl, shape, stats["median_us"], correct=correct, p20_us=stats["p20_us"],
                    p80_us=stats["p80_us"], timing=how, **row)


@contextlib.contextmanager
def _shape_guard(results: Results, op: str, shape: dict, impls):
    """If building a shape's inputs fails (e.g. out of memory), every impl without a row gets an error row."""
    first = len(results.rows)
    try:
        yield
    except Exception as err:  # noqa: BLE001
        done = {r["impl"] for r in results.rows[first:]}
        for impl in impls:
            if impl not in done:
                results.add_row(op, impl, shape, None, error=_error_text(err))
        _release_memory(results.torch_device)


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rotation_sets(device: torch.device, set_bytes: int) -> int:
    """How many input sets make the rotated working set exceed the flush size (so that calls inside one
    graph replay start cold), capped at 64 sets."""
    return max(1, min(MAX_ROTATION_SETS, math.ceil(flush_bytes(device) / max(1, set_bytes))))


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# route: the ZAYA1 router in eager PyTorch
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


def _route_case(results: Results, grid: Grid, tokens: int) -> None:
    device, shape = results.torch_device, {"T": tokens}
    with _shape_guard(results, "route", shape, ("eager",)):
        gen = _generator(device, 100 + tokens)
        weights = make_router_weights(device, gen)
        x = torch.randn(tokens, HIDDEN, generator=gen, device=device).bfloat16()             # [T, H] bf16
        r_prev = torch.randn(tokens, ROUTER_WIDTH, generator=gen, device=device).bfloat16()  # [T, R] bf16
        _measure(results, grid, "route", "eager", shape, lambda: eager_route(x, r_prev, weights))


# ---------------------------------------------------------------------------------------------
# grouped_gemm_fc1: the experts' first GEMM
# ---------------------------------------------------------------------------------------------

def mm_loop(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Per-expert torch.mm over contiguous segments: a [T, K] bf16 in expert order, w [E, N, K] bf16,
    offs [E] int32 segment ends -> [T, N] bf16. The bounds come to the host first (one sync), as an
    eager MoE layer must do to slice."""
    out = a.new_empty(a.shape[0], w.shape[1])
    start = 0
    for expert, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(a[start:end], w[expert].t(), out=out[start:end])
        start = end
    return out


def gemm_agrees(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """DeepGEMM's global similarity 1 - 2<x,y>/(|x|^2+|y|^2) (float64) below 1e-4: two fp32-accumulating
    bf16 GEMMs differ by output rounding (~1e-6); a wrong segment or layout gives ~0.5-1."""
    if out.shape != ref.shape:
        return False
    x, y = out.double(), ref.double()
    if not bool(torch.isfinite(x).all()):
        return False
    denom = (x * x + y * y).sum()
    return bool(denom == 0 or 1 - 2 * (x * y).sum() / denom < 1e-4)


def _grouped_gemm_case(results: Results, grid: Grid, tokens: int) -> None:
    device, op = results.torch_device, "grouped_gemm_fc1"
    experts, k, n = grid.gemm_experts, grid.gemm_k, grid.gemm_n
    shape = {"T": tokens, "E": experts, "K": k, "N": n}
    with _shape_guard(results, op, shape, GEMM_IMPLS):
        gen = _generator(device, 200 + tokens)
        a = torch.randn(tokens, k, generator=gen, device=device).bfloat16()                   # [T, K] bf16
        w = (torch.randn(experts, n, k, generator=gen, device=device) * k ** -0.5).bfloat16()  # [E, N, K] bf16
        ids = torch.randint(0, experts, (tokens,), generator=gen, device=device)              # [T] top-1, uniform
        counts = torch.bincount(ids, minlength=experts)                                       # [E] int64
        offs = torch.cumsum(counts, 0).to(torch.int32)                                        # [E] int32 segment ends
        touched = int((counts > 0).sum())
        flops = gemm_flops(tokens, n, k)
        nbytes = grouped_gemm_bytes(tokens, touched, n, k)
        floor = floor_us(results.ceilings, flops=flops, bytes=nbytes)
        common = dict(flops=flops, bytes=nbytes, floor_us=floor, experts_touched=touched)
        loop_out = mm_loop(a, w, offs)
        _measure(results, grid, op, "torch_mm_loop", shape, lambda: mm_loop(a, w, offs), **common)
        if hasattr(torch, "_grouped_mm"):
            def grouped():
                return torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)
            _measure(results, grid, op, "torch_grouped_mm", shape, grouped,
                     check=lambda: gemm_agrees(grouped(), loop_out), **common)
        else:
            results.add_row(op, "torch_grouped_mm", shape, None, error=f"torch {torch.__version__} has no _grouped_mm")
        del loop_out
        dense_w = w[0]  # [N, K]: one mm of the same FLOPs reads one expert's weights only
        _measure(results, grid, op, "dense_mm", shape, lambda: torch.mm(a, dense_w.t()), flops=flops,
                 bytes=grouped_gemm_bytes(tokens, 1, n, k))


# ---------------------------------------------------------------------------------------------
# attention: F.scaled_dot_product_attention, GQA 8:2, head dim 128
# ---------------------------------------------------------------------------------------------

def _sdpa(q, k, v, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _prefill_case(results: Results, grid: Grid, batch: int, seqlen: int) -> None:
    device, op = results.torch_device, "attention_prefill"
    shape = {"B": batch, "S": seqlen, "Hq": Q_HEADS, "Hkv": KV_HEADS, "D": HEAD_DIM}
    with _shape_guard(results, op, shape, [impl for impl, _ in SDPA_IMPLS]):
        gen = _generator(device, 300 + batch * seqlen)
        q = torch.randn(batch, Q_HEADS, seqlen, HEAD_DIM, generator=gen, device=device).bfloat16()   # [B, Hq, S, D]
        k = torch.randn(batch, KV_HEADS, seqlen, HEAD_DIM, generator=gen, device=device).bfloat16()  # [B, Hkv, S, D]
        v = torch.randn(batch, KV_HEADS, seqlen, HEAD_DIM, generator=gen, device=device).bfloat16()  # [B, Hkv, S, D]
        flops = attention_flops(batch, Q_HEADS, seqlen, seqlen, HEAD_DIM, causal=True)
        for impl, backend in SDPA_IMPLS:
            with sdpa_kernel(backend):
                _measure(results, grid, op, impl, shape, lambda: _sdpa(q, k, v, causal=True), flops=flops)


def _decode_case(results: Results, grid: Grid, batch: int, keys: int) -> None:
    """One query token per sequence over `keys` cached keys. is_causal=False: torch aligns a causal mask
    top-left, which would let the single query see key 0 only."""
    device, op = results.torch_device, "attention_decode"
    shape = {"B": batch, "L": keys, "Hq": Q_HEADS, "Hkv": KV_HEADS, "D": HEAD_DIM}
    kv_bytes = 2 * batch * KV_HEADS * keys * HEAD_DIM * 2  # K and V, bf16
    # A working set below the flush size is a microsecond case: graph replay over rotated sets.
    small = kv_bytes < flush_bytes(device)
    with _shape_guard(results, op, shape, [impl for impl, _ in SDPA_IMPLS]):
        gen = _generator(device, 400 + batch * keys)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=device).bfloat16()

        count = _rotation_sets(device, kv_bytes) if small else 1
        # (q [B, Hq, 1, D], k [B, Hkv, L, D], v [B, Hkv, L, D]) bf16 per set
        sets = [(randn(batch, Q_HEADS, 1, HEAD_DIM), randn(batch, KV_HEADS, keys, HEAD_DIM),
                 randn(batch, KV_HEADS, keys, HEAD_DIM)) for _ in range(count)]
        for impl, backend in SDPA_IMPLS:
            with sdpa_kernel(backend):
                _measure(results, grid, op, impl, shape, lambda q, k, v: _sdpa(q, k, v, causal=False),
                         graph=small, rotate=sets, bytes=kv_bytes)


def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None) -> None:
    """Every PyTorch baseline of PERF.md on results.torch_device, rows added to results."""
    grid = grid_for(results.torch_device, quick)
    cases = [(f"route T={t}", lambda t=t: _route_case(results, grid, t)) for t in grid.route_tokens]
    cases += [(f"grouped_gemm_fc1 T={t}", lambda t=t: _grouped_gemm_case(results, grid, t)) for t in grid.gemm_tokens]
    cases += [(f"attention_prefill B={b} S={s}", lambda b=b, s=s: _prefill_case(results, grid, b, s))
              for b, s in grid.prefill]
    cases += [(f"attention_decode B={b} L={n}", lambda b=b, n=n: _decode_case(results, grid, b, n))
              for b, n in grid.decode]
    run_cases(cases, progress)


# ---------------------------------------------------------------------------------------------
# topk_gating: our kernel against eager PyTorch
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


def _topk_case(results: Results, grid: Grid, tokens: int, routes: int, k: int, with_zaya: bool) -> None:
    device, op = results.torch_device, "topk_gating"
    shape = {"T": tokens, "E": routes, "k": k, "dtype": "fp32"}
    impls = ("zaya", "eager") if with_zaya else ("eager",)
    with _shape_guard(results, op, shape, impls):
        gen = _generator(device, 500 + tokens * routes + k)
        logits, bias = tie_free_logits(tokens, routes, k, gen, device)
        ref_weights, ref_ids = reference.topk_gating(logits, bias, k)
        nbytes = tokens * routes * 4 + routes * 4 + tokens * k * 8  # logits + bias read, weights + ids written

        def agrees(weights, ids) -> bool:
            ids_equal = torch.equal(ids.to(torch.int32), ref_ids)
            return ids_equal and bool((weights - ref_weights).abs().max() <= 1e-5)

        sets = [(logits,)] + [tie_free_logits(tokens, routes, k, gen, device)[:1]
                              for _ in range(_rotation_sets(device, tokens * routes * 4) - 1)]
        if with_zaya:
            def zaya(x):
                return torch.ops.zaya.topk_gating(x, bias, k, False, -1)
            _measure(results, grid, op, "zaya", shape, zaya, graph=True, rotate=sets, bytes=nbytes,
                     check=lambda: agrees(*zaya(logits)))
        _measure(results, grid, op, "eager", shape, lambda x: eager_topk_gating(x, bias, k), graph=True, rotate=sets,
                 bytes=nbytes, check=lambda: agrees(*eager_topk_gating(logits, bias, k)))


def run_topk(results: Results, *, quick: bool = False, progress: ProgressFn | None = None) -> None:
    """topk_gating rows: "zaya" (torch.ops.zaya.topk_gating, only where it has a GPU kernel) and "eager",
    each with `correct` = ids equal to the reference and weights within 1e-5, on tie-free logits."""
    grid = grid_for(results.torch_device, quick)
    with_zaya = results.torch_device.type == "cuda" and zaya_kernels.has_device_kernel("topk_gating")
    cases = [(f"topk_gating T={t} E'={e} k={k}", lambda t=t, e=e, k=k: _topk_case(results, grid, t, e, k, with_zaya))
             for e, k in TOPK_CONFIGS for t in grid.topk_tokens]
    run_cases(cases, progress)
