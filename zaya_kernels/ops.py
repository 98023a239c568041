# SPDX-License-Identifier: Apache-2.0
"""The public face of the zaya ops: typed wrappers with an ``out=`` form, plus, for every op, its
fake (meta) implementation and its CPU kernel (the pure-PyTorch reference).

Schemas live in csrc/torch_bindings.cpp; device kernels register from csrc/ops/*.cpp. An op that
has no kernel for a device raises a NotImplementedError naming the op and the device: nothing is
ever copied to the CPU behind the caller's back. Every ``.out`` overload takes keyword-only,
alias-annotated outputs and returns nothing (functionalisable by torch.compile); the wrappers here
return the output tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import reference

Tensor = torch.Tensor
_LIB = "zaya"


# ---------------------------------------------------------------------------------------------
# argument checks, shared by the CPU kernels and the fakes (the device launchers mirror them in C++)
#
# Two kinds, kept apart so that no device op ever reads its inputs back to the host:
# - _check_<op>: shapes, dtypes, devices and scalar arguments. Run by the fake and by the CPU kernel;
#   csrc/ops/<op>.cpp checks the same things, with the same words, before a launch.
# - _values_<op>: checks that read tensor contents (cu_seqlens, offsets, seq_lens, page ids). Run by
#   the CPU kernel only. On a GPU they would need a host sync, so there they are the caller's duty
#   (each op's docstring says which); a device kernel given such input has undefined results.
# Every message names the op and the argument, what was expected and what came.
# ---------------------------------------------------------------------------------------------

def _require(op: str, cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(f"zaya::{op}: {msg}")


def _expect(op: str, name: str, t, *, dim: int | None = None, dtype=None, shape: Sequence[int] | None = None,
            like: Tensor | None = None) -> None:
    _require(op, isinstance(t, torch.Tensor), f"{name} must be a Tensor, got {type(t).__name__}")
    if like is not None:
        _require(op, t.device == like.device, f"{name} must be on {like.device}, got {t.device}")
    if dim is not None:
        _require(op, t.dim() == dim, f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        _require(op, t.dtype in allowed, f"{name} must be {' or '.join(map(str, allowed))}, got {t.dtype}")
    if shape is not None:
        _require(op, tuple(t.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _finite_positive(op: str, name: str, value) -> None:
    """A float scalar that must be a finite number > 0 (NaN fails both comparisons)."""
    _require(op, isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
             f"{name} must be a finite number > 0, got {value}")


def _values_offsets(op: str, name: str, offsets: Tensor, last_max: int, last_what: str) -> None:
    """offsets [n+1] int32: every entry >= 0, non-decreasing, offsets[-1] <= last_max."""
    v = offsets.tolist()
    for i, value in enumerate(v):
        _require(op, value >= 0, f"{name} must be >= 0, got {name}[{i}]={value}")
        _require(op, i == 0 or value >= v[i - 1],
                 f"{name} must be non-decreasing, got {name}[{i}]={value} < {name}[{i - 1}]={v[i - 1]}")
    _require(op, not v or v[-1] <= last_max, f"{name}[-1] must be <= {last_what}={last_max}, got {v[-1] if v else 0}")


def _values_cu_seqlens(op: str, name: str, cu_seqlens: Tensor, tokens: int, tokens_what: str) -> list[int]:
    """cu_seqlens [B+1] int32: starts at 0, non-decreasing, ends at T (every row in exactly one sequence)."""
    v = cu_seqlens.tolist()
    _require(op, v[0] == 0, f"{name}[0] must be 0, got {v[0]}")
    for i in range(1, len(v)):
        _require(op, v[i] >= v[i - 1],
                 f"{name} must be non-decreasing, got {name}[{i}]={v[i]} < {name}[{i - 1}]={v[i - 1]}")
    _require(op, v[-1] == tokens, f"{name}[-1] must equal {tokens_what}={tokens}, got {v[-1]}")
    return v


def _values_pages(op: str, block_table: Tensor, seq: int, first: int, end: int, k_cache: Tensor, what: str) -> None:
    """Positions [first, end) of sequence `seq` must fit its block-table row, and every page they use
    must be a page of the cache (the kernels index the cache with these ids unchecked)."""
    page_size, num_pages, max_pages = k_cache.shape[1], k_cache.shape[0], block_table.shape[1]
    _require(op, end <= max_pages * page_size,
             f"{what} of sequence {seq} reach position {end - 1}, past its block_table row's capacity "
             f"max_pages*page_size = {max_pages}*{page_size} = {max_pages * page_size}")
    if end <= first:
        return
    lo, hi = first // page_size, (end - 1) // page_size + 1
    pages = block_table[seq, lo:hi]
    bad = ((pages < 0) | (pages >= num_pages)).nonzero().flatten()
    if bad.numel():
        page = lo + int(bad[0])
        _require(op, False, f"block_table[{seq}, {page}] = {int(block_table[seq, page])} must be a page of k_cache "
                            f"(0..{num_pages - 1}): {what} of sequence {seq} use it")


_FLOAT = (torch.bfloat16, torch.float16, torch.float32)
_TOPK_MAX_EXPERTS = 256  # csrc/common/params.h kTopkMaxExperts
_TOPK_MAX_K = 8          # kTopkMaxK
_ALIGN_MAX_EXPERTS = 256  # csrc/common/params.h kAlignMaxExperts
# csrc/ops/routing.h kAlignIndexSlack = kAlignPassPairs * kAlignMaxChunks: the kernels index with int32, and
# the capacity plus one block_m plus the grid-stride loops' overshoot must stay below 2^31.
_ALIGN_INDEX_SLACK = 1024 * 128
_INT32_MAX = 2**31 - 1


def _check_topk_gating(logits, bias=None, k=1, renormalize=False, skip_index=-1):
    op = "topk_gating"
    _expect(op, "logits", logits, dim=2, dtype=(torch.bfloat16, torch.float32))
    num_experts = logits.shape[1]
    _require(op, 1 <= num_experts <= _TOPK_MAX_EXPERTS,
             f"logits must have 1..{_TOPK_MAX_EXPERTS} columns, got {num_experts}")
    _require(op, 1 <= k <= min(_TOPK_MAX_K, num_experts),
             f"k must be in 1..min({_TOPK_MAX_K}, E'={num_experts}), got {k}")
    _require(op, -1 <= skip_index < num_experts, f"skip_index must be -1 or in [0, {num_experts}), got {skip_index}")
    if bias is not None:
        _expect(op, "bias", bias, dtype=torch.float32, shape=(num_experts,), like=logits)
    return [((logits.shape[0], k), torch.float32), ((logits.shape[0], k), torch.int32)]


def _check_zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                       balancing_bias, eps=1e-5, *, op="zaya_router"):
    _expect(op, "x", x, dim=2, dtype=torch.bfloat16)
    tokens, hidden = x.shape
    _expect(op, "down_w", down_w, dim=2, dtype=_FLOAT, like=x)
    width = down_w.shape[0]
    _expect(op, "down_w", down_w, shape=(width, hidden))
    for name, t, shape in (("down_b", down_b, (width,)), ("norm_w", norm_w, (width,)),
                           ("fc1_w", fc1_w, (width, width)), ("fc1_b", fc1_b, (width,)),
                           ("fc2_w", fc2_w, (width, width)), ("fc2_b", fc2_b, (width,))):
        _expect(op, name, t, dtype=_FLOAT, shape=shape, like=x)
    _expect(op, "out_w", out_w, dim=2, dtype=_FLOAT, like=x)
    routes = out_w.shape[0]
    _expect(op, "out_w", out_w, shape=(routes, width))
    _require(op, 2 <= routes <= 32, f"out_w must have 2..32 rows (experts + skip route), got {routes}")
    _expect(op, "balancing_bias", balancing_bias, dtype=torch.float32, shape=(routes,), like=x)
    if r_prev is not None:
        _expect(op, "r_prev", r_prev, dtype=torch.bfloat16, shape=(tokens, width), like=x)
        _require(op, eda_scale is not None, "eda_scale is required when r_prev is given")
    else:
        _require(op, eda_scale is None, "eda_scale must be None when r_prev is None (no EDA term without r_prev)")
    if eda_scale is not None:
        _expect(op, "eda_scale", eda_scale, dtype=_FLOAT, shape=(width,), like=x)
    _finite_positive(op, "eps", eps)
    return [((tokens, 1), torch.float32), ((tokens, 1), torch.int32), ((tokens, width), torch.bfloat16)]


def _align_outputs(num_pairs: int, num_experts: int, block_m: int):
    capacity = num_pairs + num_experts * (block_m - 1)
    blocks = (capacity + block_m - 1) // block_m
    return [((capacity,), torch.int32), ((blocks,), torch.int32), ((num_experts + 1,), torch.int32),
            ((1,), torch.int32)]


def _check_align_sizes(op: str, num_pairs: int, num_experts: int, block_m: int) -> None:
    """moe_align's limits, before anything is allocated: E <= 256 (the GPU kernels' bound, the same on
    every device so that one contract holds), and every slot index within int32."""
    _require(op, 1 <= num_experts <= _ALIGN_MAX_EXPERTS,
             f"num_experts must be in 1..{_ALIGN_MAX_EXPERTS}, got {num_experts}")
    _require(op, block_m >= 1, f"block_m must be >= 1, got {block_m}")
    capacity = num_pairs + num_experts * (block_m - 1)
    _require(op, num_pairs < _INT32_MAX // 2 and block_m < _INT32_MAX // 4
             and capacity + block_m + _ALIGN_INDEX_SLACK < _INT32_MAX,
             f"T*k + E*(block_m-1) must fit int32, got T*k={num_pairs}, E={num_experts}, block_m={block_m}")


def _check_moe_align(ids, num_experts, block_m):
    op = "moe_align"
    _expect(op, "ids", ids, dim=2, dtype=torch.int32)
    _check_align_sizes(op, ids.numel(), num_experts, block_m)
    return _align_outputs(ids.numel(), num_experts, block_m)


ROUTE_WORKSPACE_BYTES = 1024  # csrc/common/params.h kRouteWorkspaceBytes


def _check_zaya_route(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                      balancing_bias, workspace, block_m, eps=1e-5):
    op = "zaya_route"
    router = _check_zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                                balancing_bias, eps, op=op)
    _expect(op, "workspace", workspace, dtype=torch.uint8, shape=(ROUTE_WORKSPACE_BYTES,), like=x)
    _check_align_sizes(op, x.shape[0], out_w.shape[0] - 1, block_m)
    return router + _align_outputs(x.shape[0], out_w.shape[0] - 1, block_m)


def _check_grouped_gemm(a, w, expert_offsets):
    op = "grouped_gemm"
    _expect(op, "a", a, dim=2, dtype=(torch.bfloat16, torch.float32))
    _expect(op, "w", w, dim=3, dtype=a.dtype, like=a)
    _require(op, w.shape[2] == a.shape[1], f"w must be [E, N, K={a.shape[1]}], got {tuple(w.shape)}")
    _expect(op, "expert_offsets", expert_offsets, dtype=torch.int32, shape=(w.shape[0] + 1,), like=a)
    return [((a.shape[0], w.shape[1]), a.dtype)]


def _values_grouped_gemm(a, w, expert_offsets):
    _values_offsets("grouped_gemm", "expert_offsets", expert_offsets, a.shape[0], "M (a.shape[0])")


def _check_moe_mlp(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2,
                   skip_mode="scaled_input"):
    op = "moe_mlp"
    _expect(op, "x", x, dim=2, dtype=torch.bfloat16)
    tokens, hidden = x.shape
    _expect(op, "topk_ids", topk_ids, dim=2, dtype=torch.int32, like=x)
    _expect(op, "topk_weights", topk_weights, dtype=torch.float32, shape=tuple(topk_ids.shape), like=x)
    _require(op, topk_ids.shape[0] == tokens, f"topk_ids must have {tokens} rows, got {topk_ids.shape[0]}")
    _expect(op, "w_fc1", w_fc1, dim=3, dtype=torch.bfloat16, like=x)
    experts, two_f, _ = w_fc1.shape
    _require(op, two_f % 2 == 0 and w_fc1.shape[2] == hidden,
             f"w_fc1 must be [E, 2F, H={hidden}], got {tuple(w_fc1.shape)}")
    _expect(op, "w_fc2", w_fc2, dtype=torch.bfloat16, shape=(experts, hidden, two_f // 2), like=x)
    _expect(op, "sorted_token_ids", sorted_token_ids, dim=1, dtype=torch.int32, like=x)
    _expect(op, "expert_offsets", expert_offsets, dtype=torch.int32, shape=(experts + 1,), like=x)
    _require(op, skip_mode in reference.SKIP_MODES,
             f"skip_mode must be one of {reference.SKIP_MODES}, got {skip_mode!r}")
    return [((tokens, hidden), x.dtype)]


def _values_moe_mlp(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2,
                    skip_mode="scaled_input"):
    op = "moe_mlp"
    _values_offsets(op, "expert_offsets", expert_offsets, sorted_token_ids.shape[0],
                    "sorted_token_ids.shape[0]")
    pairs = topk_ids.numel()
    bad = ((sorted_token_ids < 0) | (sorted_token_ids > pairs)).nonzero().flatten()
    _require(op, bad.numel() == 0, f"sorted_token_ids must be pair indices in [0, T*k={pairs}] (T*k = padding), "
                                   f"got sorted_token_ids[{int(bad[0]) if bad.numel() else 0}]="
                                   f"{int(sorted_token_ids[bad[0]]) if bad.numel() else 0}")


def _check_cca_prep(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w, conv2_b, temp,
                    k_cache, v_cache, block_table, rope_theta=5e6, rotary_dim=64):
    op = "cca_prep"
    _expect(op, "k_cache", k_cache, dim=4, dtype=torch.bfloat16)
    _, _, kv_heads, head_dim = k_cache.shape
    _expect(op, "v_cache", v_cache, dtype=torch.bfloat16, shape=tuple(k_cache.shape), like=k_cache)
    _expect(op, "proj", proj, dim=2, dtype=torch.bfloat16, like=k_cache)
    _expect(op, "conv_state", conv_state, dim=3, dtype=torch.float32, like=k_cache)
    batch, channels, _ = conv_state.shape
    _require(op, channels % head_dim == 0 and channels // head_dim > kv_heads
             and (channels // head_dim - kv_heads) % kv_heads == 0,
             f"conv_state must be [B, (Hq+Hkv)*D, 2] with Hq a multiple of Hkv={kv_heads}, "
             f"got {tuple(conv_state.shape)}")
    _expect(op, "conv_state", conv_state, shape=(batch, channels, 2))
    value_width = kv_heads * head_dim // 2
    _expect(op, "value_state", value_state, dtype=torch.float32, shape=(batch, value_width), like=k_cache)
    _require(op, proj.shape[1] == channels + 2 * value_width,
             f"proj must be [T, {channels + 2 * value_width}] (q|k|v1|v2), got {tuple(proj.shape)}")
    _expect(op, "cu_seqlens", cu_seqlens, dtype=torch.int32, shape=(batch + 1,), like=k_cache)
    _expect(op, "seq_start", seq_start, dtype=torch.int32, shape=(batch,), like=k_cache)
    _expect(op, "conv1_w", conv1_w, dtype=_FLOAT, shape=(channels, 1, 2), like=k_cache)
    _expect(op, "conv1_b", conv1_b, dtype=_FLOAT, shape=(channels,), like=k_cache)
    _expect(op, "conv2_w", conv2_w, dtype=_FLOAT, shape=(channels, head_dim, 2), like=k_cache)
    _expect(op, "conv2_b", conv2_b, dtype=_FLOAT, shape=(channels,), like=k_cache)
    _expect(op, "temp", temp, dtype=_FLOAT, shape=(kv_heads,), like=k_cache)
    _expect(op, "block_table", block_table, dim=2, dtype=torch.int32, like=k_cache)
    _require(op, block_table.shape[0] == batch, f"block_table must have B={batch} rows, got {block_table.shape[0]}")
    _require(op, 0 < rotary_dim <= head_dim and rotary_dim % 2 == 0,
             f"rotary_dim must be even and in (0, {head_dim}], got {rotary_dim}")
    _finite_positive(op, "rope_theta", rope_theta)
    q_heads = channels // head_dim - kv_heads
    return [((proj.shape[0], q_heads, head_dim), torch.bfloat16)]


def _values_cca_prep(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w, conv2_b, temp,
                     k_cache, v_cache, block_table, rope_theta=5e6, rotary_dim=64):
    op = "cca_prep"
    cu = _values_cu_seqlens(op, "cu_seqlens", cu_seqlens, proj.shape[0], "proj.shape[0]")
    for b, start in enumerate(seq_start.tolist()):
        _require(op, start >= 0, f"seq_start must be >= 0, got seq_start[{b}]={start}")
        _values_pages(op, block_table, b, start, start + cu[b + 1] - cu[b], k_cache, "the new tokens")


def _check_paged_attention(op, q, k_cache, v_cache, block_table, batch):
    _expect(op, "q", q, dim=3, dtype=torch.bfloat16)
    _expect(op, "k_cache", k_cache, dim=4, dtype=torch.bfloat16, like=q)
    _expect(op, "v_cache", v_cache, dtype=torch.bfloat16, shape=tuple(k_cache.shape), like=q)
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    _require(op, q.shape[2] == head_dim, f"q head dim must equal the cache's {head_dim}, got {q.shape[2]}")
    _require(op, q.shape[1] % kv_heads == 0, f"q heads ({q.shape[1]}) must be a multiple of the KV heads ({kv_heads})")
    _expect(op, "block_table", block_table, dim=2, dtype=torch.int32, like=q)
    _require(op, block_table.shape[0] == batch, f"block_table must have B={batch} rows, got {block_table.shape[0]}")


def _check_attention_prefill(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale=None,
                             causal=True):
    op = "attention_prefill"
    _expect(op, "cu_seqlens_q", cu_seqlens_q, dim=1, dtype=torch.int32)
    batch = cu_seqlens_q.shape[0] - 1
    _require(op, batch >= 0, "cu_seqlens_q must have B+1 >= 1 entries")
    _check_paged_attention(op, q, k_cache, v_cache, block_table, batch)
    _expect(op, "cu_seqlens_q", cu_seqlens_q, like=q)
    _expect(op, "seq_lens_k", seq_lens_k, dtype=torch.int32, shape=(batch,), like=q)
    if softmax_scale is not None:
        _finite_positive(op, "softmax_scale", softmax_scale)
    return [(tuple(q.shape), q.dtype)]


def _values_attention_prefill(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale=None,
                              causal=True):
    op = "attention_prefill"
    cu = _values_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, q.shape[0], "q.shape[0]")
    for b, length in enumerate(seq_lens_k.tolist()):
        queries = cu[b + 1] - cu[b]
        _require(op, length >= queries, f"seq_lens_k[{b}]={length} must be >= the {queries} queries of sequence {b} "
                                        "(the keys include the chunk's own tokens)")
        _values_pages(op, block_table, b, 0, length, k_cache, "the keys")


def _check_attention_decode(q, k_cache, v_cache, block_table, seq_lens, softmax_scale=None):
    op = "attention_decode"
    _check_paged_attention(op, q, k_cache, v_cache, block_table, q.shape[0] if q.dim() == 3 else 0)
    _expect(op, "seq_lens", seq_lens, dtype=torch.int32, shape=(q.shape[0],), like=q)
    if softmax_scale is not None:
        _finite_positive(op, "softmax_scale", softmax_scale)
    return [(tuple(q.shape), q.dtype)]


def _values_attention_decode(q, k_cache, v_cache, block_table, seq_lens, softmax_scale=None):
    op = "attention_decode"
    for b, length in enumerate(seq_lens.tolist()):
        _require(op, length >= 0, f"seq_lens must be >= 0, got seq_lens[{b}]={length}")
        _values_pages(op, block_table, b, 0, length, k_cache, "the keys")


# ---------------------------------------------------------------------------------------------
# registration: fake + CPU reference for each op and its .out form
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OpSpec:
    name: str
    check: Callable          # (*args) -> [(shape, dtype)] of the outputs; raises on bad input
    reference: Callable      # the reference.py function
    out_names: tuple[str, ...]
    values: Callable | None = None  # (*args) -> None; raises on bad contents. CPU kernels only (see above)


_SPECS = [
    _OpSpec("topk_gating", _check_topk_gating, reference.topk_gating, ("weights", "ids")),
    _OpSpec("zaya_router", _check_zaya_router, reference.zaya_router, ("weights", "ids", "r_out")),
    _OpSpec("moe_align", _check_moe_align, reference.moe_align,
            ("sorted_token_ids", "block_expert_ids", "expert_offsets", "num_padded")),
    _OpSpec("zaya_route", _check_zaya_route, reference.zaya_route,
            ("weights", "ids", "r_out", "sorted_token_ids", "block_expert_ids", "expert_offsets", "num_padded")),
    _OpSpec("grouped_gemm", _check_grouped_gemm, reference.grouped_gemm, ("out",), _values_grouped_gemm),
    _OpSpec("moe_mlp", _check_moe_mlp, reference.moe_mlp, ("out",), _values_moe_mlp),
    _OpSpec("cca_prep", _check_cca_prep, reference.cca_prep, ("q",), _values_cca_prep),
    _OpSpec("attention_prefill", _check_attention_prefill, reference.attention_prefill, ("out",),
            _values_attention_prefill),
    _OpSpec("attention_decode", _check_attention_decode, reference.attention_decode, ("out",),
            _values_attention_decode),
]
OP_NAMES = tuple(spec.name for spec in _SPECS)
DEVICE_PLACEHOLDERS: set[str] = set()  # ops whose GPU "kernel" is the NotImplemented placeholder


def _check_outs(spec: _OpSpec, expected, outs: dict, like: Tensor) -> None:
    for name, (shape, dtype) in zip(spec.out_names, expected):
        _expect(spec.name, name, outs[name], dtype=dtype, shape=shape, like=like)


def _first_tensor(args) -> Tensor:
    return next(a for a in args if isinstance(a, torch.Tensor))


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _register(spec: _OpSpec) -> None:
    qualname = f"{_LIB}::{spec.name}"

    def check_cpu(*args):
        expected = spec.check(*args)
        if spec.values is not None:
            spec.values(*args)
        return expected

    def cpu_kernel(*args):
        check_cpu(*args)
        return spec.reference(*args)

    def cpu_out_kernel(*args, **outs):
        expected = check_cpu(*args)
        _check_outs(spec, expected, outs, _first_tensor(args))
        for name, value in zip(spec.out_names, _as_tuple(spec.reference(*args))):
            outs[name].copy_(value)

    def fake(*args):
        expected = spec.check(*args)
        like = _first_tensor(args)
        result = tuple(like.new_empty(shape, dtype=dtype) for shape, dtype in expected)
        return result if len(result) > 1 else result[0]

    def fake_out(*args, **outs):
        _check_outs(spec, spec.check(*args), outs, _first_tensor(args))

    def missing_kernel(*args, **kwargs):
        device = _first_tensor(args).device
        raise NotImplementedError(
            f"zaya::{spec.name} is not implemented on {device.type} yet (kernels: see `zaya-kernels info`); "
            "the CPU reference runs on CPU tensors")

    torch.library.register_fake(qualname)(_with_schema_defaults(qualname, fake))
    torch.library.register_fake(qualname + ".out")(_with_schema_defaults(qualname + ".out", fake_out))
    torch.library.register_kernel(qualname, "cpu")(_with_schema_defaults(qualname, cpu_kernel))
    torch.library.register_kernel(qualname + ".out", "cpu")(_with_schema_defaults(qualname + ".out", cpu_out_kernel))
    if not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
        DEVICE_PLACEHOLDERS.add(spec.name)
        for overload in (qualname, qualname + ".out"):
            torch.library.register_kernel(overload, "cuda")(missing_kernel)


def _with_schema_defaults(qualname: str, fn: Callable) -> Callable:
    """Python kernels receive only the arguments the caller passed: fill the schema's defaults so
    that every kernel above sees the full positional argument list and the outputs by name."""
    ns, name = qualname.split("::")
    base, _, overload = name.partition(".")
    schema = getattr(getattr(torch.ops, ns), base)._schemas[overload or ""]
    positional = [a for a in schema.arguments if not a.kwarg_only]

    def wrapped(*args, **kwargs):
        full = list(args)
        for a in positional[len(args):]:
            full.append(kwargs.pop(a.name) if a.name in kwargs else a.default_value)
        return fn(*full, **kwargs)

    wrapped.__name__ = fn.__name__
    return wrapped


def register_all() -> None:
    """Called once by zaya_kernels/__init__ after the schemas (the compiled _C) are loaded."""
    for spec in _SPECS:
        _register(spec)


# ---------------------------------------------------------------------------------------------
# public wrappers
# ---------------------------------------------------------------------------------------------

def _call(name: str, args: tuple, out):
    op = getattr(torch.ops.zaya, name)
    if out is None:
        return op.default(*args)
    spec = next(s for s in _SPECS if s.name == name)
    outs = _as_tuple(out)
    _require(name, len(outs) == len(spec.out_names), f"out must hold {len(spec.out_names)} tensors: {spec.out_names}")
    op.out(*args, **dict(zip(spec.out_names, outs)))
    return out


def topk_gating(logits: Tensor, bias: Tensor | None = None, k: int = 1, renormalize: bool = False,
                skip_index: int = -1, *, out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Top-k expert gating. logits [T, E'] bf16|fp32 (E' <= 256, last dim contiguous), bias [E'] fp32 or
    None, 1 <= k <= min(8, E') -> (weights [T, k] fp32, ids [T, k] int32). See reference.topk_gating for
    the exact rule (ties to the lower index, NaN rows, the skip route).
    Documented edge results (the same on every device; nothing here is checked, that would need the data):
    - a NaN bias entry makes that route's score NaN, which ranks as -inf: the route is chosen only after
      every route with a finite score (lower index first), and its weight is still its p;
    - renormalize=True over chosen routes whose p are all 0 (possible only when a bias outranks every
      route with p > 0) divides 0 by 0: those weights are NaN, as in vLLM's and every reference's
      p / sum(p)."""
    return _call("topk_gating", (logits, bias, k, renormalize, skip_index), out)


