# SPDX-License-Identifier: Apache-2.0
"""The tiny ZAYA1 model end to end: prefill / decode / chunked prefill consistency, varlen batches,
the two backends, greedy generation, and the decode step's no-allocation, no-sync contract.

Tolerances (DESIGN.md §6): the path under test may be at most twice as far from the fp32 reference
(one full prefill with fp32 reference ops) as the same prefill run with bf16 reference ops, plus a floor.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import zaya_kernels
from zaya_kernels import _backend
from zaya_kernels.model import ZayaModel, pack_sequences, random_model, tiny, zaya1_8b

from .util import assert_close_2x, poison_

FLOOR = 1e-5
needs_ops = pytest.mark.skipif(not zaya_kernels.extension_loaded(),
                               reason=f"torch.ops.zaya is not available: {zaya_kernels.BUILD_ERROR}")
MODEL_OPS = ("zaya_router", "moe_align", "moe_mlp", "cca_prep", "attention_prefill", "attention_decode")


@pytest.fixture(scope="module")
def model():
    return random_model(tiny(), seed=21)


def tokens(gen, n, vocab=tiny().vocab_size):
    return torch.randint(0, vocab, (n,), generator=gen)


def cu_of(*lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


def prefill_logits(model, sequences, page_size=4, compute_dtype=torch.float32, all_logits=True):
    """One packed prefill of `sequences` from a fresh state with the reference ops in compute_dtype."""
    model.use_backend("reference", compute_dtype)
    try:
        state = model.new_state(len(sequences), max(len(s) for s in sequences) + 4, page_size)
        ids, cu = pack_sequences(sequences)
        return model.prefill(state, ids, cu, all_logits=all_logits).clone(), state
    finally:
        model.use_backend("reference")


def reference_pair(model, sequences, **kwargs):
    """(fp32 reference logits, bf16-ops reference logits): the oracle and the measure of its precision."""
    return prefill_logits(model, sequences, **kwargs)[0], prefill_logits(model, sequences, compute_dtype=torch.bfloat16,
                                                                        **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# consistency of the three ways to reach the same position
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 2, 9, 17])
def test_prefill_equals_prefill_minus_one_plus_decode(model, gen, length):
    seq = tokens(gen, length + 1)
    ref, low = reference_pair(model, [seq], all_logits=False)
    state = model.new_state(1, length + 4, page_size=4)
    model.prefill(state, seq[:-1], cu_of(length))
    out = model.decode_step(state, seq[-1:])
    assert_close_2x(out, ref, low, FLOOR, f"decode after prefill({length})")
    assert int(state.seq_lens[0]) == length + 1


@pytest.mark.parametrize("split", [[1, 12], [4, 4, 5], [7, 1, 5], [1, 1, 1, 10]])
def test_chunked_prefill_equals_prefill(model, gen, split):
    seq = tokens(gen, sum(split))
    ref, low = reference_pair(model, [seq])
    full_state = prefill_logits(model, [seq])[1]
    state = model.new_state(1, len(seq) + 4, page_size=4)
    start = 0
    for n in split:
        out = model.prefill(state, seq[start:start + n], cu_of(n), all_logits=True)
        assert_close_2x(out, ref[start:start + n], low[start:start + n], FLOOR, f"chunk at {start} of {split}")
        start += n
    # the state after the chunks is the state after one prefill
    for name in ("conv_state", "value_state", "seq_lens"):
        assert torch.equal(getattr(state, name), getattr(full_state, name)), name
    length = len(seq)
    pages = state.block_table[0, torch.arange(length) // 4].long()
    slots = torch.arange(length) % 4
    assert torch.equal(state.k_cache[:, pages, slots], full_state.k_cache[:, pages, slots])
    assert torch.equal(state.v_cache[:, pages, slots], full_state.v_cache[:, pages, slots])


def test_many_decode_steps_follow_prefill(model, gen):
    seq = tokens(gen, 14)
    ref, low = reference_pair(model, [seq])
    state = model.new_state(1, 16, page_size=4)
    model.prefill(state, seq[:3], cu_of(3))
    for t in range(3, 14):
        out = model.decode_step(state, seq[t:t + 1])
        assert_close_2x(out[0], ref[t], low[t], FLOOR, f"decode step at position {t}")


# ---------------------------------------------------------------------------------------------
# varlen batches
# ---------------------------------------------------------------------------------------------

def test_varlen_batch_equals_sequences_one_by_one(model, gen):
    lengths = [1, 7, 13, 4]
    seqs = [tokens(gen, n) for n in lengths]
    batched, _ = prefill_logits(model, seqs)
    cu = cu_of(*lengths)
    for b, seq in enumerate(seqs):
        ref, low = reference_pair(model, [seq])
        assert_close_2x(batched[int(cu[b]):int(cu[b + 1])], ref, low, FLOOR, f"sequence {b} in the batch")


def test_varlen_decode_and_uneven_chunks_equal_one_by_one(model, gen):
    """A batch continued by chunks of different lengths (one empty) and by decode steps, per sequence equal
    to that sequence's own full prefill."""
    full = [tokens(gen, n) for n in (10, 12, 9)]
    first = [3, 5, 6]      # prefill lengths
    second = [4, 0, 0]     # a second, uneven chunk; sequence 1 and 2 sit this one out
    state = model.new_state(3, 16, page_size=4)
    model.prefill(state, torch.cat([s[:n] for s, n in zip(full, first)]), cu_of(*first))
    chunk = model.prefill(state, torch.cat([s[f:f + n] for s, f, n in zip(full, first, second)]), cu_of(*second))
    assert torch.equal(chunk[1:], torch.zeros_like(chunk[1:])), "empty chunks give zero rows"
    refs = [reference_pair(model, [s]) for s in full]
    assert_close_2x(chunk[0], refs[0][0][6], refs[0][1][6], FLOOR, "sequence 0 after its second chunk")
    assert state.seq_lens.tolist() == [7, 5, 6]
    for step in range(2):
        positions = state.seq_lens.tolist()
        out = model.decode_step(state, torch.stack([s[p] for s, p in zip(full, positions)]))
        for b, (ref, low) in enumerate(refs):
            assert_close_2x(out[b], ref[positions[b]], low[positions[b]], FLOOR, f"decode {step}, sequence {b}")


