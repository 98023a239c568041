# SPDX-License-Identifier: Apache-2.0
"""The model against an oracle that shares no code with it (issue 11 finding 1): tests/naive_model.py, a
naive float64 forward written from ZAYA1_ARCHITECTURE.md alone.

Weights are random with every vector non-trivial (residual scales and biases, norm weights, key
temperatures, conv biases, EDA scales, balancing biases), drawn here under the native checkpoint names
(§7.2) and written as safetensors in both layouts: the legacy file is converted by this module's own
key mapping (§2.2, §7.1), so the loader's mapping is checked too. Our model runs them with the reference
backend in fp32; prefill, varlen with padding, token-by-token decode and chunked prefill are compared.

Tolerance (DESIGN.md §6, fp32 as the low precision): our fp32 logits may be at most twice as far from the
float64 naive logits as the same naive forward run in fp32, plus a floor of 1e-6 of the logits' range (the
two fp32 computations round in different orders; a logit of magnitude ~10 carries fp32 noise ~1e-6).
Every mutant below moves logits by far more than that.

The second half proves the comparison catches bugs: each mutant (block order, norms, residual merges,
input scaling, final norm, loader mappings, ...) is patched into the model and the same comparison must
fail ("mutant X is caught").
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from zaya_kernels.model import export_tensors, load_model, random_model, tiny
from zaya_kernels.model import layers as model_layers
from zaya_kernels.model import loader as model_loader
from zaya_kernels.model import model as model_module

from .naive_model import NaiveZaya
from .util import max_abs

ERROR_FACTOR = 2.0
RELATIVE_FLOOR = 1e-6

# Small geometries (HF native config fields). Each varies something: the GQA group (2, 3, 1), the rotary
# fraction (1/2, 1/4, 1), theta (1e4 turns dims fast at small positions, 5e6 as released), head counts.
GEOMETRIES = {
    "g2_theta1e4": dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, num_experts=4, moe_intermediate_size=32,
                        router_hidden_size=16, rope_theta=1e4, partial_rotary_factor=0.5),
    "g3_rot_quarter": dict(vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                           num_key_value_heads=2, head_dim=16, num_experts=3, moe_intermediate_size=24,
                           router_hidden_size=12, rope_theta=5e6, partial_rotary_factor=0.25),
    "g1_kv4_full_rot": dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, head_dim=8, num_experts=5, moe_intermediate_size=16,
                            router_hidden_size=8, rope_theta=1e4, partial_rotary_factor=1.0),
}
MAIN = "g2_theta1e4"
LENGTHS = (13, 7)  # two rows of a batch: right padding and a varlen pack


# ---------------------------------------------------------------------------------------------
# checkpoints written by this module
# ---------------------------------------------------------------------------------------------

def native_config(g: dict) -> dict:
    """config.json of the native layout (the upstream Hugging Face form)."""
    rope = {"rope_type": "default", "rope_theta": g["rope_theta"], "partial_rotary_factor": g["partial_rotary_factor"]}
    fields = {k: v for k, v in g.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return dict(fields, model_type="zaya", architectures=["ZayaForCausalLM"], layer_types=["hybrid"] *
                g["num_hidden_layers"], num_experts_per_tok=1, rms_norm_eps=1e-5, tie_word_embeddings=True,
                rope_parameters={"hybrid": rope}, max_position_embeddings=4096, pad_token_id=0, bos_token_id=2,
                eos_token_id=3)


def legacy_config(g: dict) -> dict:
    """config.json of the legacy layout (§1.2): 2 sub-layers per block, fused expert width."""
    return dict(model_type="zaya", architectures=["ZayaForCausalLM"], vocab_size=g["vocab_size"],
                hidden_size=g["hidden_size"], num_hidden_layers=2 * g["num_hidden_layers"],
                num_attention_heads=g["num_attention_heads"], head_dim=g["head_dim"],
                num_query_groups=g["num_key_value_heads"], num_key_value_heads=g["num_key_value_heads"],
                ffn_hidden_size=2 * g["moe_intermediate_size"], num_experts=g["num_experts"],
                zaya_mlp_expansion=g["router_hidden_size"], moe_router_topk=1, rope_theta=g["rope_theta"],
                partial_rotary_factor=g["partial_rotary_factor"], norm_epsilon=1e-5, residual_in_fp32=True,
                zaya_use_eda=True, zaya_use_mod=True, scale_residual_merge=True, clamp_temp=False,
                max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=3)


def random_tensors(g: dict, seed: int, skip_bias: float = -1.0, balancing_std: float = 0.05) -> dict:
    """Every native-layout tensor (§7.2) of geometry g, fp32, with values that keep activations O(1) and make
    every vector matter: norms and scales 1 +- 0.2, biases +- 0.1, temperatures in [0.5, 2.5]."""
    gen = torch.Generator().manual_seed(seed)
    H, L, V = g["hidden_size"], g["num_hidden_layers"], g["vocab_size"]
    Nq, Nk, D = g["num_attention_heads"], g["num_key_value_heads"], g["head_dim"]
    E, Fw, R = g["num_experts"], g["moe_intermediate_size"], g["router_hidden_size"]
    C = (Nq + Nk) * D

    def normal(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=gen) * std + mean

    def matrix(out, fan_in, gain=1.0):
        return normal(out, fan_in, std=gain / math.sqrt(fan_in))

    t = {"model.embed_tokens.weight": normal(V, H), "model.norm.weight": normal(H, std=0.2, mean=1.0),
         "model.input_hidden_states_scale": normal(H, std=0.2, mean=1.0),
         "model.input_hidden_states_bias": normal(H, std=0.1)}
    for i in range(L):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        t.update({
            p + "input_layernorm.weight": normal(H, std=0.2, mean=1.0),
            p + "post_attention_layernorm.weight": normal(H, std=0.2, mean=1.0),
            a + "qkv_proj.q_proj.weight": matrix(Nq * D, H), a + "qkv_proj.k_proj.weight": matrix(Nk * D, H),
            a + "qkv_proj.v_proj_current.weight": matrix(Nk * D // 2, H),
            a + "qkv_proj.v_proj_delayed.weight": matrix(Nk * D // 2, H),
            a + "qkv_proj.conv_qk_depthwise.weight": normal(C, 1, 2, std=0.7),
            a + "qkv_proj.conv_qk_depthwise.bias": normal(C, std=0.3),
            a + "qkv_proj.conv_qk_grouped.weight": normal(C, D, 2, std=1 / math.sqrt(2 * D)),
            a + "qkv_proj.conv_qk_grouped.bias": normal(C, std=0.3),
            a + "qk_norm.temp": torch.rand(Nk, generator=gen) * 2 + 0.5,
            a + "o_proj.weight": matrix(H, Nq * D),
            p + "mlp.gate.down_proj.weight": matrix(R, H), p + "mlp.gate.down_proj.bias": normal(R, std=0.1),
            p + "mlp.gate.router_mlp.norm.weight": normal(R, std=0.2, mean=1.0),
            p + "mlp.gate.router_mlp.fc1.weight": matrix(R, R), p + "mlp.gate.router_mlp.fc1.bias": normal(R, std=0.1),
            p + "mlp.gate.router_mlp.fc2.weight": matrix(R, R), p + "mlp.gate.router_mlp.fc2.bias": normal(R, std=0.1),
            p + "mlp.gate.router_mlp.out_proj.weight": matrix(E + 1, R, gain=3.0),
            p + "mlp.gate.balancing_biases": torch.cat([normal(E, std=balancing_std), torch.tensor([skip_bias])]),
            p + "mlp.experts.gate_up_proj": normal(E, 2 * Fw, H, std=1 / math.sqrt(H)),
            p + "mlp.experts.down_proj": normal(E, H, Fw, std=1 / math.sqrt(Fw)),
        })
        if i > 0:
            t[p + "mlp.gate.router_states_scale"] = torch.rand(R, generator=gen) * 0.6 + 0.2
        for merge in ("post_attention_residual_scale", "post_mlp_residual_scale"):
            t.update({f"{p}{merge}.hidden_states_scale": normal(H, std=0.2, mean=1.0),
                      f"{p}{merge}.hidden_states_bias": normal(H, std=0.1),
                      f"{p}{merge}.residual_scale": normal(H, std=0.2, mean=1.0),
                      f"{p}{merge}.residual_bias": normal(H, std=0.1)})
    return t


def to_legacy(native: dict, num_blocks: int) -> dict:
    """Native names -> legacy names (§2.2 mapping, §7.1 keys): block i = sub-layers 2i (attention) and 2i+1
    (MoE); the res_scale of sub-layer n merges sub-layer n-1's output, so block i's post-attention merge is
    layer 2i+1's and its post-MoE merge layer 2i+2's (model.res_scale for the last block)."""
    out = {"model.embed_tokens.weight": native["model.embed_tokens.weight"],
           "model.final_norm.weight": native["model.norm.weight"],
           "model.layers.0.res_scale.hidden_states_scale": native["model.input_hidden_states_scale"],
           "model.layers.0.res_scale.hidden_states_bias": native["model.input_hidden_states_bias"]}
    vectors = ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias")
    for i in range(num_blocks):
        p, a, m = f"model.layers.{i}.", f"model.layers.{2 * i}.", f"model.layers.{2 * i + 1}."
        after_moe = f"model.layers.{2 * i + 2}." if i < num_blocks - 1 else "model."
        for v in vectors:
            out[f"{m}res_scale.{v}"] = native[f"{p}post_attention_residual_scale.{v}"]
            out[f"{after_moe}res_scale.{v}"] = native[f"{p}post_mlp_residual_scale.{v}"]
        out[a + "input_norm.weight"] = native[p + "input_layernorm.weight"]
        out[m + "input_norm.weight"] = native[p + "post_attention_layernorm.weight"]
        for new, old in (("q_proj", "linear_q"), ("k_proj", "linear_k"), ("v_proj_current", "val_proj1"),
                         ("v_proj_delayed", "val_proj2")):
            out[f"{a}self_attn.qkv.{old}.weight"] = native[f"{p}self_attn.qkv_proj.{new}.weight"]
        for new, old in (("conv_qk_depthwise", "conv_qk.0"), ("conv_qk_grouped", "conv_qk.1")):
            for suffix in ("weight", "bias"):
                out[f"{a}self_attn.qkv.{old}.{suffix}"] = native[f"{p}self_attn.qkv_proj.{new}.{suffix}"]
        out[a + "self_attn.qkv.temp"] = native[p + "self_attn.qk_norm.temp"]
        out[a + "self_attn.o_proj.weight"] = native[p + "self_attn.o_proj.weight"]
        router, gate = m + "zaya_block.router.", p + "mlp.gate."
        out.update({router + "down_proj.weight": native[gate + "down_proj.weight"],
                    router + "down_proj.bias": native[gate + "down_proj.bias"],
                    router + "rmsnorm_eda.weight": native[gate + "router_mlp.norm.weight"],
                    router + "router_mlp.0.weight": native[gate + "router_mlp.fc1.weight"],
                    router + "router_mlp.0.bias": native[gate + "router_mlp.fc1.bias"],
                    router + "router_mlp.2.weight": native[gate + "router_mlp.fc2.weight"],
                    router + "router_mlp.2.bias": native[gate + "router_mlp.fc2.bias"],
                    router + "router_mlp.4.weight": native[gate + "router_mlp.out_proj.weight"],
                    router + "balancing_biases": native[gate + "balancing_biases"]})
        if i > 0:
            out[router + "router_states_scale"] = native[gate + "router_states_scale"]
        for e in range(native[p + "mlp.experts.gate_up_proj"].shape[0]):
            experts = f"{m}zaya_block.experts.local_experts.{e}."
            out[experts + "linear_fc1.weight"] = native[p + "mlp.experts.gate_up_proj"][e].clone()
            out[experts + "linear_fc2.weight"] = native[p + "mlp.experts.down_proj"][e].clone()
    return out


def write_checkpoint(directory, tensors: dict, config: dict):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------

def naive_pair(tensors: dict, g: dict, skip_mode: str):
    """(float64 naive, fp32 naive) of the same weights: the oracle and the measure of fp32 rounding."""
    kwargs = dict(head_dim=g["head_dim"], rope_theta=g["rope_theta"],
                  rotary_dim=int(g["head_dim"] * g["partial_rotary_factor"]), skip_mode=skip_mode)
    return NaiveZaya(tensors, dtype=torch.float64, **kwargs), NaiveZaya(tensors, dtype=torch.float32, **kwargs)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, ref_fp32: torch.Tensor, what: str) -> None:
    """max|out - ref| <= 2 max|ref_fp32 - ref| + 1e-6 * max|ref|."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite logits"
    err = max_abs(out, ref)
    budget = ERROR_FACTOR * max_abs(ref_fp32, ref) + RELATIVE_FLOOR * float(ref.abs().max())
    assert err <= budget, f"{what}: max error {err:.3e} > budget {budget:.3e}"


