# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the benchmark harness and reports (DESIGN.md §7): the results JSON's exact shape and its
round trip, rates, floors and FLOP counts against PERF.md's figures, the baseline ratio, the markdown,
the comparison of two files, the timers' statistics, and the baselines' own correctness checks."""
import contextlib
import json
import time

import pytest
import torch

from bench import baselines, harness, report
from zaya_kernels import reference

CEILINGS = {"copy_TBps": 4.0, "matmul_bf16_TFLOPs": 800.0}
TOP_KEYS = {"device", "torch", "runtime", "commit", "date", "ceilings", "rows"}
ROW_OPTIONAL = {"tflops", "tbps", "floor_us", "correct"}
GEMM_SHAPE = {"T": 128, "E": 16, "K": 2048, "N": 4096}


def _results(rows=()) -> harness.Results:
    results = harness.Results("suite", device="cpu", ceilings=CEILINGS)
    for op, impl, shape, median_us, kwargs in rows:
        results.add_row(op, impl, shape, median_us, **kwargs)
    return results


def _gemm_results() -> harness.Results:
    return _results([
        ("grouped_gemm_fc1", "torch_mm_loop", GEMM_SHAPE, 400.0, {}),
        ("grouped_gemm_fc1", "torch_grouped_mm", GEMM_SHAPE, 100.0,
         dict(flops=4e10, bytes=2e8, floor_us=66.0, correct=True)),
        ("grouped_gemm_fc1", "dense_mm", GEMM_SHAPE, 50.0, {}),
        ("grouped_gemm_fc1", "zaya", GEMM_SHAPE, 25.0, dict(flops=4e10)),
        ("grouped_gemm_fc1", "zaya", {**GEMM_SHAPE, "T": 1}, 10.0, {}),
        ("attention_decode", "sdpa_cudnn", {"B": 1}, 100.0, {}),
        ("attention_decode", "sdpa_flash", {"B": 1}, 50.0, {}),
        ("attention_decode", "zaya", {"B": 1}, None, dict(error="RuntimeError: boom")),
    ])


def test_json_has_exactly_the_design_shape_and_round_trips(tmp_path):
    results = _gemm_results()
    paths = results.write(tmp_path)
    assert [p.name for p in paths] == ["suite.json", "suite.md", "suite.png"]
    data = json.loads((tmp_path / "suite.json").read_text())
    assert set(data) == TOP_KEYS
    assert data["device"] == "cpu" and data["runtime"] == "cpu" and data["torch"] == torch.__version__
    assert data["ceilings"] == CEILINGS
    for row in data["rows"]:
        assert {"op", "impl", "shape", "median_us"} <= set(row)
        assert isinstance(row["shape"], dict)
        assert set(row) - {"op", "impl", "shape", "median_us"} <= ROW_OPTIONAL | {"error"}
    grouped = data["rows"][1]
    assert grouped["tflops"] == pytest.approx(400.0) and grouped["tbps"] == pytest.approx(2.0)
    assert grouped["floor_us"] == 66.0 and grouped["correct"] is True
    assert data["rows"][-1] == {"op": "attention_decode", "impl": "zaya", "shape": {"B": 1}, "median_us": None,
                                "error": "RuntimeError: boom"}
    loaded = harness.load(tmp_path / "suite.json")
    assert loaded.suite == "suite" and loaded.to_dict() == data


def test_load_rejects_a_foreign_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="missing"):
        harness.load(path)


def test_add_row_needs_scalar_shapes():
    with pytest.raises(TypeError, match="shape"):
        _results().add_row("op", "eager", {"T": torch.tensor(3)}, 1.0)


def test_speedup_uses_the_fastest_listed_baseline_of_the_same_shape():
    rows = _gemm_results().rows
    by_impl = {(r["op"], r["impl"], r["shape"]["T"] if "T" in r["shape"] else None): r for r in rows}
    zaya = by_impl[("grouped_gemm_fc1", "zaya", 128)]
    assert report.speedup(rows, zaya) == (4.0, "torch_grouped_mm")  # dense_mm (50 us) is not a baseline
    assert report.speedup(rows, by_impl[("grouped_gemm_fc1", "torch_mm_loop", 128)]) == (0.25, "torch_grouped_mm")
    assert report.speedup(rows, by_impl[("grouped_gemm_fc1", "zaya", 1)]) is None  # no baseline at T=1
    flash = by_impl[("attention_decode", "sdpa_flash", None)]
    assert report.baseline_row(rows, flash) is flash  # faster than cuDNN: it is the baseline
    assert report.speedup(rows, by_impl[("attention_decode", "zaya", None)]) is None  # failed row


def test_markdown_shows_ratios_ceiling_percentages_and_errors():
    text = report.markdown(_gemm_results().to_dict(), title="suite")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| op |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(report.COLUMNS)
    zaya = next(line for line in lines if "| zaya | T=128" in line)
    cells = [c.strip() for c in zaya.strip("|").split("|")]
    assert cells[3] == "25.00" and cells[4] == "1600.0" and cells[5] == "200"  # 1600 TF of an 800 TF ceiling
    assert cells[9] == "4.00x torch_grouped_mm"
    grouped = next(line for line in lines if "| torch_grouped_mm |" in line)
    assert "| baseline |" in grouped and "| 50 |" in grouped  # 2 TB/s of 4 TB/s
    assert "error: RuntimeError: boom" in text
    assert "4 TB/s" in text and "800 TFLOP/s" in text


def test_compare_matches_op_impl_and_shape(tmp_path):
    a = _results([("route", "eager", {"T": 1}, 200.0, {}), ("route", "eager", {"T": 16}, 100.0, {}),
                  ("route", "zaya", {"T": 1}, 10.0, {})])
    b = _results([("route", "eager", {"T": 1}, 100.0, {}), ("route", "eager", {"T": 16}, None, {"error": "x"}),
                  ("route", "eager", {"T": 4096}, 300.0, {})])
    a.write(tmp_path / "a")
    b.write(tmp_path / "b")
    rows = report.compare(tmp_path / "a" / "suite.json", tmp_path / "b" / "suite.json")
    assert [(r["impl"], r["shape"]["T"], r["a_us"], r["b_us"], r["ratio"]) for r in rows] == [
        ("eager", 1, 200.0, 100.0, 0.5), ("eager", 16, 100.0, None, None), ("zaya", 1, 10.0, None, None),
        ("eager", 4096, None, 300.0, None)]


def test_floors_reproduce_perf_md():
    """PERF.md's grouped-GEMM floors at its ceilings (4.09 TB/s, 755 TFLOP/s), K=2048, N=4096."""
    perf = {"copy_TBps": 4.09, "matmul_bf16_TFLOPs": 755.0}
    for tokens, touched, byte_floor, flop_floor in ((1, 1, 4, 0), (128, 16, 66, 3), (1024, 16, 69, 23),
                                                     (4096, 16, 78, 91), (65536, 16, 262, 1456)):
        nbytes = harness.grouped_gemm_bytes(tokens, touched, 4096, 2048)
        flops = harness.gemm_flops(tokens, 4096, 2048)
        assert harness.floor_us(perf, bytes=nbytes) == pytest.approx(byte_floor, abs=1)
        assert harness.floor_us(perf, flops=flops) == pytest.approx(flop_floor, abs=1)
        assert harness.floor_us(perf, flops=flops, bytes=nbytes) == pytest.approx(max(byte_floor, flop_floor), abs=1)


