# SPDX-License-Identifier: Apache-2.0
"""GPU tier (`-m gpu`, the H200): the routing kernels — zaya_router (both sm_90a variants), moe_align,
topk_gating — against zaya_kernels.reference (the spec), DESIGN.md §6's rules: exact ids/offsets on
tie-free inputs, float outputs within 2x the bf16 reference's error, poisoned outputs fully written,
CUDA-graph capture and torch.compile(fullgraph=True)."""
from __future__ import annotations

import pytest
import torch

import zaya_kernels
from zaya_kernels import ops, reference

from .util import (ROUTER_TIE_MARGIN, TIED_ROUTES, assert_close_2x, eps_router_case, poison_, redraw_ties_,
                   reference_scores, router_args, router_weights, tie_free_logits, tie_weights)

pytestmark = pytest.mark.gpu

HIDDEN, WIDTH, ROUTES = 2048, 256, 17  # ZAYA1: H, R, E' (16 experts + the skip route)
SKIP = ROUTES - 1
TOKENS = (0, 1, 2, 7, 16, 128, 1000, 1024, 4096, 65536)
MARGIN = ROUTER_TIE_MARGIN  # tests/util.py says why 1e-3 separates the top two scores enough


@pytest.fixture(autouse=True)
def _needs_kernels():
    for op in ("zaya_router", "moe_align", "zaya_route", "topk_gating"):
        if not zaya_kernels.has_device_kernel(op):
            pytest.skip(f"zaya::{op} has no GPU kernel in this build")


# ---------------------------------------------------------------------------------------------
# zaya_router
# ---------------------------------------------------------------------------------------------

def make_router_inputs(tokens, gen, *, eda=True, weights=None, tie_free=True, hidden=HIDDEN):
    """Random router inputs on the GPU, tie-free by MARGIN unless asked: x [T, H] bf16, r_prev [T, R] bf16."""
    w = weights if weights is not None else router_weights(gen, hidden=hidden)
    x = torch.randn(tokens, hidden, generator=gen, device="cuda").bfloat16()
    r_prev = torch.randn(tokens, WIDTH, generator=gen, device="cuda").bfloat16() if eda else None
    if tie_free and tokens:
        redraw_ties_(x, r_prev, w, gen, MARGIN)
    return x, r_prev, w


def check_router(out, x, r_prev, w, eps=1e-5):
    """Exact ids; weights and r_out within 2x the bf16 reference's error (DESIGN.md §6)."""
    weights, ids, r_out = out
    args = router_args(x, r_prev, w, eps)
    ref_w, ref_ids, ref_r = reference.zaya_router(*args)
    low_w, _, low_r = reference.zaya_router(*args, compute_dtype=torch.bfloat16)
    assert ids.dtype == torch.int32 and ids.shape == (x.shape[0], 1)
    mismatch = (ids != ref_ids).nonzero()[:, 0]
    if mismatch.numel():
        top2 = reference_scores(x[mismatch], None if r_prev is None else r_prev[mismatch], w, eps).topk(2, dim=-1)
        detail = [(int(t), int(ids[t]), int(ref_ids[t]), f"{float(g):.2e}")
                  for t, g in zip(mismatch[:5], (top2.values[:5, 0] - top2.values[:5, 1]))]
        raise AssertionError(f"{mismatch.numel()} ids differ; (token, kernel, reference, reference top-2 gap): "
                             f"{detail}")
    assert_close_2x(weights, ref_w, low_w, 1e-6, "weights")
    assert_close_2x(r_out.float(), ref_r.float(), low_r.float(), 1e-6, "r_out")


def variants():
    return ("auto", "cluster", "split", "tile")


# Every variant and every split token-group shape, forced through ZAYA_ROUTER_VARIANT.
FORCED_VARIANTS = ("cluster", "split", "tile", "split16", "split16p", "split16c", "split32", "split48")


@pytest.fixture
def router_variant(request, monkeypatch):
    variant = request.param
    if variant == "auto":
        monkeypatch.delenv("ZAYA_ROUTER_VARIANT", raising=False)
    else:
        monkeypatch.setenv("ZAYA_ROUTER_VARIANT", variant)
    return variant


@pytest.mark.parametrize("router_variant", ["auto"], indirect=True)
@pytest.mark.parametrize("tokens", TOKENS)
def test_router_matches_reference(tokens, router_variant, cuda_gen):
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    check_router(ops.zaya_router(*router_args(x, r_prev, w)), x, r_prev, w)