def sequences(g: dict, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, g["vocab_size"], (n,), generator=gen) for n in LENGTHS]


def padded_batch(seqs):
    """Right-padded input_ids [B, T] and attention_mask."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.int64)
    mask = torch.zeros(len(seqs), width, dtype=torch.int64)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], mask[b, :len(s)] = s, 1
    return ids, mask


def naive_logits(pair, seqs):
    """[(float64 logits [T, V], fp32 logits [T, V])] of each sequence's naive prefill."""
    hi, lo = pair
    return [(hi.prefill(s), lo.prefill(s)) for s in seqs]


def check_forward(model, seqs, references, what):
    """model(input_ids, attention_mask) on the right-padded batch against each row's naive prefill."""
    ids, mask = padded_batch(seqs)
    logits = model(ids, attention_mask=mask)
    for b, (s, (ref, ref32)) in enumerate(zip(seqs, references)):
        assert_matches(logits[b, :len(s)], ref, ref32, f"{what}, row {b}")
        assert torch.equal(logits[b, len(s):], torch.zeros_like(logits[b, len(s):])), "padded positions get 0"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Per geometry: tensors, checkpoints of both layouts, sequences and the naive logits (computed once)."""
    built = {}
    for name, g in GEOMETRIES.items():
        tensors = random_tensors(g, seed=len(built) + 11)
        root = tmp_path_factory.mktemp(name)
        seqs = sequences(g)
        built[name] = dict(
            g=g, tensors=tensors, seqs=seqs, refs=naive_logits(naive_pair(tensors, g, "zero"), seqs),
            native=write_checkpoint(root / "native", tensors, native_config(g)),
            legacy=write_checkpoint(root / "legacy", to_legacy(tensors, g["num_hidden_layers"]), legacy_config(g)))
    return built


def load_fp32(directory, skip_mode="zero"):
    return load_model(directory, dtype=torch.float32, skip_mode=skip_mode)


# ---------------------------------------------------------------------------------------------
# the model agrees with the oracle
# ---------------------------------------------------------------------------------------------

def test_naive_decode_path_equals_its_prefill(cases):
    """The oracle's two forms (§4.2 full sequence, §4.4 step by step) agree with each other in float64."""
    case = cases[MAIN]
    naive = naive_pair(case["tensors"], case["g"], "zero")[0]
    seq = case["seqs"][0]
    full = naive.prefill(seq)
    naive.prefill(seq[:4])
    steps = torch.stack([naive.step(t) for t in seq[4:]])
    assert max_abs(steps, full[4:]) < 1e-9 * float(full.abs().max())
    naive.reset()
    stepped = torch.stack([naive.step(t) for t in seq])
    assert max_abs(stepped, full) < 1e-9 * float(full.abs().max())


