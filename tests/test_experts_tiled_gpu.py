# SPDX-License-Identifier: Apache-2.0
"""GPU tier (`-m gpu`): the tiled (wgmma/TMA) experts regime, forced with ZAYA_EXPERTS_REGIME=tiled, on the cases
that stress what is particular to it (csrc/cuda/experts_sm90_tiled*): the device-built tile list (segments of
every length around the 128-row tile, empty experts, E = 256, one expert with every row), the persistent walk
(many tiles per CTA at T = 16384), the K tail (TMA zero fill), column tails of the 256-wide (plain) and 128-wide
(SwiGLU) tiles, the scalar store paths (odd N), the zero rows outside the segments, and the moe gather / SwiGLU /
combine epilogues. DESIGN.md §6: outputs poisoned with NaN, max error within 2x the bf16 reference's + a floor, a
global relative error (calc_diff) check on every GEMM. test_experts_gpu.py runs the shared matrix in both regimes."""
from __future__ import annotations

import pytest
import torch

import zaya_kernels
from zaya_kernels import ops, reference

from .util import assert_close_2x, calc_diff, poison_

pytestmark = pytest.mark.gpu

TOKENS = (1, 3, 16, 127, 128, 1000, 4096, 16384)
GLOBAL_DIFF_MAX = 1e-4  # a correct kernel: ~1e-6 (bf16 output rounding); a misplaced tile or fragment: 0.1-1
FLOOR = 1e-6


@pytest.fixture(autouse=True)
def _tiled(monkeypatch):
    for op in ("grouped_gemm", "moe_mlp", "moe_align"):
        if not zaya_kernels.has_device_kernel(op):
            pytest.skip(f"zaya::{op} has no GPU kernel in this build")
    monkeypatch.setenv("ZAYA_EXPERTS_REGIME", "tiled")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# grouped_gemm
# ---------------------------------------------------------------------------------------------

def _gemm_inputs(lengths, n: int, k: int, head: int, tail: int, seed: int):
    """a [M, K], w [E, N, K] bf16 (fan-in scaled) and offsets [E+1] int32 for segments of `lengths` rows
    after `head` rows outside every segment, with `tail` more after them."""
    g = _gen(seed)
    experts = len(lengths)
    rows = head + sum(lengths) + tail
    a = torch.randn(rows, k, generator=g, device="cuda").bfloat16()
    w = (torch.randn(experts, n, k, generator=g, device="cuda") * k ** -0.5).bfloat16()
    offsets = torch.tensor([head] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32).cuda()
    return a, w, offsets


def _check_gemm(a, w, offsets, what):
    out = poison_(torch.empty(a.shape[0], w.shape[1], dtype=torch.bfloat16, device="cuda"))
    assert ops.grouped_gemm(a, w, offsets, out=out) is out
    torch.cuda.synchronize()
    assert not out.isnan().any(), f"{what}: NaN left in out (an element never written)"
    ref = reference.grouped_gemm(a, w, offsets, compute_dtype=torch.float64).float()
    low = reference.grouped_gemm(a, w, offsets, compute_dtype=torch.bfloat16)
    assert_close_2x(out.float(), ref, low.float(), FLOOR, what)
    diff = calc_diff(out, ref)
    assert diff < GLOBAL_DIFF_MAX, f"{what}: global calc_diff {diff:.3e} >= {GLOBAL_DIFF_MAX:g}"
    lo, hi = int(offsets[0]), int(offsets[-1])
    assert (out[:lo] == 0).all() and (out[hi:] == 0).all(), f"{what}: rows outside every segment not zero"
    return out


