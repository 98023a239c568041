# SPDX-License-Identifier: Apache-2.0
"""GPU tier (`-m gpu`, the H200): the experts ops — grouped_gemm and moe_mlp — against zaya_kernels.reference
(the spec), in both regimes forced through ZAYA_EXPERTS_REGIME (small = the decode kernels, tiled = the
tensor-core kernels) at every shape, by DESIGN.md §6's rules: outputs poisoned with NaN before each call and
every element checked written; max error within 2x the bf16 reference's plus a floor, and a global relative
error (calc_diff) far below what a layout bug gives; rows whose value the reference computes in one rounding
(skip rows, zero rows) equal exactly. Plus CUDA-graph capture (replayed on new routing), torch.compile
(fullgraph=True) and bad-input errors that name the argument."""
from __future__ import annotations

import functools

import pytest
import torch

import zaya_kernels
from zaya_kernels import ops, reference

from .util import assert_close_2x, calc_diff, poison_

pytestmark = pytest.mark.gpu

HIDDEN, FFN, EXPERTS = 2048, 2048, 16  # ZAYA1: H, F, E (fc1 [E, 2F, H], fc2 [E, H, F])
TOKENS = (0, 1, 3, 16, 127, 128, 1000, 4096, 16384)
REGIMES = ("small", "tiled")
BLOCK_M = 64  # the model's (zaya_kernels/model/state.py MOE_BLOCK_M)
# calc_diff of a correct kernel is ~1e-6 (bf16 output rounding); a misplaced tile or fragment gives ~0.1-1.
GLOBAL_DIFF_MAX = 1e-4
FLOOR = 1e-6


@pytest.fixture(autouse=True)
def _needs_kernels():
    for op in ("grouped_gemm", "moe_mlp", "moe_align"):
        if not zaya_kernels.has_device_kernel(op):
            pytest.skip(f"zaya::{op} has no GPU kernel in this build")


@pytest.fixture(params=REGIMES)
def regime(request, monkeypatch):
    monkeypatch.setenv("ZAYA_EXPERTS_REGIME", request.param)
    return request.param


def cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


@functools.lru_cache(maxsize=4)
def expert_weights(experts: int, hidden: int, ffn: int, seed: int = 7):
    """w_fc1 [E, 2F, H], w_fc2 [E, H, F] bf16, fan-in scaled so that activations stay O(1). Cached: the
    ZAYA1 set is 400 MB; tests never write it."""
    g = cuda_generator(seed)
    w_fc1 = (torch.randn(experts, 2 * ffn, hidden, generator=g, device="cuda") * hidden ** -0.5).bfloat16()
    w_fc2 = (torch.randn(experts, hidden, ffn, generator=g, device="cuda") * ffn ** -0.5).bfloat16()
    return w_fc1, w_fc2


def route_ids(tokens: int, k: int, experts: int, g: torch.Generator, routing: str = "random") -> torch.Tensor:
    """ids [T, k] int32. random: uniform over the experts, ~10% the skip route (id E) and ~3% ids of no route
    (-1, E + 2); one: every slot on expert 3 (or E - 1); empty: experts {1, E - 2} only; skip: every slot
    the skip route."""
    shape = (tokens, k)
    if routing == "one":
        return torch.full(shape, min(3, experts - 1), dtype=torch.int32, device="cuda")
    if routing == "skip":
        return torch.full(shape, experts, dtype=torch.int32, device="cuda")
    if routing == "empty":
        pick = torch.randint(0, 2, shape, generator=g, device="cuda")
        return torch.where(pick == 0, 1, experts - 2).to(torch.int32)
    ids = torch.randint(0, experts, shape, generator=g, device="cuda", dtype=torch.int32)
    u = torch.rand(shape, generator=g, device="cuda")
    ids = torch.where(u < 0.10, experts, ids)
    ids = torch.where((u >= 0.10) & (u < 0.115), -1, ids)
    ids = torch.where((u >= 0.115) & (u < 0.13), experts + 2, ids)
    return ids.to(torch.int32)


