# SPDX-License-Identifier: Apache-2.0
"""Decode state of a batch of sequences and the buffers one forward pass works in.

DecodeState holds, per CCA layer, the paged KV cache and the two small recurrent states (§4.3), plus
per sequence the block table and the number of cached tokens. It also owns the decode step's
Workspace and batch description, allocated once, so that a decode step writes only into buffers
that exist before it starts (no allocation, static shapes: capturable in a CUDA graph).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import route_workspace
from .config import ZayaConfig

# moe_align pads each expert's segment to this many rows (the grouped GEMM's M tile). The reference
# ignores it; it only sizes the schedule buffers, so any value works for correctness.
MOE_BLOCK_M = 64


@dataclass
class LayerCache:
    """One CCA layer's slice of the state (views into DecodeState's tensors)."""
    k_cache: torch.Tensor      # [num_pages, page_size, Hkv, D] model dtype: keys after norm, temperature and RoPE
    v_cache: torch.Tensor      # [num_pages, page_size, Hkv, D] model dtype: head group 0 current value, group 1 delayed
    conv_state: torch.Tensor   # [B, C, 2] fp32: raw projections (u_{t-2}, u_{t-1}) of each sequence
    value_state: torch.Tensor  # [B, Hkv*D/2] fp32: W_v2 x_{t-1} of each sequence


@dataclass
class BatchInfo:
    """Where each sequence's tokens sit in a packed batch and in its cache."""
    cu_seqlens: torch.Tensor   # [B+1] int32: sequence b owns rows [cu[b], cu[b+1]) of the packed tokens
    seq_start: torch.Tensor    # [B] int32: tokens cached before this call = position of the first new token
    seq_lens_k: torch.Tensor   # [B] int32: tokens cached after this call (keys the new queries attend to)
    block_table: torch.Tensor  # [B, max_pages] int32
    is_decode: bool            # one token per sequence: attention_decode instead of attention_prefill