@pytest.mark.parametrize("router_variant", FORCED_VARIANTS, indirect=True)
@pytest.mark.parametrize("tokens", (1, 7, 100, 241, 700, 1000, 4096))
def test_router_each_variant(tokens, router_variant, cuda_gen):
    """Every variant, and every token-group shape of the split variant, at sizes where the automatic
    choice would not pick it."""
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    check_router(ops.zaya_router(*router_args(x, r_prev, w)), x, r_prev, w)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
@pytest.mark.parametrize("tokens", (5, 300, 3000))
def test_router_without_eda(tokens, router_variant, cuda_gen):
    """The first MoE layer: r_prev None, r = d."""
    x, r_prev, w = make_router_inputs(tokens, cuda_gen, eda=False)
    check_router(ops.zaya_router(*router_args(x, None, w)), x, None, w)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_router_skip_route_chosen(router_variant, cuda_gen):
    w = router_weights(cuda_gen)
    w["balancing_bias"][SKIP] = 1.0  # p_skip + 1 beats every p_e + ~0
    x, r_prev, _ = make_router_inputs(777, cuda_gen, weights=w)
    out = ops.zaya_router(*router_args(x, r_prev, w))
    assert (out[1] == SKIP).all()
    check_router(out, x, r_prev, w)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_router_all_tokens_on_one_expert(router_variant, cuda_gen):
    w = router_weights(cuda_gen)
    w["balancing_bias"][3] = 1.0
    x, r_prev, _ = make_router_inputs(2000, cuda_gen, weights=w)
    out = ops.zaya_router(*router_args(x, r_prev, w))
    assert (out[1] == 3).all()
    check_router(out, x, r_prev, w)
    sorted_ids, block_experts, offsets, num_padded = ops.moe_align(out[1], ROUTES - 1, 64)
    assert offsets[:4].tolist() == [0] * 4 and offsets[4:].tolist() == [2048] * (ROUTES - 4)
    assert num_padded.item() == 2048 and torch.equal(sorted_ids[:2000].cpu(), torch.arange(2000, dtype=torch.int32))


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_router_biases_change_the_choice(router_variant, cuda_gen):
    """Zero biases, then biases of +-0.05: the choice moves for many tokens, exactly as the reference's."""
    w = router_weights(cuda_gen, bias_scale=0.0)
    x, r_prev, _ = make_router_inputs(1500, cuda_gen, weights=w)
    plain = ops.zaya_router(*router_args(x, r_prev, w))
    check_router(plain, x, r_prev, w)
    w["balancing_bias"] = (torch.rand(ROUTES, generator=cuda_gen, device="cuda") - 0.5) * 0.1
    redraw_ties_(x, r_prev, w, cuda_gen, MARGIN)
    plain = ops.zaya_router(*router_args(x, r_prev, {**w, "balancing_bias": torch.zeros_like(w["balancing_bias"])}))
    biased = ops.zaya_router(*router_args(x, r_prev, w))
    check_router(biased, x, r_prev, w)
    moved = (plain[1] != biased[1]).float().mean().item()
    assert moved > 0.05, f"biases of +-0.05 moved only {moved:.1%} of the tokens"


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_router_non_finite_rows(router_variant, cuda_gen):
    """A token whose x row holds NaN or inf gets id 0 and weight NaN (ops.zaya_router's documented
    result); its r_out row is non-finite; every other token is unaffected."""
    x, r_prev, w = make_router_inputs(300, cuda_gen)
    bad = torch.tensor([0, 17, 128, 299], device="cuda")
    x[0, 5] = float("nan")
    x[17, 100] = float("inf")
    x[128, 2047] = -float("inf")
    x[299] = float("nan")
    weights, ids, r_out = ops.zaya_router(*router_args(x, r_prev, w))
    assert (ids[bad] == 0).all() and torch.isnan(weights[bad]).all()
    assert (~torch.isfinite(r_out[bad].float())).any(dim=1).all()
    good = torch.ones(300, dtype=torch.bool, device="cuda")
    good[bad] = False
    check_router((weights[good], ids[good], r_out[good]), x[good], r_prev[good], w)
    ref_ids = reference.zaya_router(*router_args(x, r_prev, w))[1]
    assert torch.equal(ids, ref_ids)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
@pytest.mark.parametrize("tokens", (1, 333, 2500))
def test_router_out_form_writes_everything(tokens, router_variant, cuda_gen):
    """Poisoned .out buffers (with strided weights/ids rows) are completely written."""
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    weights = poison_(torch.empty(tokens, 3, device="cuda"))[:, 1:2]
    ids = poison_(torch.empty(tokens, 2, dtype=torch.int32, device="cuda"))[:, :1]
    r_out = poison_(torch.empty(tokens, WIDTH, dtype=torch.bfloat16, device="cuda"))
    ops.zaya_router(*router_args(x, r_prev, w), out=(weights, ids, r_out))
    assert torch.isfinite(weights).all() and (ids != -7777).all() and torch.isfinite(r_out.float()).all()
    check_router((weights, ids, r_out), x, r_prev, w)


