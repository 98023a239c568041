# SPDX-License-Identifier: Apache-2.0
"""CPU tier: every reference op against the independent naive loops of tests/naive.py, with the
edge cases of DESIGN.md §6 (T = 0 and 1, empty experts, the skip route chosen, k > 1, page
boundaries, sequence length 1). Needs no compiled extension."""
import math

import pytest
import torch

from zaya_kernels import reference as R

from . import naive
from .util import tie_free_logits

BF16_REL = 2.0 ** -8  # one bf16 rounding (half an ulp is 2^-9) plus fp32 noise


def assert_bf16_close(out: torch.Tensor, exact: torch.Tensor, what: str, atol: float = 1e-6):
    out, exact = out.double(), exact.double()
    err = (out - exact).abs()
    bound = BF16_REL * exact.abs() + atol
    assert bool((err <= bound).all()), f"{what}: max error {err.max().item():.3e} beyond one bf16 rounding"


# ---------------------------------------------------------------------------------------------
# topk_gating
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", [0, 1, 7, 33])
@pytest.mark.parametrize("experts,k", [(8, 1), (17, 1), (17, 2), (64, 8), (256, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("renormalize", [False, True])
def test_topk_gating_matches_naive(tokens, experts, k, dtype, renormalize, gen):
    logits = tie_free_logits(tokens, experts, gen, dtype)
    bias = (torch.rand(experts, generator=gen) - 0.5) * 0.01
    weights, ids = R.topk_gating(logits, bias, k, renormalize)
    ref_w, ref_ids = naive.topk_gating(logits, bias, k, renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == (tokens, k) and ids.shape == (tokens, k)
    assert torch.equal(ids.long(), ref_ids)
    torch.testing.assert_close(weights.double(), ref_w, rtol=1e-5, atol=1e-7)


def test_topk_gating_tie_goes_to_lower_index():
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5]])
    _, ids = R.topk_gating(logits, None, 2)
    assert ids.tolist() == [[1, 2]]
    # Equal scores made by the bias: p1 + 0 == p0 + (p1 - p0) exactly representable here.
    p = torch.softmax(torch.tensor([[0.0, math.log(2.0)]]), -1)
    bias = torch.tensor([float(p[0, 1] - p[0, 0]), 0.0])
    _, ids = R.topk_gating(torch.tensor([[0.0, math.log(2.0)]]), bias, 1)
    assert ids.tolist() == [[0]]


def test_topk_gating_bias_changes_choice_not_weight(gen):
    logits = tie_free_logits(16, 17, gen)
    w0, ids0 = R.topk_gating(logits, None, 1)
    bias = torch.zeros(17)
    bias[3] = 2.0  # larger than any probability gap: expert 3 always wins
    w1, ids1 = R.topk_gating(logits, bias, 1)
    assert (ids1 == 3).all() and not (ids0 == 3).all()
    torch.testing.assert_close(w1[:, 0], torch.softmax(logits, -1)[:, 3])


def test_topk_gating_skip_forces_later_slots(gen):
    logits = tie_free_logits(6, 17, gen)
    logits[:, 16] = 10.0  # the skip route wins slot 0
    weights, ids = R.topk_gating(logits, None, 3, skip_index=16)
    assert (ids == 16).all()
    assert (weights[:, 1:] == 0).all() and (weights[:, 0] > 0.9).all()
    ref_w, ref_ids = naive.topk_gating(logits, None, 3, skip_index=16)
    assert torch.equal(ids.long(), ref_ids)
    # Skip chosen second: slot 0 keeps its expert, slots 1.. are the skip route.
    logits[:, 16] = 0.0
    logits[:, 2] = 12.0
    logits[:, 16] = 11.0
    weights, ids = R.topk_gating(logits, None, 3, skip_index=16)
    assert ids[:, 0].eq(2).all() and ids[:, 1:].eq(16).all() and weights[:, 2].eq(0).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_topk_gating_nonfinite_row(bad, gen):
    logits = tie_free_logits(3, 17, gen)
    logits[1, 5] = bad
    weights, ids = R.topk_gating(logits, None, 2)
    assert ids[1].tolist() == [0, 1] and torch.isnan(weights[1]).all()
    assert torch.isfinite(weights[[0, 2]]).all()
    logits[2] = -math.inf
    weights, ids = R.topk_gating(logits, None, 2)
    assert ids[2].tolist() == [0, 1] and torch.isnan(weights[2]).all()


# ---------------------------------------------------------------------------------------------
# zaya_router
# ---------------------------------------------------------------------------------------------

def _router_params(gen, hidden=48, width=16, routes=5):
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen) * scale).to(torch.bfloat16)  # noqa: E731
    return dict(down_w=r(width, hidden, scale=hidden ** -0.5), down_b=r(width, scale=0.1), eda_scale=r(width),
                norm_w=(1 + 0.1 * torch.randn(width, generator=gen)).to(torch.bfloat16),
                fc1_w=r(width, width, scale=width ** -0.5), fc1_b=r(width, scale=0.1),
                fc2_w=r(width, width, scale=width ** -0.5), fc2_b=r(width, scale=0.1),
                out_w=r(routes, width, scale=2 * width ** -0.5),
                balancing_bias=(torch.rand(routes, generator=gen) - 0.5) * 0.02)


