# SPDX-License-Identifier: Apache-2.0
"""safetensors checkpoints of ZAYA1 in both Hub layouts (§7): legacy (80 alternating sub-layers,
Zyphra/ZAYA1-8B-legacy) and native (40 blocks, Zyphra/ZAYA1-8B), single file or sharded with
model.safetensors.index.json; saving in either layout (native is the default).

One table, checkpoint_slots(config, layout), says where every checkpoint tensor lives in the model:
the four input projections fill row ranges of the fused qkv weight, legacy per-expert matrices fill
one expert of the stacked expert weights, and the legacy res_scale / input_norm of sub-layer n map to
blocks as §2.2 says. Loading checks the whole checkpoint against the table before writing anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import LAYOUTS, ZayaConfig, from_hf_config, to_hf_config
from .model import DTYPES, ZayaModel

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Residual-merge vectors: checkpoint suffix -> ResidualMerge attribute (both layouts).
_MERGE = (("hidden_states_scale", "hidden_scale"), ("hidden_states_bias", "hidden_bias"),
          ("residual_scale", "residual_scale"), ("residual_bias", "residual_bias"))
# safetensors dtype names -> the model dtype a checkpoint stored in them runs in (dtype=None, "auto").
_STORED_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float32, "F64": torch.float32}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names every offending tensor."""


@dataclass(frozen=True)
class TensorSlot:
    key: str                      # tensor name in the checkpoint
    target: str                   # the model's state_dict name
    index: tuple = ()             # where in the target: rows of the fused qkv, or one expert of a stack
    aliases: tuple[str, ...] = ()  # other names the same tensor is known by (§12.6)