def test_router_rejects_non_bf16_params(cuda_gen):
    x, r_prev, w = make_router_inputs(4, cuda_gen, tie_free=False)
    args = list(router_args(x, r_prev, w))
    args[2] = args[2].float()  # down_w in fp32
    with pytest.raises(RuntimeError, match=r"down_w must be torch\.bfloat16"):
        torch.ops.zaya.zaya_router(*args)
    args = list(router_args(x, r_prev, w))
    args[11] = args[11].bfloat16()  # balancing_bias in bf16
    with pytest.raises(RuntimeError, match=r"balancing_bias must be torch\.float32"):
        torch.ops.zaya.zaya_router(*args)
    args = list(router_args(x[:, :1000], r_prev, w))
    with pytest.raises(RuntimeError, match=r"H \(x.size\(1\)\) a multiple of 512"):
        torch.ops.zaya.zaya_router(*args)


# ---------------------------------------------------------------------------------------------
# moe_align
# ---------------------------------------------------------------------------------------------

def random_ids(tokens, k, experts, gen, *, outside=True):
    """[T, k] int32 expert ids in [0, E] (E = the skip route), plus a few -1 and > E when `outside`."""
    ids = torch.randint(0, experts + 1, (tokens, k), generator=gen, device="cuda", dtype=torch.int32)
    if outside and tokens:
        noise = torch.rand(tokens, k, generator=gen, device="cuda")
        ids = torch.where(noise < 0.02, torch.full_like(ids, -1), ids)
        ids = torch.where(noise > 0.98, torch.full_like(ids, experts + 7), ids)
    return ids