@pytest.mark.parametrize("layout", ["native", "legacy"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_prefill_matches_naive(cases, geometry, layout):
    case = cases[geometry]
    model = load_fp32(case[layout])
    assert model.dtype == torch.float32
    check_forward(model, case["seqs"], case["refs"], f"{geometry} {layout} prefill")


@pytest.mark.parametrize("geometry", [MAIN, "g1_kv4_full_rot"])
def test_decode_matches_naive(cases, geometry):
    """Prefill of a few tokens, then one decode step per token (batch of two, different lengths)."""
    case = cases[geometry]
    model = load_fp32(case["native"])
    seqs, refs = case["seqs"], case["refs"]
    first = (4, 1)
    state = model.new_state(2, max(LENGTHS), page_size=4)
    ids = torch.cat([s[:n] for s, n in zip(seqs, first)])
    cu = torch.tensor([0, first[0], sum(first)], dtype=torch.int32)
    last = model.prefill(state, ids, cu)
    for b, n in enumerate(first):
        assert_matches(last[b], refs[b][0][n - 1], refs[b][1][n - 1], f"prefill({n}) row {b}")
    for step in range(min(LENGTHS) - 1):
        positions = state.seq_lens.tolist()
        out = model.decode_step(state, torch.stack([s[p] for s, p in zip(seqs, positions)]))
        for b, p in enumerate(positions):
            assert_matches(out[b], refs[b][0][p], refs[b][1][p], f"decode step at position {p}, row {b}")


@pytest.mark.parametrize("split", [(3, 1, 5, 4), (1, 12)])
def test_chunked_prefill_matches_naive(cases, split):
    case = cases[MAIN]
    model = load_fp32(case["native"])
    seq, (ref, ref32) = case["seqs"][0], case["refs"][0]
    state = model.new_state(1, len(seq), page_size=4)
    start = 0
    for n in split:
        out = model.prefill(state, seq[start:start + n], torch.tensor([0, n], dtype=torch.int32), all_logits=True)
        assert_matches(out, ref[start:start + n], ref32[start:start + n], f"chunk at {start} of {split}")
        start += n


def test_left_padding_equals_unpadded(cases):
    case = cases[MAIN]
    model = load_fp32(case["native"])
    seqs, refs = case["seqs"], case["refs"]
    width = max(LENGTHS)
    ids = torch.full((2, width), 1, dtype=torch.int64)
    mask = torch.zeros(2, width, dtype=torch.int64)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):], mask[b, width - len(s):] = s, 1
    logits = model(ids, attention_mask=mask)
    for b, s in enumerate(seqs):
        assert_matches(logits[b, width - len(s):], refs[b][0], refs[b][1], f"left-padded row {b}")