def test_attention_flops_count_the_keys_each_query_sees():
    assert harness.attention_flops(2, 8, 4, 4, 128, causal=False) == 4 * 2 * 8 * 4 * 4 * 128
    assert harness.attention_flops(2, 8, 4, 4, 128, causal=True) == 4 * 2 * 8 * 4 * 2.5 * 128  # (1+2+3+4)/4 keys
    assert harness.attention_flops(1, 8, 1, 4096, 128, causal=True) == 4 * 8 * 4096 * 128     # decode: every key
    assert harness.attention_flops(1, 1, 2, 6, 64, causal=True) == 4 * 2 * 5.5 * 64          # (5 + 6) / 2 keys


def test_summary_statistics():
    stats = harness.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats == {"median_us": 3.0, "p20_us": pytest.approx(1.8), "p80_us": pytest.approx(4.2), "iters": 5}


def test_time_cpu_rotates_input_sets():
    seen = []
    stats = harness.time_cpu(seen.append, warmup=1, iters=4, rotate=[("a",), ("b",), ("c",)])
    assert seen == ["a", "b", "c", "a", "b"] and stats["iters"] == 4 and stats["median_us"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_time_cuda_without_gpu_says_so():
    with pytest.raises(RuntimeError, match="needs a CUDA or ROCm GPU"):
        harness.time_cuda(lambda: None)


def test_device_slug():
    assert harness.device_slug("NVIDIA H200") == "h200"
    assert harness.device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert harness.device_slug("AMD Instinct MI300X") == "mi300x"
    assert harness.device_slug("NVIDIA GeForce RTX 4090") == "rtx-4090"


def test_commit_named_by_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("ZAYA_COMMIT", "abc123")
    assert harness.git_commit() == "abc123"  # even inside this checkout, whose .git says otherwise
    monkeypatch.setattr(harness, "REPO_ROOT", tmp_path)
    assert harness.git_commit() == "abc123"
    monkeypatch.delenv("ZAYA_COMMIT")
    assert harness.git_commit() == "unknown"


def test_gemm_check_catches_a_wrong_layout():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(24, 64, generator=gen).bfloat16()
    w = torch.randn(3, 32, 64, generator=gen).bfloat16()
    offs = torch.tensor([5, 5, 24], dtype=torch.int32)
    loop = baselines.mm_loop(a, w, offs)
    ref = reference.grouped_gemm(a, w, torch.tensor([0, 5, 5, 24], dtype=torch.int32))
    assert baselines.gemm_agrees(loop, ref.to(loop.dtype))
    wrong = baselines.mm_loop(a, w.flip(0), offs)
    assert not baselines.gemm_agrees(wrong, loop)


@pytest.mark.parametrize("routes,k", baselines.TOPK_CONFIGS)
def test_tie_free_logits_make_eager_topk_match_the_reference(routes, k):
    gen = torch.Generator().manual_seed(routes)
    logits, bias = baselines.tie_free_logits(512, routes, k, gen, "cpu")
    weights, ids = baselines.eager_topk_gating(logits, bias, k)
    ref_weights, ref_ids = reference.topk_gating(logits, bias, k)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-6)
    top = torch.topk(torch.softmax(logits.double(), -1) + bias.double(), k + 1, dim=-1).values
    assert (top[:, :-1] - top[:, 1:]).min() >= 1e-5