def moe_case(tokens: int, k: int, routing: str = "random", *, experts: int = EXPERTS, hidden: int = HIDDEN,
             ffn: int = FFN, block_m: int = BLOCK_M, seed: int = 0):
    """The moe_mlp arguments (without skip_mode): fresh random x, weights and routing, the schedule from the
    GPU moe_align (itself tested exactly against the reference in test_routing_gpu.py)."""
    g = cuda_generator(1000 + seed)
    x = torch.randn(tokens, hidden, generator=g, device="cuda").bfloat16()             # [T, H] bf16
    topk_weights = torch.rand(tokens, k, generator=g, device="cuda") * 0.9 + 0.05     # [T, k] fp32
    ids = route_ids(tokens, k, experts, g, routing)                                  # [T, k] int32
    sorted_ids, _, offsets, _ = ops.moe_align(ids, experts, block_m)
    w_fc1, w_fc2 = expert_weights(experts, hidden, ffn)
    return x, topk_weights, ids, sorted_ids, offsets, w_fc1, w_fc2


def run_moe_mlp(args, skip_mode):
    out = poison_(torch.empty(args[0].shape, dtype=torch.bfloat16, device="cuda"))
    returned = ops.moe_mlp(*args, skip_mode, out=out)
    assert returned is out
    torch.cuda.synchronize()
    return out


def check_moe_mlp(out, args, skip_mode, what):
    x, topk_weights, ids = args[0], args[1], args[2]
    experts = args[5].shape[0]
    assert torch.isfinite(out.float()).all(), f"{what}: NaN left in out (an element never written)"
    ref = reference.moe_mlp(*args, skip_mode)
    low = reference.moe_mlp(*args, skip_mode, compute_dtype=torch.bfloat16)
    ref32 = reference.moe_mlp(*args, skip_mode, compute_dtype=torch.float64).float()
    assert_close_2x(out.float(), ref32, low.float(), FLOOR, what)
    if out.numel():
        diff = calc_diff(out, ref32)
        assert diff < GLOBAL_DIFF_MAX, f"{what}: global calc_diff {diff:.3e} >= {GLOBAL_DIFF_MAX:g}"
    # Rows that run no expert have one rounding in the reference: equal exactly.
    no_expert = ((ids < 0) | (ids >= experts)).all(dim=1)
    if no_expert.any():
        assert torch.equal(out[no_expert], ref[no_expert]), f"{what}: skip / zero rows differ from the reference"


# ---------------------------------------------------------------------------------------------
# moe_mlp
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", (1, 2))
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_mlp_matches_reference(regime, tokens, k):
    skip_mode = reference.SKIP_MODES[(tokens + k) % 2]
    args = moe_case(tokens, k, seed=tokens * 3 + k)
    out = run_moe_mlp(args, skip_mode)
    check_moe_mlp(out, args, skip_mode, f"moe_mlp {regime} T={tokens} k={k} {skip_mode}")


@pytest.mark.parametrize("skip_mode", reference.SKIP_MODES)
@pytest.mark.parametrize("k", (1, 2))
@pytest.mark.parametrize("routing", ("one", "empty", "skip"))
def test_moe_mlp_routing_cases(regime, routing, k, skip_mode):
    """All tokens on one expert, most experts empty, every token on the skip route."""
    for tokens in (1, 300):
        args = moe_case(tokens, k, routing, seed=7 + tokens)
        out = run_moe_mlp(args, skip_mode)
        check_moe_mlp(out, args, skip_mode, f"moe_mlp {regime} {routing} T={tokens} k={k} {skip_mode}")


@pytest.mark.parametrize("block_m", (1, 16, 64, 128))
def test_moe_mlp_block_m(regime, block_m):
    for tokens, k in ((5, 1), (127, 2)):
        args = moe_case(tokens, k, block_m=block_m, seed=block_m + tokens)
        out = run_moe_mlp(args, "scaled_input")
        check_moe_mlp(out, args, "scaled_input", f"moe_mlp {regime} block_m={block_m} T={tokens} k={k}")


@pytest.mark.parametrize("shape", ((136, 72, 5), (8, 8, 1), (2056, 520, 3)), ids=lambda s: "H%d-F%d-E%d" % s)
def test_moe_mlp_odd_shapes(regime, shape):
    """H and F multiples of 8 that are not multiples of any tile (16 rows, 32-wide k chunks, 64/128/256 tiles)."""
    hidden, ffn, experts = shape
    for tokens, k in ((1, 1), (50, 2), (333, 1)):
        args = moe_case(tokens, k, experts=experts, hidden=hidden, ffn=ffn, block_m=16, seed=tokens)
        out = run_moe_mlp(args, "scaled_input")
        check_moe_mlp(out, args, "scaled_input", f"moe_mlp {regime} H={hidden} F={ffn} E={experts} T={tokens}")


