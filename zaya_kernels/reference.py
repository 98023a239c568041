# SPDX-License-Identifier: Apache-2.0
"""Pure-PyTorch reference of every zaya op: fp32 math, readable over fast.

It is the CPU kernel of each op (registered in ops.py), the oracle of every test and the eager
baseline of the benchmarks. It follows ZAYA1_ARCHITECTURE.md; section numbers below refer to it.

Every function takes ``compute_dtype`` (default fp32). Tests run it a second time in bf16 (every
intermediate rounded) to measure the error "PyTorch itself makes at low precision", and accept a
kernel whose error against the fp32 reference is at most twice that (DESIGN.md §6). float64 gives
a higher-precision oracle for small cases.

Legend: T tokens, H hidden (2048), R router width (256), E experts (16), E' = E + skip route,
k slots per token, Hq / Hkv query / KV heads (8 / 2), D head dim (128), B sequences.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SKIP_MODES = ("scaled_input", "zero")


def _c(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """Round to the compute dtype: a no-op in fp32/fp64 for fp32 inputs, a rounding step in bf16."""
    return t.to(dt)


# ---------------------------------------------------------------------------------------------
# Routing (§5.1, §8.1)
# ---------------------------------------------------------------------------------------------

def topk_gating(logits: torch.Tensor, bias: torch.Tensor | None = None, k: int = 1, renormalize: bool = False,
                skip_index: int = -1, *, compute_dtype: torch.dtype = torch.float32):
    """Softmax over the E' logits of each row, then the k largest scores p + bias.

    logits [T, E'] bf16|fp32, bias [E'] fp32 or None -> weights [T, k] fp32, ids [T, k] int32.
    - Ties between equal scores go to the lower index; a NaN score ranks as -inf.
    - weights are the unbiased p of the chosen ids, renormalised over the k slots if asked.
    - Once the skip route (skip_index >= 0) is chosen, every later slot is the skip route too, with
      weight 0 (the ZAYA reference forces the slots after a skip to skip).
    - A row whose softmax is undefined (a NaN or +inf logit, or all logits -inf) has NaN weights and
      ids 0..k-1, never an id out of range.
    """
    dt = compute_dtype
    p = torch.softmax(_c(logits, dt), dim=-1)
    score = p if bias is None else _c(p + _c(bias, dt), dt)
    score = torch.nan_to_num(score, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    # Stable descending sort keeps the lower index first among equal scores.
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = torch.gather(p, -1, order).to(torch.float32)
    ids = order.to(torch.int32)
    if skip_index >= 0 and k > 1:
        is_skip = ids == skip_index
        after_skip = (torch.cumsum(is_skip.int(), dim=-1) - is_skip.int()) > 0
        ids = torch.where(after_skip, torch.full_like(ids, skip_index), ids)
        weights = torch.where(after_skip, torch.zeros_like(weights), weights)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, compute_dtype=torch.float32) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps), statistics in the compute dtype (§2.3)."""
    dt = compute_dtype
    x = _c(x, dt)
    inv = torch.rsqrt(_c(x.pow(2).mean(dim=-1, keepdim=True), dt) + eps)
    return _c(_c(x * inv, dt) * _c(weight, dt), dt)


def zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                eps: float = 1e-5, *, compute_dtype: torch.dtype = torch.float32):
    """The ZAYA1 router (§5.1-5.2), top-1 over E experts + the skip route (index E' - 1).

    x [T, H] bf16; r_prev [T, R] bf16 or None (first MoE layer: no EDA term); down_w [R, H], down_b [R],
    eda_scale [R] (required with r_prev), norm_w [R], fc1_w/fc2_w [R, R], fc1_b/fc2_b [R], out_w [E', R]
    (bf16 checkpoint tensors); balancing_bias [E'] fp32.
    Returns weights [T, 1] fp32 (unbiased p of the choice), ids [T, 1] int32, r_out [T, R] bf16 (the
    pre-norm EDA state for the next MoE layer).

    Numerics: every matmul accumulates in fp32, biases, GELU (exact erf), RMSNorm and the softmax
    run in fp32; the activations entering the three MLP matmuls (n, h1, h2) are rounded to bf16, as
    every reference does and as tensor cores take them. r stays fp32 into the norm and is rounded to
    bf16 only when stored. (Both roundings are to x's dtype: bf16 in the op contract; an fp32 model,
    the reference backend's dtype=fp32, keeps fp32 throughout.)
    """
    dt = compute_dtype
    low = x.dtype  # the rounding of the MLP's inputs is part of the op, at any compute dtype

    def linear(inp, w, b=None):
        y = _c(inp, dt) @ _c(w, dt).T
        return _c(y if b is None else y + _c(b, dt), dt)

    d = linear(x, down_w, down_b)
    r = d if r_prev is None else _c(d + _c(eda_scale, dt) * _c(r_prev, dt), dt)
    n = rms_norm(r, norm_w, eps, compute_dtype=dt).to(low)
    h1 = _c(F.gelu(linear(n, fc1_w, fc1_b)), dt).to(low)
    h2 = _c(F.gelu(linear(h1, fc2_w, fc2_b)), dt).to(low)
    logits = linear(h2, out_w)
    weights, ids = topk_gating(logits, balancing_bias, k=1, skip_index=out_w.shape[0] - 1, compute_dtype=dt)
    return weights, ids, r.to(x.dtype)