def check_align(ids, experts, block_m):
    got = ops.moe_align(ids, experts, block_m)
    want = reference.moe_align(ids, experts, block_m)
    for name, a, b in zip(("sorted_token_ids", "block_expert_ids", "expert_offsets", "num_padded"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        diff = (a != b).nonzero()
        assert diff.numel() == 0, f"{name}: {diff.shape[0]} entries differ, first at {diff[:3].flatten().tolist()}"
    return got


def check_align_out_form(ids, experts, block_m):
    """The .out form into poisoned buffers equals the reference (ids may be strided)."""
    want = reference.moe_align(ids.contiguous(), experts, block_m)
    outs = tuple(poison_(torch.empty_like(t)) for t in want)
    ops.moe_align(ids, experts, block_m, out=outs)
    for a, b in zip(outs, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("k,experts,block_m", [(1, 16, 64), (2, 16, 16), (8, 64, 128), (1, 256, 1), (4, 7, 3)])
def test_moe_align_matches_reference(tokens, k, experts, block_m, cuda_gen):
    check_align(random_ids(tokens, k, experts, cuda_gen), experts, block_m)


# The chunk plan (csrc/common/params.h align_chunk_pairs): one CTA up to 4096 pairs for E <= 64 (2048 for
# E <= 128, 1024 for E <= 256), else chunks of 1024 pairs (whole multiples of it above 128 chunks, or above
# 8192 / E chunks); kernels compiled per expert-bit tier (E <= 16, 32, 64, 128, 256; each lane owns 1, 1,
# 2, 4, 8 experts on CUDA). Cases on both sides of each bound; random_ids adds ids outside [0, E).
@pytest.mark.parametrize("tokens,k,experts,block_m", [
    (1, 1, 16, 64), (1024, 1, 16, 64), (1025, 1, 16, 64),           # the old fast path's bound
    (4096, 1, 16, 64), (4097, 1, 16, 64),                            # one CTA: at and one past its bound
    (2048, 2, 16, 16), (2049, 2, 16, 16), (512, 8, 64, 128), (513, 8, 64, 128),  # k = 2 and 8, same bound
    (5120, 1, 16, 64), (5121, 1, 16, 64), (6144, 1, 16, 3),          # 5 chunks exactly, one past, 6 chunks
    (2048, 1, 128, 16), (2049, 1, 128, 16), (1024, 1, 256, 1), (1025, 1, 256, 1),  # one-CTA bounds of E > 64
    (3000, 1, 16, 64), (3000, 1, 17, 64), (3000, 1, 32, 64), (3000, 1, 33, 64),    # expert-bit tiers, one CTA
    (3000, 1, 64, 64), (1500, 1, 65, 64), (1500, 1, 128, 8), (1000, 1, 129, 8),
    (9000, 1, 16, 64), (9000, 1, 17, 64), (9000, 1, 33, 64), (9000, 1, 65, 64), (9000, 1, 200, 64),  # chunked
    (300, 3, 33, 5), (77, 1, 1, 128), (9000, 1, 1, 128), (0, 1, 64, 16), (5, 8, 63, 16)])
def test_moe_align_chunk_plan_bounds(tokens, k, experts, block_m, cuda_gen):
    check_align(random_ids(tokens, k, experts, cuda_gen), experts, block_m)


# Many chunks and several passes per chunk: 64 and 128 chunks of 1024 pairs, then 2048-pair chunks (two
# passes) one pair past 128 x 1024; for E = 256 at most 32 chunks, so passes start past 32768 pairs.
@pytest.mark.parametrize("tokens,k,experts,block_m", [
    (65536, 1, 16, 64), (65535, 2, 16, 64), (131072, 1, 16, 64), (131073, 1, 16, 64), (65537, 2, 64, 32),
    (524289, 1, 16, 64), (4096, 8, 256, 64), (4097, 8, 256, 64), (65536, 1, 256, 16), (40000, 3, 100, 128)])
def test_moe_align_many_chunks_and_passes(tokens, k, experts, block_m, cuda_gen):
    check_align(random_ids(tokens, k, experts, cuda_gen), experts, block_m)


@pytest.mark.parametrize("tokens", (1024, 4096, 9000, 131073))
def test_moe_align_writes_everything(tokens, cuda_gen):
    """Poisoned outputs, strided ids, all ids on the skip route, all outside [0, E), all on one expert."""
    strided = random_ids(tokens, 3, 16, cuda_gen)[:, 1:2]  # [T, 1], row stride 3
    for ids in (strided, torch.full((tokens, 1), 16, dtype=torch.int32, device="cuda"),
                torch.full((tokens, 2), -1, dtype=torch.int32, device="cuda"),
                torch.full((tokens, 1), 5, dtype=torch.int32, device="cuda")):
        check_align_out_form(ids, 16, 64)


def test_moe_align_strided_ids_and_out_form(cuda_gen):
    big = random_ids(3000, 5, 16, cuda_gen)
    ids = big[:, 1:3]  # [T, 2], row stride 5
    check_align_out_form(ids, 16, 32)


def test_moe_align_empty_experts_and_one_expert(cuda_gen):
    ids = torch.full((5000, 1), 9, dtype=torch.int32, device="cuda")
    sorted_ids, blocks, offsets, num_padded = check_align(ids, 16, 64)
    assert offsets[:10].tolist() == [0] * 10 and num_padded.item() == 5056


def test_moe_align_is_deterministic(cuda_gen):
    ids = random_ids(65536, 2, 16, cuda_gen)
    first = ops.moe_align(ids, 16, 64)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, ops.moe_align(ids, 16, 64)))


@pytest.mark.parametrize("tokens", (3000, 20000))
def test_moe_align_cuda_graph(tokens, cuda_gen):
    """One CTA (3000) and the counting + sorting launches (20 chunks), captured and replayed on new ids."""
    static_ids = random_ids(tokens, 1, 16, cuda_gen)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.moe_align(static_ids, 16, 64)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.moe_align(static_ids, 16, 64)
    for _ in range(2):
        static_ids.copy_(random_ids(tokens, 1, 16, cuda_gen))
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, reference.moe_align(static_ids, 16, 64)):
            assert torch.equal(a, b)


def test_moe_align_rejects_too_many_experts(cuda_gen):
    with pytest.raises(RuntimeError, match=r"num_experts must be in 1..256"):
        torch.ops.zaya.moe_align(random_ids(4, 1, 300, cuda_gen), 300, 16)


# ---------------------------------------------------------------------------------------------
# router + align together: CUDA graphs, torch.compile
# ---------------------------------------------------------------------------------------------

BLOCK_M = 64


def route(x, r_prev, w, workspace):
    """The fused op, as the model calls it."""
    return ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, BLOCK_M)


def check_route(out, x, r_prev, w, workspace, block_m=BLOCK_M, eps=1e-5):
    """The router's outputs as check_router's; the align's exactly moe_align's reference on those ids
    (over the E' - 1 experts); the workspace zero again."""
    check_router(out[:3], x, r_prev, w, eps)
    for got, want in zip(out[3:], reference.moe_align(out[1], w["out_w"].shape[0] - 1, block_m)):
        assert torch.equal(got, want)
    assert not workspace.any(), "the kernels left the workspace non-zero"


@pytest.mark.parametrize("router_variant", ["auto"], indirect=True)
@pytest.mark.parametrize("tokens", TOKENS)
def test_route_matches_reference(tokens, router_variant, cuda_gen):
    """zaya_route over every size of the issue, into poisoned .out buffers, twice on one workspace (the
    second call relies on the first having zeroed it), equal to the two ops it fuses."""
    workspace = ops.route_workspace("cuda")
    for _ in range(2):
        x, r_prev, w = make_router_inputs(tokens, cuda_gen)
        like = ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, BLOCK_M)
        out = tuple(poison_(torch.empty_like(t)) for t in like)
        ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, BLOCK_M, out=out)
        check_route(out, x, r_prev, w, workspace)
        router = ops.zaya_router(*router_args(x, r_prev, w))
        for got, want in zip(out, router + ops.moe_align(router[1], ROUTES - 1, BLOCK_M)):
            assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("router_variant", FORCED_VARIANTS, indirect=True)
