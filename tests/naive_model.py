# SPDX-License-Identifier: Apache-2.0
"""A naive ZAYA1 forward, written from ZAYA1_ARCHITECTURE.md alone: the model's independent oracle.

It shares no code with zaya_kernels (it imports nothing from it): the weights come as a plain dict of
tensors under the native checkpoint names (§7.2), the math is the document's equations written as
directly as possible (loops over heads, one token at a time where the document says so), in float64 by
default. Two paths, as the document gives them: the full-sequence prefill of §4.2 and the one-token
decode step of §4.4, so that each checks the other as well as the model.

Section numbers refer to ZAYA1_ARCHITECTURE.md. Shapes: T tokens, H hidden, Nq / Nk query / KV heads,
D head dim, C = (Nq + Nk) * D conv channels, E experts (route E = the skip route), F expert width,
R router width, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SKIP_MODES = ("scaled_input", "zero")  # §5.4: a skipped token outputs p_skip * x, or 0 (HF 5.23, §12.1)


@dataclass
class NaiveLayerState:
    """One attention sub-layer's decode state (§4.3), as the document describes it."""
    keys: list = field(default_factory=list)     # per position: [Nk, D] khat after temperature and RoPE
    values: list = field(default_factory=list)   # per position: [Nk, D] (current-token half, delayed half)
    conv: torch.Tensor | None = None             # [2, C]: raw u_{t-2}, u_{t-1} (oldest first)
    delayed: torch.Tensor | None = None          # [Nk*D/2]: W_v2 x_{t-1}