def test_eager_route_sorts_tokens_into_route_order():
    gen = torch.Generator().manual_seed(2)
    weights = baselines.make_router_weights("cpu", gen)
    x = torch.randn(64, baselines.HIDDEN, generator=gen).bfloat16()
    r_prev = torch.randn(64, baselines.ROUTER_WIDTH, generator=gen).bfloat16()
    probs, ids, order, counts, r = baselines.eager_route(x, r_prev, weights)
    assert probs.shape == (64,) and r.shape == (64, baselines.ROUTER_WIDTH)
    assert torch.all(ids[order][1:] >= ids[order][:-1])
    assert counts.sum() == 64 and torch.equal(counts, torch.bincount(ids, minlength=baselines.ROUTES))


class _FakeCuda:
    """Just enough of torch.cuda to walk time_cuda's control flow on the CPU: events read the wall
    clock, streams are no-ops, and a graph counts the calls made while it was capturing."""

    def __init__(self, fail_capture=False):
        self.fail_capture = fail_capture
        self.replays = 0

    def install(self, monkeypatch):
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self, stream=None):
                self.t = time.perf_counter()

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3

        class Graph:
            def replay(self):
                fake.replays += 1

        @contextlib.contextmanager
        def graph(g):
            fake.capturing = True
            yield
            fake.capturing = False
            if fake.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

        class Stream:
            def wait_stream(self, other):
                pass

        for name, value in dict(is_available=lambda: True, Event=Event, CUDAGraph=Graph, graph=graph,
                                Stream=Stream, stream=lambda s: contextlib.nullcontext(), current_stream=Stream,
                                synchronize=lambda: None, current_device=lambda: 0).items():
            monkeypatch.setattr(torch.cuda, name, value)
        # a CPU stand-in for the flush buffer of device 0, so flush_cache's write + read really run
        monkeypatch.setitem(harness._flush_buffers, 0, (torch.ones(1024), torch.empty(())))
        self.capturing = False


def test_time_cuda_control_flow_on_a_fake_device(monkeypatch):
    fake = _FakeCuda()
    fake.install(monkeypatch)
    calls = []
    stats = harness.time_cuda(lambda x: calls.append(x) or time.sleep(1e-4), warmup=2, iters=5, rotate=[(1,), (2,)])
    assert calls == [1, 2, 1, 2, 1, 2, 1] and stats["iters"] == 5 and stats["median_us"] >= 100
    assert float(harness._flush_buffers[0][0].sum()) == 0  # the flush wrote the buffer

    calls.clear()
    in_capture = []
    stats = harness.time_cuda(lambda x: calls.append(x) or in_capture.append(fake.capturing), warmup=3, iters=4,
                              graph=True, rotate=[(1,), (2,), (3,)], graph_calls=7)
    # one warm-up call per set outside the capture, then 7 calls captured, cycling through the sets
    assert calls == [1, 2, 3] + [1, 2, 3, 1, 2, 3, 1]
    assert in_capture == [False] * 3 + [True] * 7
    assert fake.replays == 3 + 4 and stats["iters"] == 4


def test_baselines_time_eagerly_when_capture_fails(monkeypatch):
    _FakeCuda(fail_capture=True).install(monkeypatch)
    grid = baselines.grid_for(torch.device("cpu"), quick=True)
    stats, how = baselines._time(torch.device("cuda"), lambda: None, grid, graph=True, rotate=None)
    assert how.startswith("events (graph capture failed: RuntimeError") and stats["iters"] == grid.iters