@pytest.mark.parametrize("tokens", (1, 7, 100, 241, 700, 1000, 1024))
def test_route_each_variant(tokens, router_variant, cuda_gen):
    """The align inside every variant's last kernel (the tile variant: a launch of its own), every
    split group shape, and the cluster variant in waves (700 and more tokens in 32-token groups)."""
    workspace = ops.route_workspace("cuda")
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    check_route(route(x, r_prev, w, workspace), x, r_prev, w, workspace)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_route_skip_and_one_expert(router_variant, cuda_gen):
    """Skip-route tokens go to no expert; every other token on one expert; no EDA term."""
    workspace = ops.route_workspace("cuda")
    w = router_weights(cuda_gen)
    w["balancing_bias"][5] = 0.5
    w["balancing_bias"][SKIP] = 0.5
    x, _, _ = make_router_inputs(900, cuda_gen, weights=w, eda=False)
    out = route(x, None, w, workspace)
    ids = out[1].flatten()
    assert ((ids == 5) | (ids == SKIP)).all() and (ids == 5).any() and (ids == SKIP).any()
    check_route(out, x, None, w, workspace)
    offsets = out[5]
    assert offsets[6:].eq(offsets[6]).all() and offsets[6] == -(-int((ids == 5).sum()) // BLOCK_M) * BLOCK_M


def test_route_rejects_bad_workspace(cuda_gen):
    x, r_prev, w = make_router_inputs(4, cuda_gen, tie_free=False)
    args = router_args(x, r_prev, w)[:-1]
    for bad, match in ((torch.zeros(1024, dtype=torch.int32, device="cuda"), r"workspace must be torch\.uint8"),
                       (torch.zeros(512, dtype=torch.uint8, device="cuda"), r"workspace must have shape \(1024,\)"),
                       (torch.zeros(1024, dtype=torch.uint8), r"workspace must be on cuda")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.zaya.zaya_route(*args, bad, BLOCK_M)
    with pytest.raises(RuntimeError, match=r"block_m must be >= 1"):
        torch.ops.zaya.zaya_route(*args, ops.route_workspace("cuda"), 0)


@pytest.mark.parametrize("tokens", (1, 128, 1000, 3000))
def test_route_cuda_graph(tokens, cuda_gen):
    workspace = ops.route_workspace("cuda")
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    eager = route(x, r_prev, w, workspace)
    static_x, static_r = x.clone(), r_prev.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        route(static_x, static_r, w, workspace)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = route(static_x, static_r, w, workspace)
    x2, r2, _ = make_router_inputs(tokens, cuda_gen, weights=w)
    static_x.copy_(x2)
    static_r.copy_(r2)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, route(x2, r2, w, workspace)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    static_x.copy_(x)
    static_r.copy_(r_prev)
    graph.replay()
    for a, b in zip(captured, eager):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    check_route(captured, x, r_prev, w, workspace)


def test_route_torch_compile_fullgraph(cuda_gen):
    workspace = ops.route_workspace("cuda")
    x, r_prev, w = make_router_inputs(200, cuda_gen)
    compiled = torch.compile(route, fullgraph=True)
    got = compiled(x, r_prev, w, workspace)
    for a, b in zip(got, route(x, r_prev, w, workspace)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    check_route(got, x, r_prev, w, workspace)


# ---------------------------------------------------------------------------------------------
# topk_gating
# ---------------------------------------------------------------------------------------------

def separated_logits(tokens, routes, k, gen, dtype, bias):
    """Tie-free logits whose reference top-(k+1) biased scores are at least 1e-5 apart (rows redrawn)."""
    logits = tie_free_logits(tokens, routes, gen, dtype=dtype).cuda()
    for _ in range(50):
        p = torch.softmax(logits.double(), dim=-1)
        score = p + (bias.double() if bias is not None else 0)
        top = score.topk(min(k + 1, routes), dim=-1).values
        close = ((top[:, :-1] - top[:, 1:]).min(dim=-1).values < 1e-5).nonzero().flatten()
        if close.numel() == 0:
            return logits
        logits[close] = tie_free_logits(close.numel(), routes, gen, dtype=dtype).cuda()
    raise AssertionError("could not separate the scores")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("k", (1, 2, 8))
@pytest.mark.parametrize("routes", (8, 16, 17, 64, 256))
def test_topk_gating_matches_reference(routes, k, dtype, gen):
    tokens = 1000
    bias = ((torch.rand(routes, generator=gen) - 0.5) * 0.02).cuda()
    renormalize = k > 1 and routes % 2 == 0
    skip_index = routes - 1 if routes in (17, 64) else -1
    big = torch.zeros(tokens, routes + 5, dtype=dtype, device="cuda")
    big[:, 2:2 + routes] = separated_logits(tokens, routes, k, gen, dtype, bias)
    logits = big[:, 2:2 + routes]  # strided rows
    weights = poison_(torch.empty(tokens, k + 3, device="cuda"))[:, 1:1 + k]
    ids = poison_(torch.empty(tokens, k + 2, dtype=torch.int32, device="cuda"))[:, :k]
    ops.topk_gating(logits, bias, k, renormalize, skip_index, out=(weights, ids))
    ref_w, ref_ids = reference.topk_gating(logits, bias, k, renormalize, skip_index)
    low_w, _ = reference.topk_gating(logits, bias, k, renormalize, skip_index, compute_dtype=torch.bfloat16)
    assert torch.equal(ids, ref_ids)
    assert_close_2x(weights, ref_w, low_w, 1e-6, "weights")
    assert (weights - ref_w).abs().max().item() < 1e-5


def test_topk_gating_tie_rule():
    """Equal scores: the lower index wins, in every slot."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5]], device="cuda")
    weights, ids = ops.topk_gating(logits, None, 3)
    assert ids.tolist() == [[1, 2, 4], [0, 1, 2]]
    ref_w, ref_ids = reference.topk_gating(logits, None, 3)
    assert torch.equal(ids, ref_ids) and torch.allclose(weights, ref_w, atol=1e-7, rtol=0)
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], device="cuda")
    assert ops.topk_gating(logits.bfloat16(), bias, 2)[1].tolist() == [[1, 2], [0, 1]]


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_topk_gating_non_finite_rows(dtype):
    """NaN or +inf logits, or all -inf: weights NaN, ids 0..k-1 (the documented result)."""
    logits = torch.randn(6, 17, device="cuda").to(dtype)
    logits[0, 3] = float("nan")
    logits[1, 5] = float("inf")
    logits[2] = -float("inf")
    logits[3, 7] = -float("inf")  # one -inf entry is fine: that route gets p = 0
    weights, ids = ops.topk_gating(logits, None, 2)
    ref_w, ref_ids = reference.topk_gating(logits, None, 2)
    assert ids[:3].tolist() == [[0, 1]] * 3 and torch.isnan(weights[:3]).all()
    assert torch.equal(ids, ref_ids) and torch.isnan(ref_w[:3]).all()
    assert torch.allclose(weights[3:], ref_w[3:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("tokens", (0, 1, 7, 65536))
def test_topk_gating_token_counts(tokens, gen):
    bias = ((torch.rand(17, generator=gen) - 0.5) * 0.02).cuda()
    logits = separated_logits(tokens, 17, 1, gen, torch.bfloat16, bias)
    weights = poison_(torch.empty(tokens, 1, device="cuda"))
    ids = poison_(torch.empty(tokens, 1, dtype=torch.int32, device="cuda"))
    ops.topk_gating(logits, bias, 1, False, 16, out=(weights, ids))
    ref_w, ref_ids = reference.topk_gating(logits, bias, 1, False, 16)
    assert torch.equal(ids, ref_ids)
    assert (weights - ref_w).abs().max().item() < 1e-6 if tokens else weights.numel() == 0


def test_topk_gating_cuda_graph(gen):
    """Captured once, replayed on new logits: the same results as eager calls on those logits."""
    bias = ((torch.rand(64, generator=gen) - 0.5) * 0.02).cuda()
    static_logits = separated_logits(333, 64, 2, gen, torch.float32, bias)
    weights = torch.empty(333, 2, device="cuda")
    ids = torch.empty(333, 2, dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.topk_gating(static_logits, bias, 2, True, 63, out=(weights, ids))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.topk_gating(static_logits, bias, 2, True, 63, out=(weights, ids))
    for _ in range(2):
        fresh = separated_logits(333, 64, 2, gen, torch.float32, bias)
        static_logits.copy_(fresh)
        poison_(weights), poison_(ids)
        graph.replay()
        eager_w, eager_ids = ops.topk_gating(fresh, bias, 2, True, 63)
        assert torch.equal(ids, eager_ids) and torch.equal(weights, eager_w)


def test_topk_gating_torch_compile_fullgraph(gen):
    bias = ((torch.rand(17, generator=gen) - 0.5) * 0.02).cuda()
    logits = separated_logits(1000, 17, 2, gen, torch.bfloat16, bias)

    def gate(x):
        weights, ids = ops.topk_gating(x, bias, 2, True, 16)
        return weights * 2, ids

    compiled = torch.compile(gate, fullgraph=True)
    for a, b in zip(compiled(logits), gate(logits)):
        assert torch.equal(a, b)


def test_router_variant_env_rejects_unknown(monkeypatch, cuda_gen):
    monkeypatch.setenv("ZAYA_ROUTER_VARIANT", "split64")
    x, r_prev, w = make_router_inputs(300, cuda_gen)
    with pytest.raises(RuntimeError, match="ZAYA_ROUTER_VARIANT must be"):
        ops.zaya_router(*router_args(x, r_prev, w))


# ---------------------------------------------------------------------------------------------
# eps, block_m, strided rows, non-finite r_prev, exact ties, other H and E' (each case's reference
# side is checked on the CPU in tests/test_routing_cpu.py section 4)
# ---------------------------------------------------------------------------------------------

def to_cuda(x, r_prev, w):
    return x.cuda(), r_prev.cuda(), {name: t.cuda() for name, t in w.items()}


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
@pytest.mark.parametrize("eps", (1e-2, 1e-8))
def test_router_eps(eps, router_variant):
    """eps other than 1e-5, on rows whose magnitudes make eps decide RMSNorm's n (built on the CPU, so the
    CPU tier checks that eps moves > 10% of these tokens): exact ids at this eps, and a kernel that
    ignored eps (used 1e-5) would differ from them. zaya_route passes eps to its router."""
    x, r_prev, w = to_cuda(*eps_router_case(1000, eps, MARGIN))
    out = ops.zaya_router(*router_args(x, r_prev, w, eps))
    check_router(out, x, r_prev, w, eps)
    default_ids = reference.zaya_router(*router_args(x, r_prev, w, 1e-5))[1]
    assert (out[1] != default_ids).float().mean().item() > 0.1
    workspace = ops.route_workspace("cuda")
    routed = ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, BLOCK_M, eps)
    check_route(routed, x, r_prev, w, workspace, eps=eps)


@pytest.mark.parametrize("router_variant", FORCED_VARIANTS, indirect=True)
@pytest.mark.parametrize("block_m", (1, 16, 128, 256))
@pytest.mark.parametrize("tokens", (1, 100, 1000, 3000))
def test_route_block_m(tokens, block_m, router_variant, cuda_gen):
    """The fused align (inside the router's last kernel up to 1024 tokens, a launch of its own above)
    with block_m other than 64 and about a third of the tokens on the skip route, into poisoned buffers."""
    w = router_weights(cuda_gen)
    w["balancing_bias"][SKIP] = 0.06
    x, r_prev, _ = make_router_inputs(tokens, cuda_gen, weights=w)
    workspace = ops.route_workspace("cuda")
    like = ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, block_m)
    out = tuple(poison_(torch.empty_like(t)) for t in like)
    ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, block_m, out=out)
    check_route(out, x, r_prev, w, workspace, block_m)
    if tokens >= 100:
        share = (out[1] == SKIP).float().mean().item()
        assert 0.1 < share < 0.9, f"the case needs skip-route tokens and experts, got {share:.0%} skips"


@pytest.mark.parametrize("router_variant", FORCED_VARIANTS, indirect=True)
@pytest.mark.parametrize("tokens", (7, 300, 3000))
def test_router_row_strided_x_and_r_prev(tokens, router_variant, cuda_gen):
    """x and r_prev as column windows of wider tensors (row strides H + 24 and R + 16 elements, 16-byte
    aligned as the kernels need): the reference's results, and exactly the contiguous copies' results."""
    x, r_prev, w = make_router_inputs(tokens, cuda_gen)
    x_wide = torch.randn(tokens, HIDDEN + 24, generator=cuda_gen, device="cuda").bfloat16()
    r_wide = torch.randn(tokens, WIDTH + 16, generator=cuda_gen, device="cuda").bfloat16()
    x_wide[:, 8:8 + HIDDEN], r_wide[:, 8:8 + WIDTH] = x, r_prev
    x_view, r_view = x_wide[:, 8:8 + HIDDEN], r_wide[:, 8:8 + WIDTH]
    strided = ops.zaya_router(*router_args(x_view, r_view, w))
    check_router(strided, x, r_prev, w)
    for got, want in zip(strided, ops.zaya_router(*router_args(x, r_prev, w))):
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
    workspace = ops.route_workspace("cuda")
    check_route(ops.zaya_route(*router_args(x_view, r_view, w)[:-1], workspace, BLOCK_M), x, r_prev, w, workspace)


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
def test_router_non_finite_r_prev_rows(router_variant, cuda_gen):
    """A token whose r_prev row holds NaN or an infinity: id 0, weight NaN, a non-finite r_out row; the
    other tokens as the reference's."""
    x, r_prev, w = make_router_inputs(300, cuda_gen)
    bad = torch.tensor([0, 17, 128, 299], device="cuda")
    r_prev[0, 5] = float("nan")
    r_prev[17, 100] = float("inf")
    r_prev[128, 255] = -float("inf")
    r_prev[299] = float("nan")
    weights, ids, r_out = ops.zaya_router(*router_args(x, r_prev, w))
    assert (ids[bad] == 0).all() and torch.isnan(weights[bad]).all()
    assert (~torch.isfinite(r_out[bad].float())).any(dim=1).all()
    good = torch.ones(300, dtype=torch.bool, device="cuda")
    good[bad] = False
    check_router((weights[good], ids[good], r_out[good]), x[good], r_prev[good], w)
    assert torch.equal(ids, reference.zaya_router(*router_args(x, r_prev, w))[1])


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
@pytest.mark.parametrize("tied", TIED_ROUTES)
@pytest.mark.parametrize("tokens", (5, 700, 3000))
def test_router_exact_ties(tokens, tied, router_variant, cuda_gen):
    """Routes whose out_w rows and biases are equal have exactly equal scores, and beat every other route:
    every token must take the lowest of them (the kernel's tie rule on real ties, not only NaN rows)."""
    w = tie_weights(cuda_gen, tied)
    x, r_prev, _ = make_router_inputs(tokens, cuda_gen, weights=w, tie_free=False)
    weights, ids, r_out = ops.zaya_router(*router_args(x, r_prev, w))
    assert (ids == tied[0]).all(), f"ids {ids.flatten().unique().tolist()}, want all {tied[0]}"
    ref_w, ref_ids, ref_r = reference.zaya_router(*router_args(x, r_prev, w))
    low_w, _, low_r = reference.zaya_router(*router_args(x, r_prev, w), compute_dtype=torch.bfloat16)
    assert torch.equal(ids, ref_ids)
    assert_close_2x(weights, ref_w, low_w, 1e-6, "weights")
    assert_close_2x(r_out.float(), ref_r.float(), low_r.float(), 1e-6, "r_out")


@pytest.mark.parametrize("router_variant", variants(), indirect=True)
@pytest.mark.parametrize("hidden", (512, 1024, 1536))
@pytest.mark.parametrize("routes", (2, 5, 32))
@pytest.mark.parametrize("tokens", (7, 1000))
def test_router_hidden_and_routes(tokens, routes, hidden, router_variant, cuda_gen):
    """H and E' other than ZAYA1's 2048 / 17, everywhere the launcher takes them (H a multiple of 512,
    E' in 2..32); zaya_route's align over the E' - 1 experts."""
    w = router_weights(cuda_gen, routes=routes, hidden=hidden)
    x, r_prev, _ = make_router_inputs(tokens, cuda_gen, weights=w, hidden=hidden)
    check_router(ops.zaya_router(*router_args(x, r_prev, w)), x, r_prev, w)
    workspace = ops.route_workspace("cuda")
    check_route(ops.zaya_route(*router_args(x, r_prev, w)[:-1], workspace, 16), x, r_prev, w, workspace, 16)


def test_topk_gating_nan_bias_ranks_last():
    """ops.topk_gating's documented rule: a NaN bias entry ranks its route after every finite score."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5], [3.0, 1.0, 2.0, 0.5]], device="cuda")
    p = torch.softmax(logits, dim=-1)
    weights, ids = ops.topk_gating(logits, torch.tensor([0.0, 0.0, float("nan"), 0.0], device="cuda"), 2)
    assert ids.tolist() == [[1, 3], [0, 1]]
    assert torch.allclose(weights, torch.gather(p, 1, ids.long()), atol=1e-7, rtol=0)
    weights, ids = ops.topk_gating(logits, torch.full((4,), float("nan"), device="cuda"), 3)
    assert ids.tolist() == [[0, 1, 2]] * 2 and torch.allclose(weights, p[:, :3], atol=1e-7, rtol=0)


def test_topk_gating_renormalize_over_zero_p_is_nan():
    """ops.topk_gating's documented rule: renormalising chosen weights that are all 0 gives NaN (0 / 0)."""
    logits = torch.tensor([[0.0, -200.0, -200.0, -1.0]], device="cuda")
    bias = torch.tensor([0.0, 2.0, 2.0, 0.0], device="cuda")
    weights, ids = ops.topk_gating(logits, bias, 2, True)
    assert ids.tolist() == [[1, 2]] and torch.isnan(weights).all()
    assert ops.topk_gating(logits, bias, 2, False)[0].tolist() == [[0.0, 0.0]]
