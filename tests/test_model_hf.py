# SPDX-License-Identifier: Apache-2.0
"""The model against the upstream implementation (issue 11 finding 1): Hugging Face transformers' `zaya`
model (ZayaForCausalLM, transformers 5.23), on tiny random checkpoints in both layouts, fp32 logits.

A tiny ZayaForCausalLM gets random non-trivial weights (HF initialises tau to 0 and every scale to 1,
which would hide most mistakes), is saved with save_pretrained and loaded by our loader as written
(native layout) and converted to the legacy layout (ZAYA1_ARCHITECTURE.md §2.2 / §7.1). HF in float64 is
the truth; our fp32 logits may be at most twice as far from it as HF's own fp32 logits, plus 1e-6 of the
logits' range (DESIGN.md §6 with fp32 as the low precision). Prefill, HF's cached token-by-token decode,
the skip route (HF outputs 0 for a skipped token, §12.1: our native default skip_mode "zero") and greedy
generate. HF clamps ||q||, ||k|| at the dtype's epsilon (§12.3); random inputs never come near it.

Skipped, with the reason, only where transformers is not installed (CI installs it: tools/install.sh).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from zaya_kernels.model import load_model

from .naive_model import NaiveZaya
from .test_model_oracle import RELATIVE_FLOOR, legacy_config, random_tensors, to_legacy, write_checkpoint
from .util import max_abs

transformers = pytest.importorskip("transformers", reason="transformers is not installed: the upstream `zaya` "
                                   "oracle needs transformers==5.23.0 (tools/install.sh installs it)")

ERROR_FACTOR = 2.0
GEOMETRY = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, num_experts=4, moe_intermediate_size=32, router_hidden_size=16, rope_theta=1e4,
                partial_rotary_factor=0.5)
G3 = dict(GEOMETRY, num_attention_heads=6, num_hidden_layers=2, partial_rotary_factor=0.25, rope_theta=5e6)
EOS = 5


def hf_model(g: dict, seed: int, skip_bias: float = -1.0):
    """A float32 ZayaForCausalLM of geometry g with this repo's random oracle weights (every vector non-trivial)."""
    rope = {"rope_type": "default", "rope_theta": g["rope_theta"], "partial_rotary_factor": g["partial_rotary_factor"]}
    config = transformers.ZayaConfig(
        vocab_size=g["vocab_size"], hidden_size=g["hidden_size"], num_hidden_layers=g["num_hidden_layers"],
        num_attention_heads=g["num_attention_heads"], num_key_value_heads=g["num_key_value_heads"],
        head_dim=g["head_dim"], num_experts=g["num_experts"], moe_intermediate_size=g["moe_intermediate_size"],
        router_hidden_size=g["router_hidden_size"], rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_parameters={"hybrid": rope, "hybrid_sliding": dict(rope, rope_theta=1e4)},
        pad_token_id=0, bos_token_id=1, eos_token_id=EOS)
    # The eager implementations: the default grouped_mm experts take no float64 (the truth runs in it).
    config._experts_implementation = "eager"
    config._attn_implementation = "eager"
    model = transformers.ZayaForCausalLM(config).eval()
    tensors = random_tensors(g, seed, skip_bias=skip_bias)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert set(missing) == {"lm_head.weight"} and not unexpected, (missing, unexpected)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "the LM head is tied"
    return model


def saved(model, directory):
    model.save_pretrained(directory)
    return directory


