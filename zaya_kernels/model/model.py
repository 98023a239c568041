# SPDX-License-Identifier: Apache-2.0
"""ZayaModel: the ZAYA1 decoder with prefill, a capturable decode step and greedy generation.

Dataflow (§2.2): r = (Embed[ids] + b_in) * s_in in fp32; per block r advances through CCA and MoE
with residual merges; z = RMSNorm(r); logits = z @ Embed^T (tied). The backend ("reference" or
"kernels") only chooses who runs the fused ops; parameters and state are the same either way.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import ZayaConfig
from .layers import CCAttention, MoE, ResidualMerge, RMSNorm, ZayaBlock, ZayaRouter, empty_weight, lm_head, make_ops
from .state import BatchInfo, DecodeState, Workspace, pack_sequences


class ZayaModel(nn.Module):
    def __init__(self, config: ZayaConfig, backend: str = "reference", compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        c = config
        self.config = c
        self.embed_tokens = empty_weight(c.vocab_size, c.hidden_size)  # [V, H] bf16, tied with the LM head
        self.input_scale = empty_weight(c.hidden_size)                 # s_in [H]: the legacy layer-0 res_scale
        self.input_bias = empty_weight(c.hidden_size)                  # b_in [H]
        self.blocks = nn.ModuleList(ZayaBlock(c, i) for i in range(c.num_blocks))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.use_backend(backend, compute_dtype)

    def use_backend(self, backend: str, compute_dtype: torch.dtype = torch.float32) -> "ZayaModel":
        """Switch who runs the fused ops; compute_dtype (reference only) lowers the ops' math, e.g. to bf16."""
        self.ops = make_ops(backend, compute_dtype)
        self.backend = backend
        return self

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def new_state(self, batch_size: int, max_seq_len: int, page_size: int = 16) -> DecodeState:
        return DecodeState(self.config, batch_size, max_seq_len, page_size, self.device)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters (balancing biases are buffers, not counted), split as §9: the tied embedding apart."""
        embedding = self.embed_tokens.numel()
        return {"non_embedding": sum(p.numel() for p in self.parameters()) - embedding, "embedding": embedding}

    # -----------------------------------------------------------------------------------------

    def _forward(self, ws: Workspace, state: DecodeState, batch: BatchInfo) -> None:
        """ws.token_ids [n] -> ws.x [n, H] bf16 = the final-norm output; updates the state's caches."""
        torch.index_select(self.embed_tokens, 0, ws.token_ids, out=ws.y)
        ws.residual.copy_(ws.y)
        ws.residual.add_(self.input_bias).mul_(self.input_scale)
        for i, block in enumerate(self.blocks):
            block(ws, self.ops, state.layer(i), batch)
        self.norm(ws.residual, ws.x, ws)

    @torch.no_grad()
    def prefill(self, state: DecodeState, token_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                all_logits: bool = False) -> torch.Tensor:
        """Run a packed varlen chunk: token_ids [T] int64, cu_seqlens [B+1] int32 (sequence b's chunk is
        token_ids[cu[b]:cu[b+1]], possibly empty), each continuing from the state's seq_lens[b] (0 for a new
        sequence: a plain prefill; more for chunked prefill).
        Returns logits [B, V] of each sequence's last new token (a row of zeros for an empty chunk), or with
        all_logits [T, V] of every token; fp32 when config.fp32_logits, else bf16."""
        batch = state.prefill_batch(cu_seqlens)
        total = token_ids.numel()
        if token_ids.dim() != 1 or total != int(cu_seqlens[-1]) or total == 0:
            raise ValueError(f"token_ids must be 1-D with cu_seqlens[-1] = {int(cu_seqlens[-1])} > 0 tokens, "
                             f"got shape {tuple(token_ids.shape)}")
        ws = Workspace(self.config, total, self.device, logits_rows=total if all_logits else state.batch_size)
        ws.token_ids.copy_(token_ids)
        self._forward(ws, state, batch)
        state.seq_lens.copy_(batch.seq_lens_k)
        if all_logits:
            return lm_head(ws.x, self.embed_tokens, ws.logits)
        chunk_lens = cu_seqlens[1:] - cu_seqlens[:-1]
        last = (cu_seqlens[1:].long() - 1).clamp(min=0)
        lm_head(ws.x[last], self.embed_tokens, ws.logits)
        return ws.logits.masked_fill_((chunk_lens == 0)[:, None], 0)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence: token_ids [B] int64 (on the state's device) -> logits [B, V], which
        live in the state's buffer (overwritten by the next step).

        Allocates nothing and never reads a device value on the host when the backend's ops do neither
        (the kernels on a GPU): every buffer is the state's, every shape static. The caller keeps every
        sequence within the state's capacity (generate checks it up front)."""
        ws = state.decode_ws
        ws.token_ids.copy_(token_ids)
        torch.add(state.seq_lens, 1, out=state.decode_lens)
        self._forward(ws, state, state.decode_batch)
        state.seq_lens.copy_(state.decode_lens)
        return lm_head(ws.x, self.embed_tokens, ws.logits)

    @torch.no_grad()
    def greedy_decode(self, state: DecodeState, logits: torch.Tensor, max_new_tokens: int,
                      stop_token: int | None = None) -> list[list[int]]:
        """Greedy continuation of every sequence in the state from its next-token logits [B, V]: each gets
        tokens until it emits stop_token (kept as its last token) or has max_new_tokens. Finished
        sequences keep stepping with the batch (static shapes) and their extra tokens are dropped.
        Checks whether all sequences are done once per token (a host sync, outside the decode step)."""
        stop = self.config.eos_token_id if stop_token is None else stop_token
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        needed = int(state.seq_lens.max()) + max_new_tokens - 1
        if needed > state.capacity:
            raise ValueError(f"generating {max_new_tokens} tokens needs {needed} cached tokens per sequence, the state "
                             f"holds {state.capacity}")
        generated = torch.empty(state.batch_size, max_new_tokens, dtype=torch.int64, device=self.device)
        finished = torch.zeros(state.batch_size, dtype=torch.bool, device=self.device)
        steps = 0
        while True:
            tokens = logits.argmax(dim=-1)  # the lowest index wins a tie
            generated[:, steps] = tokens
            finished |= tokens == stop
            steps += 1
            if steps == max_new_tokens or bool(finished.all()):
                break
            logits = self.decode_step(state, tokens)
        result = []
        for row in generated[:, :steps].tolist():
            result.append(row[:row.index(stop) + 1] if stop in row else row)
        return result

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_token: int | None = None,
                 page_size: int = 16) -> list[list[int]]:
        """Greedy generation for a batch of prompts (token lists, each non-empty): one packed prefill, then
        decode steps. Returns the new tokens of each prompt (see greedy_decode)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt and no empty prompt")
        state = self.new_state(len(prompts), max(len(p) for p in prompts) + max_new_tokens, page_size)
        token_ids, cu_seqlens = pack_sequences(prompts, self.device)
        logits = self.prefill(state, token_ids, cu_seqlens)
        return self.greedy_decode(state, logits, max_new_tokens, stop_token)


# ---------------------------------------------------------------------------------------------
# random weights for tests, demos and benchmarks
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def init_random_(model: ZayaModel, seed: int = 0, matrix_std: float | None = None, balancing_std: float = 0.02,
                 skip_bias: float = -1.0) -> ZayaModel:
    """Fill every parameter with random values that keep activations O(1) through depth, on the model's
    device. Matrices: normal with std matrix_std, or fan_in^-1/2 when None (the router's output layer 3x
    that, so routing is not near-uniform). Norm weights and merge scales near 1, biases small, key
    temperatures in [1, 3], EDA scales in [0.2, 0.8]; balancing biases normal(balancing_std) on the
    experts and skip_bias on the skip route (-1 as at initialisation in training: the skip never wins)."""
    gen = torch.Generator(device=model.device).manual_seed(seed)

    def normal_(p: torch.Tensor, std: float, mean: float = 0.0):
        p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32) * std + mean)

    def uniform_(p: torch.Tensor, low: float, high: float):
        p.copy_(torch.rand(p.shape, generator=gen, device=p.device, dtype=torch.float32) * (high - low) + low)

    def matrix_(p: torch.Tensor, fan_in: int, gain: float = 1.0):
        normal_(p, gain * (matrix_std if matrix_std is not None else fan_in ** -0.5))

    c = model.config
    matrix_(model.embed_tokens, c.hidden_size)
    normal_(model.input_scale, 0.1, 1.0)
    normal_(model.input_bias, 0.02)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            normal_(module.weight, 0.1, 1.0)
        elif isinstance(module, ResidualMerge):
            normal_(module.hidden_scale, 0.1, 1.0)
            normal_(module.residual_scale, 0.1, 1.0)
            normal_(module.hidden_bias, 0.02)
            normal_(module.residual_bias, 0.02)
        elif isinstance(module, CCAttention):
            matrix_(module.qkv_weight, c.hidden_size)
            uniform_(module.conv1_weight, -1.0, 1.0)
            normal_(module.conv1_bias, 0.5)
            matrix_(module.conv2_weight, 2 * c.head_dim)
            normal_(module.conv2_bias, 0.5)
            uniform_(module.temp, 1.0, 3.0)
            matrix_(module.o_weight, c.q_width)
        elif isinstance(module, ZayaRouter):
            matrix_(module.down_weight, c.hidden_size)
            normal_(module.down_bias, 0.1)
            if module.eda_scale is not None:
                uniform_(module.eda_scale, 0.2, 0.8)
            normal_(module.norm_weight, 0.1, 1.0)
            for weight, bias in ((module.fc1_weight, module.fc1_bias), (module.fc2_weight, module.fc2_bias)):
                matrix_(weight, c.router_width)
                normal_(bias, 0.1)
            matrix_(module.out_weight, c.router_width, gain=3.0)
            normal_(module.balancing_biases, balancing_std)
            module.balancing_biases[-1] = skip_bias
        elif isinstance(module, MoE):
            matrix_(module.w_fc1, c.hidden_size)
            matrix_(module.w_fc2, c.expert_ffn_size)
    return model


def random_model(config: ZayaConfig, seed: int = 0, device: torch.device | str = "cpu", backend: str = "reference",
                 **init) -> ZayaModel:
    """A model with random weights built directly on the device (no CPU copy of the weights)."""
    with torch.device(device):
        model = ZayaModel(config, backend=backend)
    return init_random_(model, seed, **init)