def _random_lengths(rows: int, experts: int, seed: int) -> list[int]:
    """Top-1 uniform routing of `rows` tokens: multinomial segment lengths (some empty at small T)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, experts, (rows,), generator=g)
    return torch.bincount(picks, minlength=experts).tolist()


@pytest.mark.parametrize("tokens", TOKENS)
def test_tiled_grouped_gemm_fc1(tokens):
    """PERF.md's fc1: E = 16, K = 2048, N = 4096, top-1 uniform segments, 5 + 3 rows outside them."""
    a, w, offsets = _gemm_inputs(_random_lengths(tokens, 16, tokens), 4096, 2048, 5, 3, seed=tokens)
    _check_gemm(a, w, offsets, f"tiled grouped_gemm fc1 T={tokens}")


@pytest.mark.parametrize("nk", ((4096, 2048), (300, 72), (264, 2056), (4104, 136)), ids=lambda s: "N%d-K%d" % s)
def test_tiled_grouped_gemm_tile_edges(nk):
    """Segments of 0, 1, 127, 128, 129, 255, 256, 257 and 300 rows (partial row tiles next to other experts'
    rows), N past a whole number of 256-wide column tiles, K past a whole number of 64-wide k-steps."""
    n, k = nk
    lengths = [127, 0, 128, 1, 129, 255, 0, 256, 257, 300]
    a, w, offsets = _gemm_inputs(lengths, n, k, 2, 130, seed=n + k)
    _check_gemm(a, w, offsets, f"tiled grouped_gemm edges N={n} K={k}")


@pytest.mark.parametrize("expert", (0, 15))
def test_tiled_grouped_gemm_one_expert(expert):
    """Every row on one expert (the first / the last, whose weight boxes end at the tensor's end): 128 row
    tiles x 16 column tiles walked by ~132 persistent CTAs, the stage ring wrapping many times."""
    lengths = [0] * 16
    lengths[expert] = 16384
    a, w, offsets = _gemm_inputs(lengths, 4096, 2048, 0, 0, seed=expert)
    _check_gemm(a, w, offsets, f"tiled grouped_gemm all rows on expert {expert}")


def test_tiled_grouped_gemm_many_experts():
    """E = 256 (the scan over 8 experts per lane), most segments a partial tile, some empty."""
    a, w, offsets = _gemm_inputs(_random_lengths(3000, 256, 11), 264, 128, 17, 40, seed=11)
    _check_gemm(a, w, offsets, "tiled grouped_gemm E=256")


@pytest.mark.parametrize("n", (1, 257))
def test_tiled_grouped_gemm_odd_n(n):
    """Odd N: odd row strides of c, so the epilogue and the zero rows take the 2-byte store paths."""
    a, w, offsets = _gemm_inputs([40, 0, 200, 3], n, 64, 9, 50, seed=n)
    _check_gemm(a, w, offsets, f"tiled grouped_gemm N={n}")


def test_tiled_grouped_gemm_mostly_outside():
    """Most of c outside the segments: the zero rows are spread over more CTAs than there are tiles."""
    a, w, offsets = _gemm_inputs([5, 0, 7], 512, 256, 3000, 5000, seed=4)
    _check_gemm(a, w, offsets, "tiled grouped_gemm mostly zero rows")


def test_tiled_grouped_gemm_deterministic():
    """No atomics, a static schedule: the same inputs give the same bits."""
    a, w, offsets = _gemm_inputs(_random_lengths(2000, 16, 5), 4096, 2048, 0, 0, seed=5)
    first = _check_gemm(a, w, offsets, "tiled grouped_gemm deterministic")
    second = ops.grouped_gemm(a, w, offsets)
    assert torch.equal(first, second), "tiled grouped_gemm: two calls on the same inputs differ"


# ---------------------------------------------------------------------------------------------
# moe_mlp
# ---------------------------------------------------------------------------------------------