@pytest.mark.parametrize("skip_mode", ["zero", "scaled_input"])
def test_skip_route_matches_naive(tmp_path, skip_mode):
    """Balancing biases that make the skip route win for some tokens (§5.4): each skip_mode matches the
    oracle run in that mode, and not the other mode (so the route really fired)."""
    g = GEOMETRIES[MAIN]
    tensors = random_tensors(g, seed=41, skip_bias=0.12)
    write_checkpoint(tmp_path, tensors, native_config(g))
    seqs = sequences(g, seed=6)
    other = {"zero": "scaled_input", "scaled_input": "zero"}[skip_mode]
    refs = naive_logits(naive_pair(tensors, g, skip_mode), seqs)
    naive = naive_pair(tensors, g, skip_mode)[0]
    naive.prefill(seqs[0])
    routes = [r for layer in naive.routes for r in layer]
    assert g["num_experts"] in routes and min(routes) < g["num_experts"], "the case must mix skipped and routed tokens"
    model = load_fp32(tmp_path, skip_mode)
    check_forward(model, seqs, refs, f"skip_mode={skip_mode}")
    with pytest.raises(AssertionError):
        check_forward(model, seqs, naive_logits(naive_pair(tensors, g, other), seqs), "the other skip mode")


def test_export_and_legacy_save_match_naive(tmp_path):
    """The other direction: a model's own random weights, exported under native names, feed the oracle; and
    the model saved in the legacy layout and loaded back still matches it."""
    config = tiny().replace(num_blocks=2, skip_mode="zero")
    source = random_model(config, seed=3, dtype=torch.float32, skip_bias=-0.5)
    tensors = export_tensors(source, "native")
    g = dict(head_dim=config.head_dim, rope_theta=config.rope_theta, partial_rotary_factor=config.rotary_dim /
             config.head_dim)
    gen = torch.Generator().manual_seed(9)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in (9, 4)]
    refs = naive_logits(naive_pair(tensors, g, "zero"), seqs)
    check_forward(source, seqs, refs, "random_model")
    model_loader.save_checkpoint(source, tmp_path, "legacy")
    check_forward(load_fp32(tmp_path), seqs, refs, "saved as legacy, loaded back")


