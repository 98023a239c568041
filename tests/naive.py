# SPDX-License-Identifier: Apache-2.0
"""Independent naive implementations (plain Python loops, float64) of every op, written from
ZAYA1_ARCHITECTURE.md and DESIGN.md §2 without looking at reference.py's vectorised code.
They are slow: use them on small shapes only."""
from __future__ import annotations

import math

import torch


def bf16_round(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).to(torch.bfloat16).item()


def softmax_row(row: list[float]) -> list[float]:
    if any(math.isnan(v) or v == math.inf for v in row) or all(v == -math.inf for v in row):
        return [math.nan] * len(row)
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def topk_gating(logits, bias, k, renormalize=False, skip_index=-1):
    """logits [T, E'] -> (weights [T, k] float64, ids [T, k] int)."""
    weights, ids = [], []
    for row in logits.double().tolist():
        p = softmax_row(row)
        score = [p[i] + (float(bias[i]) if bias is not None else 0.0) for i in range(len(row))]
        score = [-math.inf if math.isnan(s) else s for s in score]
        chosen = sorted(range(len(row)), key=lambda i: (-score[i], i))[:k]
        w = [p[i] for i in chosen]
        if skip_index >= 0 and skip_index in chosen:
            first = chosen.index(skip_index)
            for j in range(first + 1, k):
                chosen[j], w[j] = skip_index, 0.0
        if renormalize:
            total = sum(w)
            w = [v / total for v in w]
        weights.append(w)
        ids.append(chosen)
    return torch.tensor(weights, dtype=torch.float64).reshape(-1, k), torch.tensor(ids, dtype=torch.int64).reshape(-1, k)


def gelu(v: float) -> float:
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def matvec(w, x, b=None):
    """w [out, in] (lists), x [in] -> [out]."""
    return [sum(wi[j] * x[j] for j in range(len(x))) + (b[i] if b is not None else 0.0) for i, wi in enumerate(w)]


def zaya_router(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                eps=1e-5):
    """Per token: d = W x + b; r = d + s*r_prev; n = bf16(RMSNorm(r)); h1 = bf16(GELU(..)); h2; logits;
    softmax; top-1 of p + beta. Returns (weights [T], ids [T], r [T, R] float64 before bf16 storage)."""
    L = lambda t: t.double().tolist()  # noqa: E731
    dw, db, nw = L(down_w), L(down_b), L(norm_w)
    w1, b1, w2, b2, w3 = L(fc1_w), L(fc1_b), L(fc2_w), L(fc2_b), L(out_w)
    beta = L(balancing_bias)
    weights, ids, states = [], [], []
    for t, xt in enumerate(L(x)):
        r = matvec(dw, xt, db)
        if r_prev is not None:
            s, rp = L(eda_scale), L(r_prev[t])
            r = [r[i] + s[i] * rp[i] for i in range(len(r))]
        inv = 1.0 / math.sqrt(sum(v * v for v in r) / len(r) + eps)
        n = [bf16_round(r[i] * inv * nw[i]) for i in range(len(r))]
        h1 = [bf16_round(gelu(v)) for v in matvec(w1, n, b1)]
        h2 = [bf16_round(gelu(v)) for v in matvec(w2, h1, b2)]
        p = softmax_row(matvec(w3, h2))
        best = max(range(len(p)), key=lambda i: (p[i] + beta[i], -i))
        weights.append(p[best])
        ids.append(best)
        states.append(r)
    return weights, ids, states