def checkpoint_slots(config: ZayaConfig, layout: str) -> list[TensorSlot]:
    """Every tensor of a checkpoint in `layout` and where it goes in ZayaModel(config)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    c = config
    q_rows = (slice(0, c.q_width),)
    k_rows = (slice(c.q_width, c.conv_channels),)
    v1_rows = (slice(c.conv_channels, c.conv_channels + c.value_width),)
    v2_rows = (slice(c.conv_channels + c.value_width, c.proj_width),)
    slots = [TensorSlot("model.embed_tokens.weight", "embed_tokens")]
    last = c.num_blocks - 1
    if layout == "native":
        slots += [TensorSlot("model.norm.weight", "norm.weight"),
                  TensorSlot("model.input_hidden_states_scale", "input_scale"),
                  TensorSlot("model.input_hidden_states_bias", "input_bias")]
        for i in range(c.num_blocks):
            src, dst = f"model.layers.{i}.", f"blocks.{i}."
            attn, gate = src + "self_attn.qkv_proj.", src + "mlp.gate."
            slots += [
                TensorSlot(src + "input_layernorm.weight", dst + "input_norm.weight"),
                TensorSlot(attn + "q_proj.weight", dst + "attn.qkv_weight", q_rows),
                TensorSlot(attn + "k_proj.weight", dst + "attn.qkv_weight", k_rows),
                TensorSlot(attn + "v_proj_current.weight", dst + "attn.qkv_weight", v1_rows),
                TensorSlot(attn + "v_proj_delayed.weight", dst + "attn.qkv_weight", v2_rows),
                TensorSlot(attn + "conv_qk_depthwise.weight", dst + "attn.conv1_weight"),
                TensorSlot(attn + "conv_qk_depthwise.bias", dst + "attn.conv1_bias"),
                TensorSlot(attn + "conv_qk_grouped.weight", dst + "attn.conv2_weight"),
                TensorSlot(attn + "conv_qk_grouped.bias", dst + "attn.conv2_bias"),
                TensorSlot(src + "self_attn.qk_norm.temp", dst + "attn.temp"),
                TensorSlot(src + "self_attn.o_proj.weight", dst + "attn.o_weight"),
                TensorSlot(src + "post_attention_layernorm.weight", dst + "post_attn_norm.weight"),
                TensorSlot(gate + "down_proj.weight", dst + "moe.router.down_weight"),
                TensorSlot(gate + "down_proj.bias", dst + "moe.router.down_bias"),
                TensorSlot(gate + "router_mlp.norm.weight", dst + "moe.router.norm_weight",
                           aliases=(gate + "router_mlp.rmsnorm_eda.weight",)),
                TensorSlot(gate + "router_mlp.fc1.weight", dst + "moe.router.fc1_weight"),
                TensorSlot(gate + "router_mlp.fc1.bias", dst + "moe.router.fc1_bias"),
                TensorSlot(gate + "router_mlp.fc2.weight", dst + "moe.router.fc2_weight"),
                TensorSlot(gate + "router_mlp.fc2.bias", dst + "moe.router.fc2_bias"),
                TensorSlot(gate + "router_mlp.out_proj.weight", dst + "moe.router.out_weight"),
                TensorSlot(gate + "balancing_biases", dst + "moe.router.balancing_biases"),
                TensorSlot(src + "mlp.experts.gate_up_proj", dst + "moe.w_fc1"),
                TensorSlot(src + "mlp.experts.down_proj", dst + "moe.w_fc2"),
            ]
            if i > 0:
                slots.append(TensorSlot(gate + "router_states_scale", dst + "moe.router.eda_scale"))
            for ckpt, attr in _MERGE:
                slots.append(TensorSlot(f"{src}post_attention_residual_scale.{ckpt}", f"{dst}post_attn_merge.{attr}"))
                slots.append(TensorSlot(f"{src}post_mlp_residual_scale.{ckpt}", f"{dst}post_mlp_merge.{attr}"))
        return slots

    # legacy: sub-layer 2i is block i's attention, 2i+1 its MoE. The res_scale of sub-layer n merges the
    # output of sub-layer n-1 into the residual, so it belongs to the block that produced n-1 (§2.2).
    slots += [TensorSlot("model.final_norm.weight", "norm.weight"),
              TensorSlot("model.layers.0.res_scale.hidden_states_scale", "input_scale"),
              TensorSlot("model.layers.0.res_scale.hidden_states_bias", "input_bias")]
    slots += [TensorSlot(f"model.res_scale.{ckpt}", f"blocks.{last}.post_mlp_merge.{attr}") for ckpt, attr in _MERGE]
    for i in range(c.num_blocks):
        dst = f"blocks.{i}."
        a, m = f"model.layers.{2 * i}.", f"model.layers.{2 * i + 1}."
        qkv, router = a + "self_attn.qkv.", m + "zaya_block.router."
        slots += [
            TensorSlot(a + "input_norm.weight", dst + "input_norm.weight"),
            TensorSlot(qkv + "linear_q.weight", dst + "attn.qkv_weight", q_rows),
            TensorSlot(qkv + "linear_k.weight", dst + "attn.qkv_weight", k_rows),
            TensorSlot(qkv + "val_proj1.weight", dst + "attn.qkv_weight", v1_rows),
            TensorSlot(qkv + "val_proj2.weight", dst + "attn.qkv_weight", v2_rows),
            TensorSlot(qkv + "conv_qk.0.weight", dst + "attn.conv1_weight"),
            TensorSlot(qkv + "conv_qk.0.bias", dst + "attn.conv1_bias"),
            TensorSlot(qkv + "conv_qk.1.weight", dst + "attn.conv2_weight"),
            TensorSlot(qkv + "conv_qk.1.bias", dst + "attn.conv2_bias"),
            TensorSlot(qkv + "temp", dst + "attn.temp"),
            TensorSlot(a + "self_attn.o_proj.weight", dst + "attn.o_weight"),
            TensorSlot(m + "input_norm.weight", dst + "post_attn_norm.weight"),
            TensorSlot(router + "down_proj.weight", dst + "moe.router.down_weight"),
            TensorSlot(router + "down_proj.bias", dst + "moe.router.down_bias"),
            TensorSlot(router + "rmsnorm_eda.weight", dst + "moe.router.norm_weight"),
            TensorSlot(router + "router_mlp.0.weight", dst + "moe.router.fc1_weight"),
            TensorSlot(router + "router_mlp.0.bias", dst + "moe.router.fc1_bias"),
            TensorSlot(router + "router_mlp.2.weight", dst + "moe.router.fc2_weight"),
            TensorSlot(router + "router_mlp.2.bias", dst + "moe.router.fc2_bias"),
            TensorSlot(router + "router_mlp.4.weight", dst + "moe.router.out_weight"),
            TensorSlot(router + "balancing_biases", dst + "moe.router.balancing_biases"),
        ]
        if i > 0:
            slots.append(TensorSlot(router + "router_states_scale", dst + "moe.router.eda_scale"))
            slots += [TensorSlot(f"{a}res_scale.{ckpt}", f"blocks.{i - 1}.post_mlp_merge.{attr}")
                      for ckpt, attr in _MERGE]
        slots += [TensorSlot(f"{m}res_scale.{ckpt}", f"{dst}post_attn_merge.{attr}") for ckpt, attr in _MERGE]
        experts = m + "zaya_block.experts.local_experts."
        for e in range(c.num_experts):
            slots.append(TensorSlot(f"{experts}{e}.linear_fc1.weight", dst + "moe.w_fc1", (e,)))
            slots.append(TensorSlot(f"{experts}{e}.linear_fc2.weight", dst + "moe.w_fc2", (e,)))
    return slots


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _tensor_files(path: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the .safetensors file holding it (a file, or a directory with an index
    or a single model.safetensors)."""
    if path.is_file():
        files = [path]
    elif (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        absent = sorted({name for name in weight_map.values() if not (path / name).is_file()})
        if absent:
            raise CheckpointError(f"{path / INDEX_FILE} lists shard files that do not exist: {absent}")
        return {key: path / name for key, name in weight_map.items()}
    elif (path / SINGLE_FILE).is_file():
        files = [path / SINGLE_FILE]
    else:
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")
    located = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            located.update({key: file for key in f.keys()})
    return located


def _listing(names, limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def checkpoint_layout(keys) -> str:
    """'legacy' or 'native' from the tensor names (the final norm is named differently)."""
    if "model.final_norm.weight" in keys:
        return "legacy"
    if "model.norm.weight" in keys:
        return "native"
    raise CheckpointError("cannot tell the checkpoint layout: neither model.final_norm.weight (legacy) nor "
                          "model.norm.weight (native) is present")


@torch.no_grad()
def load_weights_(model: ZayaModel, path: str | Path) -> str:
    """Fill every parameter and buffer of `model` from a checkpoint (either layout, detected from the tensor
    names) and return the layout. Tensors are cast to the model's dtypes (its dtype; the balancing biases
    fp32). The whole checkpoint is checked first: missing, unexpected, mis-shaped or non-float tensors
    raise CheckpointError naming them, and nothing is written."""
    path = Path(path)
    located = _tensor_files(path)
    layout = checkpoint_layout(located)
    slots = checkpoint_slots(model.config, layout)
    targets = dict(model.state_dict(keep_vars=True))
    chosen, missing, duplicated = [], [], []
    for slot in slots:
        present = [name for name in (slot.key, *slot.aliases) if name in located]
        if not present:
            missing.append(slot.key)
        elif len(present) > 1:
            duplicated.append(" and ".join(present))
        else:
            chosen.append((slot, present[0]))
    unexpected = set(located) - {name for s in slots for name in (s.key, *s.aliases)}
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if duplicated:
        problems.append(f"stored under two names: {_listing(duplicated)}")
    by_file: dict[Path, list] = {}
    for slot, name in chosen:
        by_file.setdefault(located[name], []).append((slot, name))
    for file, entries in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for slot, name in entries:
                view = f.get_slice(name)
                shape, expected = tuple(view.get_shape()), tuple(targets[slot.target][slot.index].shape)
                if shape != expected:
                    problems.append(f"tensor {name} has shape {shape}, expected {expected}")
                elif view.get_dtype() not in ("BF16", "F16", "F32", "F64"):
                    problems.append(f"tensor {name} has dtype {view.get_dtype()}, expected a float type")
    if problems:
        raise CheckpointError(f"{layout} checkpoint {path} does not fit the model: " + "; ".join(problems))
    for file, entries in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for slot, name in entries:
                targets[slot.target][slot.index].copy_(f.get_tensor(name))
    return layout


def stored_dtype(path: str | Path) -> torch.dtype:
    """The model dtype a checkpoint's weights ask for: that of its embedding (bf16 -> bf16; fp32, and fp16
    or fp64, which the model does not run in, -> fp32)."""
    path = Path(path)
    located = _tensor_files(path)
    key = "model.embed_tokens.weight"
    if key not in located:
        raise CheckpointError(f"checkpoint {path} has no {key}")
    with safe_open(str(located[key]), framework="pt") as f:
        stored = f.get_slice(key).get_dtype()
    if stored not in _STORED_DTYPES:
        raise CheckpointError(f"tensor {key} has dtype {stored}, expected a float type")
    return _STORED_DTYPES[stored]


def load_model(path: str | Path, device: torch.device | str = "cpu", backend: str = "reference",
               skip_mode: str | None = None, dtype: torch.dtype | None = None) -> ZayaModel:
    """A ZayaModel from a checkpoint directory (config.json + safetensors), built directly on `device`.

    dtype: torch.float32 or torch.bfloat16; None runs the reference backend in the checkpoint's own dtype
    (stored_dtype: an fp32 checkpoint stays fp32) and the kernels in bf16, the only dtype they take.
    skip_mode: None gives the layout's default (config.DEFAULT_SKIP_MODE): "zero" for native checkpoints,
    as the upstream Hugging Face model runs them, "scaled_input" (p_skip * x) for legacy ones."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {path}")
    config = from_hf_config(json.loads(config_file.read_text()), skip_mode=skip_mode)
    if dtype is None:
        dtype = torch.bfloat16 if backend == "kernels" else stored_dtype(path)
    elif dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {DTYPES}, got {dtype}")
    with torch.device(device):
        model = ZayaModel(config, backend=backend, dtype=dtype)
    load_weights_(model, path)
    return model


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def export_tensors(model: ZayaModel, layout: str = "native") -> dict[str, torch.Tensor]:
    """The model's tensors under the checkpoint names of `layout` (CPU copies, ready for save_file)."""
    targets = dict(model.state_dict(keep_vars=True))
    return {slot.key: targets[slot.target][slot.index].detach().to("cpu", copy=True).contiguous()
            for slot in checkpoint_slots(model.config, layout)}


def save_checkpoint(model: ZayaModel, directory: str | Path, layout: str = "native",
                    max_shard_bytes: int | None = None) -> Path:
    """Write config.json and the weights in `layout`: one model.safetensors, or shards of at most
    max_shard_bytes (a tensor larger than that gets a shard of its own) with model.safetensors.index.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = dict(to_hf_config(model.config, layout), torch_dtype=str(model.dtype).removeprefix("torch."))
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    tensors = export_tensors(model, layout)
    if max_shard_bytes is None:
        save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})
        return directory
    shards: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    weight_map = {}
    for number, keys in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2) + "\n")
    return directory


def save_native(model: ZayaModel, directory: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Save in the native (Hugging Face Transformers) layout, the current Zyphra/ZAYA1-8B form."""
    return save_checkpoint(model, directory, "native", max_shard_bytes)
