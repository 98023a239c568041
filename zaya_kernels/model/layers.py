# SPDX-License-Identifier: Apache-2.0
"""The ZAYA1 sub-layers and the two op backends they run on.

Every layer writes into buffers it is handed (a Workspace, a LayerCache) with out= forms only, so
the same code serves prefill (fresh buffers of T rows) and the decode step (the state's buffers of
B rows, no allocation). The fused ops (router, align, experts, CCA prep, attention) go through a
backend; the plain parts (GEMMs of the projections, norms, residual merges) are plain torch, in the
precision ZAYA1_ARCHITECTURE.md recommends: fp32 residual merges (§3, §8.3), RMSNorm of the fp32
residual in fp32 rounded once (§8.4, the Zyphra vLLM form).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import BUILD_ERROR, reference
from .. import ops as zaya_ops
from .._backend import extension_loaded
from .config import ZayaConfig
from .state import BatchInfo, LayerCache, Workspace, MOE_BLOCK_M

BACKENDS = ("reference", "kernels")


# ---------------------------------------------------------------------------------------------
# op backends: the same call, reference.py or torch.ops.zaya
# ---------------------------------------------------------------------------------------------

class ReferenceOps:
    """Runs the ops as reference.py functions (any device; they may sync with the host) and copies each
    result into its out buffer. compute_dtype=bf16 gives the low-precision oracle of DESIGN.md §6."""
    _NO_COMPUTE_DTYPE = {"moe_align"}  # integer bookkeeping: no float math to lower

    def __init__(self, compute_dtype: torch.dtype = torch.float32):
        self.compute_dtype = compute_dtype

    def run(self, op: str, *args, out):
        kwargs = {} if op in self._NO_COMPUTE_DTYPE else {"compute_dtype": self.compute_dtype}
        result = getattr(reference, op)(*args, **kwargs)
        for buffer, value in zip(_as_tuple(out), _as_tuple(result)):
            buffer.copy_(value)


class KernelOps:
    """Runs the ops as torch.ops.zaya.* through their .out overloads: the device kernels on a GPU
    (NotImplementedError where an op has none yet), the reference kernels on the CPU."""

    def __init__(self):
        if not extension_loaded():
            raise RuntimeError(f"backend='kernels' needs torch.ops.zaya: {BUILD_ERROR}")

    def run(self, op: str, *args, out):
        getattr(zaya_ops, op)(*args, out=out)


def make_ops(backend: str, compute_dtype: torch.dtype = torch.float32):
    if backend == "reference":
        return ReferenceOps(compute_dtype)
    if backend == "kernels":
        if compute_dtype != torch.float32:
            raise ValueError("compute_dtype applies to the reference backend only")
        return KernelOps()
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def empty_weight(*shape: int, dtype: torch.dtype = torch.bfloat16) -> nn.Parameter:
    """An uninitialised inference-only parameter (filled by a loader or init_random_)."""
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


# ---------------------------------------------------------------------------------------------
# plain-torch pieces
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """weight * r / sqrt(mean(r^2) + eps) of the fp32 residual, all in fp32, rounded to bf16 once (§2.3, §8.4)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = empty_weight(width)  # [W] bf16, a plain multiplier (no +1)

    def forward(self, residual: torch.Tensor, out: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """residual [n, W] fp32 -> out [n, W] bf16, using ws.scratch / ws.row_stat."""
        scratch, stat = ws.scratch, ws.row_stat
        torch.mul(residual, residual, out=scratch)
        torch.mean(scratch, dim=-1, keepdim=True, out=stat)
        stat.add_(self.eps).rsqrt_()
        torch.mul(residual, stat, out=scratch)
        scratch.mul_(self.weight)
        return out.copy_(scratch)


class ResidualMerge(nn.Module):
    """residual <- (y + b_h) * s_h + (residual + b_r) * s_r, per channel, in fp32 (§3)."""

    def __init__(self, width: int):
        super().__init__()
        self.hidden_scale = empty_weight(width)    # s^h [H] bf16
        self.hidden_bias = empty_weight(width)     # b^h
        self.residual_scale = empty_weight(width)  # s^r
        self.residual_bias = empty_weight(width)   # b^r

    def forward(self, residual: torch.Tensor, y: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """residual [n, H] fp32 (updated in place), y [n, H] bf16 = the sub-layer output."""
        term = ws.scratch
        term.copy_(y)
        term.add_(self.hidden_bias).mul_(self.hidden_scale)
        return residual.add_(self.residual_bias).mul_(self.residual_scale).add_(term)


def lm_head(z: torch.Tensor, embed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Tied LM head: z [n, H] bf16 @ embed[V, H]^T -> out [n, V], fp32 (products of bf16 values summed in
    fp32, not rounded to bf16) or bf16, as out's dtype says."""
    if out.dtype == z.dtype:
        return torch.mm(z, embed.T, out=out)
    if z.is_cuda:
        return torch.mm(z, embed.T, out_dtype=out.dtype, out=out)
    # CPU has no mixed-dtype GEMM; the CPU path is the reference, not the CUDA-graph target.
    return out.copy_(z.float() @ embed.float().T)


# ---------------------------------------------------------------------------------------------
# sub-layers
# ---------------------------------------------------------------------------------------------

class CCAttention(nn.Module):
    """CCA attention sub-layer (§4): fused projection, cca_prep (convs, mean skip, norm, temperature,
    RoPE, delayed value, cache write), paged GQA attention, output projection."""

    def __init__(self, config: ZayaConfig):
        super().__init__()
        c = config
        self.rope_theta, self.rotary_dim = c.rope_theta, c.rotary_dim
        # Rows: W_q [Hq*D] | W_k [Hkv*D] | W_v1 (current) [Hkv*D/2] | W_v2 (delayed) [Hkv*D/2]: one GEMM.
        self.qkv_weight = empty_weight(c.proj_width, c.hidden_size)
        self.conv1_weight = empty_weight(c.conv_channels, 1, 2)           # depthwise, tap 0 = older sample
        self.conv1_bias = empty_weight(c.conv_channels)
        self.conv2_weight = empty_weight(c.conv_channels, c.head_dim, 2)  # grouped, one group per head
        self.conv2_bias = empty_weight(c.conv_channels)
        self.temp = empty_weight(c.num_kv_heads)                           # key temperature, used raw
        self.o_weight = empty_weight(c.hidden_size, c.q_width)

    def forward(self, x: torch.Tensor, out: torch.Tensor, ops, cache: LayerCache, batch: BatchInfo,
                ws: Workspace) -> torch.Tensor:
        """x [n, H] bf16 (normalised input) -> out [n, H] bf16; appends the n tokens to the cache."""
        n = x.shape[0]
        torch.mm(x, self.qkv_weight.T, out=ws.proj)
        ops.run("cca_prep", ws.proj, batch.cu_seqlens, batch.seq_start, cache.conv_state, cache.value_state,
                self.conv1_weight, self.conv1_bias, self.conv2_weight, self.conv2_bias, self.temp,
                cache.k_cache, cache.v_cache, batch.block_table, self.rope_theta, self.rotary_dim, out=ws.q)
        if batch.is_decode:
            ops.run("attention_decode", ws.q, cache.k_cache, cache.v_cache, batch.block_table, batch.seq_lens_k,
                    None, out=ws.attn)
        else:
            ops.run("attention_prefill", ws.q, cache.k_cache, cache.v_cache, batch.block_table, batch.cu_seqlens,
                    batch.seq_lens_k, None, True, out=ws.attn)
        return torch.mm(ws.attn.view(n, -1), self.o_weight.T, out=out)


class ZayaRouter(nn.Module):
    """Router parameters (§5.1): down-projection, EDA scale (absent in the first MoE layer), RMSNorm,
    3-layer GELU MLP, balancing biases (a buffer: they pick the route, they are not a weight)."""

    def __init__(self, config: ZayaConfig, first: bool):
        super().__init__()
        c = config
        self.down_weight = empty_weight(c.router_width, c.hidden_size)
        self.down_bias = empty_weight(c.router_width)
        self.eda_scale = None if first else empty_weight(c.router_width)
        self.norm_weight = empty_weight(c.router_width)
        self.fc1_weight = empty_weight(c.router_width, c.router_width)
        self.fc1_bias = empty_weight(c.router_width)
        self.fc2_weight = empty_weight(c.router_width, c.router_width)
        self.fc2_bias = empty_weight(c.router_width)
        self.out_weight = empty_weight(c.num_routes, c.router_width)
        self.register_buffer("balancing_biases", torch.zeros(c.num_routes, dtype=torch.float32))  # [E+1] fp32


class MoE(nn.Module):
    """Top-1 MoE sub-layer (§5): router (threading the EDA state), expert schedule, SwiGLU experts with
    the skip route."""

    def __init__(self, config: ZayaConfig, first: bool):
        super().__init__()
        c = config
        self.num_experts, self.skip_mode, self.eps = c.num_experts, c.skip_mode, c.rms_norm_eps
        self.router = ZayaRouter(config, first)
        self.w_fc1 = empty_weight(c.num_experts, 2 * c.expert_ffn_size, c.hidden_size)  # [E, 2F, H]: gate rows, then up
        self.w_fc2 = empty_weight(c.num_experts, c.hidden_size, c.expert_ffn_size)      # [E, H, F]

    def forward(self, x: torch.Tensor, out: torch.Tensor, ops, eda_in: torch.Tensor | None, eda_out: torch.Tensor,
                ws: Workspace) -> torch.Tensor:
        """x [n, H] bf16 -> out [n, H] bf16. eda_in [n, R] bf16 is the previous MoE layer's router state
        (None in the first MoE layer); this layer's state goes to eda_out [n, R] bf16."""
        r = self.router
        ops.run("zaya_route", x, eda_in, r.down_weight, r.down_bias, r.eda_scale, r.norm_weight, r.fc1_weight,
                r.fc1_bias, r.fc2_weight, r.fc2_bias, r.out_weight, r.balancing_biases, ws.route_workspace,
                MOE_BLOCK_M, self.eps, out=(ws.route_weights, ws.route_ids, eda_out) + ws.align_buffers())
        ops.run("moe_mlp", x, ws.route_weights, ws.route_ids, ws.sorted_token_ids, ws.expert_offsets,
                self.w_fc1, self.w_fc2, self.skip_mode, out=out)
        return out


class ZayaBlock(nn.Module):
    """One block of the native layout (§2.2): norm, CCA, merge, norm, MoE, merge."""

    def __init__(self, config: ZayaConfig, index: int):
        super().__init__()
        self.index = index
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = CCAttention(config)
        self.post_attn_merge = ResidualMerge(config.hidden_size)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.moe = MoE(config, first=index == 0)
        self.post_mlp_merge = ResidualMerge(config.hidden_size)

    def forward(self, ws: Workspace, ops, cache: LayerCache, batch: BatchInfo) -> None:
        """Advances ws.residual [n, H] fp32 through the block; EDA state from ws.eda[(i-1) % 2] to ws.eda[i % 2]."""
        self.input_norm(ws.residual, ws.x, ws)
        self.attn(ws.x, ws.y, ops, cache, batch, ws)
        self.post_attn_merge(ws.residual, ws.y, ws)
        self.post_attn_norm(ws.residual, ws.x, ws)
        eda_in = None if self.index == 0 else ws.eda[(self.index - 1) % 2]
        self.moe(ws.x, ws.y, ops, eda_in, ws.eda[self.index % 2], ws)
        self.post_mlp_merge(ws.residual, ws.y, ws)
