# SPDX-License-Identifier: Apache-2.0
"""GPU tier: cca_prep and attention_decode kernels against reference.py (DESIGN.md §6).

The references run on the GPU too (pure PyTorch): float64 is the oracle, bf16 (every intermediate rounded)
sets the error budget: max|kernel - ref64| <= 2 * max|ref_bf16 - ref64| + a small floor. Outputs are
poisoned; every cache slot the op must write is compared, every other slot must keep its bits.
"""
from __future__ import annotations

import math

import pytest
import torch

from zaya_kernels import ops, reference

from .util import assert_close_2x, calc_diff, poison_

pytestmark = pytest.mark.gpu

D, HQ, HKV = 128, 8, 2
C = (HQ + HKV) * D       # 1280 conv channels
VW = HKV * D // 2        # 128 value width
PROJ = C + 2 * VW        # 1536


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _randn(gen, *shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)


def _weights(gen, dtype=torch.bfloat16, tau=(1.3, -0.7)):
    return dict(conv1_w=_randn(gen, C, 1, 2, scale=0.7, dtype=dtype), conv1_b=_randn(gen, C, scale=0.2, dtype=dtype),
                conv2_w=_randn(gen, C, D, 2, scale=1 / 16, dtype=dtype), conv2_b=_randn(gen, C, scale=0.2, dtype=dtype),
                temp=torch.tensor(tau, device="cuda").to(dtype))