def moe_align(ids, num_experts, block_m):
    flat = ids.reshape(-1).tolist()
    pairs = len(flat)
    segments = [[p for p in range(pairs) if flat[p] == e] for e in range(num_experts)]
    sorted_ids, block_experts, offsets = [], [], [0]
    for e, seg in enumerate(segments):
        padded = -(-len(seg) // block_m) * block_m
        sorted_ids += seg + [pairs] * (padded - len(seg))
        block_experts += [e] * (padded // block_m)
        offsets.append(offsets[-1] + padded)
    capacity = pairs + num_experts * (block_m - 1)
    blocks = -(-capacity // block_m)
    sorted_ids += [pairs] * (capacity - len(sorted_ids))
    block_experts += [-1] * (blocks - len(block_experts))
    return sorted_ids, block_experts, offsets, offsets[-1]


def grouped_gemm(a, w, offsets):
    a, w = a.double(), w.double()
    out = torch.zeros(a.shape[0], w.shape[1], dtype=torch.float64)
    for e in range(w.shape[0]):
        for row in range(int(offsets[e]), int(offsets[e + 1])):
            for n in range(w.shape[1]):
                out[row, n] = torch.dot(a[row], w[e, n])
    return out


def silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def moe_mlp(x, topk_weights, topk_ids, w_fc1, w_fc2, skip_mode):
    experts, two_f, _ = w_fc1.shape
    f = two_f // 2
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt = x[t].double()
        for j in range(topk_ids.shape[1]):
            e, w = int(topk_ids[t, j]), float(topk_weights[t, j])
            if 0 <= e < experts:
                h = (w_fc1[e].double() @ xt).tolist()
                act = torch.tensor([bf16_round(silu(h[i]) * h[f + i]) for i in range(f)], dtype=torch.float64)
                out[t] += w * (w_fc2[e].double() @ act)
            elif e == experts and skip_mode == "scaled_input":
                out[t] += w * xt
    return out


def rope(vec: list[float], pos: int, rotary_dim: int, theta: float) -> list[float]:
    half = rotary_dim // 2
    out = list(vec)
    for d in range(half):
        inv_freq = 1.0 / (theta ** (2 * d / rotary_dim))
        a = pos * inv_freq
        x1, x2 = vec[d], vec[d + half]
        out[d] = x1 * math.cos(a) - x2 * math.sin(a)
        out[d + half] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def cca_prep_one(u_hist, u, v1, v2_prev, conv1_w, conv1_b, conv2_w, conv2_b, temp, pos, hq, hkv, d,
                 rotary_dim, theta):
    """One token: u_hist = [u_{t-2}, u_{t-1}] raw (lists of C), u = u_t, v1 = W_v1 x_t, v2_prev = W_v2 x_{t-1}.
    Returns (q [hq][d], k [hkv][d], v [hkv][d])."""
    C = len(u)
    A, alpha = conv1_w.double()[:, 0, :].tolist(), conv1_b.double().tolist()
    Bw, gamma = conv2_w.double().tolist(), conv2_b.double().tolist()
    y_prev = [A[c][0] * u_hist[0][c] + A[c][1] * u_hist[1][c] + alpha[c] for c in range(C)]
    y_cur = [A[c][0] * u_hist[1][c] + A[c][1] * u[c] + alpha[c] for c in range(C)]
    z = []
    for c in range(C):
        g = c // d
        acc = gamma[c]
        for i in range(d):
            acc += Bw[c][i][0] * y_prev[g * d + i] + Bw[c][i][1] * y_cur[g * d + i]
        z.append(acc)
    group = hq // hkv
    qraw = [u[h * d:(h + 1) * d] for h in range(hq)]
    kraw = [u[(hq + j) * d:(hq + j + 1) * d] for j in range(hkv)]
    qs, ks = [], []
    for h in range(hq):
        j = h // group
        vec = [z[h * d + i] + 0.5 * (qraw[h][i] + kraw[j][i]) for i in range(d)]
        norm = math.sqrt(sum(v * v for v in vec))
        qs.append(rope([math.sqrt(d) * v / norm for v in vec], pos, rotary_dim, theta))
    for j in range(hkv):
        mean_q = [sum(qraw[j * group + g][i] for g in range(group)) / group for i in range(d)]
        vec = [z[(hq + j) * d + i] + 0.5 * (mean_q[i] + kraw[j][i]) for i in range(d)]
        norm = math.sqrt(sum(v * v for v in vec))
        ks.append(rope([float(temp[j]) * math.sqrt(d) * v / norm for v in vec], pos, rotary_dim, theta))
    values = v1 + v2_prev
    vs = [values[j * d:(j + 1) * d] for j in range(hkv)]
    return qs, ks, vs


def attention_one(q, keys, values, scale):
    """q [hq][d]; keys/values [L][hkv][d] visible to this query -> o [hq][d]."""
    hq, hkv = len(q), len(keys[0])
    out = []
    for h in range(hq):
        j = h // (hq // hkv)
        logits = [scale * sum(q[h][i] * k[j][i] for i in range(len(q[h]))) for k in keys]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        s = sum(e)
        out.append([sum(e[t] / s * values[t][j][i] for t in range(len(keys))) for i in range(len(q[h]))])
    return out
