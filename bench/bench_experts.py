# SPDX-License-Identifier: Apache-2.0
"""Experts benchmark (suite "experts"): the grouped expert GEMM and the whole expert sub-layer against
the best PyTorch compositions, measured in one run (issue 12).

Rows (ZAYA1 shapes: E = 16 experts, H = 2048, F = 2048; tokens routed top-1 uniformly at random):
  grouped_gemm_fc1  T, E, K = H, N = 2F
    zaya              ops.grouped_gemm(a, w, expert_offsets [E+1]), CUDA-graph replay
    torch_grouped_mm  torch._grouped_mm(a, w^T, offs = segment ends [E] int32, a device cumsum), graph
    torch_mm_loop     one torch.mm per non-empty expert, graph: the segment bounds are read on the host
                      when the inputs are made (a sync a real layer pays per step, not timed here)
    torch_compile     torch.compile of the torch_grouped_mm call (harness.Compiler), graph
    dense_mm          (T >= 16384) one mm of the same FLOPs, graph: the dense bf16 rate of this run,
                      a speed bound, never a baseline; zaya rows get dense_rate_fraction = dense / zaya time
  moe_mlp           T, H, F, E, k = 1
    zaya              ops.moe_mlp on moe_align's schedule (block_m 64), graph
    torch_grouped_mm  grouped_mm_moe: the same op in PyTorch on the same schedule: index_select gather,
                      torch._grouped_mm fc1, SwiGLU, torch._grouped_mm fc2, weighted index_add_, graph
    torch_compile     torch.compile of grouped_mm_moe, graph
Every row has floor_us = max(touched experts' weights + activations at the measured copy ceiling, FLOPs
at the measured matmul ceiling); zaya rows also of_floor = time / floor_us. The inputs rotate through
sets whose touched weights together exceed twice the last-level cache (two copies of the weights, and
the routing shifted from set to set), so every call reads its experts from HBM, as a 40-layer model does.

    python -m bench.bench_experts [--quick] [--no-compile] [--out DIR]    # after an in-place build
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import zaya_kernels
from zaya_kernels import ops, reference

from .baselines import EXPERTS, HIDDEN, shape_guard
from .harness import (Compiler, ProgressFn, Results, floor_us, gemm_agrees, gemm_flops, generator, grouped_gemm_bytes,
                      note, record, record_compiled, release_memory, rotation_count, run_cases, safe_ratio,
                      standalone_main)

FFN = 2048          # F: fc1 is [E, 2F, H] (gate | up), fc2 [E, H, F]
MOE_BLOCK_M = 64    # moe_align's block_m for moe_mlp (zaya_kernels.model.state.MOE_BLOCK_M)
FC1_IMPLS = ("zaya", "torch_grouped_mm", "torch_mm_loop", "torch_compile", "dense_mm")
MOE_IMPLS = ("zaya", "torch_grouped_mm", "torch_compile")


@dataclass(frozen=True)
class Grid:
    tokens: tuple
    dense_tokens: tuple  # where the dense_mm rate row is measured
    experts: int
    hidden: int
    ffn: int
    weight_copies: int   # independent weight tensors the rotation sets alternate between
    warmup: int
    iters: int


def grid_for(device: torch.device, quick: bool) -> Grid:
    if device.type == "cpu":
        return Grid((1, 16, 64), (64,), 4, 64, 64, 1, 1, 3)
    if quick:
        return Grid((1, 128, 4096, 65536), (65536,), EXPERTS, HIDDEN, FFN, 2, 5, 30)
    return Grid((1, 16, 128, 1024, 4096, 16384, 65536), (16384, 65536), EXPERTS, HIDDEN, FFN, 2, 10, 100)


# ---------------------------------------------------------------------------------------------
# the PyTorch compositions
# ---------------------------------------------------------------------------------------------

def grouped_mm_fc1(a: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """a [M, K] bf16 in expert order, w [E, N, K] bf16, ends [E] int32 cumulative segment ends -> [M, N] bf16.
    torch._grouped_mm's offs are the segment ENDS (E entries; rows past ends[-1] are left unwritten)."""
    return torch._grouped_mm(a, w.transpose(-2, -1), offs=ends)