def test_moe_mlp_strided_rows(regime):
    """x and out as column slices of wider buffers (row stride != H, 16-byte aligned)."""
    args = list(moe_case(77, 1, seed=5))
    wide = torch.randn(77, HIDDEN + 64, device="cuda").bfloat16()
    wide[:, :HIDDEN] = args[0]
    args[0] = wide[:, :HIDDEN]
    out_wide = torch.full((77, HIDDEN + 64), float("nan"), device="cuda").bfloat16()
    out = out_wide[:, :HIDDEN]
    ops.moe_mlp(*args, "scaled_input", out=out)
    torch.cuda.synchronize()
    check_moe_mlp(out, tuple(args), "scaled_input", f"moe_mlp {regime} strided")
    assert out_wide[:, HIDDEN:].isnan().all(), "moe_mlp wrote past the rows' H columns"


# ---------------------------------------------------------------------------------------------
# grouped_gemm
# ---------------------------------------------------------------------------------------------

def gemm_case(rows: int, n: int, k: int, experts: int, layout: str = "random", seed: int = 0):
    """a [M, K], w [E, N, K] bf16 and offsets [E+1] int32: random segment lengths, with rows before the first
    segment and after the last (both zero in the output); one: every row of the segments on expert E // 2;
    empty: two non-empty experts."""
    g = cuda_generator(2000 + seed)
    a = torch.randn(rows, k, generator=g, device="cuda").bfloat16()
    w = (torch.randn(experts, n, k, generator=g, device="cuda") * k ** -0.5).bfloat16()
    head = rows // 10
    tail = rows // 7
    body = rows - head - tail
    if layout == "one":
        lengths = torch.zeros(experts, dtype=torch.int64)
        lengths[experts // 2] = body
    else:
        weights = torch.rand(experts, generator=torch.Generator().manual_seed(seed))
        if layout == "empty":
            weights[:] = 0
            weights[[0, experts - 1]] = 1
        cuts = (weights.cumsum(0) / weights.sum() * body).round().long()
        lengths = torch.diff(cuts, prepend=torch.zeros(1, dtype=torch.int64))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]) + head
    return a, w, offsets.to(torch.int32).cuda()


def check_grouped_gemm(out, a, w, offsets, what):
    assert torch.isfinite(out.float()).all(), f"{what}: NaN left in out (an element never written)"
    ref = reference.grouped_gemm(a, w, offsets, compute_dtype=torch.float64).float()
    low = reference.grouped_gemm(a, w, offsets, compute_dtype=torch.bfloat16)
    assert_close_2x(out.float(), ref, low.float(), FLOOR, what)
    if out.numel():
        diff = calc_diff(out, ref)
        assert diff < GLOBAL_DIFF_MAX, f"{what}: global calc_diff {diff:.3e} >= {GLOBAL_DIFF_MAX:g}"
    lo, hi = int(offsets[0]), int(offsets[-1])
    assert (out[:lo] == 0).all() and (out[hi:] == 0).all(), f"{what}: rows outside every segment not zero"


def run_grouped_gemm(a, w, offsets):
    out = poison_(torch.empty(a.shape[0], w.shape[1], dtype=torch.bfloat16, device="cuda"))
    assert ops.grouped_gemm(a, w, offsets, out=out) is out
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("tokens", TOKENS)
def test_grouped_gemm_fc1_matches_reference(regime, tokens):
    """PERF.md's fc1 shape: 16 experts, K = 2048, N = 4096."""
    a, w, offsets = gemm_case(tokens, 2 * FFN, HIDDEN, EXPERTS, seed=tokens)
    out = run_grouped_gemm(a, w, offsets)
    check_grouped_gemm(out, a, w, offsets, f"grouped_gemm {regime} M={tokens}")


@pytest.mark.parametrize("layout", ("one", "empty"))
def test_grouped_gemm_segments(regime, layout):
    for rows in (1, 9, 1000):
        a, w, offsets = gemm_case(rows, 256, 512, 8, layout, seed=rows)
        out = run_grouped_gemm(a, w, offsets)
        check_grouped_gemm(out, a, w, offsets, f"grouped_gemm {regime} {layout} M={rows}")


@pytest.mark.parametrize("nk", ((100, 72), (1, 8), (8, 2056), (4104, 136)), ids=lambda s: "N%d-K%d" % s)
def test_grouped_gemm_odd_shapes(regime, nk):
    """N any (not a multiple of 16 / 128 / 256), K a multiple of 8 that is not one of 32 / 64."""
    n, k = nk
    for rows in (3, 130, 700):
        a, w, offsets = gemm_case(rows, n, k, 5, seed=rows + n)
        out = run_grouped_gemm(a, w, offsets)
        check_grouped_gemm(out, a, w, offsets, f"grouped_gemm {regime} N={n} K={k} M={rows}")


