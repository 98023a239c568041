# SPDX-License-Identifier: Apache-2.0
"""GPU tier (`-m gpu`, the H200): zaya::attention_prefill (csrc/cuda/attention_prefill_sm90*) against
zaya_kernels.reference (the spec), DESIGN.md §6's rule: the output within 2x the error of the same
reference run in bf16 (+ a small floor), the reference in float64. Every call writes into a NaN-poisoned
output; every cache slot the op must not read (past seq_lens_k in a sequence's last page, spare pages)
holds NaN, the pages of each sequence are a shuffled set, and block-table entries past a sequence's
pages are -1. Cases: one sequence of 1..16384 tokens, varlen batches of mixed lengths, chunked prefill
(queries over cached keys), page sizes 16 / 64 / 256 (and 1, 4, 48: every box size the kernel picks),
causal and not, CCA-normalised q / k at extreme temperatures, torch.compile(fullgraph=True), a CUDA
graph, bad input."""
from __future__ import annotations

import math

import pytest
import torch

import zaya_kernels
from zaya_kernels import ops, reference

from .util import assert_close_2x, poison_

pytestmark = pytest.mark.gpu

HQ, HKV, D = 8, 2, 128
FLOOR = 1e-3  # a quarter of one bf16 ulp at |o| ~ 1: the output's own rounding dominates where the bf16 reference is exact


@pytest.fixture(autouse=True)
def _needs_kernel():
    if not zaya_kernels.has_device_kernel("attention_prefill"):
        pytest.skip("zaya::attention_prefill has no GPU kernel in this build")