def mm_loop(a: torch.Tensor, w: torch.Tensor, bounds) -> torch.Tensor:
    """One torch.mm per non-empty expert: a [M, K], w [E, N, K], bounds = the E segment ends as host ints
    (an eager layer reads them from the device first, one sync) -> [M, N] bf16."""
    out = a.new_empty(a.shape[0], w.shape[1])
    start = 0
    for expert, end in enumerate(bounds):
        if end > start:
            torch.mm(a[start:end], w[expert].t(), out=out[start:end])
        start = end
    return out


def grouped_mm_moe(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2,
                   skip_mode: str = "scaled_input"):
    """moe_mlp in PyTorch on moe_align's schedule, capturable (every shape static, no host sync):
    x [T, H] bf16, topk_weights [T, k] fp32, topk_ids [T, k] int32, sorted_token_ids [C] int32 (pair
    indices t*k + j by expert, padding T*k), expert_offsets [E+1] int32 (padded segment starts, a device
    cumsum: [1:] are the segment ends torch._grouped_mm takes), w_fc1 [E, 2F, H], w_fc2 [E, H, F] -> [T, H] bf16.
    Padding rows are computed (segments are block_m-padded, as a tiled kernel computes them) and dropped."""
    tokens, k = topk_ids.shape
    num_experts, ffn = w_fc1.shape[0], w_fc2.shape[2]
    pair = sorted_token_ids.long()
    real = pair < tokens * k                                                    # [C] False for padding
    pair = torch.where(real, pair, 0)
    token = pair // k
    ends = expert_offsets[1:]
    h = torch._grouped_mm(x.index_select(0, token), w_fc1.transpose(-2, -1), offs=ends)   # [C, 2F] bf16
    act = (F.silu(h[:, :ffn].float()) * h[:, ffn:].float()).bfloat16()                     # [C, F] bf16
    o = torch._grouped_mm(act, w_fc2.transpose(-2, -1), offs=ends)                        # [C, H] bf16
    weight = topk_weights.reshape(-1).index_select(0, pair)                                # [C] fp32
    # where, not a multiply: rows past expert_offsets[E] are unwritten by _grouped_mm (may hold NaN)
    contribution = torch.where(real[:, None], o.float() * weight[:, None], 0.0)
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, token, contribution)
    if skip_mode == "scaled_input":
        skip = (topk_weights * (topk_ids == num_experts)).sum(dim=1, keepdim=True)         # [T, 1] fp32
        y = y + skip * x.float()
    return y.bfloat16()


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