def test_prefill_refuses_more_tokens_than_the_state_holds(model, gen):
    state = model.new_state(1, 8, page_size=4)
    with pytest.raises(ValueError, match="capacity 8"):
        model.prefill(state, tokens(gen, 9), cu_of(9))


# ---------------------------------------------------------------------------------------------
# the two backends
# ---------------------------------------------------------------------------------------------

@needs_ops
def test_backends_agree(gen):
    lengths = [5, 11]
    seqs = [tokens(gen, n) for n in lengths]
    ref_model = random_model(tiny(), seed=22)
    kernels = random_model(tiny(), seed=22, backend="kernels")
    low_model = random_model(tiny(), seed=22).use_backend("reference", torch.bfloat16)
    states = {}
    outputs = {}
    for name, m in (("ref", ref_model), ("kernels", kernels), ("low", low_model)):
        states[name] = m.new_state(2, 16, page_size=4)
        ids, cu = pack_sequences([s[:-2] for s in seqs])
        outputs[name] = [m.prefill(states[name], ids, cu, all_logits=True).clone()]
        for step in (2, 1):
            outputs[name].append(m.decode_step(states[name], torch.stack([s[-step] for s in seqs])).clone())
    for i, (out, ref, low) in enumerate(zip(outputs["kernels"], outputs["ref"], outputs["low"])):
        assert_close_2x(out, ref, low, FLOOR, f"kernels vs reference, call {i}")
    for name in ("conv_state", "value_state", "k_cache", "v_cache"):
        assert_close_2x(getattr(states["kernels"], name), getattr(states["ref"], name),
                        getattr(states["low"], name), FLOOR, name)


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        ZayaModel(tiny(), backend="triton")