def hf_logits(model, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return model.to(dtype)(ids).logits.to(torch.float64)


def assert_matches(out, truth, low, what):
    """max|out - truth| <= 2 max|low - truth| + 1e-6 max|truth|; low = HF's own fp32 result."""
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    err = max_abs(out, truth)
    budget = ERROR_FACTOR * max_abs(low, truth) + RELATIVE_FLOOR * float(truth.abs().max())
    assert err <= budget, f"{what}: max error {err:.3e} > budget {budget:.3e}"


def batch(g: dict, seed: int, rows: int = 2, length: int = 11) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(6, g["vocab_size"], (rows, length), generator=gen)  # ids 0..5 are the special tokens


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
    model = hf_model(GEOMETRY, seed=17)
    directory = saved(model, tmp_path_factory.mktemp("hf_native"))
    ids = batch(GEOMETRY, seed=1)
    truth = hf_logits(model, ids, torch.float64)
    low = hf_logits(model, ids, torch.float32)
    return dict(model=model, directory=directory, ids=ids, truth=truth, low=low)


def legacy_copy(directory, destination, g: dict):
    """The HF checkpoint's tensors under legacy names (§2.2, §7.1) with a legacy config.json."""
    native = load_file(str(directory / "model.safetensors"))
    return write_checkpoint(destination, to_legacy(native, g["num_hidden_layers"]), legacy_config(g))


# ---------------------------------------------------------------------------------------------

def test_hf_checkpoint_loads_as_fp32_with_hf_skip_semantics(hf_case):
    """save_pretrained writes fp32: load_model keeps it fp32 (dtype=None) and picks the native layout's
    skip_mode, HF's "zero" (issue 11 finding 8)."""
    model = load_model(hf_case["directory"])
    assert model.dtype == torch.float32 and model.config.skip_mode == "zero"
    assert json.loads((hf_case["directory"] / "config.json").read_text())["model_type"] == "zaya"


@pytest.mark.parametrize("layout", ["native", "legacy"])
def test_prefill_matches_hf(hf_case, tmp_path, layout):
    directory = hf_case["directory"] if layout == "native" else legacy_copy(hf_case["directory"], tmp_path, GEOMETRY)
    model = load_model(directory, dtype=torch.float32, skip_mode="zero")
    assert_matches(model(hf_case["ids"]), hf_case["truth"], hf_case["low"], f"{layout} prefill")


def test_prefill_matches_hf_other_geometry(tmp_path):
    """GQA group 3, a quarter of each head rotated, theta 5e6."""
    hf = hf_model(G3, seed=23)
    ids = batch(G3, seed=2)
    model = load_model(saved(hf, tmp_path), dtype=torch.float32)
    assert_matches(model(ids), hf_logits(hf, ids, torch.float64), hf_logits(hf, ids, torch.float32), "geometry 2")


def test_decode_matches_hf_cached_decode(hf_case):
    """HF's prefill of 3 tokens, then its cached one-token steps, against our prefill + decode_step."""
    hf, ids, truth = hf_case["model"].float(), hf_case["ids"], hf_case["truth"]
    model = load_model(hf_case["directory"], dtype=torch.float32)
    first = 3
    with torch.no_grad():
        out = hf(ids[:, :first], use_cache=True)
        cache, hf_steps = out.past_key_values, [out.logits[:, -1]]
        for t in range(first, ids.shape[1] - 1):
            out = hf(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            hf_steps.append(out.logits[:, -1])
    state = model.new_state(ids.shape[0], ids.shape[1], page_size=4)
    cu = torch.arange(ids.shape[0] + 1, dtype=torch.int32) * first
    ours = [model.prefill(state, ids[:, :first].reshape(-1), cu).clone()]
    for t in range(first, ids.shape[1] - 1):
        ours.append(model.decode_step(state, ids[:, t]).clone())
    for i, (mine, theirs) in enumerate(zip(ours, hf_steps)):
        position = first - 1 + i
        assert_matches(mine, truth[:, position], theirs.double(), f"decode, position {position}")


def test_skip_route_default_matches_hf(tmp_path):
    """Balancing biases that let the skip route win: HF outputs 0 for a skipped token (§12.1). Our default
    for native checkpoints ("zero") matches HF; "scaled_input" (p_skip * x, the legacy code's) does not.
    The old default (scaled_input for every layout) fails this test."""
    hf = hf_model(GEOMETRY, seed=29, skip_bias=0.12)
    ids = batch(GEOMETRY, seed=3)
    directory = saved(hf, tmp_path)
    naive = NaiveZaya(load_file(str(directory / "model.safetensors")), GEOMETRY["head_dim"], GEOMETRY["rope_theta"],
                      int(GEOMETRY["head_dim"] * GEOMETRY["partial_rotary_factor"]), skip_mode="zero")
    naive.prefill(ids[0])
    routes = [r for layer in naive.routes for r in layer]
    assert GEOMETRY["num_experts"] in routes and min(routes) < GEOMETRY["num_experts"], "skipped and routed tokens"
    truth, low = hf_logits(hf, ids, torch.float64), hf_logits(hf, ids, torch.float32)
    assert_matches(load_model(directory, dtype=torch.float32)(ids), truth, low, "default skip_mode")
    with pytest.raises(AssertionError, match="max error"):
        assert_matches(load_model(directory, dtype=torch.float32, skip_mode="scaled_input")(ids), truth, low,
                       "scaled_input")


def test_naive_oracle_matches_hf(hf_case):
    """The two oracles agree in float64 (ZAYA1_ARCHITECTURE.md §12's check, kept as a test)."""
    tensors = load_file(str(hf_case["directory"] / "model.safetensors"))
    naive = NaiveZaya(tensors, GEOMETRY["head_dim"], GEOMETRY["rope_theta"],
                      int(GEOMETRY["head_dim"] * GEOMETRY["partial_rotary_factor"]), skip_mode="zero")
    for b in range(hf_case["ids"].shape[0]):
        # HF computes the RoPE angles in fp32 (also in float64): ~1e-7 relative, far below any mistake.
        assert max_abs(naive.prefill(hf_case["ids"][b]), hf_case["truth"][b]) < 1e-5 * float(
            hf_case["truth"].abs().max())


def test_generate_matches_hf_generate(hf_case):
    """Greedy generate with a LongTensor prompt returns what HF's does: prompt + new tokens, [B, T + n]."""
    hf, ids = hf_case["model"].float(), hf_case["ids"][:, :6]
    model = load_model(hf_case["directory"], dtype=torch.float32)
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    got = model.generate(ids, max_new_tokens=8)
    assert got.dtype == torch.int64 and torch.equal(got, expected), (got, expected)
    # a stop token that row 0 emits first: that row is padded with pad_token_id afterwards, as in HF
    stop = int(got[0, ids.shape[1] + 1])
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                               eos_token_id=stop)
    got = model.generate(ids, max_new_tokens=8, stop_token=stop)
    assert torch.equal(got, expected), (got, expected)