def zaya_route(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
               workspace, block_m: int, eps: float = 1e-5, *, compute_dtype: torch.dtype = torch.float32):
    """zaya_router, then moe_align of its ids over the E' - 1 experts (the skip route goes to no
    expert): the router's three outputs, then moe_align's four. workspace [1024] uint8 is the kernels'
    scratch (zero between calls); the reference does not touch it."""
    weights, ids, r_out = zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b,
                                      out_w, balancing_bias, eps, compute_dtype=compute_dtype)
    return (weights, ids, r_out) + moe_align(ids, out_w.shape[0] - 1, block_m)


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int):
    """Counting sort of the T*k (token, slot) pairs by expert, each segment padded to block_m.

    ids [T, k] int32 -> sorted_token_ids [T*k + E*(block_m-1)] int32 (pair index t*k + j, padding =
    T*k), block_expert_ids [ceil(len/block_m)] int32 (-1 past the padded end), expert_offsets [E+1]
    int32 (padded segment starts; offsets[E] = num_padded), num_padded [1] int32.
    Pairs keep ascending pair order inside a segment; ids outside [0, E) (the skip route) go to no
    expert; an expert with no pairs has an empty segment.
    """
    num_pairs = ids.numel()
    capacity = num_pairs + num_experts * (block_m - 1)
    flat = ids.reshape(-1).to(torch.int64)
    valid = (flat >= 0) & (flat < num_experts)
    counts = torch.bincount(flat[valid], minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=ids.device)
    offsets[1:] = torch.cumsum(padded, 0)
    sorted_ids = torch.full((capacity,), num_pairs, dtype=torch.int32, device=ids.device)
    block_experts = torch.full(((capacity + block_m - 1) // block_m,), -1, dtype=torch.int32, device=ids.device)
    pair_index = torch.arange(num_pairs, dtype=torch.int32, device=ids.device)
    for e in range(num_experts):
        members = pair_index[valid & (flat == e)]
        start = int(offsets[e])
        sorted_ids[start:start + members.numel()] = members
        block_experts[start // block_m:int(offsets[e + 1]) // block_m] = e
    return sorted_ids, block_experts, offsets.to(torch.int32), offsets[-1:].to(torch.int32)


# ---------------------------------------------------------------------------------------------
# Experts (§5.3-5.4)
# ---------------------------------------------------------------------------------------------

def grouped_gemm(a: torch.Tensor, w: torch.Tensor, expert_offsets: torch.Tensor, *,
                 compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """a [M, K] bf16, w [E, N, K] bf16 (nn.Linear layout), expert_offsets [E+1] int32 -> c [M, N] bf16.

    Rows [offsets[e], offsets[e+1]) use expert e; rows outside every segment are zero.
    """
    dt = compute_dtype
    out = torch.zeros(a.shape[0], w.shape[1], dtype=dt, device=a.device)
    offsets = expert_offsets.tolist()  # a host sync: fine for the reference
    for e in range(w.shape[0]):
        lo, hi = offsets[e], offsets[e + 1]
        if hi > lo:
            out[lo:hi] = _c(a[lo:hi], dt) @ _c(w[e], dt).T
    return out.to(a.dtype)


def expert_swiglu(x: torch.Tensor, w_fc1: torch.Tensor, w_fc2: torch.Tensor, *, compute_dtype=torch.float32):
    """One expert: fc2(SiLU(gate) * up), gate = fc1 rows [0, F), up = rows [F, 2F).

    x [n, H]; w_fc1 [2F, H]; w_fc2 [H, F] -> [n, H] in the compute dtype. The activation is rounded
    to the weights' dtype (bf16) before fc2, as in every reference (§8.9).
    """
    dt = compute_dtype
    h = _c(x, dt) @ _c(w_fc1, dt).T
    f = w_fc1.shape[0] // 2
    act = _c(F.silu(h[:, :f]) * h[:, f:], dt).to(w_fc2.dtype).to(dt)
    return _c(act @ _c(w_fc2, dt).T, dt)


def moe_mlp(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2,
            skip_mode: str = "scaled_input", *, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The MoE sub-layer output: y[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]).

    x [T, H] bf16; topk_weights [T, k] fp32; topk_ids [T, k] int32; w_fc1 [E, 2F, H]; w_fc2 [E, H, F].
    An id equal to E is the skip route: it adds weights * x ("scaled_input", §5.4) or nothing
    ("zero"); any other id outside [0, E) adds nothing. sorted_token_ids / expert_offsets (from
    moe_align) are the kernels' schedule; the result does not depend on them.
    Returns [T, H] bf16 (fp32 sum, rounded once).
    """
    if skip_mode not in SKIP_MODES:
        raise ValueError(f"skip_mode must be one of {SKIP_MODES}, got {skip_mode!r}")
    dt = compute_dtype
    num_experts = w_fc1.shape[0]
    y = torch.zeros(x.shape, dtype=dt, device=x.device)
    weights = _c(topk_weights, dt)
    for j in range(topk_ids.shape[1]):
        ids = topk_ids[:, j]
        for e in range(num_experts):
            rows = (ids == e).nonzero().flatten()
            if rows.numel():
                out = expert_swiglu(x[rows], w_fc1[e], w_fc2[e], compute_dtype=dt)
                y[rows] += _c(weights[rows, j, None] * out, dt)
        if skip_mode == "scaled_input":
            rows = (ids == num_experts).nonzero().flatten()
            y[rows] += _c(weights[rows, j, None] * _c(x[rows], dt), dt)
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# CCA attention (§4)
# ---------------------------------------------------------------------------------------------

def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float):
    """cos/sin [n, rotary_dim/2] fp32 of NeoX rotate-half RoPE: f_d = theta^(-2d/rotary_dim), angle = pos * f_d.

    inv_freq and the product are fp32 as in HF, so a kernel doing one fp32 multiply agrees exactly.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / rotary_dim))
    angle = positions.float()[:, None] * inv_freq[None, :]
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x [n, heads, D]: rotate dims [0, rotary_dim) pairing (d, d + rotary_dim/2); the rest pass through."""
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def cache_slots(block_table_row: torch.Tensor, positions: torch.Tensor, page_size: int):
    """(page, slot) of each absolute position of one sequence in the paged cache."""
    pages = block_table_row[(positions // page_size).long()].long()  # same device as positions
    return pages, (positions % page_size).long()


def cca_prep(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w, conv2_b, temp,
             k_cache, v_cache, block_table, rope_theta: float = 5e6, rotary_dim: int = 64, *,
             compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CCA pre-attention for a packed varlen batch (§4.2-4.4); prefill, chunked prefill and decode alike.

    proj [T, Hq*D + 2*Hkv*D... ] bf16 = the fused projection (q Hq*D | k Hkv*D | v1 Hkv*D/2 | v2 Hkv*D/2),
      for ZAYA1 [T, 1536] = q 1024 | k 256 | v1 128 | v2 128;
    cu_seqlens [B+1] int32: sequence b owns rows [cu[b], cu[b+1]);
    seq_start [B] int32: tokens already in the cache = absolute position of the chunk's first token;
    conv_state [B, C, 2] fp32 (C = (Hq+Hkv)*D = 1280), in/out: raw (u_{t-2}, u_{t-1}), zeros for a new sequence;
    value_state [B, Hkv*D/2] fp32, in/out: W_v2 x_{t-1} (the delayed value), zeros for a new sequence;
    conv1_w [C, 1, 2], conv1_b [C], conv2_w [C, D, 2], conv2_b [C], temp [Hkv];
    k_cache / v_cache [num_pages, page_size, Hkv, D] bf16, in/out; block_table [B, max_pages] int32.
    Returns q [T, Hq, D] bf16 (normalised to sqrt(D), RoPE'd; the 1/sqrt(D) scale is the attention's).

    Writes K (normalised, times temp, RoPE'd) and V (head group 0 = current token's v1, group 1 = the
    previous token's v2) at positions seq_start[b] + i, then stores the last two raw u and the last v2.
    q/k normalisation: v * rsqrt(|v|^2 + 1e-12) in the compute dtype (the vLLM form, §8.5).
    """
    dt = compute_dtype
    T = proj.shape[0]
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    channels = conv_state.shape[1]
    hq = channels // d - hkv
    group = hq // hkv
    vh = value_state.shape[1]
    page_size = k_cache.shape[1]
    q_out = torch.empty(T, hq, d, dtype=proj.dtype, device=proj.device)  # bf16 in the op contract
    a_w, a_b = _c(conv1_w[:, 0, :], dt), _c(conv1_b, dt)  # [C, 2], [C]
    b_w = _c(conv2_w, dt).view(hq + hkv, d, d, 2)  # [head, out, in, tap]
    b_b = _c(conv2_b, dt)
    tau = _c(temp, dt)
    scale = math.sqrt(d)
    for b in range(cu_seqlens.numel() - 1):
        lo, hi = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        n = hi - lo
        if n == 0:
            continue
        u = _c(proj[lo:hi, :channels], dt)  # [n, C] raw q|k projections
        v1 = _c(proj[lo:hi, channels:channels + vh], dt)
        v2 = _c(proj[lo:hi, channels + vh:channels + 2 * vh], dt)
        padded = torch.cat([_c(conv_state[b].T, dt), u], dim=0)  # [n+2, C]: u_{-2}, u_{-1}, u_0..
        y = _c(a_w[:, 0] * padded[:-1] + a_w[:, 1] * padded[1:] + a_b, dt)  # [n+1, C]: y_{-1}..y_{n-1}
        yh = y.view(n + 1, hq + hkv, d)
        z = torch.einsum("hoi,thi->tho", b_w[..., 0], yh[:-1]) + torch.einsum("hoi,thi->tho", b_w[..., 1], yh[1:])
        z = _c(z + b_b.view(hq + hkv, d), dt)  # [n, Hq+Hkv, D]
        qraw = u[:, :hq * d].view(n, hq, d)
        kraw = u[:, hq * d:].view(n, hkv, d)
        kv_of_q = torch.arange(hq, device=u.device) // group
        mq = _c(0.5 * (qraw + kraw[:, kv_of_q]), dt)
        mk = _c(0.5 * (qraw.view(n, hkv, group, d).mean(dim=2) + kraw), dt)
        q = _c(z[:, :hq] + mq, dt)
        k = _c(z[:, hq:] + mk, dt)
        q = _c(q * torch.rsqrt(_c(q.pow(2).sum(-1, keepdim=True), dt) + 1e-12) * scale, dt)
        k = _c(k * torch.rsqrt(_c(k.pow(2).sum(-1, keepdim=True), dt) + 1e-12) * scale, dt)
        k = _c(k * tau.view(1, hkv, 1), dt)
        positions = int(seq_start[b]) + torch.arange(n, device=u.device)
        cos, sin = rope_cos_sin(positions, rotary_dim, rope_theta)
        q = apply_rope(q, _c(cos, dt), _c(sin, dt), rotary_dim)
        k = apply_rope(k, _c(cos, dt), _c(sin, dt), rotary_dim)
        v_prev = torch.cat([_c(value_state[b][None], dt), v2[:-1]], dim=0)  # v2 of token t-1
        v = torch.cat([v1, v_prev], dim=-1).view(n, hkv, d)
        pages, slots = cache_slots(block_table[b], positions, page_size)
        k_cache[pages, slots] = k.to(k_cache.dtype)
        v_cache[pages, slots] = v.to(v_cache.dtype)
        q_out[lo:hi] = q.to(q_out.dtype)
        conv_state[b] = padded[-2:].T.to(conv_state.dtype)
        value_state[b] = v2[-1].to(value_state.dtype)
    return q_out


def _attend(q, k, v, q_positions, scale, causal, dt):
    """q [n, Hq, D], k/v [L, Hkv, D] of one sequence; query i sits at absolute position q_positions[i]."""
    hq, hkv = q.shape[1], k.shape[1]
    rep = hq // hkv
    k = _c(k, dt).repeat_interleave(rep, dim=1)
    v = _c(v, dt).repeat_interleave(rep, dim=1)
    logits = _c(torch.einsum("qhd,khd->hqk", _c(q, dt), k) * scale, dt)
    if causal:
        key_pos = torch.arange(k.shape[0], device=logits.device)
        logits = logits.masked_fill(key_pos[None, None, :] > q_positions[None, :, None], -math.inf)
    p = _c(torch.softmax(logits, dim=-1), dt)
    return _c(torch.einsum("hqk,khd->qhd", p, v), dt)


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` positions of one sequence from a paged cache [pages, page_size, Hkv, D]."""
    pages, slots = cache_slots(block_table_row, torch.arange(length, device=block_table_row.device), cache.shape[1])
    return cache[pages, slots]


def attention_prefill(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale=None,
                      causal: bool = True, *, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Causal GQA attention of packed varlen queries over the paged cache (§4.2 step 8).

    q [T, Hq, D] bf16; k_cache / v_cache [num_pages, page_size, Hkv, D] bf16; block_table [B, max_pages]
    int32; cu_seqlens_q [B+1] int32; seq_lens_k [B] int32 (keys per sequence, the new ones included).
    Sequence b's queries are its last n_b tokens: query i sits at position seq_lens_k[b] - n_b + i and
    sees keys 0..that position. Query head h reads KV head h // (Hq / Hkv). Returns o [T, Hq, D] bf16.
    """
    dt = compute_dtype
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for b in range(cu_seqlens_q.numel() - 1):
        lo, hi = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        if hi == lo:
            continue
        length = int(seq_lens_k[b])
        k = gather_kv(k_cache, block_table[b], length)
        v = gather_kv(v_cache, block_table[b], length)
        q_positions = length - (hi - lo) + torch.arange(hi - lo, device=q.device)
        out[lo:hi] = _attend(q[lo:hi], k, v, q_positions, scale, causal, dt).to(q.dtype)
    return out


def attention_decode(q, k_cache, v_cache, block_table, seq_lens, softmax_scale=None, *,
                     compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One query per sequence: q [B, Hq, D] bf16 over its seq_lens[b] cached keys -> o [B, Hq, D] bf16.

    A sequence with no keys (seq_lens 0) gets a zero output.
    """
    dt = compute_dtype
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        length = int(seq_lens[b])
        if length == 0:
            continue
        k = gather_kv(k_cache, block_table[b], length)
        v = gather_kv(v_cache, block_table[b], length)
        out[b] = _attend(q[b:b + 1], k, v, None, scale, False, dt)[0].to(q.dtype)
    return out
