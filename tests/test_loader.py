# SPDX-License-Identifier: Apache-2.0
"""Config presets and config.json parsing, parameter counts (ZAYA1_ARCHITECTURE.md §9), and safetensors
checkpoints in both layouts (§7): round trips, sharding, the router-norm alias, dtypes, and corrupted files."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from zaya_kernels.model import (ZayaModel, export_tensors, from_hf_config, load_model, load_weights_, random_model,
                                save_native, tiny, to_hf_config, zaya1_8b)
from zaya_kernels.model.loader import CheckpointError, checkpoint_slots, save_checkpoint

LEGACY_8B = {
    "model_type": "zaya", "architectures": ["ZayaForCausalLM"], "vocab_size": 262272, "hidden_size": 2048,
    "num_hidden_layers": 80, "num_attention_heads": 8, "head_dim": 128, "num_query_groups": 2,
    "num_key_value_heads": 2, "ffn_hidden_size": 4096, "num_experts": 16, "zaya_mlp_expansion": 256,
    "moe_router_topk": 1, "rope_theta": 5000000, "partial_rotary_factor": 0.5, "max_position_embeddings": 131072,
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 106, "residual_in_fp32": True, "norm_epsilon": 1e-05,
    "zaya_use_eda": True, "zaya_use_mod": True, "scale_residual_merge": True, "clamp_temp": False,
    "add_bias_linear": False, "tie_word_embeddings": True, "sliding_window": None, "rope_scaling": False,
    "activation_func": "swiglu", "normalization": "RMSNorm", "torch_dtype": "bfloat16",
}
NATIVE_8B = {
    "model_type": "zaya", "architectures": ["ZayaForCausalLM"], "vocab_size": 262272, "hidden_size": 2048,
    "num_hidden_layers": 40, "layer_types": ["hybrid"] * 40, "num_attention_heads": 8, "num_key_value_heads": 2,
    "head_dim": 128, "moe_intermediate_size": 2048, "num_experts": 16, "num_experts_per_tok": 1,
    "router_hidden_size": 256, "rms_norm_eps": 1e-05, "max_position_embeddings": 131072, "pad_token_id": 0,
    "bos_token_id": 2, "eos_token_id": 106, "tie_word_embeddings": True, "sliding_window": None,
    "cca_time0": 2, "cca_time1": 2, "torch_dtype": "bfloat16",
    "rope_parameters": {"hybrid": {"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5},
                        "hybrid_sliding": {"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5}},
}


def meta_8b() -> ZayaModel:
    with torch.device("meta"):
        return ZayaModel(zaya1_8b())


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------

def test_zaya1_8b_parameter_counts_on_meta():
    model = meta_8b()
    assert model.parameter_counts() == {"non_embedding": 8_303_355_728, "embedding": 537_133_056}
    assert all(p.is_meta for p in model.parameters())


def test_zaya1_8b_checkpoint_inventories():
    """§7: 2,483 legacy and 1,283 native tensors, each landing on exactly its share of the model."""
    model = meta_8b()
    targets = dict(model.state_dict(keep_vars=True))
    total = sum(t.numel() for t in targets.values())
    for layout, count in (("legacy", 2483), ("native", 1283)):
        slots = checkpoint_slots(model.config, layout)
        assert len(slots) == count == len({s.key for s in slots})
        assert sum(targets[s.target][s.index].numel() for s in slots) == total
    shapes = {s.key: tuple(targets[s.target][s.index].shape) for s in checkpoint_slots(model.config, "legacy")}
    assert shapes["model.layers.0.self_attn.qkv.linear_q.weight"] == (1024, 2048)
    assert shapes["model.layers.2.self_attn.qkv.conv_qk.1.weight"] == (1280, 128, 2)
    assert shapes["model.layers.3.zaya_block.router.router_mlp.4.weight"] == (17, 256)
    assert shapes["model.layers.79.zaya_block.experts.local_experts.15.linear_fc1.weight"] == (4096, 2048)
    assert "model.layers.1.zaya_block.router.router_states_scale" not in shapes
    assert "model.layers.0.res_scale.residual_scale" not in shapes
    shapes = {s.key: tuple(targets[s.target][s.index].shape) for s in checkpoint_slots(model.config, "native")}
    assert shapes["model.layers.39.mlp.experts.gate_up_proj"] == (16, 4096, 2048)
    assert shapes["model.layers.0.mlp.experts.down_proj"] == (16, 2048, 2048)
    assert shapes["model.layers.5.self_attn.qkv_proj.v_proj_delayed.weight"] == (128, 2048)


def test_tiny_keeps_the_structure():
    c = tiny()
    assert (c.num_q_heads, c.num_kv_heads, c.rotary_dim * 2) == (8, 2, c.head_dim)
    assert c.num_blocks >= 2 and c.num_experts >= 2 and c.proj_width == c.conv_channels + c.k_width


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hf, skip_mode", [(LEGACY_8B, "scaled_input"), (NATIVE_8B, "zero")], ids=["legacy", "native"])
def test_hub_configs_give_zaya1_8b(hf, skip_mode):
    """The skip route's default follows the layout (config.DEFAULT_SKIP_MODE): native checkpoints run as the
    upstream Hugging Face model runs them (a skipped token outputs 0, §12.1), legacy ones as Zyphra's code."""
    assert from_hf_config(hf) == zaya1_8b().replace(skip_mode=skip_mode)
    for mode in ("zero", "scaled_input"):
        assert from_hf_config(hf, skip_mode=mode) == zaya1_8b().replace(skip_mode=mode)