# ---------------------------------------------------------------------------------------------
# mutants: each plausible bug, patched into the model, must make the comparison fail
# ---------------------------------------------------------------------------------------------

def _block_moe_before_attention(self, ws, ops, cache, batch):
    self.post_attn_norm(ws.residual, ws.x, ws)
    eda_in = None if self.index == 0 else ws.eda[(self.index - 1) % 2]
    self.moe(ws.x, ws.y, ops, eda_in, ws.eda[self.index % 2], ws)
    self.post_attn_merge(ws.residual, ws.y, ws)
    self.input_norm(ws.residual, ws.x, ws)
    self.attn(ws.x, ws.y, ops, cache, batch, ws)
    self.post_mlp_merge(ws.residual, ws.y, ws)


def _block_with_norms(attn_norm: str, moe_norm: str):
    def forward(self, ws, ops, cache, batch):
        getattr(self, attn_norm)(ws.residual, ws.x, ws)
        self.attn(ws.x, ws.y, ops, cache, batch, ws)
        self.post_attn_merge(ws.residual, ws.y, ws)
        getattr(self, moe_norm)(ws.residual, ws.x, ws)
        eda_in = None if self.index == 0 else ws.eda[(self.index - 1) % 2]
        self.moe(ws.x, ws.y, ops, eda_in, ws.eda[self.index % 2], ws)
        self.post_mlp_merge(ws.residual, ws.y, ws)
    return forward