def _moe_inputs(tokens: int, k: int, *, experts: int = 16, hidden: int = 2048, ffn: int = 2048, block_m: int = 64,
                routing: str = "random", seed: int = 0):
    g = _gen(3000 + seed)
    x = torch.randn(tokens, hidden, generator=g, device="cuda").bfloat16()          # [T, H] bf16
    topk_weights = torch.rand(tokens, k, generator=g, device="cuda") * 0.9 + 0.05  # [T, k] fp32
    if routing == "one":
        ids = torch.full((tokens, k), experts - 1, dtype=torch.int32, device="cuda")
    else:  # uniform, ~10% the skip route (id E), ~3% no route (-1)
        ids = torch.randint(0, experts, (tokens, k), generator=g, device="cuda", dtype=torch.int32)
        u = torch.rand(tokens, k, generator=g, device="cuda")
        ids = torch.where(u < 0.10, experts, torch.where(u < 0.13, -1, ids)).to(torch.int32)
    sorted_ids, _, offsets, _ = ops.moe_align(ids, experts, block_m)
    w_fc1 = (torch.randn(experts, 2 * ffn, hidden, generator=g, device="cuda") * hidden ** -0.5).bfloat16()
    w_fc2 = (torch.randn(experts, hidden, ffn, generator=g, device="cuda") * ffn ** -0.5).bfloat16()
    return x, topk_weights, ids, sorted_ids, offsets, w_fc1, w_fc2


def _check_moe(args, skip_mode, what):
    out = poison_(torch.empty(args[0].shape, dtype=torch.bfloat16, device="cuda"))
    assert ops.moe_mlp(*args, skip_mode, out=out) is out
    torch.cuda.synchronize()
    assert not out.isnan().any(), f"{what}: NaN left in out (an element never written)"
    ref = reference.moe_mlp(*args, skip_mode, compute_dtype=torch.float64).float()
    low = reference.moe_mlp(*args, skip_mode, compute_dtype=torch.bfloat16)
    assert_close_2x(out.float(), ref, low.float(), FLOOR, what)
    if out.numel():
        diff = calc_diff(out, ref)
        assert diff < GLOBAL_DIFF_MAX, f"{what}: global calc_diff {diff:.3e} >= {GLOBAL_DIFF_MAX:g}"


# T = 16384 with k = 2 left out: T = 4096, k = 2 and T = 16384, k = 1 cover it (the fp64 reference is the slow part).
@pytest.mark.parametrize("tokens,k", [(t, k) for t in TOKENS for k in (1, 2) if (t, k) != (16384, 2)])
def test_tiled_moe_mlp(tokens, k):
    skip_mode = reference.SKIP_MODES[(tokens + k) % 2]
    args = _moe_inputs(tokens, k, seed=tokens + k)
    _check_moe(args, skip_mode, f"tiled moe_mlp T={tokens} k={k} {skip_mode}")


def test_tiled_moe_mlp_one_expert():
    """Every token on the last expert: its fc1 / fc2 weight boxes end at the tensors' end."""
    args = _moe_inputs(8192, 1, routing="one", seed=1)
    _check_moe(args, "scaled_input", "tiled moe_mlp all tokens on one expert")


@pytest.mark.parametrize("block_m", (1, 37, 64, 200))
def test_tiled_moe_mlp_block_m(block_m):
    """Segments padded to any block_m: padding rows inside tiles, segments not a multiple of 128."""
    args = _moe_inputs(1000, 2, block_m=block_m, seed=block_m)
    _check_moe(args, "scaled_input", f"tiled moe_mlp block_m={block_m}")


@pytest.mark.parametrize("shape", ((136, 72, 5), (8, 8, 1), (2056, 520, 3), (264, 136, 256)),
                         ids=lambda s: "H%d-F%d-E%d" % s)
def test_tiled_moe_mlp_odd_shapes(shape):
    """H and F past whole tiles (F = 72: the gate box's rows 72.. are up rows; F = 520: a 128-wide act tile
    with 8 columns), E = 256 with small segments."""
    hidden, ffn, experts = shape
    for tokens, k in ((1, 1), (333, 2), (900, 1)):
        args = _moe_inputs(tokens, k, experts=experts, hidden=hidden, ffn=ffn, block_m=16, seed=tokens + ffn)
        _check_moe(args, "zero", f"tiled moe_mlp H={hidden} F={ffn} E={experts} T={tokens} k={k}")
