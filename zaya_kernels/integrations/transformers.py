# SPDX-License-Identifier: Apache-2.0
"""Hugging Face transformers' ZAYA model (`ZayaForCausalLM`, transformers >= 5.23) on the zaya ops, through
transformers' own registries. Importing this module registers the name "zaya_kernels" with:

- `ExpertsInterface` (`experts_implementation="zaya_kernels"`): the experts on moe_align + moe_mlp. HF's
  expert weights are used as they are: gate_up_proj [E, 2F, H] (gate rows first) and down_proj [E, H, F]
  are exactly moe_mlp's w_fc1 / w_fc2 (nn.Linear layout). A model in another dtype gets a bf16 copy of each
  once (the ops take bf16), kept until the parameter changes, never made per call.
- `AttentionInterface` (`attn_implementation="zaya_kernels"`): q/k/v after HF's cache update go to
  attention_decode (one new token) or attention_prefill. HF's cache holds K as [B, Hkv, L, D]; viewed as
  [B*Hkv, L, 1, D] it is our paged cache with one page per (sequence, KV head), each such "sequence" carrying
  its G = Hq/Hkv query heads: no copy of the cache per call (decode q and output are views as well).
- `AttentionMaskInterface`: the mask builder for the same name returns None exactly when the mask is the
  causal rule our kernels apply (no padding, no window, no custom pattern) and the boolean mask SDPA would
  get otherwise. A call that gets a mask (left-padded batches in generate), a sliding window or dropout runs
  HF's SDPA instead, with a one-time warning that says why: never silently wrong.

`kernelize(model)` covers what HF has no registry for: the ZAYA router (zaya_router, or zaya_route + moe_mlp
in one step when the experts are ours), carrying the router state between layers as HF does.
Stays on HF's code: embeddings, RMSNorms, residual merges, the CCA projection (q/k/v GEMMs, both
convolutions, mean skip, q/k L2 norm and temperature, RoPE) with HF's DynamicCache (KV, conv and value
state), o_proj, the LM head. cca_prep writes its own paged cache and state and cannot share HF's.

Numerics (tests/test_integration_hf.py): HF's skip route outputs 0 (ZAYA1_ARCHITECTURE.md §12.1), so the
experts run skip_mode="zero". The ops compute in fp32 from bf16 inputs; with an fp32 model their inputs are
rounded to bf16 (a one-time warning says so) and results returned in fp32.
"""
from __future__ import annotations

import types
import warnings

import torch
from transformers.integrations.moe import ExpertsInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (AttentionMaskInterface, causal_mask_function, prepare_padding_mask,
                                        sdpa_mask)
from transformers.modeling_utils import AttentionInterface
from transformers.models.zaya.modeling_zaya import ZayaSparseMoeBlock
from transformers.utils.import_utils import is_tracing

import zaya_kernels

from .. import ops as zaya_ops
from ..model.state import MOE_BLOCK_M

if not zaya_kernels.extension_loaded():
    raise ImportError(f"zaya_kernels.integrations.transformers needs torch.ops.zaya: {zaya_kernels.BUILD_ERROR}")

NAME = "zaya_kernels"
_BF16 = torch.bfloat16
_WARNED: set[str] = set()

__all__ = ["NAME", "experts_forward", "attention_forward", "attention_mask", "kernelize"]


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"zaya_kernels: {message}", RuntimeWarning, stacklevel=3)


def _weight(module: torch.nn.Module, name: str, dtype: torch.dtype = _BF16) -> torch.Tensor:
    """module.<name> in `dtype`: the parameter itself when it already is, else a copy made once and kept until
    the parameter is replaced or modified in place (data_ptr / version change), never one per call."""
    p = getattr(module, name)
    if p.dtype == dtype:
        return p
    cache = module.__dict__.setdefault("_zaya_converted", {})
    key = (p.data_ptr(), p._version, p.device, dtype)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, p.detach().to(dtype))
    return hit[1]


