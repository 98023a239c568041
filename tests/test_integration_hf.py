# SPDX-License-Identifier: Apache-2.0
"""Hugging Face transformers' ZAYA on the zaya ops (zaya_kernels.integrations.transformers, issue 16), CPU tier:
the ops run their reference kernels here, so the whole integration is exercised; tests/test_integration_hf_gpu.py
runs the same on the kernels.

A tiny ZayaForCausalLM gets random non-trivial weights (HF initialises tau to 0, which would make attention
uniform; tests/test_model_oracle.random_tensors). HF eager in float64 is the truth; ours (fp32 or bf16 model)
may be at most twice as far from it as HF eager in bf16, plus 1e-6 of the logits' range (DESIGN.md §6).
Greedy tokens must equal HF eager's in the same dtype for 32 steps, from several prompts and from a
left-padded batch of unequal lengths (which runs HF's SDPA for attention, with the one-time warning).
Each piece also alone: experts only, attention only, router only.

Skipped, with the reason, only where transformers is not installed (CI installs it: tools/install.sh).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from .test_model_oracle import RELATIVE_FLOOR, random_tensors
from .util import max_abs

transformers = pytest.importorskip("transformers", reason="transformers is not installed: the HF integration "
                                   "needs transformers==5.23.0 (tools/install.sh installs it)")
zk = pytest.importorskip("zaya_kernels.integrations.transformers",
                         reason="zaya_kernels._C is not built (the integration runs torch.ops.zaya)")

OURS = zk.NAME
EOS = 5
STEPS = 32
# 4 query heads over 2 KV heads (G = 2) and ZAYA1's group G = 4 (8 over 2).
GEOMETRY = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, num_experts=4, moe_intermediate_size=32, router_hidden_size=16, rope_theta=1e4,
                partial_rotary_factor=0.5)
G4 = dict(GEOMETRY, num_attention_heads=8, num_hidden_layers=2, rope_theta=5e6)
PROMPTS = [[7, 33, 9, 60, 12], [81, 14, 14, 27, 90, 41, 8, 66, 19, 23, 50], [44]]


def config_of(g: dict):
    rope = {"rope_type": "default", "rope_theta": g["rope_theta"], "partial_rotary_factor": g["partial_rotary_factor"]}
    return transformers.ZayaConfig(
        vocab_size=g["vocab_size"], hidden_size=g["hidden_size"], num_hidden_layers=g["num_hidden_layers"],
        num_attention_heads=g["num_attention_heads"], num_key_value_heads=g["num_key_value_heads"],
        head_dim=g["head_dim"], num_experts=g["num_experts"], moe_intermediate_size=g["moe_intermediate_size"],
        router_hidden_size=g["router_hidden_size"], rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_parameters={"hybrid": rope, "hybrid_sliding": dict(rope, rope_theta=1e4)},
        pad_token_id=0, bos_token_id=1, eos_token_id=EOS)


def build(g: dict, dtype: torch.dtype, *, experts="eager", attn="eager", router=False, seed=17, skip_bias=-1.0):
    """A ZayaForCausalLM in `dtype` with the given implementations; router=True: kernelize(model)."""
    config = config_of(g)
    config._experts_implementation = experts
    config._attn_implementation = attn
    model = transformers.ZayaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(random_tensors(g, seed, skip_bias=skip_bias), strict=False)
    assert set(missing) == {"lm_head.weight"} and not unexpected, (missing, unexpected)
    rotary = model.model.rotary_emb
    inv_freq = {name: buffer.clone() for name, buffer in rotary.named_buffers()}
    model = model.to(dtype)
    for name, buffer in inv_freq.items():  # fp32 RoPE frequencies in every dtype, as from_pretrained keeps them
        setattr(rotary, name, buffer)
    return zk.kernelize(model) if router else model


def ours(g, dtype, **kw):
    return build(g, dtype, experts=OURS, attn=OURS, router=True, **kw)


def logits(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kw).logits.to(torch.float64)


def assert_2x_bf16(out, truth, bf16, what):
    """DESIGN.md §6: max|out - truth| <= 2 max|HF bf16 - truth| + 1e-6 max|truth|."""
    err = max_abs(out, truth)
    budget = 2.0 * max_abs(bf16, truth) + RELATIVE_FLOOR * float(truth.abs().max())
    assert err <= budget, f"{what}: max error {err:.3e} > budget {budget:.3e}"


def greedy(model, ids, attention_mask=None):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        return model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS,
                              do_sample=False, pad_token_id=0)


def batch(g, seed, rows=2, length=11):
    return torch.randint(6, g["vocab_size"], (rows, length), generator=torch.Generator().manual_seed(seed))


class Spy:
    """Counts the zaya op calls made through the integration module."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, int] = {}
        for name in ("moe_align", "moe_mlp", "attention_prefill", "attention_decode", "zaya_router", "zaya_route"):
            original = getattr(zk.zaya_ops, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] = self.calls.get(_name, 0) + 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(zk.zaya_ops, name, counted)


