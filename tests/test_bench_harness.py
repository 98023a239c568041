# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the benchmark harness and reports (DESIGN.md §7): the results JSON's exact shape and its
round trip, rates, floors and FLOP counts against PERF.md's figures, the best-baseline ratio, guarded
ratios on a slow device, the markdown, the comparison of two files, the timers' statistics and replay
plan, torch.compile rows, the suites' row schema (mocked timings), and the PyTorch baselines' own
correctness against the references (the capturable route / align, the grouped-mm MoE, the batched
cca_prep)."""
import contextlib
import json
import math
import time

import pytest
import torch

from bench import baselines, bench_attention, bench_experts, harness, report
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
    assert "| best baseline |" in grouped and "| 50 |" in grouped  # 2 TB/s of 4 TB/s
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
    loop = bench_experts.mm_loop(a, w, (5, 5, 24))
    ref = reference.grouped_gemm(a, w, torch.tensor([0, 5, 5, 24], dtype=torch.int32))
    assert baselines.gemm_agrees(loop, ref.to(loop.dtype))
    grouped = bench_experts.grouped_mm_fc1(a, w, torch.tensor([5, 5, 24], dtype=torch.int32))
    assert baselines.gemm_agrees(grouped, ref)
    wrong = bench_experts.mm_loop(a, w.flip(0), (5, 5, 24))
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


def test_measure_times_eagerly_when_capture_fails(monkeypatch):
    _FakeCuda(fail_capture=True).install(monkeypatch)
    stats, how = harness.measure("cuda", lambda: time.sleep(1e-4), graph=True, iters=12)
    assert how.startswith("events (graph capture failed: RuntimeError") and stats["iters"] == 12


def test_measure_sizes_the_replay_from_a_probe(monkeypatch):
    fake = _FakeCuda()
    fake.install(monkeypatch)
    calls = []
    stats, how = harness.measure("cuda", lambda x: calls.append(x) or time.sleep(1e-3), graph=True,
                                 rotate=[(1,), (2,), (3,)], iters=15, warmup=3)
    # probe: 1 warm-up + 3 timed eager calls; then one warm call per set and the capture; a ~1 ms call
    # needs no more calls per replay than the 3 sets
    assert how == "graph" and stats["iters"] == 15
    assert calls[:4] == [1, 2, 3, 1] and calls[4:7] == [1, 2, 3] and calls[7:] == [1, 2, 3]


def test_replay_plan():
    assert harness.replay_plan(2.0, 1, 100) == (harness.GRAPH_CALLS, 100)   # short call: 20 per replay
    assert harness.replay_plan(2.0, 64, 100) == (64, 100)                     # every rotated set per replay
    assert harness.replay_plan(1000.0, 1, 100) == (1, 100)                    # 1 ms: one call per replay
    assert harness.replay_plan(50_000.0, 1, 100) == (1, 39)                   # 50 ms: 2 s of samples
    assert harness.replay_plan(500_000.0, 1, 100) == (1, harness.MIN_ITERS)   # never fewer than MIN_ITERS
    assert harness.replay_plan(0.0, 1, 100)[0] == harness.GRAPH_CALLS         # a timer reading 0: no division


# ---------------------------------------------------------------------------------------------
# finding 4: no ceiling or ratio rounds to zero or divides by zero
# ---------------------------------------------------------------------------------------------

def test_ceilings_of_a_very_slow_device_stay_positive(monkeypatch):
    """A loaded 2-core CPU: ~0.004 TFLOP/s, which the old two-decimal rounding made 0.0 (then report.py
    divided by it). Here the mocked device takes 1000 s per call."""
    monkeypatch.setattr(harness, "time_on", lambda device, fn, **kw: {"median_us": 1e9, "p20_us": 1e9,
                                                                       "p80_us": 1e9, "iters": 1})
    ceilings = harness.measure_ceilings("cpu")
    assert 0 < ceilings["matmul_bf16_TFLOPs"] < 1e-6 and 0 < ceilings["copy_TBps"] < 1e-6
    assert ceilings["matmul_bf16_TFLOPs"] == pytest.approx(2 * 512 ** 3 / 1e9 / 1e6, rel=1e-5)
    results = harness.Results("slow", device="cpu", ceilings=ceilings)
    floor = harness.floor_us(ceilings, flops=1e9, bytes=1e6)
    assert math.isfinite(floor) and floor > 0
    results.add_row("grouped_gemm_fc1", "torch_grouped_mm", GEMM_SHAPE, 5e6, flops=1e9, bytes=1e6, floor_us=floor)
    results.add_row("grouped_gemm_fc1", "zaya", GEMM_SHAPE, 1e6, flops=1e9, bytes=1e6, floor_us=floor)
    text = report.markdown(results.to_dict(), title="slow")
    zaya = next(line for line in text.splitlines() if "| zaya |" in line)
    assert "5.00x torch_grouped_mm" in zaya and "inf" not in zaya and "nan" not in zaya


def test_ceiling_0_from_an_old_file_divides_nothing(tmp_path):
    data = _gemm_results().to_dict()
    data["ceilings"] = {"copy_TBps": 0.0, "matmul_bf16_TFLOPs": 0.0}
    text = report.markdown(data, title="old")
    zaya = next(line for line in text.splitlines() if "| zaya | T=128" in line)
    cells = [c.strip() for c in zaya.strip("|").split("|")]
    assert cells[4] == "1600.0" and cells[5] == "" and cells[9] == "4.00x torch_grouped_mm"
    assert harness.floor_us(data["ceilings"], flops=1e9, bytes=1e6) is None
    assert harness.floor_us(data["ceilings"]) == 0.0  # nothing to move, nothing divided
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert report.plot(data, tmp_path / "old.png", title="old") is not None


def test_safe_ratio_and_zero_or_failed_medians():
    assert harness.safe_ratio(6, 3) == 2 and harness.safe_ratio(0, 3) == 0
    for num, den in ((1, 0), (1, -2), (None, 1), (1, None), (float("nan"), 1), (1, float("inf")), ("x", 1)):
        assert harness.safe_ratio(num, den) is None
    rows = _results([("route", "eager", {"T": 1}, 0.0, {}), ("route", "torch_graph", {"T": 1}, None, {"error": "x"}),
                     ("route", "zaya", {"T": 1}, 0.0, {})]).rows
    assert report.baseline_row(rows, rows[2]) is None and report.speedup(rows, rows[2]) is None
    a = _results([("route", "eager", {"T": 1}, 0.0, {})])
    assert report.table_cells(a.to_dict())[0][9] == ""


# ---------------------------------------------------------------------------------------------
# finding 2: the best baseline of the same run
# ---------------------------------------------------------------------------------------------

def test_speedup_is_against_the_best_baseline_of_the_same_run():
    shape = {"T": 16}
    rows = _results([
        ("route", "eager", shape, 300.0, {}), ("route", "torch_graph", shape, 40.0, {}),
        ("route", "torch_compile", shape, 25.0, {}), ("route", "zaya", shape, 10.0, {}),
        ("route", "zaya_two_ops", shape, 5.0, {}),  # ours: never a baseline, however fast
        ("route", "torch_compile", {"T": 32}, 1.0, {}),  # another shape: not compared
        ("moe_mlp", "torch_grouped_mm", shape, 90.0, {}), ("moe_mlp", "torch_compile", shape, None, {"error": "x"}),
        ("moe_mlp", "zaya", shape, 30.0, {}),
        ("cca_prep", "eager", shape, 900.0, {}), ("cca_prep", "torch_graph", shape, 60.0, {}),
        ("cca_prep", "zaya", shape, 3.0, {}),
        ("new_op", "some_lib", shape, 8.0, {}), ("new_op", "dense_mm", shape, 1.0, {}),
        ("new_op", "zaya", shape, 4.0, {}),
    ]).rows
    by = {(r["op"], r["impl"], r["shape"]["T"]): r for r in rows}
    assert report.speedup(rows, by[("route", "zaya", 16)]) == (2.5, "torch_compile")
    assert report.speedup(rows, by[("route", "zaya_two_ops", 16)]) == (5.0, "torch_compile")
    assert report.speedup(rows, by[("moe_mlp", "zaya", 16)]) == (3.0, "torch_grouped_mm")  # failed compile ignored
    assert report.speedup(rows, by[("cca_prep", "zaya", 16)]) == (20.0, "torch_graph")
    assert report.speedup(rows, by[("new_op", "zaya", 16)]) == (2.0, "some_lib")  # unlisted op: bounds excluded
    assert report.is_ours("zaya_page64") and not report.is_ours("zayax")
    text = report.markdown(_results([("route", "eager", shape, 300.0, {}), ("route", "torch_compile", shape, 25.0, {}),
                                     ("route", "zaya", shape, 10.0, {})]).to_dict())
    assert "speedup vs best baseline" in text and "2.50x torch_compile" in text
    assert "route: eager, torch_graph, torch_compile" in text and "moe_mlp" not in text


# ---------------------------------------------------------------------------------------------
# torch_compile rows
# ---------------------------------------------------------------------------------------------

def _gpu_results() -> harness.Results:
    """Results whose device claims to be a GPU (record_compiled makes no rows on the CPU)."""
    results = _results()
    results.torch_device = torch.device("cuda")
    return results


def test_a_spent_compile_budget_becomes_an_error_row():
    compiler = harness.Compiler("max-autotune-no-cudagraphs", budget_s=10.0)
    compiler.spent_s["route"] = 10.0
    results = _gpu_results()
    row = harness.record_compiled(results, compiler, "route", {"T": 1}, lambda x: x, [(torch.ones(1),)])
    assert row["median_us"] is None and "compile budget" in row["error"] and row["impl"] == "torch_compile"
    assert row["compile_mode"] == "max-autotune-no-cudagraphs"


def test_a_failed_compile_becomes_an_error_row(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded\nlong traceback")
    monkeypatch.setattr(torch, "compile", broken)
    results = _gpu_results()
    compiler = harness.Compiler("max-autotune-no-cudagraphs")
    row = harness.record_compiled(results, compiler, "moe_mlp", {"T": 1}, lambda x: x, [(torch.ones(1),)])
    assert row["error"] == "RuntimeError: inductor exploded" and row["median_us"] is None


def test_no_compile_rows_when_off_or_on_the_cpu():
    assert harness.record_compiled(_gpu_results(), harness.Compiler(None), "op", {}, lambda: 0, [()]) is None
    assert harness.record_compiled(_results(), harness.Compiler(), "op", {}, lambda: 0, [()]) is None


def test_compiler_counts_its_time_per_op(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    compiler = harness.Compiler("default", budget_s=100.0)
    compiled, seconds = compiler.compile("op", lambda x: time.sleep(0.01), (None,))
    assert seconds >= 0.01 and compiler.spent_s["op"] >= 0.01 and "other" not in compiler.spent_s


# ---------------------------------------------------------------------------------------------
# the suites' rows, with mocked timings
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fixed_timer(monkeypatch):
    """time_cpu returns fixed statistics without timing anything (the suites still build inputs and run
    every correctness check)."""
    stats = {"median_us": 100.0, "p20_us": 90.0, "p80_us": 110.0, "iters": 3}
    monkeypatch.setattr(harness, "time_cpu", lambda fn, **kwargs: dict(stats))
    return stats


def _check_schema(rows, ops_impls):
    assert {(r["op"], r["impl"]) for r in rows} == ops_impls
    for row in rows:
        assert {"op", "impl", "shape", "median_us"} <= set(row) and isinstance(row["shape"], dict)
        if row.get("error"):
            continue
        assert row["median_us"] == 100.0 and row["timing"] == "wall", row


def test_experts_suite_rows(fixed_timer):
    results = harness.Results("experts_cpu", device="cpu", ceilings=CEILINGS)
    bench_experts.run(results)
    grid = bench_experts.grid_for(torch.device("cpu"), quick=False)
    _check_schema(results.rows, {("grouped_gemm_fc1", "torch_grouped_mm"), ("grouped_gemm_fc1", "torch_mm_loop"),
                                 ("grouped_gemm_fc1", "dense_mm"), ("moe_mlp", "torch_grouped_mm")})
    for row in results.rows:
        assert "error" not in row, row
        if row["impl"] != "dense_mm":
            assert row["correct"] is True and row["floor_us"] > 0 and row["experts_touched"] >= 1
    fc1 = [r for r in results.rows if r["op"] == "grouped_gemm_fc1" and r["impl"] == "torch_grouped_mm"]
    assert [r["shape"]["T"] for r in fc1] == list(grid.tokens)
    t = fc1[-1]["shape"]["T"]
    flops, nbytes = harness.gemm_flops(t, 2 * grid.ffn, grid.hidden), None
    nbytes = harness.grouped_gemm_bytes(t, fc1[-1]["experts_touched"], 2 * grid.ffn, grid.hidden)
    assert fc1[-1]["floor_us"] == pytest.approx(harness.floor_us(CEILINGS, flops=flops, bytes=nbytes), rel=1e-3)
    dense = [r for r in results.rows if r["impl"] == "dense_mm"]
    assert [r["shape"]["T"] for r in dense] == list(grid.dense_tokens)


def test_experts_ratios_of_the_zaya_rows():
    results = _results([("grouped_gemm_fc1", "zaya", GEMM_SHAPE, 50.0, dict(floor_us=40.0)),
                        ("grouped_gemm_fc1", "dense_mm", GEMM_SHAPE, 45.0, {}),
                        ("moe_mlp", "zaya", {"T": 1}, 12.0, dict(floor_us=0.0))])
    bench_experts._annotate(results, "grouped_gemm_fc1", GEMM_SHAPE)
    bench_experts._annotate(results, "moe_mlp", {"T": 1})
    zaya = results.rows[0]
    assert zaya["of_floor"] == pytest.approx(1.25) and zaya["dense_rate_fraction"] == pytest.approx(0.9)
    assert results.rows[2]["of_floor"] is None and "dense_rate_fraction" not in results.rows[2]


def test_expert_floors_match_perf_md():
    """PERF.md: one expert (fc1 + fc2) is 25.2 MB of bf16, ~6 us at 4.09 TB/s."""
    perf = {"copy_TBps": 4.09, "matmul_bf16_TFLOPs": 755.0}
    nbytes = bench_experts.moe_bytes(1, 1, 2048, 2048)
    assert nbytes == pytest.approx(25.2e6, rel=2e-3)
    assert harness.floor_us(perf, bytes=nbytes, flops=bench_experts.moe_flops(1, 2048, 2048)) == pytest.approx(6.15,
                                                                                                               abs=0.05)
    assert bench_experts.moe_flops(65536, 2048, 2048) == 3 * harness.gemm_flops(65536, 2048, 2048) * 2 / 2 * 1


def test_attention_suite_rows(fixed_timer):
    results = harness.Results("attention_cpu", device="cpu", ceilings=CEILINGS)
    bench_attention.run(results)
    _check_schema(results.rows, {("attention_prefill", "sdpa_cudnn"), ("attention_prefill", "sdpa_flash"),
                                 ("attention_decode", "sdpa_cudnn"), ("attention_decode", "sdpa_flash"),
                                 ("cca_prep", "torch_graph"), ("cca_prep", "eager")})
    for row in results.rows:  # the timer is mocked: even cuDNN's rows (no CPU kernel) are not called
        assert "error" not in row and row["floor_us"] > 0, row
        if row["impl"] == "torch_graph":
            assert row["correct"] is True
    phases = [(r["shape"]["phase"], r["shape"]["B"]) for r in results.rows if r["impl"] == "torch_graph"]
    assert phases == [("prefill", 1), ("decode", 1), ("decode", 4)]


def test_attention_floors():
    perf = {"copy_TBps": 4.0, "matmul_bf16_TFLOPs": 800.0}
    kv = 2 * 32 * 32768 * 2 * 128 * 2  # B=32, L=32768: K and V, bf16
    flops = harness.attention_flops(32, 8, 1, 32768, 128, causal=False)
    assert harness.floor_us(perf, flops=flops, bytes=kv) == pytest.approx(kv / 4e6)
    prefill = harness.attention_flops(1, 8, 16384, 16384, 128, causal=True)
    assert harness.floor_us(perf, flops=prefill, bytes=1e8) == pytest.approx(prefill / 8e8)


# ---------------------------------------------------------------------------------------------
# the capturable baselines compute what the references compute
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,k,experts,block_m", [(1, 1, 16, 64), (37, 1, 4, 8), (50, 2, 5, 16), (64, 1, 16, 1),
                                                      (0, 1, 4, 8)])
def test_graph_moe_align_equals_the_reference(tokens, k, experts, block_m):
    gen = torch.Generator().manual_seed(tokens + experts)
    ids = torch.randint(0, experts + 2, (tokens, k), generator=gen, dtype=torch.int32)  # E and E+1: no expert
    if tokens > 4:
        ids[:4] = 1  # a crowded expert; others may stay empty
    got = baselines.graph_moe_align(ids, experts, block_m)
    expected = reference.moe_align(ids, experts, block_m)
    for g, e in zip(got, expected):
        assert g.dtype == torch.int32 and torch.equal(g, e)


def test_graph_route_equals_the_reference():
    gen = torch.Generator().manual_seed(3)
    weights = baselines.make_router_weights("cpu", gen)
    x = torch.randn(96, baselines.HIDDEN, generator=gen).bfloat16()
    r_prev = torch.randn(96, baselines.ROUTER_WIDTH, generator=gen).bfloat16()
    args = baselines.route_args(x, r_prev, weights)
    outputs = baselines.graph_route(*args)
    assert baselines.route_agrees(outputs, args)
    assert int((outputs[1] == baselines.ROUTES - 1).sum()) >= 0  # skip routes allowed, sent to no expert
    wrong = list(outputs)
    wrong[4] = outputs[4].flip(0)  # block_expert_ids reversed
    assert not baselines.route_agrees(wrong, args)


@pytest.mark.parametrize("k,skip_mode", [(1, "scaled_input"), (2, "scaled_input"), (2, "zero")])
def test_grouped_mm_moe_equals_the_reference(k, skip_mode):
    gen = torch.Generator().manual_seed(k)
    tokens, hidden, ffn, experts = 40, 64, 32, 4
    x = torch.randn(tokens, hidden, generator=gen).bfloat16()
    ids = torch.randint(0, experts + 1, (tokens, k), generator=gen, dtype=torch.int32)  # id E: the skip route
    ids[:3] = 2  # expert 2 crowded
    weights = torch.rand(tokens, k, generator=gen)
    w1 = (torch.randn(experts, 2 * ffn, hidden, generator=gen) * hidden ** -0.5).bfloat16()
    w2 = (torch.randn(experts, hidden, ffn, generator=gen) * ffn ** -0.5).bfloat16()
    sorted_ids, _, offsets, _ = reference.moe_align(ids, experts, 8)
    args = (x, weights, ids, sorted_ids, offsets, w1, w2, skip_mode)
    got = bench_experts.grouped_mm_moe(*args)
    expected = reference.moe_mlp(*args)
    assert harness.gemm_agrees(got, expected)
    assert not harness.gemm_agrees(bench_experts.grouped_mm_moe(x, weights, ids, sorted_ids, offsets, w1.flip(0), w2,
                                                                skip_mode), expected)


def _cca_args(lengths, starts, page_size=16, seed=0):
    """cca_prep arguments for a varlen batch (ZAYA1's widths: 8:2 heads, head dim 128), pages shuffled."""
    gen = torch.Generator().manual_seed(seed)
    hq, hkv, d = 8, 2, 128
    channels, value_width = (hq + hkv) * d, hkv * d // 2
    batch, tokens = len(lengths), sum(lengths)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    pages = -(-(max(s + n for s, n in zip(starts, lengths)) + 1) // page_size)
    table = torch.randperm(batch * pages, generator=gen).view(batch, pages).to(torch.int32)

    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    return (rand(tokens, channels + 2 * value_width), cu, torch.tensor(starts, dtype=torch.int32),
            rand(batch, channels, 2, dtype=torch.float32), rand(batch, value_width, dtype=torch.float32),
            rand(channels, 1, 2, scale=0.5), rand(channels, scale=0.1), rand(channels, d, 2, scale=(2 * d) ** -0.5),
            rand(channels, scale=0.1), (0.5 + torch.rand(hkv, generator=gen)).bfloat16(),
            rand(batch * pages, page_size, hkv, d), rand(batch * pages, page_size, hkv, d), table)


@pytest.mark.parametrize("lengths,starts", [([5, 0, 1, 2, 7], [0, 3, 17, 30, 5]), ([1, 1, 1], [100, 0, 33]),
                                            ([19], [0])])
def test_graph_cca_prep_equals_the_reference(lengths, starts):
    """Varlen with empty, 1- and 2-token sequences, chunks continuing from stored states, shuffled pages."""
    args = _cca_args(lengths, starts)
    assert bench_attention.cca_agrees(bench_attention.graph_cca_prep, args)


def test_cca_check_catches_a_missing_state_update():
    args = _cca_args([4, 3], [2, 9])

    def forgets_value_state(*a):
        value_state = a[4].clone()
        q = bench_attention.graph_cca_prep(*a)
        a[4].copy_(value_state)
        return q

    assert not bench_attention.cca_agrees(forgets_value_state, args)


def test_paged_cache_holds_each_sequence_in_its_pages():
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(3, 40, 2, 8, generator=gen).bfloat16()
    v = torch.randn(3, 40, 2, 8, generator=gen).bfloat16()
    k_cache, v_cache, table = bench_attention.paged(k, v, 16, gen)
    assert k_cache.shape == (9, 16, 2, 8) and table.shape == (3, 3)
    assert sorted(table.flatten().tolist()) == list(range(9))
    for b in range(3):
        assert torch.equal(reference.gather_kv(k_cache, table[b], 40), k[b])
        assert torch.equal(reference.gather_kv(v_cache, table[b], 40), v[b])


def test_within_bf16_rule():
    ref = torch.tensor([1.0, 2.0, 3.0])
    ref16 = ref + torch.tensor([0.01, 0.0, -0.01])
    assert harness.within_bf16_rule(ref + 0.02, ref, ref16, floor=0)
    assert not harness.within_bf16_rule(ref + 0.03, ref, ref16, floor=0)
    assert not harness.within_bf16_rule(torch.tensor([1.0, float("nan"), 3.0]), ref, ref16)
    assert not harness.within_bf16_rule(ref[:2], ref, ref16)