def _bf16_input(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != _BF16:
        _warn_once("dtype", f"the ops take bf16: {t.dtype} activations are rounded to bf16 on the way in (fp32 "
                            "accumulation inside) and results returned in the model's dtype")
    return t.to(_BF16).contiguous()


# ---------------------------------------------------------------------------------------------
# experts: ExpertsInterface
# ---------------------------------------------------------------------------------------------

def _check_experts(module: torch.nn.Module) -> None:
    """The layout moe_mlp implements (SwiGLU, [gate; up] concatenated, nn.Linear weights, no bias); checked once."""
    if module.__dict__.get("_zaya_checked"):
        return
    unsupported = [what for what, bad in (
        ("experts without a gate", not module.has_gate), ("expert biases", module.has_bias),
        ("transposed expert weights", module.is_transposed), ("interleaved gate/up rows", not module.is_concatenated),
        ("a post-expert norm", module.has_post_expert_norm), ("expert parallelism", module._is_expert_parallel),
        (f"activation {module.config.hidden_act!r} (moe_mlp is SwiGLU: silu)",
         getattr(module.config, "hidden_act", "silu") != "silu")) if bad]
    if unsupported:
        raise NotImplementedError(f"experts_implementation={NAME!r} runs SwiGLU experts with [gate; up] rows in "
                                  f"nn.Linear layout; {type(module).__name__} has {', '.join(unsupported)}")
    module._zaya_checked = True


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """hidden_states [T, H], top_k_index [T, k] int64, top_k_weights [T, k] model dtype -> [T, H] model dtype.
    HF's router has already turned a skip-route choice into expert 0 with weight 0; ids == E (the skip slot,
    as some callers pass it) give 0 like HF's eager experts: skip_mode "zero"."""
    _check_experts(self)
    x = _bf16_input(hidden_states)
    ids = top_k_index.to(torch.int32)
    sorted_token_ids, _, expert_offsets, _ = zaya_ops.moe_align(ids, self.num_experts, MOE_BLOCK_M)
    y = zaya_ops.moe_mlp(x, top_k_weights.to(torch.float32), ids, sorted_token_ids, expert_offsets,
                         _weight(self, "gate_up_proj"), _weight(self, "down_proj"), "zero")
    return y.to(hidden_states.dtype)


# ---------------------------------------------------------------------------------------------
# attention: AttentionInterface + AttentionMaskInterface
# ---------------------------------------------------------------------------------------------

def attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                   mask_function=causal_mask_function, attention_mask=None, local_size=None,
                   allow_is_causal_skip: bool = True, **kwargs):
    """None when the mask is exactly the causal rule the kernels apply (query i of n attends keys 0..L-n+i):
    plain causal, no window, no padding. Otherwise the boolean mask sdpa_mask builds, which sends the call
    to SDPA (attention_forward). Reading the padding mask syncs with the host, as HF's own sdpa_mask does."""
    if mask_function is causal_mask_function and local_size is None and allow_is_causal_skip:
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is None:
            return None
        if not is_tracing(padding) and bool(padding[:, kv_offset:kv_offset + kv_length].all()):
            return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=False, **kwargs)