def zaya_router(x: Tensor, r_prev: Tensor | None, down_w: Tensor, down_b: Tensor, eda_scale: Tensor | None,
                norm_w: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor, out_w: Tensor,
                balancing_bias: Tensor, eps: float = 1e-5, *,
                out: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The fused ZAYA1 router. x [T, H] bf16, r_prev [T, R] bf16 or None (first MoE layer) ->
    (weights [T, 1] fp32, ids [T, 1] int32 with the skip route = E' - 1, r_out [T, R] bf16).
    A token whose x (or r_prev) row holds a NaN or an infinity gets id 0 and weight NaN (its RMSNorm,
    hence every logit, is NaN; the lowest index wins among the all -inf scores); its r_out row carries
    the non-finite values. The CUDA kernel takes every parameter in bf16 (balancing_bias fp32), R = 256,
    H a multiple of 512 up to 2048, E' <= 32. eps: a finite number > 0. eda_scale goes with r_prev: both
    or neither (an eda_scale without r_prev is an error, not ignored)."""
    return _call("zaya_router", (x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                                 balancing_bias, eps), out)


def moe_align(ids: Tensor, num_experts: int, block_m: int, *, out: tuple | None = None):
    """Expert-sorted, block-padded schedule of the (token, slot) pairs. ids [T, k] int32 ->
    (sorted_token_ids [T*k + E*(block_m-1)], block_expert_ids [ceil(len/block_m)], expert_offsets [E+1],
    num_padded [1]), all int32, sizes static so the call is CUDA-graph capturable.
    1 <= num_experts <= 256 on every device, block_m >= 1, and T*k + E*(block_m-1) must fit int32
    (checked before anything is allocated). ids outside [0, E) go to no expert."""
    return _call("moe_align", (ids, num_experts, block_m), out)


def route_workspace(device: torch.device | str) -> Tensor:
    """The workspace zaya_route needs: ROUTE_WORKSPACE_BYTES zero bytes on `device`. Make one per stream
    that routes (a model owns one) and pass it to every call: the kernels leave it zero, and two calls
    in flight at once on different streams must not share it."""
    return torch.zeros(ROUTE_WORKSPACE_BYTES, dtype=torch.uint8, device=device)


def zaya_route(x: Tensor, r_prev: Tensor | None, down_w: Tensor, down_b: Tensor, eda_scale: Tensor | None,
               norm_w: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor, out_w: Tensor,
               balancing_bias: Tensor, workspace: Tensor, block_m: int, eps: float = 1e-5, *,
               out: tuple | None = None) -> tuple:
    """zaya_router, then moe_align of its ids over the E' - 1 experts (the skip route E' - 1 goes to no
    expert), as one op -> (weights, ids, r_out, sorted_token_ids, block_expert_ids, expert_offsets,
    num_padded): exactly zaya_router's outputs, then exactly moe_align(ids, E' - 1, block_m)'s.
    workspace: route_workspace(device), zero between calls (the kernels leave it zero). On CUDA, up to
    1024 tokens the router's last kernel sorts the ids itself, which saves moe_align's launch and its
    wait for the router's grid to complete."""
    return _call("zaya_route", (x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                                balancing_bias, workspace, block_m, eps), out)