@pytest.mark.parametrize("tokens", [0, 1, 5])
@pytest.mark.parametrize("with_eda", [False, True])
def test_zaya_router_matches_naive(tokens, with_eda, gen):
    p = _router_params(gen)
    x = torch.randn(tokens, 48, generator=gen).to(torch.bfloat16)
    r_prev = torch.randn(tokens, 16, generator=gen).to(torch.bfloat16) if with_eda else None
    args = (x, r_prev, p["down_w"], p["down_b"], p["eda_scale"] if with_eda else None, p["norm_w"], p["fc1_w"],
            p["fc1_b"], p["fc2_w"], p["fc2_b"], p["out_w"], p["balancing_bias"])
    weights, ids, r_out = R.zaya_router(*args)
    ref_w, ref_ids, ref_r = naive.zaya_router(*args)
    assert weights.shape == (tokens, 1) and ids.shape == (tokens, 1) and r_out.shape == (tokens, 16)
    assert r_out.dtype == torch.bfloat16
    assert ids[:, 0].tolist() == ref_ids
    torch.testing.assert_close(weights[:, 0].double(), torch.tensor(ref_w, dtype=torch.float64).reshape(-1),
                               rtol=1e-4, atol=1e-6)
    assert_bf16_close(r_out, torch.tensor(ref_r, dtype=torch.float64).reshape(tokens, 16), "r_out")