def _fallback_reason(module, query, key, attention_mask, dropout, sliding_window) -> tuple[str, str] | None:
    if attention_mask is not None:
        return "mask", ("this batch has padding or a non-causal mask (e.g. left-padded prompts in generate); the "
                        "zaya attention ops take none, so these calls run HF's SDPA")
    if sliding_window is not None:
        return "window", "sliding-window layers run HF's SDPA (the zaya attention ops have no window)"
    if dropout and module.training:
        return "dropout", "attention dropout in training runs HF's SDPA (the zaya attention ops have none)"
    if not getattr(module, "is_causal", True):
        return "noncausal", "non-causal attention runs HF's SDPA"
    heads, kv_heads, head_dim = query.shape[1], key.shape[1], query.shape[3]
    if query.device.type != "cpu" and (head_dim != 128 or heads != 4 * kv_heads):
        return "geometry", (f"the attention kernels take head_dim 128 and 4 query heads per KV head, got "
                            f"{heads}/{kv_heads} heads of {head_dim}: HF's SDPA runs instead")
    return None


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and q_len > 1 and kv_len != q_len:
        # SDPA's is_causal is top-left aligned: with cached keys the causal rule must be spelled out.
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def _pages(cache: torch.Tensor) -> torch.Tensor:
    """HF's K or V [B, Hkv, L, D] as the ops' paged cache [B*Hkv, L, 1, D]: one page per (sequence, KV head).
    A view of HF's tensor (DynamicCache keeps it contiguous); a copy only for another dtype or layout."""
    batch, kv_heads, length, head_dim = cache.shape
    return _bf16_input(cache).view(batch * kv_heads, length, 1, head_dim)


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      sliding_window: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, n, D], key/value [B, Hkv, L, D] (the whole cache after HF's update, L >= n) ->
    ([B, n, Hq, D] in query's dtype, None). Causal with the n queries as the last n positions."""
    reason = _fallback_reason(module, query, key, attention_mask, dropout, sliding_window)
    if reason is not None:
        _warn_once(*reason)
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, n, head_dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group, rows = heads // kv_heads, batch * kv_heads
    k_cache, v_cache = _pages(key), _pages(value)
    device = query.device
    block_table = torch.arange(rows, dtype=torch.int32, device=device).view(rows, 1)  # [B*Hkv, 1]
    seq_lens = torch.full((rows,), length, dtype=torch.int32, device=device)          # [B*Hkv]
    if n == 1:
        q = _bf16_input(query).view(rows, group, head_dim)                            # [B*Hkv, G, D]: a view
        out = zaya_ops.attention_decode(q, k_cache, v_cache, block_table, seq_lens, scaling)
        return out.view(batch, 1, heads, head_dim).to(query.dtype), None
    # [B, Hkv, G, n, D] -> [B*Hkv*n, G, D]: each (sequence, KV head) is one packed sequence of n tokens.
    q = _bf16_input(query).view(batch, kv_heads, group, n, head_dim).transpose(2, 3)
    q = q.reshape(rows * n, group, head_dim)
    cu_seqlens = torch.arange(0, (rows + 1) * n, n, dtype=torch.int32, device=device)   # [B*Hkv + 1]
    out = zaya_ops.attention_prefill(q, k_cache, v_cache, block_table, cu_seqlens, seq_lens, scaling, True)
    out = out.view(batch, kv_heads, n, group, head_dim).permute(0, 2, 1, 3, 4).reshape(batch, n, heads, head_dim)
    return out.to(query.dtype), None


# ---------------------------------------------------------------------------------------------
# router: kernelize(model)
# ---------------------------------------------------------------------------------------------

def _router_weights(router: torch.nn.Module) -> tuple:
    """zaya_router's parameter arguments, down_w .. out_w, from HF's ZayaRouter. The CUDA and HIP kernels take
    them in bf16 (a bf16 copy made once for another dtype); the CPU reference takes them as stored."""
    mlp = router.router_mlp

    def w(module, name):
        p = getattr(module, name)
        return p if p.device.type == "cpu" else _weight(module, name)

    return (w(router.down_proj, "weight"), w(router.down_proj, "bias"), w(mlp.norm, "weight"), w(mlp.fc1, "weight"),
            w(mlp.fc1, "bias"), w(mlp.fc2, "weight"), w(mlp.fc2, "bias"), w(mlp.out_proj, "weight"))


def _router_inputs(router, hidden_states: torch.Tensor, router_states: torch.Tensor | None):
    """(x [T, H] bf16, r_prev [T, R] bf16 or None, eda_scale [R] or None) as HF's router forms them: the EDA
    term only where the layer has one (not the first) and the previous layer passed its state."""
    x = _bf16_input(hidden_states.reshape(-1, hidden_states.shape[-1]))
    if not router.use_eda or router_states is None:
        return x, None, None
    r_prev = router_states.reshape(-1, router_states.shape[-1]).to(_BF16).contiguous()
    scale = router.router_states_scale
    return x, r_prev, scale if scale.device.type == "cpu" else _weight(router, "router_states_scale")


def _router_call(router, hidden_states, router_states):
    """zaya_router over HF's inputs -> (weights [T, 1] fp32, ids [T, 1] int32 with the skip slot = E,
    r_out [T, R] bf16)."""
    x, r_prev, eda_scale = _router_inputs(router, hidden_states, router_states)
    down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w = _router_weights(router)
    return zaya_ops.zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                                _weight(router, "balancing_biases", torch.float32),
                                router.router_mlp.norm.variance_epsilon)


def _router_forward(self, hidden_states: torch.Tensor, router_states: torch.Tensor | None = None):
    """ZayaRouter.forward on zaya_router: (None for the router logits, which the fused op never forms,
    probabilities [T, 1], ids [T, 1] int64, router state [B, S, R]), with HF's skip handling: a token routed to
    the skip slot gets expert 0 and weight 0."""
    weights, ids, r_out = _router_call(self, hidden_states, router_states)
    skip = ids == self.num_experts
    probs = weights.masked_fill(skip, 0.0).to(hidden_states.dtype)
    ids = ids.masked_fill(skip, 0).to(torch.int64)
    return None, probs, ids, r_out.view(*hidden_states.shape[:-1], -1).to(hidden_states.dtype)


def _moe_block_forward(self, hidden_states: torch.Tensor, prev_router_hidden_states: torch.Tensor | None = None):
    """ZayaSparseMoeBlock.forward. With experts_implementation="zaya_kernels": zaya_route (router + expert
    schedule, one op) then moe_mlp, the skip slot running no expert (skip_mode "zero" = HF's 0). Otherwise the
    router op followed by whichever experts implementation the model has."""
    if self.experts.config._experts_implementation != NAME:
        _, probs, ids, state = self.gate(hidden_states, router_states=prev_router_hidden_states)
        flat = hidden_states.view(-1, hidden_states.shape[-1])
        return self.experts(flat, ids, probs).view_as(hidden_states), state
    _check_experts(self.experts)
    router = self.gate
    x, r_prev, eda_scale = _router_inputs(router, hidden_states, prev_router_hidden_states)
    down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w = _router_weights(router)
    workspace = router.__dict__.get("_zaya_workspace")
    if workspace is None or workspace.device != x.device:  # one per router: HF runs the layers on one stream
        workspace = router._zaya_workspace = zaya_ops.route_workspace(x.device)
    weights, ids, r_out, sorted_token_ids, _, expert_offsets, _ = zaya_ops.zaya_route(
        x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
        _weight(router, "balancing_biases", torch.float32), workspace, MOE_BLOCK_M,
        router.router_mlp.norm.variance_epsilon)
    y = zaya_ops.moe_mlp(x, weights, ids, sorted_token_ids, expert_offsets, _weight(self.experts, "gate_up_proj"),
                         _weight(self.experts, "down_proj"), "zero")
    return (y.view_as(hidden_states).to(hidden_states.dtype),
            r_out.view(*hidden_states.shape[:-1], -1).to(hidden_states.dtype))


def kernelize(model: torch.nn.Module) -> torch.nn.Module:
    """Run every ZAYA router of `model` (a ZayaForCausalLM / ZayaModel) on the zaya ops; returns the model.
    Each MoE block's forward becomes zaya_route + moe_mlp when the model's experts_implementation is
    "zaya_kernels" (checked at every call, so set_experts_implementation still applies), and the router op
    followed by the model's experts otherwise. Instance attributes only: the classes are untouched, other
    models are unaffected, and calling it twice changes nothing. The router logits (output_router_logits)
    are not formed by the fused op: they come back as None."""
    blocks = [m for m in model.modules() if isinstance(m, ZayaSparseMoeBlock)]
    if not blocks:
        raise ValueError(f"kernelize: {type(model).__name__} has no ZayaSparseMoeBlock (is it a ZAYA model?)")
    for block in blocks:
        block.forward = types.MethodType(_moe_block_forward, block)
        block.gate.forward = types.MethodType(_router_forward, block.gate)
    return model


ExpertsInterface.register(NAME, experts_forward)
AttentionInterface.register(NAME, attention_forward)
AttentionMaskInterface.register(NAME, attention_mask)