def _model_forward(input_affine: str = "bias_then_scale", final_norm: bool = True):
    def forward(self, ws, state, batch):
        torch.index_select(self.embed_tokens, 0, ws.token_ids, out=ws.y)
        ws.residual.copy_(ws.y)
        if input_affine == "bias_then_scale":
            ws.residual.add_(self.input_bias).mul_(self.input_scale)
        elif input_affine == "scale_then_bias":
            ws.residual.mul_(self.input_scale).add_(self.input_bias)
        for i, block in enumerate(self.blocks):
            block(ws, self.ops, state.layer(i), batch)
        if final_norm:
            self.norm(ws.residual, ws.x, ws)
        else:
            ws.x.copy_(ws.residual)
    return forward


def _merge(kind: str):
    def forward(self, residual, y, ws):
        term = ws.scratch
        term.copy_(y)
        if kind == "scale_then_bias":
            term.mul_(self.hidden_scale).add_(self.hidden_bias)
            return residual.mul_(self.residual_scale).add_(self.residual_bias).add_(term)
        if kind == "scales_swapped":
            term.add_(self.hidden_bias).mul_(self.residual_scale)
            return residual.add_(self.residual_bias).mul_(self.hidden_scale).add_(term)
        if kind == "residual_unscaled":
            term.add_(self.hidden_bias).mul_(self.hidden_scale)
            return residual.add_(term)
        if kind == "biases_dropped":
            term.mul_(self.hidden_scale)
            return residual.mul_(self.residual_scale).add_(term)
        raise AssertionError(kind)
    return forward


def _swap_slot_targets(first: str, second: str):
    """A loader that sends the tensors meant for one model parameter to another, and back."""
    original = model_loader.checkpoint_slots

    def slots(config, layout):
        out = []
        for s in original(config, layout):
            target = s.target.replace(first, "\0").replace(second, first).replace("\0", second)
            out.append(model_loader.TensorSlot(s.key, target, s.index, s.aliases))
        return out
    return slots


def _after_load(edit):
    """A loader that loads correctly, then applies `edit(model)`: a wrong interpretation of a tensor."""
    original = model_loader.load_weights_

    def load(model, path):
        layout = original(model, path)
        with torch.no_grad():
            edit(model)
        return layout
    return load


def _swap_halves(t: torch.Tensor, dim: int):
    a, b = t.chunk(2, dim=dim)
    t.copy_(torch.cat([b, a], dim=dim))


def _each_block(edit):
    def apply(model):
        for block in model.blocks:
            edit(block)
    return apply


def _swap_value_projections(block):
    """The fused projection's rows are q | k | v current | v delayed; the q|k rows number the conv channels."""
    _swap_halves(block.attn.qkv_weight[block.attn.conv1_weight.shape[0]:], 0)


def _patch(owner, name, replacement):
    return lambda mp: mp.setattr(owner, name, replacement)


def _slots_swapping(first: str, second: str):
    return _patch(model_loader, "checkpoint_slots", _swap_slot_targets(first, second))


def _loaded_then(edit):
    return _patch(model_loader, "load_weights_", _after_load(edit))


def _zero_eda(block):
    if block.moe.router.eda_scale is not None:
        block.moe.router.eda_scale.zero_()