# ---------------------------------------------------------------------------------------------
# greedy generation
# ---------------------------------------------------------------------------------------------

def test_generate_is_greedy_on_the_model_logits(model, gen):
    prompt = tokens(gen, 5).tolist()
    out = model.generate([prompt], max_new_tokens=6, stop_token=-1)[0]
    assert len(out) == 6
    for i, token in enumerate(out):
        logits, _ = prefill_logits(model, [torch.tensor(prompt + out[:i])], all_logits=False)
        assert token == int(logits[0].argmax()), f"token {i}"


def test_generate_stops_at_the_stop_token_and_the_limit(model, gen):
    prompts = [tokens(gen, n).tolist() for n in (3, 8, 1)]
    free = model.generate(prompts, max_new_tokens=7, stop_token=-1)
    assert [len(t) for t in free] == [7, 7, 7]
    stop = free[1][2]  # sequence 1's third token becomes the stop token
    stopped = model.generate(prompts, max_new_tokens=7, stop_token=stop)
    for run, full in zip(stopped, free):
        expected = full[:full.index(stop) + 1] if stop in full else full
        assert run == expected
    assert stopped[1][-1] == stop and len(stopped[1]) <= 3
    assert model.generate(prompts, max_new_tokens=1, stop_token=-1) == [t[:1] for t in free]


def test_generate_batch_equals_one_by_one(model, gen):
    prompts = [tokens(gen, n).tolist() for n in (2, 9, 5)]
    batched = model.generate(prompts, max_new_tokens=5, stop_token=-1)
    assert batched == [model.generate([p], max_new_tokens=5, stop_token=-1)[0] for p in prompts]


def test_greedy_decode_checks_capacity(model, gen):
    state = model.new_state(1, 6, page_size=2)
    logits = model.prefill(state, tokens(gen, 4), cu_of(4))
    with pytest.raises(ValueError, match="needs 7 cached tokens"):
        model.greedy_decode(state, logits, max_new_tokens=4)


# ---------------------------------------------------------------------------------------------
# the decode step's contract: out= / in-place ops and views only, no host reads (capturable)
# ---------------------------------------------------------------------------------------------