def test_zaya_router_first_layer_has_no_eda_term(gen):
    p = _router_params(gen)
    x = torch.randn(4, 48, generator=gen).to(torch.bfloat16)
    base = (p["down_w"], p["down_b"])
    rest = (p["norm_w"], p["fc1_w"], p["fc1_b"], p["fc2_w"], p["fc2_b"], p["out_w"], p["balancing_bias"])
    _, _, r_first = R.zaya_router(x, None, *base, None, *rest)
    d = (x.float() @ p["down_w"].float().T + p["down_b"].float()).to(torch.bfloat16)
    assert torch.equal(r_first, d)
    r_prev = torch.randn(4, 16, generator=gen).to(torch.bfloat16)
    _, _, r_eda = R.zaya_router(x, r_prev, *base, p["eda_scale"], *rest)
    expect = (x.float() @ p["down_w"].float().T + p["down_b"].float() + p["eda_scale"].float() * r_prev.float())
    assert torch.equal(r_eda, expect.to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# moe_align
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,k", [(0, 1), (1, 1), (1, 2), (37, 1), (64, 2)])
@pytest.mark.parametrize("block_m", [1, 4, 16, 64])
def test_moe_align_matches_naive(tokens, k, block_m, gen):
    experts = 16
    ids = torch.randint(0, experts + 1, (tokens, k), generator=gen, dtype=torch.int32)  # 16 = skip route
    if tokens > 1:
        ids[0, 0] = -1  # out of range: no expert
    out = R.moe_align(ids, experts, block_m)
    ref = naive.moe_align(ids, experts, block_m)
    assert [t.dtype for t in out] == [torch.int32] * 4
    assert out[0].tolist() == ref[0]
    assert out[1].tolist() == ref[1]
    assert out[2].tolist() == ref[2]
    assert out[3].tolist() == [ref[3]]


def test_moe_align_all_on_one_expert_and_empty_experts(gen):
    ids = torch.full((50, 1), 7, dtype=torch.int32)
    sorted_ids, blocks, offsets, num_padded = R.moe_align(ids, 16, 16)
    assert offsets.tolist() == [0] * 8 + [64] * 9
    assert sorted_ids[:50].tolist() == list(range(50)) and (sorted_ids[50:] == 50).all()
    assert blocks[:4].tolist() == [7] * 4 and (blocks[4:] == -1).all()
    assert num_padded.tolist() == [64]


# ---------------------------------------------------------------------------------------------
# grouped_gemm and moe_mlp
# ---------------------------------------------------------------------------------------------

def test_grouped_gemm_matches_naive(gen):
    a = torch.randn(21, 16, generator=gen).to(torch.bfloat16)
    w = torch.randn(4, 8, 16, generator=gen).to(torch.bfloat16)
    offsets = torch.tensor([2, 9, 9, 20, 20], dtype=torch.int32)  # expert 1 and 3 empty; rows 0,1,20 outside
    out = R.grouped_gemm(a, w, offsets)
    exact = naive.grouped_gemm(a, w, offsets)
    assert_bf16_close(out, exact, "grouped_gemm")
    assert (out[[0, 1, 20]] == 0).all()


@pytest.mark.parametrize("skip_mode", ["scaled_input", "zero"])
@pytest.mark.parametrize("k", [1, 2])
def test_moe_mlp_matches_naive(skip_mode, k, gen):
    tokens, hidden, f, experts = 9, 16, 8, 4
    x = torch.randn(tokens, hidden, generator=gen).to(torch.bfloat16)
    w1 = (torch.randn(experts, 2 * f, hidden, generator=gen) / 4).to(torch.bfloat16)
    w2 = (torch.randn(experts, hidden, f, generator=gen) / 3).to(torch.bfloat16)
    ids = torch.randint(0, experts + 1, (tokens, k), generator=gen, dtype=torch.int32)
    ids[0, 0] = experts  # the skip route, chosen on purpose
    ids[1, 0] = 2
    weights = torch.rand(tokens, k, generator=gen)
    sorted_ids, _, offsets, _ = R.moe_align(ids, experts, 4)
    out = R.moe_mlp(x, weights, ids, sorted_ids, offsets, w1, w2, skip_mode)
    exact = naive.moe_mlp(x, weights, ids, w1, w2, skip_mode)
    assert_bf16_close(out, exact, f"moe_mlp {skip_mode}", atol=1e-4)
    if skip_mode == "zero" and k == 1:
        assert (out[0] == 0).all()


# ---------------------------------------------------------------------------------------------
# CCA: cca_prep and attention over the paged cache
# ---------------------------------------------------------------------------------------------

HQ, HKV, D, ROT = 4, 2, 8, 4
C = (HQ + HKV) * D
VH = HKV * D // 2


def _cca_weights(gen):
    bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
    return dict(conv1_w=bf(torch.randn(C, 1, 2, generator=gen)), conv1_b=bf(torch.randn(C, generator=gen)),
                conv2_w=bf(torch.randn(C, D, 2, generator=gen) / 3), conv2_b=bf(torch.randn(C, generator=gen)),
                temp=bf(torch.tensor([1.7, -0.6])))


def _paged_cache(batch, pages_per_seq, page_size, gen):
    """A shuffled block table so that consecutive positions of a sequence land on scattered pages."""
    num_pages = batch * pages_per_seq + 1
    perm = torch.randperm(num_pages, generator=gen)[:batch * pages_per_seq].to(torch.int32)
    block_table = perm.view(batch, pages_per_seq)
    k_cache = torch.full((num_pages, page_size, HKV, D), float("nan"), dtype=torch.bfloat16)
    return k_cache, k_cache.clone(), block_table


@pytest.mark.parametrize("lengths,starts", [([1], [0]), ([7], [0]), ([3, 1, 0, 5], [0, 4, 2, 1])])
def test_cca_prep_matches_naive(lengths, starts, gen):
    theta, page_size = 1000.0, 3  # page_size 3: every chunk crosses page boundaries
    w = _cca_weights(gen)
    batch, total = len(lengths), sum(lengths)
    proj = torch.randn(total, C + 2 * VH, generator=gen).to(torch.bfloat16)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    seq_start = torch.tensor(starts, dtype=torch.int32)
    conv_state = torch.randn(batch, C, 2, generator=gen).to(torch.bfloat16).float()  # stored bf16 projections
    value_state = torch.randn(batch, VH, generator=gen).to(torch.bfloat16).float()
    k_cache, v_cache, block_table = _paged_cache(batch, 4, page_size, gen)
    cs0, vs0 = conv_state.clone(), value_state.clone()
    q = R.cca_prep(proj, cu, seq_start, conv_state, value_state, w["conv1_w"], w["conv1_b"], w["conv2_w"],
                   w["conv2_b"], w["temp"], k_cache, v_cache, block_table, theta, ROT)
    assert q.shape == (total, HQ, D) and q.dtype == torch.bfloat16
    for b in range(batch):
        lo, hi = int(cu[b]), int(cu[b + 1])
        hist = [cs0[b, :, 0].tolist(), cs0[b, :, 1].tolist()]
        v2_prev = vs0[b].tolist()
        for i, t in enumerate(range(lo, hi)):
            row = proj[t].double().tolist()
            u, v1, v2 = row[:C], row[C:C + VH], row[C + VH:]
            pos = starts[b] + i
            qs, ks, vs = naive.cca_prep_one(hist, u, v1, v2_prev, w["conv1_w"], w["conv1_b"], w["conv2_w"],
                                            w["conv2_b"], w["temp"], pos, HQ, HKV, D, ROT, theta)
            page, slot = int(block_table[b, pos // page_size]), pos % page_size
            assert_bf16_close(q[t], torch.tensor(qs), f"q seq {b} pos {pos}", atol=1e-4)
            assert_bf16_close(k_cache[page, slot], torch.tensor(ks), f"k seq {b} pos {pos}", atol=1e-4)
            assert_bf16_close(v_cache[page, slot], torch.tensor(vs), f"v seq {b} pos {pos}")
            hist = [hist[1], u]
            v2_prev = v2
        expect_state = torch.tensor(hist, dtype=torch.float64).T
        assert torch.equal(conv_state[b].double(), expect_state), f"conv_state of seq {b}"
        assert torch.equal(value_state[b].double(), torch.tensor(v2_prev, dtype=torch.float64))
    written = ~torch.isnan(k_cache.float()).any(dim=(2, 3))
    assert int(written.sum()) == total, "the cache holds exactly the new tokens"


def test_cca_prep_chunked_equals_whole(gen):
    w = _cca_weights(gen)
    proj = torch.randn(9, C + 2 * VH, generator=gen).to(torch.bfloat16)

    def run(chunks):
        conv_state, value_state = torch.zeros(1, C, 2), torch.zeros(1, VH)
        k_cache, v_cache, block_table = _paged_cache(1, 5, 2, torch.Generator().manual_seed(3))
        qs, start = [], 0
        for n in chunks:
            cu = torch.tensor([0, n], dtype=torch.int32)
            qs.append(R.cca_prep(proj[start:start + n], cu, torch.tensor([start], dtype=torch.int32), conv_state,
                                 value_state, w["conv1_w"], w["conv1_b"], w["conv2_w"], w["conv2_b"], w["temp"],
                                 k_cache, v_cache, block_table, 1e4, ROT))
            start += n
        return torch.cat(qs), k_cache, v_cache, conv_state, value_state

    whole = run([9])
    for chunks in ([4, 5], [1] * 9, [2, 1, 6]):
        parts = run(chunks)
        for a, b in zip(whole, parts):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"chunks {chunks}"


def _random_cache(batch, pages_per_seq, page_size, gen):
    k_cache, v_cache, block_table = _paged_cache(batch, pages_per_seq, page_size, gen)
    k_cache.copy_(torch.randn(k_cache.shape, generator=gen) * 3)
    v_cache.copy_(torch.randn(v_cache.shape, generator=gen))
    return k_cache, v_cache, block_table


@pytest.mark.parametrize("q_lens,k_lens", [([1], [1]), ([5], [5]), ([2, 3, 1], [7, 3, 11]), ([4, 0], [4, 6])])
def test_attention_prefill_matches_naive(q_lens, k_lens, gen):
    page_size = 4
    k_cache, v_cache, block_table = _random_cache(len(q_lens), 3, page_size, gen)
    q = torch.randn(sum(q_lens), HQ, D, generator=gen).to(torch.bfloat16)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    seq_lens = torch.tensor(k_lens, dtype=torch.int32)
    out = R.attention_prefill(q, k_cache, v_cache, block_table, cu, seq_lens)
    for b, (nq, nk) in enumerate(zip(q_lens, k_lens)):
        keys = [[k_cache[int(block_table[b, p // page_size]), p % page_size, j].double().tolist() for j in range(HKV)]
                for p in range(nk)]
        values = [[v_cache[int(block_table[b, p // page_size]), p % page_size, j].double().tolist()
                   for j in range(HKV)] for p in range(nk)]
        for i in range(nq):
            pos = nk - nq + i
            o = naive.attention_one(q[int(cu[b]) + i].double().tolist(), keys[:pos + 1], values[:pos + 1], D ** -0.5)
            assert_bf16_close(out[int(cu[b]) + i], torch.tensor(o), f"seq {b} query {i}", atol=1e-5)


def test_attention_decode_matches_prefill_last_row(gen):
    k_cache, v_cache, block_table = _random_cache(3, 4, 5, gen)
    seq_lens = torch.tensor([1, 13, 20], dtype=torch.int32)  # 20 = exactly four full pages
    q = torch.randn(3, HQ, D, generator=gen).to(torch.bfloat16)
    out = R.attention_decode(q, k_cache, v_cache, block_table, seq_lens)
    prefill = R.attention_prefill(q, k_cache, v_cache, block_table, torch.arange(4, dtype=torch.int32), seq_lens)
    assert torch.equal(out, prefill)
    empty = R.attention_decode(q, k_cache, v_cache, block_table, torch.tensor([0, 2, 3], dtype=torch.int32))
    assert (empty[0] == 0).all()