def test_grouped_gemm_strided_a(regime):
    a, w, offsets = gemm_case(300, 200, 256, 4, seed=3)
    wide = torch.randn(300, 256 + 40, device="cuda").bfloat16()
    wide[:, :256] = a
    out = run_grouped_gemm(wide[:, :256], w, offsets)
    check_grouped_gemm(out, a, w, offsets, f"grouped_gemm {regime} strided a")


# ---------------------------------------------------------------------------------------------
# CUDA graphs and torch.compile
# ---------------------------------------------------------------------------------------------

def capture(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


@pytest.mark.parametrize("k", (1, 2))
@pytest.mark.parametrize("tokens", (1, 200))
def test_moe_mlp_cuda_graph(regime, tokens, k):
    """Captured once, replayed on new tokens AND new routing: the work list lives on the device."""
    static = [t.clone() for t in moe_case(tokens, k, seed=1)[:5]]
    w_fc1, w_fc2 = expert_weights(EXPERTS, HIDDEN, FFN)
    out = torch.empty(tokens, HIDDEN, dtype=torch.bfloat16, device="cuda")
    graph, _ = capture(lambda: ops.moe_mlp(*static, w_fc1, w_fc2, "scaled_input", out=out))
    for seed in (2, 3):
        fresh = moe_case(tokens, k, seed=seed)
        for buffer, value in zip(static, fresh[:5]):
            buffer.copy_(value)
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        check_moe_mlp(out, fresh, "scaled_input", f"moe_mlp {regime} graph replay T={tokens} k={k} seed={seed}")


def test_grouped_gemm_cuda_graph(regime):
    a, w, offsets = gemm_case(500, 384, 256, 6, seed=1)
    out = torch.empty(500, 384, dtype=torch.bfloat16, device="cuda")
    graph, _ = capture(lambda: ops.grouped_gemm(a, w, offsets, out=out))
    for seed in (2, 3):
        a2, _, offsets2 = gemm_case(500, 384, 256, 6, seed=seed)
        a.copy_(a2)
        offsets.copy_(offsets2)
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        check_grouped_gemm(out, a, w, offsets, f"grouped_gemm {regime} graph replay seed={seed}")


def test_experts_torch_compile_fullgraph(regime):
    args = moe_case(40, 2, seed=9)
    a, w, offsets = gemm_case(90, 128, 256, 4, seed=9)

    def step(x, topk_weights, ids, sorted_ids, expert_offsets, w_fc1, w_fc2, a, w, offsets):
        y = torch.ops.zaya.moe_mlp(x, topk_weights, ids, sorted_ids, expert_offsets, w_fc1, w_fc2, "zero")
        return y, torch.ops.zaya.grouped_gemm(a, w, offsets)

    y, c = torch.compile(step, fullgraph=True)(*args, a, w, offsets)
    torch.cuda.synchronize()
    check_moe_mlp(y, args, "zero", f"moe_mlp {regime} compiled")
    check_grouped_gemm(c, a, w, offsets, f"grouped_gemm {regime} compiled")


# ---------------------------------------------------------------------------------------------
# bad input: a RuntimeError naming the argument (never a crash)
# ---------------------------------------------------------------------------------------------

def _small_gemm():
    a, w, offsets = gemm_case(10, 16, 32, 3, seed=0)
    return [a, w, offsets]


def _small_moe():
    return list(moe_case(5, 2, experts=4, hidden=32, ffn=8, block_m=4, seed=0)) + ["scaled_input"]


BAD_GEMM = [
    (0, lambda a: a[0].int(), r"a must be torch\.bfloat16 or torch\.float32, got torch\.int32"),
    (0, lambda a: a[0][0], r"a must be 2-D, got shape \(32,\)"),
    (1, lambda a: a[1].cpu(), r"w must be on cuda:\d, got cpu"),
    (1, lambda a: a[1][:, :, :8], r"w must be \[E, N, K=32\], got \(3, 16, 8\)"),
    (1, lambda a: a[1].float(), r"w must be torch\.bfloat16, got torch\.float32"),
    (2, lambda a: a[2][:3], r"expert_offsets must have shape \(4,\), got \(3,\)"),
    (2, lambda a: a[2].long(), r"expert_offsets must be torch\.int32, got torch\.int64"),
    (0, lambda a: torch.empty(10, 64, dtype=torch.bfloat16, device="cuda")[:, ::2],
     r"a must have a contiguous last dimension"),
    (1, lambda a: a[1].transpose(1, 2).contiguous().transpose(1, 2), r"w must be contiguous"),
]


@pytest.mark.parametrize("index,mutate,message", BAD_GEMM, ids=[b[2][:30] for b in BAD_GEMM])
def test_grouped_gemm_bad_input(index, mutate, message):
    args = _small_gemm()
    args[index] = mutate(args)
    with pytest.raises(RuntimeError, match=message):
        ops.grouped_gemm(*args)


def test_grouped_gemm_bad_k_and_out():
    a = torch.randn(10, 12, device="cuda").bfloat16()
    w = torch.randn(3, 16, 12, device="cuda").bfloat16()
    offsets = torch.tensor([0, 4, 4, 10], dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match=r"K \(a\.shape\[1\]\) a positive multiple of 8"):
        ops.grouped_gemm(a, w, offsets)
    args = _small_gemm()
    with pytest.raises(RuntimeError, match=r"out must have shape \(10, 16\), got \(10, 15\)"):
        ops.grouped_gemm(*args, out=torch.empty(10, 15, dtype=torch.bfloat16, device="cuda"))
    with pytest.raises(RuntimeError, match=r"out must be torch\.bfloat16, got torch\.float32"):
        ops.grouped_gemm(*args, out=torch.empty(10, 16, device="cuda"))


def test_grouped_gemm_fp32_is_not_implemented_on_cuda():
    args = [t.float() if t.is_floating_point() else t for t in _small_gemm()]
    with pytest.raises(NotImplementedError, match=r"a must be torch\.bfloat16 on cuda"):
        ops.grouped_gemm(*args)


BAD_MOE = [
    (0, lambda a: a[0].float(), r"x must be torch\.bfloat16, got torch\.float32"),
    (1, lambda a: a[1][:, :1], r"topk_weights must have shape \(5, 2\), got \(5, 1\)"),
    (2, lambda a: a[2].long(), r"topk_ids must be torch\.int32, got torch\.int64"),
    (3, lambda a: a[3].cpu(), r"sorted_token_ids must be on cuda:\d, got cpu"),
    (4, lambda a: a[4][:3], r"expert_offsets must have shape \(5,\), got \(3,\)"),
    (5, lambda a: a[5][:, :, :16], r"w_fc1 must be \[E, 2F, H=32\], got \(4, 16, 16\)"),
    (6, lambda a: a[6][:, :, :4], r"w_fc2 must have shape \(4, 32, 8\), got \(4, 32, 4\)"),
    (7, lambda a: "drop", r"skip_mode must be one of \('scaled_input', 'zero'\), got 'drop'"),
    (0, lambda a: torch.empty(5, 64, dtype=torch.bfloat16, device="cuda")[:, 1:33],
     r"x must start on a 16-byte boundary"),
]


@pytest.mark.parametrize("index,mutate,message", BAD_MOE, ids=[b[2][:30] for b in BAD_MOE])
def test_moe_mlp_bad_input(index, mutate, message):
    args = _small_moe()
    args[index] = mutate(args)
    with pytest.raises(RuntimeError, match=message):
        ops.moe_mlp(*args)


def test_moe_mlp_bad_ffn_and_out():
    x = torch.randn(5, 32, device="cuda").bfloat16()
    ids = torch.zeros(5, 1, dtype=torch.int32, device="cuda")
    sorted_ids, _, offsets, _ = ops.moe_align(ids, 2, 1)
    w1 = torch.randn(2, 12, 32, device="cuda").bfloat16()
    w2 = torch.randn(2, 32, 6, device="cuda").bfloat16()
    with pytest.raises(RuntimeError, match=r"F \(w_fc1\.shape\[1\] / 2\) a positive multiple of 8"):
        ops.moe_mlp(x, torch.rand(5, 1, device="cuda"), ids, sorted_ids, offsets, w1, w2)
    args = _small_moe()
    with pytest.raises(RuntimeError, match=r"topk_ids must have 5 rows, got 4"):
        ops.moe_mlp(args[0], args[1][:4], args[2][:4], *args[3:])
    with pytest.raises(RuntimeError, match=r"out must have shape \(5, 32\), got \(5, 31\)"):
        ops.moe_mlp(*args, out=torch.empty(5, 31, dtype=torch.bfloat16, device="cuda"))


def test_bad_regime_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("ZAYA_EXPERTS_REGIME", "fast")
    with pytest.raises(RuntimeError, match=r"ZAYA_EXPERTS_REGIME must be small, tiled or unset, got 'fast'"):
        ops.grouped_gemm(*_small_gemm())