class Workspace:
    """Every intermediate of a forward pass over n packed tokens, so that the layers allocate nothing.
    Activations are in the model's dtype (bf16 for the kernels; fp32 or bf16 for the reference backend);
    the residual stream, its statistics and the route weights are fp32 whatever the dtype (§3)."""

    def __init__(self, config: ZayaConfig, num_tokens: int, device: torch.device, logits_rows: int,
                 dtype: torch.dtype = torch.bfloat16):
        n, h, dev = num_tokens, config.hidden_size, device
        act, fp32, i32 = dtype, torch.float32, torch.int32
        self.num_tokens = n
        self.token_ids = torch.zeros(n, dtype=torch.int64, device=dev)               # [n] input ids
        self.residual = torch.empty(n, h, dtype=fp32, device=dev)                    # [n, H] fp32 residual stream
        self.scratch = torch.empty(n, h, dtype=fp32, device=dev)                     # [n, H] fp32 temporaries
        self.row_stat = torch.empty(n, 1, dtype=fp32, device=dev)                    # [n, 1] RMSNorm statistic
        self.x = torch.empty(n, h, dtype=act, device=dev)                            # [n, H] sub-layer input
        self.y = torch.empty(n, h, dtype=act, device=dev)                            # [n, H] sub-layer output
        self.proj = torch.empty(n, config.proj_width, dtype=act, device=dev)         # [n, q|k|v1|v2]
        self.q = torch.empty(n, config.num_q_heads, config.head_dim, dtype=act, device=dev)      # [n, Hq, D]
        self.attn = torch.empty(n, config.num_q_heads, config.head_dim, dtype=act, device=dev)   # [n, Hq, D]
        self.route_weights = torch.empty(n, 1, dtype=fp32, device=dev)               # [n, 1] p of the chosen route
        self.route_ids = torch.empty(n, 1, dtype=i32, device=dev)                    # [n, 1] chosen route, E = skip
        # EDA router state, ping-pong between consecutive MoE layers: [n, R] each, in the activations' dtype.
        self.eda = (torch.empty(n, config.router_width, dtype=act, device=dev),
                    torch.empty(n, config.router_width, dtype=act, device=dev))
        capacity = n + config.num_experts * (MOE_BLOCK_M - 1)
        self.sorted_token_ids = torch.empty(capacity, dtype=i32, device=dev)
        self.block_expert_ids = torch.empty((capacity + MOE_BLOCK_M - 1) // MOE_BLOCK_M, dtype=i32, device=dev)
        self.expert_offsets = torch.empty(config.num_experts + 1, dtype=i32, device=dev)
        self.num_padded = torch.empty(1, dtype=i32, device=dev)
        self.route_workspace = route_workspace(dev)                                   # zaya_route's, zero between calls
        logits_dtype = fp32 if config.fp32_logits else act
        self.logits = torch.empty(logits_rows, config.vocab_size, dtype=logits_dtype, device=dev)  # [rows, V]

    def align_buffers(self):
        return self.sorted_token_ids, self.block_expert_ids, self.expert_offsets, self.num_padded


class DecodeState:
    """Caches and recurrent states of B sequences across all layers, plus the decode step's buffers.

    Pages are assigned statically: page j of sequence b is page j*B + b, so sequences interleave in the
    pool (the block table is exercised, not a contiguous special case). Capacity per sequence is
    max_pages * page_size tokens. The KV cache and the decode step's activations are in `dtype` (the
    model's); the recurrent states are fp32 (§4.3).
    """

    def __init__(self, config: ZayaConfig, batch_size: int, max_seq_len: int, page_size: int = 16,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16):
        if batch_size < 1 or max_seq_len < 1 or page_size < 1:
            raise ValueError(f"batch_size, max_seq_len and page_size must be >= 1, got {batch_size}, {max_seq_len}, "
                             f"{page_size}")
        dev = torch.device(device)
        self.config, self.batch_size, self.page_size, self.dtype = config, batch_size, page_size, dtype
        self.max_pages = -(-max_seq_len // page_size)
        self.capacity = self.max_pages * page_size
        num_pages = self.max_pages * batch_size
        layers, b = config.num_blocks, batch_size
        cache_shape = (layers, num_pages, page_size, config.num_kv_heads, config.head_dim)
        self.k_cache = torch.zeros(cache_shape, dtype=dtype, device=dev)                # [L, pages, page, Hkv, D]
        self.v_cache = torch.zeros(cache_shape, dtype=dtype, device=dev)
        self.conv_state = torch.zeros(layers, b, config.conv_channels, 2, dtype=torch.float32, device=dev)
        self.value_state = torch.zeros(layers, b, config.value_width, dtype=torch.float32, device=dev)
        pages = torch.arange(self.max_pages, dtype=torch.int32, device=dev)
        self.block_table = (pages[None, :] * b + torch.arange(b, dtype=torch.int32, device=dev)[:, None]).contiguous()
        self.seq_lens = torch.zeros(b, dtype=torch.int32, device=dev)                   # [B] tokens cached
        # The decode step's own buffers: one token per sequence.
        self.decode_ws = Workspace(config, b, dev, logits_rows=b, dtype=dtype)
        self.decode_lens = torch.empty(b, dtype=torch.int32, device=dev)               # [B] seq_lens + 1
        self.decode_batch = BatchInfo(cu_seqlens=torch.arange(b + 1, dtype=torch.int32, device=dev),
                                      seq_start=self.seq_lens, seq_lens_k=self.decode_lens,
                                      block_table=self.block_table, is_decode=True)

    @property
    def device(self) -> torch.device:
        return self.seq_lens.device

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self.k_cache[index], self.v_cache[index], self.conv_state[index], self.value_state[index])

    def reset_(self) -> "DecodeState":
        """Forget every sequence (the caches are not cleared: positions past seq_lens are never read)."""
        self.seq_lens.zero_()
        self.conv_state.zero_()
        self.value_state.zero_()
        return self

    def prefill_batch(self, cu_seqlens: torch.Tensor) -> BatchInfo:
        """Describe a packed prefill chunk: cu_seqlens [B+1] int32 on the state's device. Checks the
        capacity (a host sync: prefill is not the captured path)."""
        if cu_seqlens.shape != (self.batch_size + 1,) or cu_seqlens.dtype != torch.int32 \
                or cu_seqlens.device != self.device:
            raise ValueError(f"cu_seqlens must be int32 of shape ({self.batch_size + 1},) on {self.device}, got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
        chunk_lens = cu_seqlens[1:] - cu_seqlens[:-1]
        if bool((chunk_lens < 0).any()) or int(cu_seqlens[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0 and not decrease, got {cu_seqlens.tolist()}")
        seq_start = self.seq_lens.clone()
        seq_lens_k = (seq_start + chunk_lens).to(torch.int32)
        longest = int(seq_lens_k.max())
        if longest > self.capacity:
            raise ValueError(f"a sequence would hold {longest} tokens, more than the state's capacity {self.capacity}")
        return BatchInfo(cu_seqlens=cu_seqlens, seq_start=seq_start, seq_lens_k=seq_lens_k,
                         block_table=self.block_table, is_decode=False)


def pack_sequences(sequences, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (token_ids [T] int64, cu_seqlens [B+1] int32), the packed varlen form prefill takes."""
    lengths = [len(s) for s in sequences]
    flat = [int(t) for s in sequences for t in s]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return (torch.tensor(flat, dtype=torch.int64, device=device),
            torch.tensor(cu, dtype=torch.int32, device=device))