class NaiveZaya:
    """ZAYA1 from a dict of native-layout tensors. prefill(ids) runs one sequence from an empty state and
    keeps the state; step(token) appends one token. Both return float logits; `routes` records the route
    each MoE sub-layer picked for every token processed (one list per block)."""

    def __init__(self, tensors: dict[str, torch.Tensor], head_dim: int, rope_theta: float, rotary_dim: int,
                 eps: float = 1e-5, skip_mode: str = "scaled_input", dtype: torch.dtype = torch.float64):
        if skip_mode not in SKIP_MODES:
            raise ValueError(f"skip_mode must be one of {SKIP_MODES}")
        self.w = {k: v.detach().to("cpu", dtype) for k, v in tensors.items()}
        self.dtype, self.eps, self.skip_mode = dtype, eps, skip_mode
        self.D, self.theta, self.rot = head_dim, rope_theta, rotary_dim
        self.L = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("model.layers."))
        self.Nq = self.w["model.layers.0.self_attn.qkv_proj.q_proj.weight"].shape[0] // head_dim
        self.Nk = self.w["model.layers.0.self_attn.qkv_proj.k_proj.weight"].shape[0] // head_dim
        self.E = self.w["model.layers.0.mlp.experts.gate_up_proj"].shape[0]
        self.reset()

    @classmethod
    def from_config_json(cls, tensors, config: dict, **kwargs) -> "NaiveZaya":
        """From a native config.json dict (rope parameters nested per layer type or flat)."""
        rope = config.get("rope_parameters") or {}
        rope = rope.get("hybrid", rope)
        theta = rope.get("rope_theta", config.get("rope_theta"))
        factor = rope.get("partial_rotary_factor", config.get("partial_rotary_factor"))
        return cls(tensors, config["head_dim"], theta, int(config["head_dim"] * factor),
                   config.get("rms_norm_eps", 1e-5), **kwargs)

    def reset(self) -> None:
        self.states = [NaiveLayerState() for _ in range(self.L)]
        self.position = 0
        self.routes = [[] for _ in range(self.L)]

    # ---------------------------------------------------------------------------------------------
    # pieces (§2.3, §3)
    # ---------------------------------------------------------------------------------------------

    def rms_norm(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """§2.3: w * v / sqrt(mean(v^2) + eps) over the last dim; the weight is a plain multiplier."""
        return weight * v / torch.sqrt((v * v).mean(dim=-1, keepdim=True) + self.eps)

    def merge(self, prefix: str, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """§3: (y + b^h) * s^h + (residual + b^r) * s^r, per channel."""
        w = self.w
        return ((y + w[prefix + ".hidden_states_bias"]) * w[prefix + ".hidden_states_scale"]
                + (residual + w[prefix + ".residual_bias"]) * w[prefix + ".residual_scale"])

    def rope(self, v: torch.Tensor, position: int) -> torch.Tensor:
        """§4.2 step 7 on one head vector [D]: rotate dims 0..rot-1, pairs (d, d + rot/2), angle = position *
        theta^(-2d/rot); the remaining dims pass through."""
        half = self.rot // 2
        out = v.clone()
        for d in range(half):
            angle = position * self.theta ** (-2.0 * d / self.rot)
            c, s = math.cos(angle), math.sin(angle)
            out[d] = v[d] * c - v[d + half] * s
            out[d + half] = v[d + half] * c + v[d] * s
        return out

    # ---------------------------------------------------------------------------------------------
    # CCA attention (§4)
    # ---------------------------------------------------------------------------------------------

    def _attn_weights(self, i: int):
        p = f"model.layers.{i}.self_attn."
        w = self.w
        return (w[p + "qkv_proj.q_proj.weight"], w[p + "qkv_proj.k_proj.weight"],
                w[p + "qkv_proj.v_proj_current.weight"], w[p + "qkv_proj.v_proj_delayed.weight"],
                w[p + "qkv_proj.conv_qk_depthwise.weight"], w[p + "qkv_proj.conv_qk_depthwise.bias"],
                w[p + "qkv_proj.conv_qk_grouped.weight"], w[p + "qkv_proj.conv_qk_grouped.bias"],
                w[p + "qk_norm.temp"], w[p + "o_proj.weight"])

    def _qk_from_conv(self, z: torch.Tensor, u: torch.Tensor, tau: torch.Tensor, position: int):
        """One token: conv output z [C] and raw projection u [C] -> qhat [Nq, D], khat [Nk, D] after the mean
        skip (step 4), normalisation and temperature (step 5) and RoPE (step 7)."""
        D, Nq, Nk = self.D, self.Nq, self.Nk
        G = Nq // Nk
        qraw = u[:Nq * D].view(Nq, D)
        kraw = u[Nq * D:].view(Nk, D)
        q = torch.empty(Nq, D, dtype=self.dtype)
        k = torch.empty(Nk, D, dtype=self.dtype)
        for h in range(Nq):
            j = h // G
            q[h] = z[h * D:(h + 1) * D] + 0.5 * (qraw[h] + kraw[j])
        for j in range(Nk):
            group_mean = qraw[j * G:(j + 1) * G].mean(dim=0)
            k[j] = z[(Nq + j) * D:(Nq + j + 1) * D] + 0.5 * (group_mean + kraw[j])
        for h in range(Nq):
            q[h] = self.rope(math.sqrt(D) * q[h] / q[h].norm(), position)
        for j in range(Nk):
            k[j] = self.rope(tau[j] * math.sqrt(D) * k[j] / k[j].norm(), position)
        return q, k

    def _attend(self, q: torch.Tensor, keys: list, values: list, wo: torch.Tensor) -> torch.Tensor:
        """§4.2 step 8-9 for one query [Nq, D] over the keys/values so far -> the sub-layer output [H]."""
        D, G = self.D, self.Nq // self.Nk
        K = torch.stack(keys)    # [S, Nk, D]
        Vv = torch.stack(values)
        heads = []
        for h in range(self.Nq):
            j = h // G
            logits = (K[:, j] @ q[h]) / math.sqrt(D)
            p = torch.softmax(logits, dim=0)
            heads.append(p @ Vv[:, j])
        return wo @ torch.cat(heads)

    def attention_prefill(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """§4.2: the full sequence x [T, H] from an empty state -> [T, H]; leaves the state of §4.4's end."""
        wq, wk, wv1, wv2, A, alpha, B, gamma, tau, wo = self._attn_weights(i)
        T, D = x.shape[0], self.D
        C = (self.Nq + self.Nk) * D
        u = torch.cat([x @ wq.T, x @ wk.T], dim=1)                       # step 1: [T, C]
        padded = torch.cat([torch.zeros(2, C, dtype=self.dtype), u])       # u_{-2}, u_{-1}, u_0, ...
        y = A[:, 0, 0] * padded[:-1] + A[:, 0, 1] * padded[1:] + alpha     # step 2: y_{-1} .. y_{T-1}, [T+1, C]
        z = torch.empty(T, C, dtype=self.dtype)                            # step 3, one group = one head
        for g in range(self.Nq + self.Nk):
            cols = slice(g * D, (g + 1) * D)
            z[:, cols] = y[:-1, cols] @ B[cols, :, 0].T + y[1:, cols] @ B[cols, :, 1].T + gamma[cols]
        v_current = x @ wv1.T                                              # step 6
        v_delayed = torch.cat([torch.zeros(1, wv2.shape[0], dtype=self.dtype), x[:-1] @ wv2.T])
        state = self.states[i]
        state.keys, state.values = [], []
        out = torch.empty_like(x)
        for t in range(T):
            q, k = self._qk_from_conv(z[t], u[t], tau, t)
            state.keys.append(k)
            state.values.append(torch.cat([v_current[t], v_delayed[t]]).view(self.Nk, D))
            out[t] = self._attend(q, state.keys, state.values, wo)
        state.conv = padded[-2:].clone()
        state.delayed = x[-1] @ wv2.T
        return out

    def attention_step(self, i: int, x: torch.Tensor, position: int) -> torch.Tensor:
        """§4.4: one token x [H] at `position` from the state -> [H]."""
        wq, wk, wv1, wv2, A, alpha, B, gamma, tau, wo = self._attn_weights(i)
        D, C = self.D, (self.Nq + self.Nk) * self.D
        state = self.states[i]
        if state.conv is None:  # a sequence's first token: zero state
            state.conv = torch.zeros(2, C, dtype=self.dtype)
            state.delayed = torch.zeros(wv2.shape[0], dtype=self.dtype)
        u = torch.cat([wq @ x, wk @ x])
        u2, u1 = state.conv[0], state.conv[1]
        y_prev = A[:, 0, 0] * u2 + A[:, 0, 1] * u1 + alpha
        y_cur = A[:, 0, 0] * u1 + A[:, 0, 1] * u + alpha
        z = torch.empty(C, dtype=self.dtype)
        for g in range(self.Nq + self.Nk):
            cols = slice(g * D, (g + 1) * D)
            z[cols] = B[cols, :, 0] @ y_prev[cols] + B[cols, :, 1] @ y_cur[cols] + gamma[cols]
        state.conv = torch.stack([u1, u])
        q, k = self._qk_from_conv(z, u, tau, position)
        value = torch.cat([wv1 @ x, state.delayed]).view(self.Nk, D)
        state.delayed = wv2 @ x
        state.keys.append(k)
        state.values.append(value)
        return self._attend(q, state.keys, state.values, wo)

    # ---------------------------------------------------------------------------------------------
    # MoE (§5), one token at a time
    # ---------------------------------------------------------------------------------------------

    def moe(self, i: int, x: torch.Tensor, r_prev: torch.Tensor | None):
        """x [n, H], r_prev [n, R] or None (block 0) -> (y [n, H], r [n, R] the pre-norm router state)."""
        p = f"model.layers.{i}.mlp."
        w = self.w
        y = torch.empty_like(x)
        states = []
        for t in range(x.shape[0]):
            d = w[p + "gate.down_proj.weight"] @ x[t] + w[p + "gate.down_proj.bias"]
            r = d if r_prev is None else d + w[p + "gate.router_states_scale"] * r_prev[t]   # §5.2 EDA
            states.append(r)
            n = self.rms_norm(r, w[p + "gate.router_mlp.norm.weight"])
            h1 = F.gelu(w[p + "gate.router_mlp.fc1.weight"] @ n + w[p + "gate.router_mlp.fc1.bias"])
            h2 = F.gelu(w[p + "gate.router_mlp.fc2.weight"] @ h1 + w[p + "gate.router_mlp.fc2.bias"])
            prob = torch.softmax(w[p + "gate.router_mlp.out_proj.weight"] @ h2, dim=0)    # E + 1 routes
            score = (prob + w[p + "gate.balancing_biases"]).tolist()
            choice = score.index(max(score))                                               # lowest index on a tie
            self.routes[i].append(choice)
            weight = prob[choice]
            if choice < self.E:                                                            # §5.3
                fc1 = w[p + "experts.gate_up_proj"][choice]                                # [2F, H]
                half = fc1.shape[0] // 2
                act = F.silu(fc1[:half] @ x[t]) * (fc1[half:] @ x[t])
                y[t] = weight * (w[p + "experts.down_proj"][choice] @ act)
            else:                                                                          # §5.4
                y[t] = weight * x[t] if self.skip_mode == "scaled_input" else torch.zeros_like(x[t])
        return y, torch.stack(states)

    # ---------------------------------------------------------------------------------------------
    # the model (§2.2, §6)
    # ---------------------------------------------------------------------------------------------

    def _run(self, ids: list[int], attention) -> torch.Tensor:
        w = self.w
        embed = w["model.embed_tokens.weight"]
        r = (embed[torch.tensor(ids)] + w["model.input_hidden_states_bias"]) * w["model.input_hidden_states_scale"]
        router_state = None
        for i in range(self.L):
            p = f"model.layers.{i}."
            a = attention(i, self.rms_norm(r, w[p + "input_layernorm.weight"]))
            r = self.merge(p + "post_attention_residual_scale", a, r)
            m, router_state = self.moe(i, self.rms_norm(r, w[p + "post_attention_layernorm.weight"]), router_state)
            r = self.merge(p + "post_mlp_residual_scale", m, r)
        z = self.rms_norm(r, w["model.norm.weight"])
        return z @ embed.T  # tied LM head

    def prefill(self, ids) -> torch.Tensor:
        """Logits [T, V] of a whole sequence from an empty state (the §4.2 form); keeps the state."""
        ids = [int(t) for t in ids]
        self.reset()
        logits = self._run(ids, self.attention_prefill)
        self.position = len(ids)
        return logits

    def step(self, token: int) -> torch.Tensor:
        """Logits [V] of one more token (the §4.4 form), continuing the state."""
        logits = self._run([int(token)], lambda i, x: self.attention_step(i, x[0], self.position)[None])
        self.position += 1
        return logits[0]