class OpAudit(TorchDispatchMode):
    """Records every aten/zaya op the model itself calls (the ops' own kernels run below this mode)."""

    def __init__(self):
        super().__init__()
        self.allocating, self.host_reads, self.count = [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        schema = func._schema
        writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
        view = any(r.alias_info is not None for r in schema.returns)
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.host_reads.append(str(func))
        elif not (writes or view):
            self.allocating.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_ops
def test_decode_step_allocates_nothing_and_reads_nothing_on_the_host(gen):
    # bf16 logits: the fp32 LM head's out-dtype GEMM exists on CUDA only; on the CPU it converts (not captured).
    model = random_model(tiny().replace(fp32_logits=False), seed=23, backend="kernels")
    state = model.new_state(2, 16, page_size=4)
    ids, cu = pack_sequences([tokens(gen, 3), tokens(gen, 6)])
    model.prefill(state, ids, cu)
    step_tokens = tokens(gen, 2)
    audit = OpAudit()
    with audit:
        logits = model.decode_step(state, step_tokens)
    assert audit.count > 0
    assert audit.allocating == [] and audit.host_reads == [], (audit.allocating, audit.host_reads)
    assert logits.data_ptr() == state.decode_ws.logits.data_ptr()
    # and the audited step computed the right thing
    model.use_backend("reference")
    seqs = [torch.cat([ids[:3], step_tokens[:1]]), torch.cat([ids[3:], step_tokens[1:]])]
    for b, seq in enumerate(seqs):
        ref, low = reference_pair(model, [seq], all_logits=False)
        assert_close_2x(logits[b], ref[0], low[0], FLOOR, f"audited decode step, sequence {b}")


# ---------------------------------------------------------------------------------------------
# GPU (the H200): live once every op has its device kernel. The kernels are built for ZAYA1's
# per-layer geometry (e.g. the router kernel needs R = 256 and H a multiple of 512), so these use the
# real layers with two blocks and a small vocabulary rather than tiny().
# ---------------------------------------------------------------------------------------------

def gpu_config():
    return zaya1_8b().replace(num_blocks=2, vocab_size=2048)

def _skip_without_device_kernels():
    missing = [op for op in MODEL_OPS if not _backend.has_device_kernel(op)]
    if missing:
        pytest.skip(f"no device kernel yet for {missing}")


@pytest.mark.gpu
def test_gpu_decode_step_is_capturable_in_a_cuda_graph():
    _skip_without_device_kernels()
    model = random_model(gpu_config(), seed=24, device="cuda", backend="kernels")
    state = model.new_state(2, 32)
    ids, cu = pack_sequences([[5, 6, 7], [8, 9, 10, 11, 12]], "cuda")
    model.prefill(state, ids, cu)
    step_tokens = torch.tensor([3, 4], device="cuda")
    snapshot = {k: getattr(state, k).clone() for k in ("conv_state", "value_state", "k_cache", "v_cache", "seq_lens")}
    eager = model.decode_step(state, step_tokens).clone()
    for k, v in snapshot.items():
        getattr(state, k).copy_(v)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        model.decode_step(state, step_tokens)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    for k, v in snapshot.items():
        getattr(state, k).copy_(v)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = model.decode_step(state, step_tokens)
    for k, v in snapshot.items():
        getattr(state, k).copy_(v)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


@pytest.mark.gpu
def test_gpu_backends_agree(gen):
    _skip_without_device_kernels()
    seqs = [tokens(gen, 7, 2048), tokens(gen, 19, 2048)]
    results = []
    for backend, dtype in (("kernels", torch.float32), ("reference", torch.float32), ("reference", torch.bfloat16)):
        m = random_model(gpu_config(), seed=25, device="cuda").use_backend(backend, dtype)
        state = m.new_state(2, 24)
        ids, cu = pack_sequences(seqs, "cuda")
        results.append(m.prefill(state, ids, cu, all_logits=True).cpu())
    assert_close_2x(*results, FLOOR, "kernels vs reference on the GPU")


def test_demo_runs_both_backends_and_reports_agreement(capsys):
    from zaya_kernels.demo import run_demo

    report = run_demo(device="cpu", max_new_tokens=3)
    printed = capsys.readouterr().out
    assert "both backends run the reference path" in printed
    reference = report["backends"]["reference"]
    assert reference["error"] is None and all(1 <= len(t) <= 3 for t in reference["tokens"])
    if zaya_kernels.extension_loaded():
        assert report["agreement"]["identical_tokens"] and report["agreement"]["max_logit_diff"] == 0.0
    else:
        assert "torch.ops.zaya" in report["backends"]["kernels"]["error"] and report["agreement"] is None


def test_unwritten_cache_slots_and_stale_buffers_are_never_read(model, gen):
    """Poison (NaN / sentinels) the whole KV pool and every decode buffer: results must not change. Not
    the token ids (the step's input) and the route workspace (zero between calls by contract)."""
    seqs = [tokens(gen, n) for n in (6, 3)]
    ids, cu = pack_sequences([s[:-1] for s in seqs])
    step = torch.stack([s[-1] for s in seqs])
    results = []
    for poisoned in (False, True):
        state = model.new_state(2, 12, page_size=4)
        if poisoned:
            poison_(state.k_cache)
            poison_(state.v_cache)
            for value in vars(state.decode_ws).values():
                for t in value if isinstance(value, tuple) else (value,):
                    if isinstance(t, torch.Tensor) and all(t is not keep for keep in (
                            state.decode_ws.token_ids, state.decode_ws.route_workspace)):
                        poison_(t)
        prefill = model.prefill(state, ids, cu).clone()
        results.append((prefill, model.decode_step(state, step).clone()))
    for clean, dirty in zip(*results):
        assert torch.isfinite(dirty).all() and torch.equal(clean, dirty)
