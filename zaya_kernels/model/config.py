# SPDX-License-Identifier: Apache-2.0
"""ZayaConfig: the geometry of a ZAYA1 model, its presets, and the two Hugging Face config.json layouts.

Section numbers refer to ZAYA1_ARCHITECTURE.md. Only the released architecture is supported: CCA
attention with kernel-2 convolutions, top-1 MoE with the skip route and EDA, residual scaling with
an fp32 residual stream, tied embeddings. Anything else in a config.json is refused by name rather
than silently run with the wrong math.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..reference import SKIP_MODES

LAYOUTS = ("legacy", "native")
# skip_mode a checkpoint gets when the caller names none (config.json does not carry it, §5.4): each layout runs
# as the code published with it does. Native checkpoints (Zyphra/ZAYA1-8B) are the Hugging Face Transformers
# model's, which outputs 0 at a skipped token (verified against transformers 5.23, §12.1); legacy checkpoints
# (Zyphra/ZAYA1-8B-legacy) come from Zyphra's alternating-layer code, which outputs p_skip * x. The two agree
# whenever no token picks the skip route.
DEFAULT_SKIP_MODE = {"native": "zero", "legacy": "scaled_input"}
# The zaya_router op takes 2..32 routes (experts + the skip route), see ops.py.
MAX_ROUTES = 32


@dataclass(frozen=True)
class ZayaConfig:
    vocab_size: int
    hidden_size: int              # H
    num_blocks: int               # CCA + MoE pairs (the legacy layout counts 2 sub-layers per block)
    num_q_heads: int              # Hq, latent query heads
    num_kv_heads: int             # Hkv; the first half read the current token's value, the second the previous
    head_dim: int                 # D
    num_experts: int              # E real experts; the router has E + 1 outputs, index E = the skip route
    expert_ffn_size: int          # F (moe_intermediate_size); fc1 is the fused gate|up of width 2F
    router_width: int             # R, the router's down-projection / EDA state width
    rope_theta: float
    rotary_dim: int               # rotated dims at the start of each head (NeoX rotate-half pairing)
    rms_norm_eps: float = 1e-5
    skip_mode: str = "scaled_input"   # MoE output of a skipped token: p_skip * x, or "zero" (§5.4);
    #                                   checkpoints get their layout's DEFAULT_SKIP_MODE (native: "zero")
    fp32_logits: bool = True      # LM head returns fp32 (zaya_high_prec, Zyphra's vLLM) instead of bf16
    max_position_embeddings: int = 131072
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 106

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_blocks", "num_q_heads", "num_kv_heads", "head_dim",
                    "num_experts", "expert_ffn_size", "router_width", "rotary_dim")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ZayaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if (self.num_kv_heads * self.head_dim) % 2:
            raise ValueError("num_kv_heads * head_dim must be even: the value splits into a current and a delayed half")
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim must be even and <= head_dim={self.head_dim}, got {self.rotary_dim}")
        if self.num_routes > MAX_ROUTES:
            raise ValueError(f"num_experts + 1 (skip route) must be <= {MAX_ROUTES}, got {self.num_routes}")
        if self.skip_mode not in SKIP_MODES:
            raise ValueError(f"skip_mode must be one of {SKIP_MODES}, got {self.skip_mode!r}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")

    # Derived widths of the CCA sub-layer (§4.1) and the router.
    @property
    def q_width(self) -> int:
        return self.num_q_heads * self.head_dim

    @property
    def k_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def value_width(self) -> int:
        """Width of each value projection (current, delayed): half of the KV width."""
        return self.num_kv_heads * self.head_dim // 2

    @property
    def conv_channels(self) -> int:
        """Channels of the q|k convolutions (1280 for ZAYA1-8B); values are never convolved."""
        return self.q_width + self.k_width

    @property
    def proj_width(self) -> int:
        """Width of the fused input projection q | k | v_current | v_delayed (1536 for ZAYA1-8B)."""
        return self.conv_channels + 2 * self.value_width

    @property
    def num_routes(self) -> int:
        return self.num_experts + 1

    def replace(self, **changes) -> "ZayaConfig":
        return dataclasses.replace(self, **changes)


def zaya1_8b() -> ZayaConfig:
    """The released ZAYA1-8B geometry (§1.1)."""
    return ZayaConfig(vocab_size=262272, hidden_size=2048, num_blocks=40, num_q_heads=8, num_kv_heads=2, head_dim=128,
                      num_experts=16, expert_ffn_size=2048, router_width=256, rope_theta=5e6, rotary_dim=64)


def tiny() -> ZayaConfig:
    """ZAYA1's structure at a size for CPU tests and demos: every head, conv group, expert and route is
    still there (8 q / 2 KV heads, 4 experts + skip, EDA across 3 MoE layers), only narrower."""
    return ZayaConfig(vocab_size=512, hidden_size=256, num_blocks=3, num_q_heads=8, num_kv_heads=2, head_dim=32,
                      num_experts=4, expert_ffn_size=128, router_width=64, rope_theta=5e6, rotary_dim=16)


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json (§1.2): legacy (80 alternating sub-layers) and native (40 blocks)
# ---------------------------------------------------------------------------------------------

def hf_config_layout(hf: dict[str, Any]) -> str:
    """'native' or 'legacy'. Native files have layer_types / router_hidden_size (and may also carry legacy
    fields, which are then checked for consistency); legacy files have neither but ffn_hidden_size,
    zaya_mlp_expansion or num_query_groups."""
    if any(k in hf for k in ("layer_types", "router_hidden_size")):
        return "native"
    if any(k in hf for k in ("ffn_hidden_size", "zaya_mlp_expansion", "num_query_groups")):
        return "legacy"
    raise ValueError("cannot tell the config.json layout: expected the native fields (layer_types, "
                     "router_hidden_size) or the legacy ones (ffn_hidden_size, zaya_mlp_expansion, num_query_groups)")


class _Fields:
    """Reads a config.json dict with errors that name the field."""

    def __init__(self, hf: dict[str, Any], layout: str):
        self.hf, self.layout = hf, layout

    def get(self, *names: str, default: Any = None) -> Any:
        """The first of `names` that is set, else the default; with no default the field is required."""
        for name in names:
            if self.hf.get(name) is not None:
                return self.hf[name]
        if default is None:
            raise ValueError(f"{self.layout} config.json lacks {' / '.join(names)}")
        return default

    def require(self, name: str, allowed: tuple, why: str) -> None:
        """A field that, when present, must hold one of the supported values."""
        if name in self.hf and self.hf[name] not in allowed:
            raise ValueError(f"unsupported config.json value {name}={self.hf[name]!r}: {why}")


def _check_common(f: _Fields) -> None:
    f.require("model_type", ("zaya",), "not a ZAYA model")
    f.require("cca", (True,), "only CCA attention is implemented")
    f.require("clamp_temp", (False,), "the key temperature is used raw (clamp_temp=false, §4.2 step 5)")
    f.require("cca_time0", (2,), "the CCA convolutions have kernel 2")
    f.require("cca_time1", (2,), "the CCA convolutions have kernel 2")
    f.require("add_bias_linear", (False,), "linear layers have no bias")
    f.require("attention_bias", (False,), "attention projections have no bias")
    f.require("lm_head_bias", (False,), "the tied LM head has no bias")
    f.require("tie_word_embeddings", (True,), "the LM head is the tied embedding")
    f.require("zaya_use_eda", (True,), "the router's EDA state is always on")
    f.require("zaya_use_mod", (True,), "the router always has the skip (MOD) route")
    f.require("scale_residual_merge", (True,), "residual merges always carry their scales and biases")
    f.require("residual_in_fp32", (True,), "the residual stream is fp32 (the earliest class default false is stale)")
    f.require("normalization", ("RMSNorm",), "norms are RMSNorm")
    f.require("activation_func", ("swiglu",), "experts are SwiGLU")
    f.require("hidden_act", ("silu",), "experts are SwiGLU")
    f.require("gated_linear_unit", (True,), "experts are SwiGLU")
    f.require("sliding_window", (None,), "sliding-window attention is not used by ZAYA1-8B and not implemented")
    f.require("swa_layers", (None, []), "sliding-window attention is not used by ZAYA1-8B and not implemented")
    f.require("rope_scaling", (None, False), "RoPE scaling is not implemented")
    topk = {f.hf[k] for k in ("moe_router_topk", "num_experts_per_tok") if f.hf.get(k) is not None}
    if topk - {1}:
        raise ValueError(f"unsupported top-k {sorted(topk)}: the ZAYA1 router is top-1")


def _rotary_dim(head_dim: int, factor: float) -> int:
    rotary = head_dim * factor
    if rotary != int(rotary) or int(rotary) % 2:
        raise ValueError(f"partial_rotary_factor {factor} of head_dim {head_dim} is not an even number of dims")
    return int(rotary)


def _router_width(value: Any) -> int:
    """zaya_mlp_expansion is an int, or in some revisions a per-sub-layer list with 0 on attention layers."""
    if isinstance(value, list):
        widths = {v for v in value if v}
        if len(widths) != 1:
            raise ValueError(f"zaya_mlp_expansion list must hold one router width, got {sorted(widths)}")
        return widths.pop()
    return int(value)


def _from_legacy(f: _Fields) -> dict[str, Any]:
    sub_layers = int(f.get("num_hidden_layers"))
    if sub_layers % 2:
        raise ValueError(f"legacy num_hidden_layers counts attention and MoE sub-layers and must be even, "
                         f"got {sub_layers}")
    if "zaya_layers" in f.hf and f.hf["zaya_layers"] is not None:
        pattern = f.hf["zaya_layers"]
        if len(pattern) != sub_layers or any(p != "a" for p in pattern[0::2]) or \
                any(isinstance(p, str) for p in pattern[1::2]):
            raise ValueError("zaya_layers must alternate 'a' (attention) and an expert count, one entry per sub-layer")
        if set(pattern[1::2]) != {int(f.get("num_experts"))}:
            raise ValueError(f"zaya_layers: every MoE layer must have num_experts={f.get('num_experts')} experts, "
                             f"got {sorted(set(pattern[1::2]))}")
    kv_heads = int(f.get("num_query_groups", "num_key_value_heads"))
    if f.hf.get("num_key_value_heads") not in (None, kv_heads):
        raise ValueError(f"num_query_groups ({kv_heads}) and num_key_value_heads ({f.hf['num_key_value_heads']}) "
                         "differ")
    # The earliest convention writes 16 nominal heads with cca_num_q_heads = 8 real latent query heads.
    nominal_heads = int(f.get("num_attention_heads"))
    q_heads = int(f.get("cca_num_q_heads", default=nominal_heads))
    head_dim = int(f.get("head_dim", "kv_channels", default=int(f.get("hidden_size")) // nominal_heads))
    fused_ffn = int(f.get("ffn_hidden_size"))
    if fused_ffn % 2:
        raise ValueError(f"ffn_hidden_size is the fused gate|up width and must be even, got {fused_ffn}")
    if f.hf.get("moe_intermediate_size") not in (None, fused_ffn // 2):
        raise ValueError(f"moe_intermediate_size {f.hf['moe_intermediate_size']} != ffn_hidden_size/2 = "
                         f"{fused_ffn // 2}")
    return dict(num_blocks=sub_layers // 2, num_q_heads=q_heads, num_kv_heads=kv_heads, head_dim=head_dim,
                expert_ffn_size=fused_ffn // 2,
                router_width=_router_width(f.get("zaya_mlp_expansion", "router_hidden_size")),
                rope_theta=float(f.get("rope_theta", "rotary_base")),
                rotary_dim=_rotary_dim(head_dim, float(f.get("partial_rotary_factor"))),
                rms_norm_eps=float(f.get("norm_epsilon", "rms_norm_eps")),
                fp32_logits=bool(f.get("zaya_high_prec", default=True)))


def _from_native(f: _Fields) -> dict[str, Any]:
    blocks = int(f.get("num_hidden_layers"))
    layer_types = f.get("layer_types", default=["hybrid"] * blocks)
    if len(layer_types) != blocks:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {blocks} layers")
    if set(layer_types) != {"hybrid"}:
        raise ValueError(f"unsupported layer_types {sorted(set(layer_types))}: only 'hybrid' (full attention) is "
                         "implemented")
    head_dim = int(f.get("head_dim"))
    ffn, router = int(f.get("moe_intermediate_size")), int(f.get("router_hidden_size", "zaya_mlp_expansion"))
    # Legacy fields a native file may carry as well must describe the same model.
    for name, expected in (("ffn_hidden_size", 2 * ffn), ("zaya_mlp_expansion", router),
                           ("num_query_groups", f.hf.get("num_key_value_heads"))):
        if f.hf.get(name) is not None and f.hf[name] != expected:
            raise ValueError(f"config.json {name}={f.hf[name]!r} contradicts the native fields (expected {expected})")
    # rope_parameters is nested per layer type ({"hybrid": {...}}) in the Hub file, or flat.
    rope = f.hf.get("rope_parameters") or {}
    rope = rope.get("hybrid", rope)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}: only the default (unscaled) RoPE is implemented")
    theta = rope.get("rope_theta", f.hf.get("rope_theta"))
    factor = rope.get("partial_rotary_factor", f.hf.get("partial_rotary_factor"))
    if theta is None or factor is None:
        raise ValueError("native config.json lacks rope_theta / partial_rotary_factor (in rope_parameters or at the "
                         "top level)")
    return dict(num_blocks=blocks, num_q_heads=int(f.get("num_attention_heads")),
                num_kv_heads=int(f.get("num_key_value_heads")), head_dim=head_dim,
                expert_ffn_size=ffn, router_width=router, rope_theta=float(theta),
                rotary_dim=_rotary_dim(head_dim, float(factor)),
                rms_norm_eps=float(f.get("rms_norm_eps", "norm_epsilon")),
                fp32_logits=bool(f.get("zaya_high_prec", default=True)))


def from_hf_config(hf: dict[str, Any], skip_mode: str | None = None) -> ZayaConfig:
    """ZayaConfig from a ZAYA1 config.json of either layout (§1.2). skip_mode is not in config.json; None
    picks DEFAULT_SKIP_MODE of the file's layout: "zero" for native files (as the upstream Hugging Face model
    runs them), "scaled_input" (p_skip * x) for legacy ones."""
    layout = hf_config_layout(hf)
    if skip_mode is None:
        skip_mode = DEFAULT_SKIP_MODE[layout]
    f = _Fields(hf, layout)
    _check_common(f)
    geometry = _from_legacy(f) if layout == "legacy" else _from_native(f)
    return ZayaConfig(vocab_size=int(f.get("vocab_size")), hidden_size=int(f.get("hidden_size")),
                      num_experts=int(f.get("num_experts")), skip_mode=skip_mode,
                      max_position_embeddings=int(f.get("max_position_embeddings", default=131072)),
                      pad_token_id=int(f.get("pad_token_id", default=0)),
                      bos_token_id=int(f.get("bos_token_id", default=2)),
                      eos_token_id=int(f.get("eos_token_id", default=106)), **geometry)


def to_hf_config(config: ZayaConfig, layout: str) -> dict[str, Any]:
    """The config.json of a checkpoint in the given layout; from_hf_config reads it back to `config`
    (skip_mode aside, which config.json does not carry: reading gives the layout's DEFAULT_SKIP_MODE)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    common = dict(model_type="zaya", architectures=["ZayaForCausalLM"], vocab_size=config.vocab_size,
                  hidden_size=config.hidden_size, num_attention_heads=config.num_q_heads,
                  num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, num_experts=config.num_experts,
                  partial_rotary_factor=config.rotary_dim / config.head_dim, cca_time0=2, cca_time1=2,
                  max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=True,
                  pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                  eos_token_id=config.eos_token_id, torch_dtype="bfloat16")
    if layout == "legacy":
        return dict(common, num_hidden_layers=2 * config.num_blocks, num_query_groups=config.num_kv_heads,
                    ffn_hidden_size=2 * config.expert_ffn_size, zaya_mlp_expansion=config.router_width,
                    moe_router_topk=1, rope_theta=config.rope_theta, norm_epsilon=config.rms_norm_eps,
                    zaya_use_eda=True, zaya_use_mod=True, zaya_high_prec=config.fp32_logits,
                    scale_residual_merge=True, residual_in_fp32=True, clamp_temp=False, add_bias_linear=False)
    return dict(common, num_hidden_layers=config.num_blocks, layer_types=["hybrid"] * config.num_blocks,
                moe_intermediate_size=config.expert_ffn_size, router_hidden_size=config.router_width,
                num_experts_per_tok=1, rms_norm_eps=config.rms_norm_eps,
                rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": config.rope_theta,
                                            "partial_rotary_factor": config.rotary_dim / config.head_dim}},
                zaya_high_prec=config.fp32_logits)