@pytest.fixture(scope="module")
def truth():
    g = GEOMETRY
    ids = batch(g, seed=1)
    return dict(ids=ids, truth=logits(build(g, torch.float64), ids), bf16=logits(build(g, torch.bfloat16), ids))


# ---------------------------------------------------------------------------------------------

def test_registered_and_loadable_by_name(tmp_path):
    """The README's usage: from_pretrained(..., experts_implementation=, attn_implementation=) accepts the name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    assert ALL_EXPERTS_FUNCTIONS[OURS] is zk.experts_forward
    assert ALL_ATTENTION_FUNCTIONS[OURS] is zk.attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS[OURS] is zk.attention_mask
    build(GEOMETRY, torch.bfloat16).save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16,
                                                              experts_implementation=OURS, attn_implementation=OURS)
    assert model.config._experts_implementation == OURS and model.config._attn_implementation == OURS
    ids = batch(GEOMETRY, seed=3)
    reference = build(GEOMETRY, torch.bfloat16, experts=OURS, attn=OURS)
    assert torch.equal(logits(zk.kernelize(model), ids), logits(zk.kernelize(reference), ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_match_eager(truth, dtype, monkeypatch):
    spy = Spy(monkeypatch)
    out = logits(ours(GEOMETRY, dtype), truth["ids"])
    assert_2x_bf16(out, truth["truth"], truth["bf16"], f"{dtype} logits, all pieces ours")
    layers = GEOMETRY["num_hidden_layers"]
    assert spy.calls == {"zaya_route": layers, "moe_mlp": layers, "attention_prefill": layers}, spy.calls


@pytest.mark.parametrize("piece", ["experts", "attention", "router"])
def test_each_piece_alone(truth, piece, monkeypatch):
    spy = Spy(monkeypatch)
    kw = {"experts": dict(experts=OURS), "attention": dict(attn=OURS), "router": dict(router=True)}[piece]
    out = logits(build(GEOMETRY, torch.bfloat16, **kw), truth["ids"])
    assert_2x_bf16(out, truth["truth"], truth["bf16"], f"{piece} alone")
    layers = GEOMETRY["num_hidden_layers"]
    expected = {"experts": {"moe_align": layers, "moe_mlp": layers}, "attention": {"attention_prefill": layers},
                "router": {"zaya_router": layers}}[piece]
    assert spy.calls == expected, spy.calls


def test_group_of_four_and_skip_route():
    """ZAYA1's GQA group (8 query heads over 2) and a skip slot that wins often (bias +0.5): HF outputs 0
    for a skipped token (§12.1); ours runs no expert for it (skip_mode "zero")."""
    g, ids = G4, batch(G4, seed=5, rows=3, length=9)
    truth = logits(build(g, torch.float64, skip_bias=0.5), ids)
    bf16 = logits(build(g, torch.bfloat16, skip_bias=0.5), ids)
    model = ours(g, torch.bfloat16, skip_bias=0.5)
    assert_2x_bf16(logits(model, ids), truth, bf16, "G=4, skip route")
    weights, ids_out, _ = zk._router_call(model.model.layers[0].mlp.gate,
                                          torch.randn(64, g["hidden_size"], dtype=torch.bfloat16), None)
    assert bool((ids_out == g["num_experts"]).any()), "the skip route never won: the test would not exercise it"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_greedy_tokens_equal_eager(dtype, monkeypatch):
    """32 greedy steps from several prompts (lengths 5, 11, 1), one at a time: prefill + 31 attention_decode steps."""
    eager, model = build(GEOMETRY, dtype), ours(GEOMETRY, dtype)
    spy = Spy(monkeypatch)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        expected, got = greedy(eager, ids), greedy(model, ids)
        assert torch.equal(got, expected), f"prompt {prompt}: {got[0, len(prompt):].tolist()} != " \
                                           f"{expected[0, len(prompt):].tolist()}"
    steps = sum(STEPS - 1 + (len(p) == 1) for p in PROMPTS)  # a one-token prompt's prefill is a decode call too
    assert spy.calls["attention_decode"] == steps * GEOMETRY["num_hidden_layers"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_greedy_batched_unequal_lengths(dtype):
    """A left-padded batch of unequal prompts: the mask sends attention to HF's SDPA with a one-time warning
    naming the padding; experts and router stay ours. Tokens equal eager's, and equal generating each prompt
    alone (no padding: all ours)."""
    eager, model = build(G4, dtype), ours(G4, dtype)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    zk._WARNED.discard("mask")
    with pytest.warns(RuntimeWarning, match="padding"):
        with torch.no_grad():
            model(ids, attention_mask=mask)
    expected, got = greedy(eager, ids, mask), greedy(model, ids, mask)
    assert torch.equal(got, expected), (got[:, width:], expected[:, width:])
    for row, prompt in enumerate(PROMPTS):
        alone = greedy(model, torch.tensor([prompt]))
        assert torch.equal(alone[0, len(prompt):], got[row, width:]), f"prompt {row} alone differs from batched"


def test_chunked_continuation_is_bottom_right_causal(monkeypatch):
    """A multi-token forward over a non-empty cache (q < L): attention_prefill with the queries as the last q
    positions, where SDPA's is_causal would be top-left. Logits equal the one-shot forward's (2x rule)."""
    g, ids = GEOMETRY, batch(GEOMETRY, seed=7, rows=2, length=12)
    truth = logits(build(g, torch.float64), ids)
    bf16 = logits(build(g, torch.bfloat16), ids)
    model = ours(g, torch.bfloat16)
    spy = Spy(monkeypatch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no SDPA fallback on this path
        first = model(ids[:, :7], use_cache=True)
        second = model(ids[:, 7:], past_key_values=first.past_key_values, use_cache=True)
    out = torch.cat([first.logits, second.logits], dim=1).to(torch.float64)
    assert_2x_bf16(out, truth, bf16, "chunked continuation")
    assert spy.calls["attention_prefill"] == 2 * g["num_hidden_layers"]


def test_mask_builder():
    """None exactly for the causal rule the kernels apply; a boolean mask for padding or a window."""
    from transformers.masking_utils import sliding_window_causal_mask_function
    ones = torch.ones(2, 6, dtype=torch.bool)
    assert zk.attention_mask(2, 6, 6, attention_mask=None) is None
    assert zk.attention_mask(2, 2, 6, q_offset=4, attention_mask=ones) is None
    padded = ones.clone()
    padded[0, :2] = False
    mask = zk.attention_mask(2, 6, 6, attention_mask=padded)
    assert mask.dtype == torch.bool and not bool(mask[0, 0, 5, 1]) and bool(mask[1, 0, 5, 1])
    window = zk.attention_mask(2, 6, 6, attention_mask=ones, mask_function=sliding_window_causal_mask_function(2))
    assert window is not None and not bool(window[0, 0, 5, 0])


def test_weights_converted_once():
    """An fp32 model's expert weights get one bf16 copy, reused by every call and redone after a change."""
    experts = build(GEOMETRY, torch.float32).model.layers[0].mlp.experts
    first = zk._weight(experts, "gate_up_proj")
    assert first.dtype == torch.bfloat16 and zk._weight(experts, "gate_up_proj") is first
    with torch.no_grad():
        experts.gate_up_proj.mul_(2)
    again = zk._weight(experts, "gate_up_proj")
    assert again is not first and torch.equal(again, experts.gate_up_proj.detach().to(torch.bfloat16))


def test_kernelize_rejects_other_models_and_is_idempotent():
    with pytest.raises(ValueError, match="no ZayaSparseMoeBlock"):
        zk.kernelize(torch.nn.Linear(2, 2))
    model = ours(GEOMETRY, torch.bfloat16)
    ids = batch(GEOMETRY, seed=9)
    assert torch.equal(logits(zk.kernelize(model), ids), logits(model, ids))


def test_unsupported_experts_layout_is_named():
    experts = build(GEOMETRY, torch.bfloat16).model.layers[0].mlp.experts
    experts.has_bias = True
    with pytest.raises(NotImplementedError, match="expert biases"):
        zk.experts_forward(experts, torch.randn(3, GEOMETRY["hidden_size"], dtype=torch.bfloat16),
                           torch.zeros(3, 1, dtype=torch.int64), torch.ones(3, 1, dtype=torch.bfloat16))