def grouped_gemm(a: Tensor, w: Tensor, expert_offsets: Tensor, *, out: Tensor | None = None) -> Tensor:
    """a [M, K], w [E, N, K] (nn.Linear layout), expert_offsets [E+1] int32 -> c [M, N].
    Rows [offsets[e], offsets[e+1]) use expert e; rows outside every segment are zero. expert_offsets
    must be >= 0, non-decreasing and end at most at M: checked on CPU tensors; on a GPU it is the
    caller's duty (checking would read the offsets back to the host)."""
    return _call("grouped_gemm", (a, w, expert_offsets), out)


def moe_mlp(x: Tensor, topk_weights: Tensor, topk_ids: Tensor, sorted_token_ids: Tensor, expert_offsets: Tensor,
            w_fc1: Tensor, w_fc2: Tensor, skip_mode: str = "scaled_input", *, out: Tensor | None = None) -> Tensor:
    """The MoE sub-layer's experts: x [T, H] bf16 -> y [T, H] bf16 (SwiGLU experts, combine weights,
    skip route by skip_mode: "scaled_input" = p_skip * x, or "zero"). sorted_token_ids / expert_offsets
    are moe_align(topk_ids, E, block_m)'s: offsets >= 0, non-decreasing, ending at most at
    len(sorted_token_ids), entries in [0, T*k]. Checked on CPU tensors; on a GPU the caller's duty."""
    return _call("moe_mlp", (x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2, skip_mode),
                 out)