class Batch:
    """A packed varlen batch over a shuffled paged cache: queries are the last n_b of seq_lens_k[b] keys."""

    def __init__(self, q_lens, k_lens, page_size, gen, *, spare_pages=3, q_scale=1.0, k=None, q=None):
        assert all(0 <= n <= L for n, L in zip(q_lens, k_lens))
        self.q_lens, self.k_lens, self.page_size = list(q_lens), list(k_lens), page_size
        pages_per = [-(-L // page_size) for L in k_lens]
        total = sum(pages_per) + spare_pages
        shape = (total, page_size, HKV, D)
        self.k_cache = torch.randn(shape, generator=gen).bfloat16()
        self.v_cache = torch.randn(shape, generator=gen).bfloat16()
        perm = torch.randperm(total, generator=gen)
        max_pages = max(pages_per, default=0) + 1
        self.block_table = torch.full((len(k_lens), max_pages), -1, dtype=torch.int32)
        used = 0
        for b, (n, L) in enumerate(zip(pages_per, k_lens)):
            self.block_table[b, :n] = perm[used:used + n].int()
            used += n
            if L % page_size:  # slots past the sequence in its last page: never read
                last = int(self.block_table[b, n - 1])
                self.k_cache[last, L % page_size:] = float("nan")
                self.v_cache[last, L % page_size:] = float("nan")
        for page in perm[used:].tolist():  # spare pages: never read
            self.k_cache[page] = float("nan")
            self.v_cache[page] = float("nan")
        if k is not None:  # caller-provided key rows per sequence, written at their positions
            for b, rows in enumerate(k):
                pos = torch.arange(rows.shape[0])
                pages, slots = reference.cache_slots(self.block_table[b], pos, page_size)
                self.k_cache[pages, slots] = rows.bfloat16()
        tokens = sum(q_lens)
        self.q = (q if q is not None else torch.randn(tokens, HQ, D, generator=gen) * q_scale).bfloat16()
        self.cu_seqlens = torch.tensor([0] + torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist(),
                                       dtype=torch.int32)
        self.seq_lens = torch.tensor(k_lens, dtype=torch.int32)
        for name in ("k_cache", "v_cache", "block_table", "q", "cu_seqlens", "seq_lens"):
            setattr(self, name, getattr(self, name).cuda())

    def args(self, scale=None, causal=True):
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.cu_seqlens, self.seq_lens, scale, causal)


def reference_out(batch: Batch, dt: torch.dtype, scale=None, causal=True, chunk=1024) -> torch.Tensor:
    """reference.attention_prefill, with each sequence's queries split into chunks of `chunk` rows so
    that the float64 logits of 16K x 16K stay ~1 GB. dt = float64: inputs upcast, output unrounded;
    dt = bfloat16: the same math in bf16 (the error yardstick)."""
    scale = scale if scale is not None else D ** -0.5
    q = batch.q.to(dt)
    out = torch.empty_like(q)
    cu = batch.cu_seqlens.tolist()
    for b, length in enumerate(batch.k_lens):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        k = reference.gather_kv(batch.k_cache, batch.block_table[b], length)
        v = reference.gather_kv(batch.v_cache, batch.block_table[b], length)
        for start in range(lo, hi, chunk):
            end = min(hi, start + chunk)
            positions = length - (hi - lo) + (start - lo) + torch.arange(end - start, device=q.device)
            visible = int(positions[-1]) + 1 if causal else length  # keys past the chunk's last position: masked
            out[start:end] = reference._attend(q[start:end], k[:visible], v[:visible], positions, scale, causal, dt)
    return out


def run_and_check(batch: Batch, what: str, scale=None, causal=True):
    out = poison_(torch.empty_like(batch.q))
    ops.attention_prefill(*batch.args(scale, causal), out=out)
    ref = reference_out(batch, torch.float64, scale, causal)
    ref_lowp = reference_out(batch, torch.bfloat16, scale, causal)
    assert not out.isnan().any(), f"{what}: {int(out.isnan().sum())} outputs not written (or NaN)"
    assert_close_2x(out, ref, ref_lowp, FLOOR, what)
    return out


def test_reference_chunking_is_the_reference(gen):
    """The chunked float64 helper above is reference.attention_prefill (same math, query rows split)."""
    batch = Batch([300, 5], [700, 5], 64, gen)
    whole = reference.attention_prefill(*[a.double() if a.is_floating_point() else a for a in batch.args()[:6]],
                                        compute_dtype=torch.float64)
    assert torch.allclose(reference_out(batch, torch.float64, chunk=128), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("page_size", [16, 64, 256])
@pytest.mark.parametrize("length", [1, 2, 3, 17, 128, 1000, 4096])
def test_one_sequence(length, page_size, gen):
    run_and_check(Batch([length], [length], page_size, gen), f"L={length} page_size={page_size}")


def test_one_sequence_16k(gen):
    run_and_check(Batch([16384], [16384], 64, gen), "L=16384")


@pytest.mark.parametrize("page_size", [1, 4, 48])
def test_other_page_sizes(page_size, gen):
    """Boxes of 1 and 4 slots (TMA rows not on 1 KB boundaries) and 16-slot boxes of 48-slot pages."""
    run_and_check(Batch([70, 3, 130], [70, 40, 300], page_size, gen), f"page_size={page_size}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_varlen_mixed(page_size, causal, gen):
    lengths = [1, 17, 128, 3, 1000, 2, 255, 33, 4096, 31, 32, 64, 129]
    run_and_check(Batch(lengths, lengths, page_size, gen), f"varlen page_size={page_size} causal={causal}",
                  causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_chunked_prefill(page_size, causal, gen):
    """Queries over cached keys: n_b new tokens after seq_lens_k[b] - n_b cached ones (0 queries too)."""
    q_lens = [1, 17, 128, 1000, 200, 33, 5, 0, 64, 1]
    k_lens = [1, 500, 300, 4096, 3000, 64, 5, 9, 1000, 16384]
    run_and_check(Batch(q_lens, k_lens, page_size, gen), f"chunked page_size={page_size} causal={causal}",
                  causal=causal)


def test_chunked_prefill_matches_one_prefill(gen):
    """A prefill of 1000 tokens and the same 1000 keys with the last 300 queries as a chunk: the chunk's rows
    of both agree within the rule (the tiles differ, so row blocks are processed in other groupings)."""
    whole = Batch([1000], [1000], 16, gen)
    part = Batch([300], [1000], 16, gen)
    part.k_cache, part.v_cache, part.block_table = whole.k_cache, whole.v_cache, whole.block_table
    part.q = whole.q[700:].contiguous()
    out_whole = run_and_check(whole, "whole")
    out_part = run_and_check(part, "chunk")
    ref = reference_out(part, torch.float64)
    ref_lowp = reference_out(part, torch.bfloat16)
    assert_close_2x(out_whole[700:], ref, ref_lowp, FLOOR, "whole vs chunk")
    assert (out_whole[700:].float() - out_part.float()).abs().max() <= 2 * (ref_lowp.double() - ref).abs().max() + FLOOR


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_softmax_scale(scale, gen):
    run_and_check(Batch([200, 77], [300, 77], 64, gen), f"scale={scale}", scale=scale)


@pytest.mark.parametrize("tau", [1e-3, 1.0, 10.0, 100.0])
def test_cca_normalised_extreme_tau(tau, gen):
    """CCA's q / k: L2-normalised to sqrt(128), k times tau, so |logit| <= sqrt(128)|tau|. With tau = 100
    (logits up to 1131) a fixed softmax maximum would underflow every row; the online one must not."""
    def normalised(rows):
        return rows / rows.norm(dim=-1, keepdim=True) * math.sqrt(D)

    q_lens, k_lens = [300, 40], [700, 40]
    q = normalised(torch.randn(sum(q_lens), HQ, D, generator=gen))
    keys = [normalised(torch.randn(L, HKV, D, generator=gen)) * tau for L in k_lens]
    run_and_check(Batch(q_lens, k_lens, 64, gen, q=q, k=keys), f"tau={tau}")


def test_functional_form_and_empty(gen):
    batch = Batch([37, 300], [100, 300], 16, gen)
    got = ops.attention_prefill(*batch.args())
    ref = reference_out(batch, torch.float64)
    assert_close_2x(got, ref, reference_out(batch, torch.bfloat16), FLOOR, "functional")
    empty_q = batch.q[:0]
    for cu in ([0], [0, 0, 0]):
        cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
        bt = batch.block_table[:len(cu) - 1]
        out = ops.attention_prefill(empty_q, batch.k_cache, batch.v_cache, bt, cu_t, batch.seq_lens[:len(cu) - 1])
        assert out.shape == (0, HQ, D)


def test_strided_q_and_out(gen):
    """q and out as [T, Hq, D] views of wider buffers (token stride 2 * Hq * D)."""
    batch = Batch([100, 9], [150, 9], 64, gen)
    wide = torch.randn(batch.q.shape[0], 2 * HQ, D, device="cuda").bfloat16()
    wide[:, :HQ] = batch.q
    batch.q = wide[:, :HQ]
    out_wide = poison_(torch.empty_like(wide))
    ops.attention_prefill(*batch.args(), out=out_wide[:, HQ:])
    assert out_wide[:, :HQ].isnan().all(), "wrote outside out"
    ref = reference_out(batch, torch.float64)
    assert_close_2x(out_wide[:, HQ:], ref, reference_out(batch, torch.bfloat16), FLOOR, "strided")


def test_torch_compile_fullgraph(gen):
    batch = Batch([50, 200], [80, 200], 64, gen)

    def step(q, k_cache, v_cache, block_table, cu, seq_lens):
        return ops.attention_prefill(q * 2, k_cache, v_cache, block_table, cu, seq_lens) + 1

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(*batch.args()[:6])
    assert torch.equal(got, step(*batch.args()[:6]))


def test_cuda_graph_replay(gen):
    batch = Batch([64, 3], [500, 3], 16, gen)
    out = poison_(torch.empty_like(batch.q))
    ops.attention_prefill(*batch.args(), out=out)  # warm-up outside capture (tensor maps, smem attribute)
    expected = out.clone()
    poison_(out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.attention_prefill(*batch.args(), out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


def _bad(batch, **changes):
    args = dict(zip(("q", "k_cache", "v_cache", "block_table", "cu_seqlens_q", "seq_lens_k", "softmax_scale",
                     "causal"), batch.args()))
    args.update(changes)
    return tuple(args.values())


def test_bad_input_names_the_argument(gen):
    batch = Batch([5, 7], [5, 20], 16, gen)
    cases = [
        (dict(q=batch.q.float()), r"q must be torch\.bfloat16, got torch\.float32"),
        (dict(k_cache=batch.k_cache[..., :64].contiguous(), v_cache=batch.v_cache[..., :64].contiguous()),
         r"q head dim must equal the cache's 64, got 128"),
        (dict(q=batch.q[..., :64].contiguous(), k_cache=batch.k_cache[..., :64].contiguous(),
              v_cache=batch.v_cache[..., :64].contiguous()), r"the GPU kernel needs head dim 128"),
        (dict(q=batch.q[:, :4].contiguous()), r"the GPU kernel needs head dim 128 and 4 query heads per KV head"),
        (dict(k_cache=batch.k_cache.transpose(0, 1).contiguous().transpose(0, 1)), r"k_cache must be contiguous"),
        (dict(block_table=batch.block_table.long()), r"block_table must be torch\.int32, got torch\.int64"),
        (dict(block_table=batch.block_table[:1]), r"block_table must have B=2 rows, got 1"),
        (dict(seq_lens_k=batch.seq_lens[:1]), r"seq_lens_k must have shape \(2,\), got \(1,\)"),
        (dict(cu_seqlens_q=batch.cu_seqlens.cpu()), r"cu_seqlens_q must be on cuda:0, got cpu"),
        (dict(softmax_scale=-1.0), r"softmax_scale must be a finite number > 0, got -1"),
    ]
    for changes, message in cases:
        args = _bad(batch, **changes)
        with pytest.raises(RuntimeError, match=message):
            ops.attention_prefill(*args)
    out = torch.empty_like(batch.q)
    with pytest.raises(RuntimeError, match=r"out must be torch\.bfloat16, got torch\.float32"):
        ops.attention_prefill(*batch.args(), out=out.float())
    with pytest.raises(RuntimeError, match=r"out must start on a 16-byte boundary"):
        ops.attention_prefill(*batch.args(), out=torch.empty(out.numel() + 1, dtype=out.dtype,
                                                               device="cuda")[1:].view(out.shape))