def test_legacy_config_variants():
    earliest = dict(LEGACY_8B, num_attention_heads=16, cca_num_q_heads=8, kv_channels=128)
    del earliest["head_dim"]
    assert from_hf_config(earliest) == zaya1_8b()
    assert from_hf_config(dict(LEGACY_8B, zaya_mlp_expansion=[0, 256] * 40)) == zaya1_8b()
    assert from_hf_config(dict(LEGACY_8B, zaya_layers=["a", 16] * 40)) == zaya1_8b()
    assert from_hf_config(dict(LEGACY_8B, zaya_high_prec=False)).fp32_logits is False
    both = dict(NATIVE_8B, ffn_hidden_size=4096, zaya_mlp_expansion=256, num_query_groups=2)  # third-party classes
    assert from_hf_config(both) == zaya1_8b().replace(skip_mode="zero")
    flat = dict(NATIVE_8B, rope_parameters={"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5})
    assert from_hf_config(flat) == zaya1_8b().replace(skip_mode="zero")


@pytest.mark.parametrize("layout", ["legacy", "native"])
def test_config_json_round_trip(layout):
    config = tiny().replace(fp32_logits=False, eos_token_id=7)
    for mode in ("zero", "scaled_input"):
        assert from_hf_config(json.loads(json.dumps(to_hf_config(config, layout))), mode) == config.replace(
            skip_mode=mode)


@pytest.mark.parametrize("base, changes, match", [
    (LEGACY_8B, {"num_hidden_layers": 79}, "must be even"),
    (LEGACY_8B, {"moe_router_topk": 2}, "top-1"),
    (LEGACY_8B, {"clamp_temp": True}, "clamp_temp"),
    (LEGACY_8B, {"cca_time0": 3}, "cca_time0"),
    (LEGACY_8B, {"zaya_use_mod": False}, "zaya_use_mod"),
    (LEGACY_8B, {"zaya_use_eda": False}, "zaya_use_eda"),
    (LEGACY_8B, {"residual_in_fp32": False}, "residual_in_fp32"),
    (LEGACY_8B, {"sliding_window": 4096}, "sliding_window"),
    (LEGACY_8B, {"rope_scaling": {"type": "yarn"}}, "rope_scaling"),
    (LEGACY_8B, {"num_key_value_heads": 4}, "differ"),
    (LEGACY_8B, {"ffn_hidden_size": 4095}, "even"),
    (LEGACY_8B, {"partial_rotary_factor": 0.3}, "partial_rotary_factor"),
    (LEGACY_8B, {"zaya_layers": ["a", 16, "a", 8] * 20}, "num_experts=16 experts"),
    (NATIVE_8B, {"layer_types": ["hybrid_sliding"] * 40}, "hybrid_sliding"),
    (NATIVE_8B, {"layer_types": ["hybrid"] * 39}, "39 entries"),
    (NATIVE_8B, {"num_experts_per_tok": 2}, "top-1"),
    (NATIVE_8B, {"num_attention_heads": 7}, "multiple of num_kv_heads"),
    (NATIVE_8B, {"num_experts": 40}, "<= 32"),
    (NATIVE_8B, {"tie_word_embeddings": False}, "tie_word_embeddings"),
    (NATIVE_8B, {"model_type": "llama"}, "model_type"),
    (NATIVE_8B, {"ffn_hidden_size": 4000}, "ffn_hidden_size=4000 contradicts"),
    (NATIVE_8B, {"zaya_mlp_expansion": 128}, "zaya_mlp_expansion=128 contradicts"),
    ({"hidden_size": 2048}, {}, "cannot tell"),
])
def test_unsupported_config_values_are_refused_by_name(base, changes, match):
    with pytest.raises(ValueError, match=match):
        from_hf_config(dict(base, **changes))


def test_missing_config_field_is_named():
    hf = dict(NATIVE_8B)
    del hf["moe_intermediate_size"]
    with pytest.raises(ValueError, match="moe_intermediate_size"):
        from_hf_config(hf)


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source():
    return random_model(tiny(), seed=31)


def assert_same_model(a: ZayaModel, b: ZayaModel, gen):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ids = torch.randint(0, a.config.vocab_size, (9,), generator=gen)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    logits = [m.prefill(m.new_state(2, 8), ids, cu, all_logits=True) for m in (a, b)]
    assert torch.equal(*logits)


@pytest.mark.parametrize("layout", ["legacy", "native"])
@pytest.mark.parametrize("shard_bytes", [None, 400_000])
def test_checkpoint_round_trip(source, tmp_path, gen, layout, shard_bytes):
    save_checkpoint(source, tmp_path, layout, max_shard_bytes=shard_bytes)
    if shard_bytes:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    loaded = load_model(tmp_path, skip_mode=source.config.skip_mode)
    assert loaded.config == source.config
    assert_same_model(source, loaded, gen)


def test_legacy_checkpoint_converts_to_native(source, tmp_path, gen):
    save_checkpoint(source, tmp_path / "legacy", "legacy")
    from_legacy = load_model(tmp_path / "legacy")
    save_native(from_legacy, tmp_path / "native")
    native = load_file(str(tmp_path / "native" / "model.safetensors"))
    assert native.keys() == export_tensors(source, "native").keys()
    assert_same_model(source, load_model(tmp_path / "native"), gen)


def test_legacy_res_scales_map_to_the_blocks(source):
    """§2.2: legacy layer 0's res_scale is the input scaling, layer 2i+1's is block i's post-attention merge,
    layer 2i+2's is block i's post-MoE merge, model.res_scale is the last block's post-MoE merge."""
    legacy = export_tensors(source, "legacy")
    last = source.config.num_blocks - 1
    assert torch.equal(legacy["model.layers.0.res_scale.hidden_states_scale"], source.input_scale)
    assert torch.equal(legacy["model.layers.3.res_scale.residual_bias"], source.blocks[1].post_attn_merge.residual_bias)
    assert torch.equal(legacy["model.layers.4.res_scale.hidden_states_bias"],
                       source.blocks[1].post_mlp_merge.hidden_bias)
    assert torch.equal(legacy["model.res_scale.residual_scale"], source.blocks[last].post_mlp_merge.residual_scale)
    assert torch.equal(legacy["model.layers.3.input_norm.weight"], source.blocks[1].post_attn_norm.weight)
    assert torch.equal(legacy["model.layers.2.input_norm.weight"], source.blocks[1].input_norm.weight)
    native = export_tensors(source, "native")
    fc1 = native["model.layers.1.mlp.experts.gate_up_proj"]
    assert torch.equal(fc1[2], legacy["model.layers.3.zaya_block.experts.local_experts.2.linear_fc1.weight"])
    # the fused projection's rows: q | k | v current (val_proj1) | v delayed (val_proj2)
    c = source.config
    qkv = source.blocks[2].attn.qkv_weight
    rows = {"linear_q": (0, c.q_width), "linear_k": (c.q_width, c.conv_channels),
            "val_proj1": (c.conv_channels, c.conv_channels + c.value_width),
            "val_proj2": (c.conv_channels + c.value_width, c.proj_width)}
    for name, (lo, hi) in rows.items():
        assert torch.equal(legacy[f"model.layers.4.self_attn.qkv.{name}.weight"], qkv[lo:hi]), name
    assert torch.equal(native["model.layers.2.self_attn.qkv_proj.v_proj_current.weight"], legacy[
        "model.layers.4.self_attn.qkv.val_proj1.weight"])
    assert torch.equal(native["model.layers.2.mlp.gate.router_mlp.out_proj.weight"], legacy[
        "model.layers.5.zaya_block.router.router_mlp.4.weight"])


def test_router_norm_alias_is_accepted(source, tmp_path, gen):
    tensors = export_tensors(source, "native")
    for i in range(source.config.num_blocks):
        tensors[f"model.layers.{i}.mlp.gate.router_mlp.rmsnorm_eda.weight"] = tensors.pop(
            f"model.layers.{i}.mlp.gate.router_mlp.norm.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    target = random_model(tiny(), seed=32)
    assert load_weights_(target, tmp_path) == "native"
    assert_same_model(source, target, gen)


def test_dtypes_are_cast_and_balancing_biases_stay_fp32(source, tmp_path):
    tensors = {k: v.float() for k, v in export_tensors(source, "native").items()}
    fine = torch.tensor(1.0 + 2.0 ** -20)  # not representable in bf16
    tensors["model.layers.0.mlp.gate.balancing_biases"][0] = fine
    save_file(tensors, str(tmp_path / "model.safetensors"))
    target = random_model(tiny(), seed=33)
    load_weights_(target, tmp_path)
    assert target.blocks[0].attn.qkv_weight.dtype == torch.bfloat16
    assert torch.equal(target.blocks[0].attn.qkv_weight, source.blocks[0].attn.qkv_weight)
    router = target.blocks[0].moe.router
    assert router.balancing_biases.dtype == torch.float32 and router.balancing_biases[0] == fine


@pytest.mark.parametrize("stored, asked, expected", [
    (torch.float32, None, torch.float32), (torch.bfloat16, None, torch.bfloat16),
    (torch.float32, torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32, torch.float32)])
def test_load_model_dtype(source, tmp_path, gen, stored, asked, expected):
    """Issue 11 finding 8: load_model keeps an fp32 checkpoint fp32 (dtype=None is the checkpoint's own; it
    used to cast everything to bf16), or converts to the dtype asked for; the state follows the model."""
    tensors = {k: v if k.endswith("balancing_biases") else v.to(stored)
               for k, v in export_tensors(source, "native").items()}
    fine = torch.tensor(1.0 + 2.0 ** -20)  # not representable in bf16: survives an fp32 load only
    tensors["model.layers.1.self_attn.o_proj.weight"][0, 0] = fine.to(stored)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(source.config, "native")))
    model = load_model(tmp_path, dtype=asked)
    assert model.dtype == expected and {p.dtype for p in model.parameters()} == {expected}
    assert model.blocks[1].moe.router.balancing_biases.dtype == torch.float32
    assert model.new_state(1, 4).k_cache.dtype == expected
    assert model.blocks[1].attn.o_weight[0, 0] == fine.to(stored).to(expected)
    ids = torch.randint(0, source.config.vocab_size, (1, 5), generator=gen)
    assert model(ids).dtype == torch.float32


def _corrupt(source, tmp_path, edit):
    tensors = export_tensors(source, "native")
    edit(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(source.config, "native")))


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("model.layers.1.self_attn.qkv_proj.k_proj.weight"),
     r"1 missing: model\.layers\.1\.self_attn\.qkv_proj\.k_proj\.weight"),
    (lambda t: t.update({"model.layers.2.mlp.experts.down_proj": torch.zeros(4, 256, 64, dtype=torch.bfloat16)}),
     r"tensor model\.layers\.2\.mlp\.experts\.down_proj has shape \(4, 256, 64\), expected \(4, 256, 128\)"),
    (lambda t: t.update({"model.layers.0.mlp.gate.router_states_scale": torch.ones(64, dtype=torch.bfloat16)}),
     r"1 unexpected: model\.layers\.0\.mlp\.gate\.router_states_scale"),
    (lambda t: t.update({"model.norm.weight": torch.ones(256, dtype=torch.int32)}),
     r"tensor model\.norm\.weight has dtype I32"),
    (lambda t: t.update({"model.layers.0.mlp.gate.router_mlp.rmsnorm_eda.weight":
                         t["model.layers.0.mlp.gate.router_mlp.norm.weight"].clone()}),
     r"stored under two names: model\.layers\.0\.mlp\.gate\.router_mlp\.norm\.weight and"),
], ids=["missing", "wrong_shape", "unexpected", "integer", "both_names"])
def test_corrupted_checkpoint_fails_naming_the_tensor(source, tmp_path, edit, match):
    _corrupt(source, tmp_path, edit)
    target = random_model(tiny(), seed=34)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_weights_(target, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "a failed load wrote weights"
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path)


def test_missing_files_are_reported(source, tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_weights_(random_model(tiny(), seed=35), tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    save_checkpoint(source, tmp_path, "native", max_shard_bytes=400_000)
    (tmp_path / "model-00002-of-{:05d}.safetensors".format(
        len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())))).unlink()
    with pytest.raises(CheckpointError, match="shard files that do not exist: \\['model-00002-of"):
        load_model(tmp_path)
