# SPDX-License-Identifier: Apache-2.0
"""Attention benchmark (suite "attention"): CCA pre-attention, varlen prefill and paged decode against
the PyTorch baselines, measured in one run (issue 13). GQA 8 query / 2 KV heads, head dim 128, bf16.

Rows:
  attention_prefill  B x S causal (16x1024, 4x4096, 1x16384)
    zaya           ops.attention_prefill on the paged cache (page size 16, pages in a shuffled order)
    zaya_page64    the same with 64-token pages
    sdpa_cudnn     F.scaled_dot_product_attention(enable_gqa=True), cuDNN backend, contiguous [B, H, S, D]
    sdpa_flash     the same, flash backend
  attention_decode   one query per sequence over L cached keys (B=1 L=4096, B=1 L=32768, B=32 L=32768,
                     B=128 L=8192): the same four impls; ours paged, theirs contiguous (is_causal=False)
  cca_prep           prefill 1x16384 (positions from 0) and decode B in {1, 64} (one token per sequence at
                     a random position below 512); ZAYA1: proj [T, 1536], conv weights bf16, states fp32
    zaya           ops.cca_prep
    torch_graph    graph_cca_prep: reference.cca_prep's math batched over the packed sequences without a
                   host sync (row -> sequence by searchsorted, the conv states spliced in by index_put,
                   the cache written by index_put_), replayed in a CUDA graph
    torch_compile  torch.compile of graph_cca_prep, replayed in the harness's graph
    eager          reference.cca_prep itself (a Python loop per sequence with host syncs, as engines run
                   the CCA pre-attention today): CUDA events
Every row is a CUDA-graph replay over rotated input sets (the eager cca_prep row excepted), so decode
rows are graph replays for every impl. floor_us: bytes at the copy ceiling (decode: the K/V read) or
FLOPs at the matmul ceiling, the larger. Each zaya row's output is checked against the reference first
(DESIGN.md §6's 2x-bf16 rule: `correct`); prefill checks each sequence's first and last 512 queries.

    python -m bench.bench_attention [--quick] [--no-compile] [--out DIR]   # after an in-place build
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import zaya_kernels
from zaya_kernels import ops, reference

from .baselines import HEAD_DIM, KV_HEADS, Q_HEADS, shape_guard
from .bench_experts import skip_notes
from .harness import (Compiler, ProgressFn, Results, attention_flops, floor_us, generator, record, record_compiled,
                      release_memory, rotation_count, run_cases, standalone_main, within_bf16_rule)

SDPA_IMPLS = (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION))
PAGE_SIZES = (("zaya", 16), ("zaya_page64", 64))  # 16: vLLM's default block size
CCA_PAGE_SIZE = 16
CCA_DECODE_CONTEXT = 512      # decode positions are drawn below this
ROPE_THETA, ROTARY_DIM = 5e6, 64
PREFILL_CHECK_QUERIES = 512   # per sequence, the first and the last this many queries are checked
ATTENTION_IMPLS = tuple(name for name, _ in PAGE_SIZES) + tuple(name for name, _ in SDPA_IMPLS)
CCA_IMPLS = ("zaya", "torch_graph", "torch_compile", "eager")


@dataclass(frozen=True)
class Grid:
    prefill: tuple      # (batch, seqlen)
    decode: tuple       # (batch, cached keys)
    cca_prefill: tuple  # (batch, tokens per sequence)
    cca_decode: tuple   # batch sizes
    warmup: int
    iters: int


def grid_for(device: torch.device, quick: bool) -> Grid:
    if device.type == "cpu":
        return Grid(((1, 64), (2, 32)), ((1, 128), (2, 64)), ((1, 32),), (1, 4), 1, 3)
    if quick:
        return Grid(((4, 4096),), ((1, 32768), (32, 32768)), ((1, 16384),), (1,), 5, 30)
    return Grid(((16, 1024), (4, 4096), (1, 16384)), ((1, 4096), (1, 32768), (32, 32768), (128, 8192)),
                ((1, 16384),), (1, 64), 10, 100)


# ---------------------------------------------------------------------------------------------
# the paged cache
# ---------------------------------------------------------------------------------------------

def paged(k: torch.Tensor, v: torch.Tensor, page_size: int, gen: torch.Generator) -> tuple:
    """k, v [B, L, Hkv, D] -> (k_cache, v_cache [B * ceil(L/page), page, Hkv, D], block_table [B, ceil(L/page)]
    int32) with the pages in a random order (a cache that has served other requests); slots past L are zero."""
    batch, length = k.shape[:2]
    pages = -(-length // page_size)
    order = torch.randperm(batch * pages, generator=gen, device=k.device)

    def page(t: torch.Tensor) -> torch.Tensor:
        padded = F.pad(t, (0, 0, 0, 0, 0, pages * page_size - length))
        cache = torch.empty(batch * pages, page_size, *t.shape[2:], dtype=t.dtype, device=t.device)
        cache[order] = padded.reshape(batch * pages, page_size, *t.shape[2:])
        return cache

    return page(k), page(v), order.view(batch, pages).to(torch.int32)


def _sdpa(q, k, v, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _randn(gen, device, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device=device).bfloat16()


def _sdpa_rows(results: Results, op: str, shape: dict, sets: list, causal: bool, grid: Grid, **row) -> None:
    for impl, backend in SDPA_IMPLS:
        with sdpa_kernel(backend):  # the backend is chosen at call time: also inside the capture
            record(results, op, impl, shape, lambda q, k, v: _sdpa(q, k, v, causal), rotate=sets, graph=True,
                   warmup=grid.warmup, iters=grid.iters, **row)


# ---------------------------------------------------------------------------------------------
# attention_prefill
# ---------------------------------------------------------------------------------------------

def prefill_agrees(out, q, k_cache, v_cache, block_table, batch: int, seqlen: int) -> bool:
    """Each sequence's first and last PREFILL_CHECK_QUERIES rows of out [B*S, Hq, D] against the reference
    (fp32 and bf16 compute, the 2x rule) on those queries alone: the queries of a causal prefill see keys
    up to their own position, so a chunk needs only its keys (the full 1x16384 reference would be 30 GB)."""
    n = min(seqlen, PREFILL_CHECK_QUERIES)
    one = torch.tensor([0, n], dtype=torch.int32, device=q.device)
    for b in range(batch):
        for first, keys in ((b * seqlen, n), ((b + 1) * seqlen - n, seqlen)):
            args = (q[first:first + n], k_cache, v_cache, block_table[b:b + 1], one,
                    torch.tensor([keys], dtype=torch.int32, device=q.device))
            ref = reference.attention_prefill(*args)
            ref16 = reference.attention_prefill(*args, compute_dtype=torch.bfloat16)
            if not within_bf16_rule(out[first:first + n], ref, ref16):
                return False
    return True


def prefill_case(results: Results, grid: Grid, batch: int, seqlen: int, *, with_zaya: bool = True) -> None:
    device, op = results.torch_device, "attention_prefill"
    shape = {"B": batch, "S": seqlen, "Hq": Q_HEADS, "Hkv": KV_HEADS, "D": HEAD_DIM}
    with_zaya = with_zaya and device.type == "cuda" and zaya_kernels.has_device_kernel(op)
    with shape_guard(results, op, shape, ATTENTION_IMPLS if with_zaya else [i for i, _ in SDPA_IMPLS]):
        gen = generator(device, 300 + batch * seqlen)
        tokens = batch * seqlen
        nbytes = 2 * tokens * (2 * Q_HEADS + 2 * KV_HEADS) * HEAD_DIM  # q, k, v read, o written (bf16)
        flops = attention_flops(batch, Q_HEADS, seqlen, seqlen, HEAD_DIM, causal=True)
        common = dict(flops=flops, bytes=nbytes, floor_us=floor_us(results.ceilings, flops=flops, bytes=nbytes))
        # (q [B, S, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, D]) bf16 per set
        sources = [(_randn(gen, device, batch, seqlen, Q_HEADS, HEAD_DIM),
                    _randn(gen, device, batch, seqlen, KV_HEADS, HEAD_DIM),
                    _randn(gen, device, batch, seqlen, KV_HEADS, HEAD_DIM))
                   for _ in range(rotation_count(device, nbytes))]
        if with_zaya:
            cu_seqlens = torch.arange(0, tokens + 1, seqlen, dtype=torch.int32, device=device)   # [B+1]
            seq_lens = torch.full((batch,), seqlen, dtype=torch.int32, device=device)            # [B]
            for impl, page_size in PAGE_SIZES:
                sets = []  # attention_prefill's arguments per set
                for q, k, v in sources:
                    sets.append((q.reshape(tokens, Q_HEADS, HEAD_DIM), *paged(k, v, page_size, gen), cu_seqlens,
                                 seq_lens))

                def check() -> bool:
                    return prefill_agrees(ops.attention_prefill(*sets[0]), *sets[0][:4], batch, seqlen)
                record(results, op, impl, shape, ops.attention_prefill, rotate=sets, graph=True, check=check,
                       page_size=page_size, warmup=grid.warmup, iters=grid.iters, **common)
                del sets
        sets = [tuple(t.transpose(1, 2).contiguous() for t in source) for source in sources]   # [B, H, S, D]
        del sources
        _sdpa_rows(results, op, shape, sets, True, grid, **common)
        del sets
        release_memory(device)


# ---------------------------------------------------------------------------------------------
# attention_decode
# ---------------------------------------------------------------------------------------------

def decode_case(results: Results, grid: Grid, batch: int, keys: int, *, with_zaya: bool = True) -> None:
    """One query token per sequence over `keys` cached keys. SDPA: is_causal=False (torch aligns a causal
    mask top-left, which would let the single query see key 0 only)."""
    device, op = results.torch_device, "attention_decode"
    shape = {"B": batch, "L": keys, "Hq": Q_HEADS, "Hkv": KV_HEADS, "D": HEAD_DIM}
    with_zaya = with_zaya and device.type == "cuda" and zaya_kernels.has_device_kernel(op)
    with shape_guard(results, op, shape, ATTENTION_IMPLS if with_zaya else [i for i, _ in SDPA_IMPLS]):
        gen = generator(device, 400 + batch * keys)
        kv_bytes = 2 * batch * keys * KV_HEADS * HEAD_DIM * 2  # K and V, bf16: the bytes a decode must read
        flops = attention_flops(batch, Q_HEADS, 1, keys, HEAD_DIM, causal=False)
        common = dict(flops=flops, bytes=kv_bytes, floor_us=floor_us(results.ceilings, flops=flops, bytes=kv_bytes))
        # (q [B, Hq, D], k [B, L, Hkv, D], v [B, L, Hkv, D]) bf16 per set
        sources = [(_randn(gen, device, batch, Q_HEADS, HEAD_DIM),
                    _randn(gen, device, batch, keys, KV_HEADS, HEAD_DIM),
                    _randn(gen, device, batch, keys, KV_HEADS, HEAD_DIM))
                   for _ in range(rotation_count(device, kv_bytes))]
        if with_zaya:
            seq_lens = torch.full((batch,), keys, dtype=torch.int32, device=device)   # [B]
            for impl, page_size in PAGE_SIZES:
                sets = []  # attention_decode's arguments per set
                for q, k, v in sources:
                    sets.append((q, *paged(k, v, page_size, gen), seq_lens))

                def check() -> bool:
                    out = ops.attention_decode(*sets[0])
                    return within_bf16_rule(out, reference.attention_decode(*sets[0]),
                                            reference.attention_decode(*sets[0], compute_dtype=torch.bfloat16))
                record(results, op, impl, shape, ops.attention_decode, rotate=sets, graph=True, check=check,
                       page_size=page_size, warmup=grid.warmup, iters=grid.iters, **common)
                del sets
        # SDPA: q [B, Hq, 1, D], k / v [B, Hkv, L, D] contiguous
        sets = [(q[:, :, None, :], k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
                for q, k, v in sources]
        del sources
        _sdpa_rows(results, op, shape, sets, False, grid, **common)
        del sets
        release_memory(device)


# ---------------------------------------------------------------------------------------------
# cca_prep
# ---------------------------------------------------------------------------------------------

def graph_cca_prep(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w, conv2_b, temp,
                   k_cache, v_cache, block_table, rope_theta: float = ROPE_THETA, rotary_dim: int = ROTARY_DIM):
    """reference.cca_prep's math for the whole packed batch at once, capturable (no host sync, every shape
    static): the same arguments, the same in-place updates of the states and the cache, q [T, Hq, D] bf16.
    fp32 like the reference, except the grouped conv2 (the one matmul): bf16 operands, fp32 accumulation,
    bf16 result, as a speed-minded PyTorch user writes it (within DESIGN §6's 2x-bf16 rule: `correct`)."""
    tokens = proj.shape[0]
    channels = conv_state.shape[1]
    kv_heads, head_dim, page_size = k_cache.shape[2], k_cache.shape[3], k_cache.shape[1]
    heads = channels // head_dim
    q_heads = heads - kv_heads
    value_width = value_state.shape[1]
    device = proj.device
    cu = cu_seqlens.long()
    rows = torch.arange(tokens, device=device)
    seq = torch.searchsorted(cu[1:], rows, right=True)                           # [T] sequence of each row
    start, count = cu[:-1], cu[1:] - cu[:-1]                                     # [B]
    position = seq_start.long()[seq] + rows - start[seq]                         # [T] absolute positions
    u = proj[:, :channels].float()                                               # [T, C] raw q | k
    v1 = proj[:, channels:channels + value_width].float()
    v2 = proj[:, channels + value_width:channels + 2 * value_width].float()
    # u_{t-1} and u_{t-2} of each row; at a sequence's first rows, the stored state (row T: scratch for
    # the writes of empty or one-token sequences)
    first = torch.where(count > 0, start, tokens)
    second = torch.where(count > 1, start + 1, tokens)
    prev1 = F.pad(u, (0, 0, 1, 0)).index_put((first,), conv_state[:, :, 1])[:tokens]
    prev2 = F.pad(u, (0, 0, 2, 0))[:tokens + 1].index_put((first,), conv_state[:, :, 0])
    prev2 = prev2.index_put((second,), conv_state[:, :, 1])[:tokens]
    a0, a1, a_b = conv1_w[:, 0, 0].float(), conv1_w[:, 0, 1].float(), conv1_b.float()
    y_prev = a0 * prev2 + a1 * prev1 + a_b                                       # [T, C] y_{t-1}
    y_cur = a0 * prev1 + a1 * u + a_b                                            # [T, C] y_t
    # conv2: per head, z = [y_{t-1} | y_t] @ [W_tap0 | W_tap1]^T, one batched matmul with K = 2D
    y = torch.cat([y_prev.view(tokens, heads, head_dim), y_cur.view(tokens, heads, head_dim)], dim=-1)
    w = conv2_w.view(heads, head_dim, head_dim, 2).permute(0, 3, 2, 1).reshape(heads, 2 * head_dim, head_dim)
    z = torch.bmm(y.transpose(0, 1).bfloat16(), w.bfloat16()).transpose(0, 1).float()
    z = z + conv2_b.float().view(heads, head_dim)                                # [T, Hq+Hkv, D]
    q_raw = u[:, :q_heads * head_dim].view(tokens, q_heads, head_dim)
    k_raw = u[:, q_heads * head_dim:].view(tokens, kv_heads, head_dim)
    group = q_heads // kv_heads
    q = z[:, :q_heads] + 0.5 * (q_raw + k_raw.repeat_interleave(group, dim=1))
    k = z[:, q_heads:] + 0.5 * (q_raw.view(tokens, kv_heads, group, head_dim).mean(dim=2) + k_raw)
    scale = math.sqrt(head_dim)
    q = q * torch.rsqrt(q.square().sum(-1, keepdim=True) + 1e-12) * scale
    k = k * torch.rsqrt(k.square().sum(-1, keepdim=True) + 1e-12) * scale * temp.float().view(1, kv_heads, 1)
    cos, sin = reference.rope_cos_sin(position, rotary_dim, rope_theta)
    q = reference.apply_rope(q, cos, sin, rotary_dim)
    k = reference.apply_rope(k, cos, sin, rotary_dim)
    v_prev = F.pad(v2, (0, 0, 1, 0)).index_put((first,), value_state.float())[:tokens]   # v2 of token t-1
    v = torch.cat([v1, v_prev], dim=-1).view(tokens, kv_heads, head_dim)
    page = block_table.long()[seq, position // page_size]
    slot = position % page_size
    k_cache.index_put_((page, slot), k.to(k_cache.dtype))
    v_cache.index_put_((page, slot), v.to(v_cache.dtype))
    last = torch.where(count > 0, cu[1:] - 1, 0)                                 # [B] (any row when empty)
    has1, has2 = (count > 0)[:, None], (count > 1)[:, None]
    new1 = torch.where(has1, u[last], conv_state[:, :, 1])
    new0 = torch.where(has2, u[(last - 1).clamp(min=0)], torch.where(has1, conv_state[:, :, 1], conv_state[:, :, 0]))
    conv_state.copy_(torch.stack([new0, new1], dim=-1))
    value_state.copy_(torch.where(has1, v2[last], value_state))
    return q.bfloat16()


def cca_inputs(device, gen, batch: int, per_seq: int, context: int, cache: tuple) -> tuple:
    """cca_prep's arguments (rope_theta and rotary_dim left at their defaults) for `batch` sequences of
    per_seq new tokens each, starting at random positions below `context` (0: at position 0), ZAYA1's
    widths; `cache` = (k_cache, v_cache, block_table) shared by the rotation sets (only written)."""
    channels, value_width = (Q_HEADS + KV_HEADS) * HEAD_DIM, KV_HEADS * HEAD_DIM // 2
    tokens = batch * per_seq

    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    seq_start = (torch.randint(0, context, (batch,), generator=gen, device=device) if context
                 else torch.zeros(batch, device=device, dtype=torch.long)).to(torch.int32)
    return (rand(tokens, channels + 2 * value_width),                                   # proj [T, 1536] bf16
            torch.arange(0, tokens + 1, per_seq, dtype=torch.int32, device=device),     # cu_seqlens [B+1]
            seq_start,                                                                  # [B] int32
            rand(batch, channels, 2, dtype=torch.float32),                              # conv_state [B, C, 2] fp32
            rand(batch, value_width, dtype=torch.float32),                              # value_state [B, 128] fp32
            rand(channels, 1, 2, scale=0.5), rand(channels, scale=0.1),                 # conv1_w [C, 1, 2], conv1_b
            rand(channels, HEAD_DIM, 2, scale=(2 * HEAD_DIM) ** -0.5), rand(channels, scale=0.1),  # conv2_w, conv2_b
            (0.5 + torch.rand(KV_HEADS, generator=gen, device=device)).bfloat16(),     # temp [Hkv]
            *cache)


def cca_agrees(fn, args: tuple) -> bool:
    """fn (ops.cca_prep or a composition) on copies of args against reference.cca_prep in fp32 and bf16:
    q, both caches and the conv / value states, each by DESIGN §6's 2x-bf16 rule."""
    def run(f, **kwargs):
        copy = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        q = f(*copy, **kwargs)
        return q, copy[3], copy[4], copy[10], copy[11]  # q, conv_state, value_state, k_cache, v_cache

    got, ref = run(fn), run(reference.cca_prep)
    ref16 = run(reference.cca_prep, compute_dtype=torch.bfloat16)
    return all(within_bf16_rule(g, r, r16) for g, r, r16 in zip(got, ref, ref16))


def cca_case(results: Results, grid: Grid, compiler: Compiler, batch: int, per_seq: int, *,
             with_zaya: bool = True) -> None:
    device, op = results.torch_device, "cca_prep"
    phase = "decode" if per_seq == 1 else "prefill"
    shape = {"phase": phase, "B": batch, "T": batch * per_seq, "Hq": Q_HEADS, "Hkv": KV_HEADS, "D": HEAD_DIM}
    with_zaya = with_zaya and device.type == "cuda" and zaya_kernels.has_device_kernel(op)
    with shape_guard(results, op, shape, CCA_IMPLS):
        gen = generator(device, 700 + batch * per_seq)
        context = CCA_DECODE_CONTEXT if phase == "decode" else 0
        pages = -(-(context + per_seq) // CCA_PAGE_SIZE)
        k_cache = torch.randn(batch * pages, CCA_PAGE_SIZE, KV_HEADS, HEAD_DIM, generator=gen, device=device).bfloat16()
        table = torch.randperm(batch * pages, generator=gen, device=device).view(batch, pages).to(torch.int32)
        cache = (k_cache, torch.randn_like(k_cache), table)
        tokens, channels = batch * per_seq, (Q_HEADS + KV_HEADS) * HEAD_DIM
        heads = Q_HEADS + KV_HEADS
        weight_bytes = 2 * channels * (2 * HEAD_DIM + 2 + 2) + 2 * KV_HEADS
        state_bytes = 2 * batch * (channels * 2 + KV_HEADS * HEAD_DIM // 2) * 4          # read + written
        nbytes = (2 * tokens * (channels + KV_HEADS * HEAD_DIM)                        # proj read
                  + 2 * tokens * Q_HEADS * HEAD_DIM + 2 * 2 * tokens * KV_HEADS * HEAD_DIM  # q, K, V written
                  + state_bytes + weight_bytes)
        flops = 2 * tokens * heads * HEAD_DIM * 2 * HEAD_DIM                           # conv2: K = 2 taps x D
        sets = [cca_inputs(device, gen, batch, per_seq, context, cache)
                for _ in range(rotation_count(device, nbytes))]
        common = dict(flops=flops, bytes=nbytes, floor_us=floor_us(results.ceilings, flops=flops, bytes=nbytes),
                      warmup=grid.warmup, iters=grid.iters)
        if with_zaya:
            record(results, op, "zaya", shape, ops.cca_prep, rotate=sets, graph=True,
                   check=lambda: cca_agrees(ops.cca_prep, sets[0]), **common)
        record(results, op, "torch_graph", shape, graph_cca_prep, rotate=sets, graph=True,
               check=lambda: cca_agrees(graph_cca_prep, sets[0]), **common)
        record_compiled(results, compiler, op, shape, graph_cca_prep, sets,
                        check=lambda compiled: cca_agrees(compiled, sets[0]), **common)
        record(results, op, "eager", shape, reference.cca_prep, rotate=sets[:1], **common)
        del sets, cache
        release_memory(device)


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------

def run(results: Results, *, quick: bool = False, progress: ProgressFn | None = None,
        compiler: Compiler | None = None) -> None:
    """attention_prefill, attention_decode and cca_prep rows on results.torch_device (tiny CPU sizes
    exercise the code only)."""
    compiler = compiler or Compiler(None)
    grid = grid_for(results.torch_device, quick)
    skip_notes(results.torch_device, ("attention_prefill", "attention_decode", "cca_prep"))
    cases = [(f"attention_prefill B={b} S={s}", lambda b=b, s=s: prefill_case(results, grid, b, s))
             for b, s in grid.prefill]
    cases += [(f"attention_decode B={b} L={n}", lambda b=b, n=n: decode_case(results, grid, b, n))
              for b, n in grid.decode]
    cases += [(f"cca_prep prefill B={b} T={b * n}", lambda b=b, n=n: cca_case(results, grid, compiler, b, n))
              for b, n in grid.cca_prefill]
    cases += [(f"cca_prep decode B={b}", lambda b=b: cca_case(results, grid, compiler, b, 1)) for b in grid.cca_decode]
    run_cases(cases, progress)


if __name__ == "__main__":
    standalone_main("attention", run, __doc__)
