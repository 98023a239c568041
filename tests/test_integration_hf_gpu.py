# SPDX-License-Identifier: Apache-2.0
"""GPU tier of the HF integration (issue 16): tests/test_integration_hf.py's checks with the ops on their CUDA
kernels, at a small geometry the kernels take (hidden 512, router width 256, 16 experts + skip, 8 query heads
over 2 KV heads of dim 128). HF eager in float64 on the same GPU is the truth; ours (bf16) may be at most twice
as far from it as HF eager in bf16, plus 1e-6 of the range. `pytest -m gpu --require-gpu
tests/test_integration_hf_gpu.py` on the H200."""
from __future__ import annotations

import pytest
import torch

from .test_integration_hf import OURS, PROMPTS, STEPS, Spy, assert_2x_bf16, build, greedy, logits, zk

pytestmark = pytest.mark.gpu

KERNEL_GEOMETRY = dict(vocab_size=512, hidden_size=512, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, head_dim=128, num_experts=16, moe_intermediate_size=256,
                       router_hidden_size=256, rope_theta=5e6, partial_rotary_factor=0.5)


def on_gpu(dtype, **kw):
    return build(KERNEL_GEOMETRY, dtype, **kw).to("cuda")


def ids_of(rows, length, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(6, KERNEL_GEOMETRY["vocab_size"], (rows, length), generator=gen).cuda()


@pytest.fixture(scope="module")
def case():
    ids = ids_of(2, 300, seed=1)  # 300: not a multiple of any tile
    return dict(ids=ids, truth=logits(on_gpu(torch.float64), ids), bf16=logits(on_gpu(torch.bfloat16), ids))


def test_logits_match_eager_on_kernels(case, monkeypatch):
    model = on_gpu(torch.bfloat16, experts=OURS, attn=OURS, router=True)
    spy = Spy(monkeypatch)
    out = logits(model, case["ids"])
    assert_2x_bf16(out, case["truth"], case["bf16"], "GPU logits, all pieces ours")
    layers = KERNEL_GEOMETRY["num_hidden_layers"]
    assert spy.calls == {"zaya_route": layers, "moe_mlp": layers, "attention_prefill": layers}, spy.calls


@pytest.mark.parametrize("piece", ["experts", "attention", "router"])
def test_each_piece_alone_on_kernels(case, piece):
    kw = {"experts": dict(experts=OURS), "attention": dict(attn=OURS), "router": dict(router=True)}[piece]
    assert_2x_bf16(logits(on_gpu(torch.bfloat16, **kw), case["ids"]), case["truth"], case["bf16"], piece)


def test_greedy_tokens_equal_eager_on_kernels(monkeypatch):
    eager = on_gpu(torch.bfloat16)
    model = on_gpu(torch.bfloat16, experts=OURS, attn=OURS, router=True)
    spy = Spy(monkeypatch)
    for prompt in PROMPTS + [list(range(6, 6 + 200))]:  # 200 + 32 keys: decode crosses 64/128-key tiles
        ids = torch.tensor([prompt], device="cuda")
        expected, got = greedy(eager, ids), greedy(model, ids)
        assert torch.equal(got, expected), f"prompt of {len(prompt)}: {got[0, len(prompt):].tolist()} != " \
                                           f"{expected[0, len(prompt):].tolist()}"
    assert spy.calls.get("attention_decode", 0) >= (STEPS - 1) * KERNEL_GEOMETRY["num_hidden_layers"]


def test_greedy_batched_unequal_lengths_on_kernels():
    eager = on_gpu(torch.bfloat16)
    model = on_gpu(torch.bfloat16, experts=OURS, attn=OURS, router=True)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS], device="cuda")
    expected, got = greedy(eager, ids, mask), greedy(model, ids, mask)
    assert torch.equal(got, expected), (got[:, width:], expected[:, width:])


def test_batched_equal_lengths_decode_on_kernels():
    """B = 4 without padding: every step on attention_decode over 8 (sequence, KV head) pages."""
    eager = on_gpu(torch.bfloat16)
    model = on_gpu(torch.bfloat16, experts=OURS, attn=OURS, router=True)
    ids = ids_of(4, 17, seed=4)
    assert torch.equal(greedy(model, ids), greedy(eager, ids))
    assert zk.NAME == OURS