def _routing(device, gen, tokens: int, experts: int, copies: int, set_bytes_of) -> tuple[list[torch.Tensor], int]:
    """Top-1 ids of every rotation set ([T] int64 each) and the experts each set touches. Set i routes
    token t to (base[t] + i // copies) % E and uses weight copy i % copies, so consecutive sets pair
    different (copy, expert) and, at T = 1, no expert is read twice before the rotation wraps."""
    base = torch.randint(0, experts, (tokens,), generator=gen, device=device)
    touched = int(torch.unique(base).numel()) if tokens else 0
    count = rotation_count(device, set_bytes_of(touched))
    return [(base + i // copies) % experts for i in range(count)], touched


def _weights(device, gen, copies: int, *shape) -> list[torch.Tensor]:
    """`copies` random bf16 tensors of `shape`, scaled by fan_in^-1/2 (activations stay O(1))."""
    return [(torch.randn(*shape, generator=gen, device=device) * shape[-1] ** -0.5).bfloat16() for _ in range(copies)]


def _annotate(results: Results, op: str, shape: dict) -> None:
    """Ratios of the zaya rows of one shape, guarded: of_floor (time / floor) and, where measured,
    dense_rate_fraction (dense mm time / our time at equal FLOPs = our rate / the dense rate)."""
    rows = [r for r in results.rows if r["op"] == op and r["shape"] == shape]
    dense = next((r for r in rows if r["impl"] == "dense_mm"), None)
    for row in rows:
        if row["impl"] == "zaya" and row.get("median_us"):
            row["of_floor"] = safe_ratio(row["median_us"], row.get("floor_us"))
            if dense is not None:
                row["dense_rate_fraction"] = safe_ratio(dense.get("median_us"), row["median_us"])


def skip_notes(device: torch.device, kernel_ops) -> None:
    """Say which zaya rows this run skips: ops without a device kernel here (the CPU has none)."""
    for kernel_op in kernel_ops:
        if device.type != "cuda" or not zaya_kernels.has_device_kernel(kernel_op):
            note(f"{kernel_op}: no device kernel here (zaya_kernels.has_device_kernel({kernel_op!r}) is False "
                 "on this device); its zaya rows are skipped, the baselines are still timed")


# ---------------------------------------------------------------------------------------------
# grouped_gemm_fc1
# ---------------------------------------------------------------------------------------------

def fc1_case(results: Results, grid: Grid, compiler: Compiler, tokens: int, *, with_zaya: bool = True) -> None:
    device, op = results.torch_device, "grouped_gemm_fc1"
    experts, k, n = grid.experts, grid.hidden, 2 * grid.ffn
    shape = {"T": tokens, "E": experts, "K": k, "N": n}
    with_zaya = with_zaya and device.type == "cuda" and zaya_kernels.has_device_kernel("grouped_gemm")
    with shape_guard(results, op, shape, FC1_IMPLS):
        gen = generator(device, 200 + tokens)
        weights = _weights(device, gen, grid.weight_copies, experts, n, k)           # [E, N, K] bf16 each
        routes, touched = _routing(device, gen, tokens, experts, grid.weight_copies,
                                   lambda touched: grouped_gemm_bytes(tokens, touched, n, k))
        sets = []  # (a [T, K] bf16, w [E, N, K], ends [E] int32, expert_offsets [E+1] int32, host bounds)
        for i, ids in enumerate(routes):
            ends = torch.cumsum(torch.bincount(ids, minlength=experts), 0).to(torch.int32)
            a = torch.randn(tokens, k, generator=gen, device=device).bfloat16()
            sets.append((a, weights[i % grid.weight_copies], ends, F.pad(ends, (1, 0)), tuple(ends.tolist())))
        flops = gemm_flops(tokens, n, k)
        nbytes = grouped_gemm_bytes(tokens, touched, n, k)
        common = dict(flops=flops, bytes=nbytes, floor_us=floor_us(results.ceilings, flops=flops, bytes=nbytes),
                      experts_touched=touched, warmup=grid.warmup, iters=grid.iters)
        a0, w0, ends0, offsets0, _ = sets[0]
        expected = reference.grouped_gemm(a0, w0, offsets0)                            # fp32 compute, bf16 out

        def zaya(a, w, ends, offsets, bounds):
            return ops.grouped_gemm(a, w, offsets)

        def grouped(a, w, ends, offsets, bounds):
            return grouped_mm_fc1(a, w, ends)

        def loop(a, w, ends, offsets, bounds):
            return mm_loop(a, w, bounds)

        if with_zaya:
            record(results, op, "zaya", shape, zaya, rotate=sets, graph=True,
                   check=lambda: gemm_agrees(zaya(*sets[0]), expected), **common)
        if hasattr(torch, "_grouped_mm"):
            record(results, op, "torch_grouped_mm", shape, grouped, rotate=sets, graph=True,
                   check=lambda: gemm_agrees(grouped(*sets[0]), expected), **common)
            record_compiled(results, compiler, op, shape, grouped_mm_fc1, [s[:3] for s in sets],
                            check=lambda compiled: gemm_agrees(compiled(a0, w0, ends0), expected), **common)
        else:
            results.add_row(op, "torch_grouped_mm", shape, None, error=f"torch {torch.__version__} has no _grouped_mm")
        record(results, op, "torch_mm_loop", shape, loop, rotate=sets, graph=True,
               check=lambda: gemm_agrees(loop(*sets[0]), expected), **common)
        del expected
        if tokens in grid.dense_tokens:
            dense_bytes = grouped_gemm_bytes(tokens, 1, n, k)  # [N, K] of one expert: the same FLOPs, dense
            record(results, op, "dense_mm", shape, lambda a, w, *_: torch.mm(a, w[0].t()), rotate=sets, graph=True,
                   flops=flops, bytes=dense_bytes, warmup=grid.warmup, iters=grid.iters)
        _annotate(results, op, shape)
        del sets, weights
        release_memory(device)


# ---------------------------------------------------------------------------------------------
# moe_mlp
# ---------------------------------------------------------------------------------------------

def moe_bytes(tokens: int, touched: int, hidden: int, ffn: int, k: int = 1) -> int:
    """The sub-layer's least traffic: the touched experts' fc1 [2F, H] + fc2 [H, F] bf16, x read and y
    written (bf16), the routing (k ids int32 + k weights fp32 per token)."""
    return 2 * touched * 3 * ffn * hidden + 2 * 2 * tokens * hidden + 8 * tokens * k


def moe_flops(tokens: int, hidden: int, ffn: int, k: int = 1) -> int:
    return gemm_flops(tokens * k, 2 * ffn, hidden) + gemm_flops(tokens * k, hidden, ffn)


def moe_case(results: Results, grid: Grid, compiler: Compiler, tokens: int, *, with_zaya: bool = True) -> None:
    device, op = results.torch_device, "moe_mlp"
    experts, hidden, ffn = grid.experts, grid.hidden, grid.ffn
    shape = {"T": tokens, "H": hidden, "F": ffn, "E": experts, "k": 1}
    with_zaya = with_zaya and device.type == "cuda" and zaya_kernels.has_device_kernel("moe_mlp")
    with shape_guard(results, op, shape, MOE_IMPLS):
        gen = generator(device, 600 + tokens)
        fc1 = _weights(device, gen, grid.weight_copies, experts, 2 * ffn, hidden)     # [E, 2F, H] bf16 each
        fc2 = _weights(device, gen, grid.weight_copies, experts, hidden, ffn)         # [E, H, F] bf16 each
        routes, touched = _routing(device, gen, tokens, experts, grid.weight_copies,
                                   lambda touched: moe_bytes(tokens, touched, hidden, ffn))
        sets = []  # moe_mlp's arguments: (x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2)
        for i, ids in enumerate(routes):
            topk_ids = ids.to(torch.int32)[:, None]                                                 # [T, 1] int32
            sorted_ids, _, offsets, _ = reference.moe_align(topk_ids, experts, MOE_BLOCK_M)
            x = torch.randn(tokens, hidden, generator=gen, device=device).bfloat16()               # [T, H] bf16
            weight = 0.1 + 0.9 * torch.rand(tokens, 1, generator=gen, device=device)               # [T, 1] fp32
            sets.append((x, weight, topk_ids, sorted_ids, offsets, fc1[i % grid.weight_copies],
                         fc2[i % grid.weight_copies]))
        flops, nbytes = moe_flops(tokens, hidden, ffn), moe_bytes(tokens, touched, hidden, ffn)
        common = dict(flops=flops, bytes=nbytes, floor_us=floor_us(results.ceilings, flops=flops, bytes=nbytes),
                      experts_touched=touched, block_m=MOE_BLOCK_M, warmup=grid.warmup, iters=grid.iters)
        expected = reference.moe_mlp(*sets[0])                                                     # fp32 compute

        if with_zaya:
            record(results, op, "zaya", shape, ops.moe_mlp, rotate=sets, graph=True,
                   check=lambda: gemm_agrees(ops.moe_mlp(*sets[0]), expected), **common)
        if hasattr(torch, "_grouped_mm"):
            record(results, op, "torch_grouped_mm", shape, grouped_mm_moe, rotate=sets, graph=True,
                   check=lambda: gemm_agrees(grouped_mm_moe(*sets[0]), expected), **common)
            record_compiled(results, compiler, op, shape, grouped_mm_moe, sets,
                            check=lambda compiled: gemm_agrees(compiled(*sets[0]), expected), **common)
        else:
            results.add_row(op, "torch_grouped_mm", shape, None, error=f"torch {torch.__version__} has no _grouped_mm")
        _annotate(results, op, shape)
        del sets, fc1, fc2, expected
        release_memory(device)


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------

def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None,
        compiler: Compiler | None = None) -> None:
    """grouped_gemm_fc1 and moe_mlp rows on results.torch_device (tiny CPU sizes exercise the code only)."""
    compiler = compiler or Compiler(None)
    grid = grid_for(results.torch_device, quick)
    skip_notes(results.torch_device, ("grouped_gemm", "moe_mlp"))
    cases = [(f"grouped_gemm_fc1 T={t}", lambda t=t: fc1_case(results, grid, compiler, t)) for t in grid.tokens]
    cases += [(f"moe_mlp T={t}", lambda t=t: moe_case(results, grid, compiler, t)) for t in grid.tokens]
    run_cases(cases, progress)


if __name__ == "__main__":
    standalone_main("experts", run, __doc__)
