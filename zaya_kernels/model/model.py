# SPDX-License-Identifier: Apache-2.0
"""ZayaModel: the ZAYA1 decoder with prefill, a capturable decode step and greedy generation.

Dataflow (§2.2): r = (Embed[ids] + b_in) * s_in in fp32; per block r advances through CCA and MoE
with residual merges; z = RMSNorm(r); logits = z @ Embed^T (tied). The backend ("reference" or
"kernels") only chooses who runs the fused ops; parameters and state are the same either way.

Two interfaces: the Hugging Face one (model(input_ids) -> logits [B, T, V], generate(LongTensor) ->
LongTensor) and the engine one (prefill of a packed varlen chunk into a DecodeState, decode_step,
greedy_decode), which the first is built on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import ZayaConfig
from .layers import CCAttention, MoE, ResidualMerge, RMSNorm, ZayaBlock, ZayaRouter, empty_weight, lm_head, make_ops
from .state import BatchInfo, DecodeState, Workspace, pack_sequences

# Weight / activation dtypes the model runs in: the reference backend takes either, the kernels bf16 only.
DTYPES = (torch.float32, torch.bfloat16)


class ZayaModel(nn.Module):
    """dtype: the weights', the activations' and the KV cache's (bf16 as released; fp32 for the reference
    backend's exact oracle). The residual stream, the recurrent states and the balancing biases are fp32 in
    either. compute_dtype (reference backend only) is the precision of the ops' internal math."""

    def __init__(self, config: ZayaConfig, backend: str = "reference", compute_dtype: torch.dtype = torch.float32,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
        c = config
        self.config = c
        self.embed_tokens = empty_weight(c.vocab_size, c.hidden_size)  # [V, H] model dtype, tied LM head
        self.input_scale = empty_weight(c.hidden_size)                 # s_in [H]: the legacy layer-0 res_scale
        self.input_bias = empty_weight(c.hidden_size)                  # b_in [H]
        self.blocks = nn.ModuleList(ZayaBlock(c, i) for i in range(c.num_blocks))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if dtype != torch.bfloat16:
            self.to(dtype)
        self.use_backend(backend, compute_dtype)

    def use_backend(self, backend: str, compute_dtype: torch.dtype = torch.float32) -> "ZayaModel":
        """Switch who runs the fused ops; compute_dtype (reference only) lowers the ops' math, e.g. to bf16."""
        self.ops = make_ops(backend, compute_dtype)
        self.backend = backend
        self._check_dtype()
        return self

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    def _apply(self, fn, *args, **kwargs):
        """model.to(dtype) / .float() / .bfloat16() / .cuda() convert the weights; the balancing biases keep their
        fp32 values (they pick routes by differences a bf16 rounding would change), moved to the new device."""
        routers = [block.moe.router for block in self.blocks]
        biases = [router.balancing_biases for router in routers]
        super()._apply(fn, *args, **kwargs)
        for router, kept in zip(routers, biases):
            moved = router.balancing_biases
            if moved.dtype != torch.float32:  # a meta tensor (to_empty) has no values to keep
                router.balancing_biases = moved.float() if kept.is_meta else kept.to(moved.device, torch.float32)
        return self

    def _check_dtype(self, state: DecodeState | None = None) -> None:
        """Attribute reads only (no host sync): runs inside the captured decode step too."""
        if self.dtype not in DTYPES:
            raise ValueError(f"the model's dtype {self.dtype} is not supported: use one of {DTYPES}, e.g. "
                             "model.to(torch.bfloat16)")
        if self.backend == "kernels" and self.dtype != torch.bfloat16:
            raise ValueError(f"backend='kernels' runs bf16 weights, the model is {self.dtype}: use "
                             "model.to(torch.bfloat16), or the reference backend for fp32")
        if state is not None and state.dtype != self.dtype:
            raise ValueError(f"the state is {state.dtype}, the model {self.dtype}: make the state with "
                             "model.new_state(...) after changing the model's dtype")

    def new_state(self, batch_size: int, max_seq_len: int, page_size: int = 16) -> DecodeState:
        return DecodeState(self.config, batch_size, max_seq_len, page_size, self.device, self.dtype)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters (balancing biases are buffers, not counted), split as §9: the tied embedding apart."""
        embedding = self.embed_tokens.numel()
        return {"non_embedding": sum(p.numel() for p in self.parameters()) - embedding, "embedding": embedding}

    # -----------------------------------------------------------------------------------------

    def _forward(self, ws: Workspace, state: DecodeState, batch: BatchInfo) -> None:
        """ws.token_ids [n] -> ws.x [n, H] (model dtype) = the final-norm output; updates the state's caches."""
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
        self._check_dtype(state)
        batch = state.prefill_batch(cu_seqlens)
        total = token_ids.numel()
        if token_ids.dim() != 1 or total != int(cu_seqlens[-1]) or total == 0:
            raise ValueError(f"token_ids must be 1-D with cu_seqlens[-1] = {int(cu_seqlens[-1])} > 0 tokens, "
                             f"got shape {tuple(token_ids.shape)}")
        ws = Workspace(self.config, total, self.device, logits_rows=total if all_logits else state.batch_size,
                       dtype=self.dtype)
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
        self._check_dtype(state)
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

    # -----------------------------------------------------------------------------------------
    # the Hugging Face interface
    # -----------------------------------------------------------------------------------------

    def _token_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, T] bool on the model's device: which columns of input_ids are tokens (host syncs: not the
        captured path)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point() \
                or input_ids.dtype == torch.bool:
            raise ValueError("input_ids must be an integer tensor [batch, tokens] (torch.long), got "
                             + (f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
                                else type(input_ids).__name__))
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if attention_mask is None:
            return torch.ones(input_ids.shape, dtype=torch.bool, device=self.device)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got "
                             f"{tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else None}")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
        mask = attention_mask.to(self.device, torch.bool)
        as_int = mask.int()
        runs = as_int[:, :1] + (as_int[:, 1:] > as_int[:, :-1]).sum(dim=1, keepdim=True)  # runs of 1s per row
        if bool((runs > 1).any()):
            raise ValueError("attention_mask: each row's tokens must be one contiguous run (padding on the left "
                             "and/or the right only)")
        return mask

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every position, as a Hugging Face causal LM's forward(...).logits: input_ids [B, T]
        integer -> logits [B, T, V] fp32. Each row runs from an empty state and nothing is cached (for that use
        generate, or prefill / decode_step).

        attention_mask [B, T] (1 = token, 0 = padding), optional, pads rows on the left or the right; a row's
        tokens must be contiguous. Each row is run as if unpadded: its first token is position 0 and padding
        never enters its convolutions or attention. Padded positions get logits 0."""
        mask = self._token_mask(input_ids, attention_mask)
        batch, width = input_ids.shape
        logits = torch.zeros(batch, width, self.config.vocab_size, dtype=torch.float32, device=self.device)
        lengths = mask.sum(dim=1)
        if batch == 0 or int(lengths.max()) == 0:
            return logits
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=self.device)
        cu_seqlens[1:] = lengths.cumsum(dim=0)
        state = self.new_state(batch, int(lengths.max()))
        packed = self.prefill(state, input_ids.to(self.device, torch.int64)[mask], cu_seqlens, all_logits=True)
        logits[mask] = packed.float()
        return logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | Sequence[Sequence[int]], max_new_tokens: int,
                 attention_mask: torch.Tensor | None = None, stop_token: int | None = None,
                 page_size: int = 16) -> torch.Tensor | list[list[int]]:
        """Greedy generation (one packed prefill, then decode steps), stopping a sequence at stop_token
        (default config.eos_token_id) or after max_new_tokens.

        - input_ids a LongTensor [B, T] (Hugging Face style, attention_mask as in forward; for generation
          left padding is the usual choice): returns a LongTensor [B, T + n], the input followed by n new
          tokens, n <= max_new_tokens (fewer once every row has stopped); after its stop token a row is
          filled with config.pad_token_id, as transformers' generate does.
        - input_ids a list of prompts (each a non-empty list of ints or a 1-D tensor): returns each
          prompt's new tokens as a list, ending at its stop token (kept) or at max_new_tokens."""
        if isinstance(input_ids, torch.Tensor):
            mask = self._token_mask(input_ids, attention_mask)
            prompts = [row[keep].tolist() for row, keep in zip(input_ids.cpu(), mask.cpu())]
            if not prompts or any(not p for p in prompts):
                raise ValueError("generate: every row of input_ids needs at least one token")
            new = self._generate_lists(prompts, max_new_tokens, stop_token, page_size)
            width = input_ids.shape[1]
            out = torch.full((len(prompts), width + max(len(t) for t in new)), self.config.pad_token_id,
                             dtype=torch.int64)
            out[:, :width] = input_ids.cpu()
            for row, tokens in zip(out, new):
                row[width:width + len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
            return out.to(input_ids.device)
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a tensor input_ids; a list of prompts needs no padding")
        prompts = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in input_ids]
        return self._generate_lists(prompts, max_new_tokens, stop_token, page_size)

    def _generate_lists(self, prompts: list[list[int]], max_new_tokens: int, stop_token: int | None,
                        page_size: int) -> list[list[int]]:
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
                 dtype: torch.dtype = torch.bfloat16, **init) -> ZayaModel:
    """A model with random weights built directly on the device (no CPU copy of the weights)."""
    with torch.device(device):
        model = ZayaModel(config, backend=backend, dtype=dtype)
    return init_random_(model, seed, **init)