def cca_prep(proj: Tensor, cu_seqlens: Tensor, seq_start: Tensor, conv_state: Tensor, value_state: Tensor,
             conv1_w: Tensor, conv1_b: Tensor, conv2_w: Tensor, conv2_b: Tensor, temp: Tensor, k_cache: Tensor,
             v_cache: Tensor, block_table: Tensor, rope_theta: float = 5e6, rotary_dim: int = 64, *,
             out: Tensor | None = None) -> Tensor:
    """CCA pre-attention (see reference.cca_prep): returns q [T, Hq, D] bf16 and updates conv_state,
    value_state, k_cache and v_cache in place. rope_theta: a finite number > 0.
    The caller's duty on a GPU (checked on CPU tensors only; checking would read them back to the host):
    cu_seqlens starts at 0, is non-decreasing and ends at T; seq_start >= 0; each sequence's new positions
    seq_start[b] .. seq_start[b] + n_b - 1 fit its block_table row (max_pages * page_size) and the pages
    they use are pages of the cache, in [0, num_pages)."""
    return _call("cca_prep", (proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w,
                              conv2_b, temp, k_cache, v_cache, block_table, rope_theta, rotary_dim), out)


def attention_prefill(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, cu_seqlens_q: Tensor,
                      seq_lens_k: Tensor, softmax_scale: float | None = None, causal: bool = True, *,
                      out: Tensor | None = None) -> Tensor:
    """Varlen causal GQA attention over the paged cache: q [T, Hq, D] -> o [T, Hq, D] bf16.
    softmax_scale: None (1/sqrt(D)) or a finite number > 0.
    The caller's duty on a GPU (checked on CPU tensors only): cu_seqlens_q starts at 0, is non-decreasing
    and ends at T; seq_lens_k[b] >= the n_b queries of sequence b (the keys include the chunk); the
    seq_lens_k[b] keys fit its block_table row and their pages are in [0, num_pages)."""
    return _call("attention_prefill", (q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale,
                                       causal), out)


def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
                     softmax_scale: float | None = None, *, out: Tensor | None = None) -> Tensor:
    """One query token per sequence over the paged cache: q [B, Hq, D] -> o [B, Hq, D] bf16; a sequence
    with seq_lens 0 gets zeros. softmax_scale: None (1/sqrt(D)) or a finite number > 0.
    The caller's duty on a GPU (checked on CPU tensors only): 0 <= seq_lens[b] <= max_pages * page_size,
    and the pages its keys use are in [0, num_pages) (no -1 entries below the length)."""
    return _call("attention_decode", (q, k_cache, v_cache, block_table, seq_lens, softmax_scale), out)