def _paged(gen, capacities, page_size, extra_pages=3):
    """A shuffled page pool: block_table [B, max_pages] int32 (unused entries -1), caches poisoned with NaN."""
    max_pages = max(1, max(-(-c // page_size) for c in capacities))
    need = sum(-(-c // page_size) for c in capacities)
    num_pages = need + extra_pages
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(int(gen.initial_seed()) % 2**31))
    table = torch.full((len(capacities), max_pages), -1, dtype=torch.int32)
    used = 0
    for b, c in enumerate(capacities):
        n = -(-c // page_size)
        table[b, :n] = perm[used:used + n].to(torch.int32)
        used += n
    k_cache = poison_(torch.empty(num_pages, page_size, HKV, D, dtype=torch.bfloat16, device="cuda"))
    v_cache = poison_(torch.empty_like(k_cache))
    return table.cuda(), k_cache, v_cache


def _slots(table, starts, lengths, page_size):
    """(page, slot) index tensors of every position [start, start + n) of every sequence."""
    pages, slots = [], []
    for b, (s, n) in enumerate(zip(starts, lengths)):
        pos = torch.arange(s, s + n, device="cuda")
        p, sl = reference.cache_slots(table[b], pos, page_size)
        pages.append(p)
        slots.append(sl)
    return torch.cat(pages), torch.cat(slots)


def _bits(t):
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


class PrepCase:
    """Inputs of one cca_prep call: lengths n_b of the new chunk, positions already cached s_b."""

    def __init__(self, lengths, starts=None, page_size=16, seed=0, wdtype=torch.bfloat16, tau=(1.3, -0.7)):
        gen = _gen(seed)
        self.lengths = list(lengths)
        self.starts = list(starts) if starts is not None else [0] * len(lengths)
        self.page_size = page_size
        b = len(self.lengths)
        total = sum(self.lengths)
        cu = [0]
        for n in self.lengths:
            cu.append(cu[-1] + n)
        self.cu_seqlens = torch.tensor(cu, dtype=torch.int32, device="cuda")
        self.seq_start = torch.tensor(self.starts, dtype=torch.int32, device="cuda")
        self.proj = _randn(gen, total, PROJ)
        self.w = _weights(gen, wdtype, tau)
        # Stored state: bf16-valued fp32 (what a previous chunk leaves); zeros for a new sequence.
        self.conv_state = _randn(gen, b, C, 2).float()
        self.value_state = _randn(gen, b, VW).float()
        for i, s in enumerate(self.starts):
            if s == 0:
                self.conv_state[i].zero_()
                self.value_state[i].zero_()
        caps = [s + n for s, n in zip(self.starts, self.lengths)]
        self.block_table, self.k_cache, self.v_cache = _paged(gen, caps, page_size)
        # Earlier positions hold earlier keys (random, not poison): they must survive the call untouched.
        if any(self.starts):
            pages, slots = _slots(self.block_table, [0] * b, self.starts, page_size)
            self.k_cache[pages, slots] = _randn(gen, pages.numel(), HKV, D)
            self.v_cache[pages, slots] = _randn(gen, pages.numel(), HKV, D)

    def args(self, conv_state, value_state, k_cache, v_cache):
        w = self.w
        return (self.proj, self.cu_seqlens, self.seq_start, conv_state, value_state, w["conv1_w"], w["conv1_b"],
                w["conv2_w"], w["conv2_b"], w["temp"], k_cache, v_cache, self.block_table)

    def run_reference(self, dtype):
        cs, vs, kc, vc = self.conv_state.clone(), self.value_state.clone(), self.k_cache.clone(), self.v_cache.clone()
        q = reference.cca_prep(*self.args(cs, vs, kc, vc), compute_dtype=dtype)
        return q, cs, vs, kc, vc

    def run_kernel(self):
        cs, vs, kc, vc = self.conv_state.clone(), self.value_state.clone(), self.k_cache.clone(), self.v_cache.clone()
        q = poison_(torch.empty(self.proj.shape[0], HQ, D, dtype=torch.bfloat16, device="cuda"))
        ops.cca_prep(*self.args(cs, vs, kc, vc), out=q)
        torch.cuda.synchronize()
        return q, cs, vs, kc, vc


def _check_prep(case: PrepCase, what: str):
    got = case.run_kernel()
    ref = case.run_reference(torch.float64)
    low = case.run_reference(torch.bfloat16)
    q, cs, vs, kc, vc = got
    assert not torch.isnan(q.float()).any(), f"{what}: q rows left unwritten"
    assert_close_2x(q.float(), ref[0].float(), low[0].float(), 2e-2, f"{what}: q")
    assert calc_diff(q, ref[0]) < 1e-4, f"{what}: q global difference"
    # States: copies of bf16 inputs, exact.
    assert torch.equal(cs, ref[1]), f"{what}: conv_state"
    assert torch.equal(vs, ref[2]), f"{what}: value_state"
    pages, slots = _slots(case.block_table, case.starts, case.lengths, case.page_size)
    written = torch.zeros(case.k_cache.shape[:2], dtype=torch.bool, device="cuda")
    written[pages, slots] = True
    for name, out, r, lo, before in (("k_cache", kc, ref[3], low[3], case.k_cache),
                                     ("v_cache", vc, ref[4], low[4], case.v_cache)):
        assert torch.equal(_bits(out[~written]), _bits(before[~written])), f"{what}: {name} slots not ours changed"
        new = out[pages, slots]
        assert not torch.isnan(new.float()).any(), f"{what}: {name} slots left unwritten"
        assert_close_2x(new.float(), r[pages, slots].float(), lo[pages, slots].float(), 2e-2, f"{what}: {name}")
    # V holds copies of bf16 inputs: exact.
    assert torch.equal(_bits(vc[pages, slots]), _bits(ref[4][pages, slots])), f"{what}: v_cache values"


@pytest.mark.parametrize("n", [1, 2, 3, 17, 128, 1000, 4096, 16384])
def test_cca_prep_single_sequence(n):
    _check_prep(PrepCase([n], seed=n), f"n={n}")


@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_cca_prep_varlen_batch(page_size):
    lengths = [5, 1, 0, 63, 64, 65, 2, 200, 1, 3, 130]
    _check_prep(PrepCase(lengths, page_size=page_size, seed=page_size), f"varlen page_size={page_size}")


@pytest.mark.parametrize("page_size", [16, 64])
def test_cca_prep_chunked(page_size):
    # Chunks continuing from stored state and cached keys; tile boundaries fall on every local index.
    lengths = [1, 2, 3, 61, 62, 63, 64, 17, 0, 300]
    starts = [5, 1, 40, 100, 7, 2, 64, 3, 9, 1000]
    _check_prep(PrepCase(lengths, starts, page_size=page_size, seed=7 + page_size), f"chunked ps={page_size}")


@pytest.mark.parametrize("batch", [1, 7, 64, 200])
def test_cca_prep_decode(batch):
    gen = torch.Generator().manual_seed(batch)
    starts = torch.randint(1, 2000, (batch,), generator=gen).tolist()
    _check_prep(PrepCase([1] * batch, starts, page_size=16, seed=batch), f"decode B={batch}")


def test_cca_prep_tile_boundaries():
    # Every offset of a sequence's first two tokens against the 63-row (sm_90a) and 31-row tile strides.
    lengths = []
    for k in range(70):
        lengths += [k % 5 + 1, 2, 1]
    _check_prep(PrepCase(lengths, seed=3), "tile boundaries")


@pytest.mark.parametrize("wdtype", [torch.float32])
def test_cca_prep_fp32_parameters(wdtype):
    _check_prep(PrepCase([37, 100], [0, 12], seed=5, wdtype=wdtype), "fp32 parameters")


@pytest.mark.parametrize("tau", [(1e-4, -3e-4), (40.0, -25.0)])
def test_cca_prep_extreme_tau(tau):
    _check_prep(PrepCase([50, 3], seed=9, tau=tau), f"tau={tau}")


def test_cca_prep_rotary_dim_and_theta():
    case = PrepCase([40], seed=4)
    for rotary_dim, theta in ((128, 1e4), (32, 5e6), (2, 123.0)):
        got = ops.cca_prep(*case.args(case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(),
                                      case.v_cache.clone()), rope_theta=theta, rotary_dim=rotary_dim)
        args = case.args(case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(), case.v_cache.clone())
        ref = reference.cca_prep(*args, theta, rotary_dim, compute_dtype=torch.float64)
        args = case.args(case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(), case.v_cache.clone())
        low = reference.cca_prep(*args, theta, rotary_dim, compute_dtype=torch.bfloat16)
        assert_close_2x(got.float(), ref.float(), low.float(), 2e-2, f"rotary_dim={rotary_dim} theta={theta}")


def test_cca_prep_empty():
    case = PrepCase([0, 0], seed=1)
    q, cs, vs, kc, vc = case.run_kernel()
    assert q.shape == (0, HQ, D)
    assert torch.equal(cs, case.conv_state) and torch.equal(vs, case.value_state)


# ---------------------------------------------------------------------------------------------
# attention_decode
# ---------------------------------------------------------------------------------------------

class DecodeCase:
    def __init__(self, lengths, page_size=16, seed=0, q_scale=1.0, capacity=None):
        gen = _gen(seed)
        self.lengths = list(lengths)
        caps = [capacity or max(n, 1) for n in self.lengths]
        self.block_table, self.k_cache, self.v_cache = _paged(gen, caps, page_size)
        pages, slots = _slots(self.block_table, [0] * len(caps), caps, page_size)
        self.k_cache[pages, slots] = _randn(gen, pages.numel(), HKV, D)
        self.v_cache[pages, slots] = _randn(gen, pages.numel(), HKV, D)
        self.q = _randn(gen, len(self.lengths), HQ, D, scale=q_scale)
        self.seq_lens = torch.tensor(self.lengths, dtype=torch.int32, device="cuda")

    def args(self):
        return self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens

    def check(self, what, softmax_scale=None):
        out = poison_(torch.empty_like(self.q))
        ops.attention_decode(*self.args(), softmax_scale, out=out)
        ref = reference.attention_decode(*self.args(), softmax_scale, compute_dtype=torch.float64)
        low = reference.attention_decode(*self.args(), softmax_scale, compute_dtype=torch.bfloat16)
        assert not torch.isnan(out.float()).any(), f"{what}: output left unwritten"
        assert_close_2x(out.float(), ref.float(), low.float(), 1e-2, what)
        assert calc_diff(out, ref) < 1e-4, f"{what}: global difference"
        return out


@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_attention_decode_lengths(page_size):
    lengths = [1, 2, 31, 32, 33, 64, 65, 127, 1000, 4096, 5000, 32768]
    DecodeCase(lengths, page_size=page_size, seed=page_size).check(f"lengths, page_size={page_size}")


@pytest.mark.parametrize("batch,length", [(1, 4096), (1, 32768), (4, 8192), (32, 1024), (128, 64)])
def test_attention_decode_shapes(batch, length):
    gen = torch.Generator().manual_seed(batch * 7 + length)
    lengths = [length] + torch.randint(1, length + 1, (batch - 1,), generator=gen).tolist()
    DecodeCase(lengths, page_size=64, seed=batch, capacity=length).check(f"B={batch} L={length}")


def test_attention_decode_zero_length():
    case = DecodeCase([0, 5, 0, 300], seed=2)
    out = case.check("zero lengths")
    assert torch.equal(out[0].float(), torch.zeros_like(out[0].float()))
    assert torch.equal(out[2].float(), torch.zeros_like(out[2].float()))
    one = DecodeCase([0], seed=3, capacity=256)
    out = one.check("only zero length (one split)")
    assert torch.equal(out.float(), torch.zeros_like(out.float()))


@pytest.mark.parametrize("q_scale", [1e-3, 30.0])
def test_attention_decode_extreme_logits(q_scale):
    # Large logits (std ~ 30 / sqrt(128) * |k| ~ 30): the online maximum must keep exp in range.
    DecodeCase([3, 700, 4097], seed=11, q_scale=q_scale).check(f"q_scale={q_scale}")


def test_attention_decode_softmax_scale():
    DecodeCase([100, 2000], seed=12).check("softmax_scale=0.3", softmax_scale=0.3)


def test_attention_decode_cuda_graph():
    case = DecodeCase([10, 3000, 1], page_size=16, seed=13, capacity=4096)
    out = torch.empty_like(case.q)
    ops.attention_decode(*case.args(), out=out)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.attention_decode(*case.args(), out=out)
    for seed in range(3):
        case.q.copy_(_randn(_gen(100 + seed), *case.q.shape))
        case.seq_lens.copy_(torch.tensor([10 + seed, 4000 - seed, 1 + seed], dtype=torch.int32))
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.attention_decode(*case.args(), compute_dtype=torch.float64)
        low = reference.attention_decode(*case.args(), compute_dtype=torch.bfloat16)
        assert_close_2x(out.float(), ref.float(), low.float(), 1e-2, f"graph replay {seed}")


def test_cca_prep_cuda_graph_decode():
    case = PrepCase([1, 1, 1], [3, 50, 700], seed=21)
    cs, vs, kc, vc = case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(), case.v_cache.clone()
    q = torch.empty(3, HQ, D, dtype=torch.bfloat16, device="cuda")
    ops.cca_prep(*case.args(cs.clone(), vs.clone(), kc.clone(), vc.clone()), out=q)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        ops.cca_prep(*case.args(cs, vs, kc, vc), out=q)
    cs.copy_(case.conv_state)
    vs.copy_(case.value_state)
    kc.copy_(case.k_cache)
    vc.copy_(case.v_cache)
    graph.replay()
    torch.cuda.synchronize()
    ref = case.run_reference(torch.float64)
    low = case.run_reference(torch.bfloat16)
    assert_close_2x(q.float(), ref[0].float(), low[0].float(), 2e-2, "graph cca_prep q")
    assert torch.equal(cs, ref[1]) and torch.equal(vs, ref[2])


def test_torch_compile_fullgraph():
    case = PrepCase([1, 1], [20, 400], seed=31)

    def step(proj, conv_state, value_state, k_cache, v_cache):
        w = case.w
        q = ops.cca_prep(proj, case.cu_seqlens, case.seq_start, conv_state, value_state, w["conv1_w"], w["conv1_b"],
                         w["conv2_w"], w["conv2_b"], w["temp"], k_cache, v_cache, case.block_table)
        return ops.attention_decode(q, k_cache, v_cache, case.block_table, case.seq_start + 1)

    compiled = torch.compile(step, fullgraph=True)
    def inputs():
        return [case.proj, case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(),
                case.v_cache.clone()]

    eager_in, comp_in = inputs(), inputs()
    # Positions before seq_start hold real keys (PrepCase fills them), so the decode sees no poison.
    eager = step(*eager_in)
    got = compiled(*comp_in)
    assert torch.equal(_bits(got), _bits(eager))
    assert torch.equal(comp_in[1], eager_in[1]) and torch.equal(_bits(comp_in[3]), _bits(eager_in[3]))


def test_prefill_then_decode_equals_long_prefill():
    if "attention_prefill" in ops.DEVICE_PLACEHOLDERS:
        pytest.fail("attention_prefill has no GPU kernel in this build")
    n = 300
    full = PrepCase([n + 1], seed=41)
    w = full.w

    def prep(case_rows, start, cs, vs, kc, vc, table):
        cu = torch.tensor([0, case_rows.shape[0]], dtype=torch.int32, device="cuda")
        st = torch.tensor([start], dtype=torch.int32, device="cuda")
        q = ops.cca_prep(case_rows, cu, st, cs, vs, w["conv1_w"], w["conv1_b"], w["conv2_w"], w["conv2_b"], w["temp"],
                         kc, vc, table)
        return q, cu

    table = full.block_table
    # One long prefill of n + 1 tokens.
    cs, vs, kc, vc = full.conv_state.clone(), full.value_state.clone(), full.k_cache.clone(), full.v_cache.clone()
    q, cu = prep(full.proj, 0, cs, vs, kc, vc, table)
    lens = torch.tensor([n + 1], dtype=torch.int32, device="cuda")
    long_out = ops.attention_prefill(q, kc, vc, table, cu, lens)[-1]
    # Prefill of n tokens, then one decode step.
    cs, vs, kc2, vc2 = full.conv_state.clone(), full.value_state.clone(), full.k_cache.clone(), full.v_cache.clone()
    q, cu = prep(full.proj[:n], 0, cs, vs, kc2, vc2, table)
    ops.attention_prefill(q, kc2, vc2, table, cu, torch.tensor([n], dtype=torch.int32, device="cuda"))
    q1, _ = prep(full.proj[n:], n, cs, vs, kc2, vc2, table)
    dec_out = ops.attention_decode(q1, kc2, vc2, table, lens)[0]
    pages, slots = _slots(table, [0], [n + 1], full.page_size)
    assert torch.equal(_bits(kc2[pages, slots]), _bits(kc[pages, slots])), "K differs between the two paths"
    assert torch.equal(_bits(vc2[pages, slots]), _bits(vc[pages, slots])), "V differs between the two paths"
    # The reference of the whole thing, float64 and bf16.
    refs = []
    for dt in (torch.float64, torch.bfloat16):
        cs, vs, kr, vr = full.conv_state.clone(), full.value_state.clone(), full.k_cache.clone(), full.v_cache.clone()
        qr = reference.cca_prep(*full.args(cs, vs, kr, vr), compute_dtype=dt)
        refs.append(reference.attention_prefill(qr, kr, vr, table, cu_full(n + 1), lens, compute_dtype=dt)[-1])
    assert_close_2x(long_out.float(), refs[0].float(), refs[1].float(), 1e-2, "long prefill, last token")
    assert_close_2x(dec_out.float(), refs[0].float(), refs[1].float(), 1e-2, "prefill + decode, last token")


def cu_full(n):
    return torch.tensor([0, n], dtype=torch.int32, device="cuda")


# ---------------------------------------------------------------------------------------------
# bad input: an error naming the argument
# ---------------------------------------------------------------------------------------------

def test_bad_input_decode():
    case = DecodeCase([5, 9], seed=51)
    q, kc, vc, table, lens = case.args()
    with pytest.raises(RuntimeError, match="q must be torch.bfloat16"):
        ops.attention_decode(q.half(), kc, vc, table, lens)
    with pytest.raises(RuntimeError, match="seq_lens must have shape"):
        ops.attention_decode(q, kc, vc, table, lens[:1])
    with pytest.raises(RuntimeError, match="block_table must have B=2 rows"):
        ops.attention_decode(q, kc, vc, table[:1], lens)
    with pytest.raises(RuntimeError, match="k_cache must be contiguous"):
        ops.attention_decode(q, kc.transpose(0, 1), vc.transpose(0, 1), table, lens)
    with pytest.raises(RuntimeError, match="softmax_scale must be a finite number"):
        ops.attention_decode(q, kc, vc, table, lens, float("nan"))
    with pytest.raises(RuntimeError, match="seq_lens must be on"):
        ops.attention_decode(q, kc, vc, table, lens.cpu())


def test_bad_input_cca_prep():
    case = PrepCase([4, 2], seed=52)
    args = list(case.args(case.conv_state.clone(), case.value_state.clone(), case.k_cache.clone(),
                          case.v_cache.clone()))
    bad = list(args)
    bad[0] = args[0][:, :1000]
    with pytest.raises(RuntimeError, match="proj must be"):
        ops.cca_prep(*bad)
    bad = list(args)
    bad[7] = args[7].half()
    with pytest.raises(RuntimeError, match="conv2_w as torch.bfloat16 or torch.float32"):
        ops.cca_prep(*bad)
    bad = list(args)
    bad[1] = args[1].long()
    with pytest.raises(RuntimeError, match="cu_seqlens must be torch.int32"):
        ops.cca_prep(*bad)
    bad = list(args)
    bad[12] = args[12][:1]
    with pytest.raises(RuntimeError, match="block_table must have B=2 rows"):
        ops.cca_prep(*bad)
    with pytest.raises(RuntimeError, match="rope_theta must be a finite number"):
        ops.cca_prep(*args, rope_theta=-1.0)
    with pytest.raises(RuntimeError, match="rotary_dim must be even"):
        ops.cca_prep(*args, rotary_dim=3)
    bad = list(args)
    bad[3] = args[3].transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(RuntimeError, match="conv_state must be contiguous"):
        ops.cca_prep(*bad)