# Bugs in the model's code, or in how it reads a tensor (the same in either layout).
CODE_MUTANTS = {
    # block order and norms
    "moe_before_attention": _patch(model_layers.ZayaBlock, "forward", _block_moe_before_attention),
    "input_norm_before_moe": _patch(model_layers.ZayaBlock, "forward", _block_with_norms("input_norm", "input_norm")),
    "post_attn_norm_before_attention": _patch(model_layers.ZayaBlock, "forward",
                                              _block_with_norms("post_attn_norm", "post_attn_norm")),
    "norms_swapped": _patch(model_layers.ZayaBlock, "forward", _block_with_norms("post_attn_norm", "input_norm")),
    # input scaling and final norm
    "input_scale_then_bias": _patch(model_module.ZayaModel, "_forward", _model_forward(input_affine="scale_then_bias")),
    "input_scaling_skipped": _patch(model_module.ZayaModel, "_forward", _model_forward(input_affine="none")),
    "final_norm_skipped": _patch(model_module.ZayaModel, "_forward", _model_forward(final_norm=False)),
    "final_norm_weight_ignored": _loaded_then(lambda m: m.norm.weight.fill_(1.0)),
    # residual merges
    "merge_scale_then_bias": _patch(model_layers.ResidualMerge, "forward", _merge("scale_then_bias")),
    "merge_scales_swapped": _patch(model_layers.ResidualMerge, "forward", _merge("scales_swapped")),
    "merge_residual_unscaled": _patch(model_layers.ResidualMerge, "forward", _merge("residual_unscaled")),
    "merge_biases_dropped": _patch(model_layers.ResidualMerge, "forward", _merge("biases_dropped")),
    # attention and MoE details
    "value_projections_swapped": _loaded_then(_each_block(_swap_value_projections)),
    "temperature_exponentiated": _loaded_then(_each_block(lambda b: b.attn.temp.exp_())),
    "rope_theta_5e6": _loaded_then(_each_block(lambda b: setattr(b.attn, "rope_theta", 5e6))),
    "no_eda": _loaded_then(_each_block(_zero_eda)),
    "expert_gate_and_up_swapped": _loaded_then(_each_block(lambda b: _swap_halves(b.moe.w_fc1, 1))),
}
# Bugs in the loader's mapping of checkpoint names to parameters: checked through both layouts' names.
MAPPING_MUTANTS = {
    "norm_weights_swapped": _slots_swapping(".input_norm.", ".post_attn_norm."),
    "input_scale_and_bias_swapped": _slots_swapping("input_scale", "input_bias"),
    "post_attn_and_post_mlp_merges_swapped": _slots_swapping("post_attn_merge", "post_mlp_merge"),
    "merge_hidden_and_residual_scales_swapped": _slots_swapping("hidden_scale", "residual_scale"),
}
MUTANTS = {**CODE_MUTANTS, **MAPPING_MUTANTS}
MUTANT_CASES = [(name, "native") for name in MUTANTS] + [(name, "legacy") for name in MAPPING_MUTANTS]


@pytest.mark.parametrize("mutant, layout", MUTANT_CASES, ids=[f"{m}-{layout}" for m, layout in MUTANT_CASES])
def test_mutant_is_caught(cases, monkeypatch, mutant, layout):
    case = cases[MAIN]
    MUTANTS[mutant](monkeypatch)
    model = load_fp32(case[layout])
    with pytest.raises(AssertionError, match="max error"):
        check_forward(model, case["seqs"], case["refs"], f"mutant {mutant}")


def test_legacy_res_scale_off_by_one_is_caught(cases, tmp_path):
    """A legacy converter that gives block i the res_scale of sub-layer 2i (its own input merge) instead of
    2i+1 for the post-attention merge: the legacy file reads in, but the logits move."""
    case = cases[MAIN]
    g = case["g"]
    legacy = to_legacy(case["tensors"], g["num_hidden_layers"])
    wrong = dict(legacy)
    for i in range(1, g["num_hidden_layers"]):
        for v in ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias"):
            wrong[f"model.layers.{2 * i}.res_scale.{v}"] = legacy[f"model.layers.{2 * i + 1}.res_scale.{v}"]
            wrong[f"model.layers.{2 * i + 1}.res_scale.{v}"] = legacy[f"model.layers.{2 * i}.res_scale.{v}"]
    model = load_fp32(write_checkpoint(tmp_path, wrong, legacy_config(g)))
    with pytest.raises(AssertionError, match="max error"):
        check_forward(model, case["seqs"], case["refs"], "legacy res_scale off by one")
