# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the `zaya-kernels` command through typer's CliRunner: info, compare, demo's lazy import,
and bench on the CPU (tiny sizes, rows for every baseline op, nothing written unless --out)."""
import json
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from bench import harness
from zaya_kernels import ops
from zaya_kernels.cli import REPO_ROOT, app

runner = CliRunner()
CEILINGS = {"copy_TBps": 4.0, "matmul_bf16_TFLOPs": 800.0}
no_gpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path of the command")


def _invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_info_lists_every_op():
    result = _invoke("info")
    assert result.exit_code == 0, result.output
    for op in ops.OP_NAMES:
        assert op in result.output
    assert "compiled backend" in result.output and torch.__version__ in result.output
    if not torch.cuda.is_available():
        assert "no GPU" in result.output


def test_compare_puts_two_files_side_by_side(tmp_path):
    for name, median_us in (("a", 200.0), ("b", 50.0)):
        results = harness.Results(name, device="cpu", ceilings=CEILINGS)
        results.add_row("route", "eager", {"T": 16}, median_us)
        results.write(tmp_path)
    result = _invoke("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert "B/A" in result.output and "0.250" in result.output and "T=16" in result.output


def test_compare_rejects_a_missing_file(tmp_path):
    result = _invoke("compare", str(tmp_path / "nope.json"), str(tmp_path / "nope.json"))
    assert result.exit_code != 0


def test_demo_reports_a_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "zaya_kernels.demo", None)  # makes the import raise ImportError
    result = _invoke("demo")
    assert result.exit_code == 1 and "demo is not available" in result.output


def test_demo_passes_its_options(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("zaya_kernels.demo")
    fake.run_demo = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "zaya_kernels.demo", fake)
    result = _invoke("demo", "--checkpoint", str(tmp_path), "--device", "cpu", "--tokens", "5")
    assert result.exit_code == 0, result.output
    assert calls == [{"checkpoint": str(tmp_path), "device": "cpu", "max_new_tokens": 5}]


def _results_listing():
    folder = REPO_ROOT / "bench" / "results"
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


@no_gpu_only
def test_bench_on_cpu_writes_rows_for_every_baseline_op(tmp_path):
    before = _results_listing()
    result = _invoke("bench", "--quick", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "No GPU here" in result.output
    data = json.loads((tmp_path / "baselines_cpu.json").read_text())
    assert data["device"] == "cpu" and data["ceilings"]["matmul_bf16_TFLOPs"] > 0 and data["ceilings"]["copy_TBps"] > 0
    impls = {(r["op"], r["impl"]) for r in data["rows"]}
    assert impls == {("route", "eager"), ("route", "torch_graph"), ("grouped_gemm_fc1", "torch_mm_loop"),
                     ("grouped_gemm_fc1", "torch_grouped_mm"), ("grouped_gemm_fc1", "dense_mm"),
                     ("attention_prefill", "sdpa_flash"), ("attention_prefill", "sdpa_cudnn"),
                     ("attention_decode", "sdpa_flash"), ("attention_decode", "sdpa_cudnn")}
    for row in data["rows"]:
        if row["impl"] == "sdpa_cudnn":  # cuDNN has no CPU kernel: recorded as an error row, not a crash
            assert row["median_us"] is None and row["error"]
        elif not (row["impl"] == "torch_grouped_mm" and "error" in row):  # absent in older torch
            assert row["median_us"] > 0 and "error" not in row, row
    assert all(r["correct"] for r in data["rows"] if "correct" in r)
    topk = json.loads((tmp_path / "topk_cpu.json").read_text())
    assert {(r["op"], r["impl"]) for r in topk["rows"]} == {("topk_gating", "eager"), ("topk_gating", "torch_graph")}
    assert len(topk["rows"]) >= 12 and all(r["correct"] for r in topk["rows"])
    experts = json.loads((tmp_path / "experts_cpu.json").read_text())
    assert {r["op"] for r in experts["rows"]} == {"grouped_gemm_fc1", "moe_mlp"}
    attention = json.loads((tmp_path / "attention_cpu.json").read_text())
    assert {r["op"] for r in attention["rows"]} == {"attention_prefill", "attention_decode", "cca_prep"}
    for name in ("baselines", "topk", "route", "experts", "attention"):
        assert (tmp_path / f"{name}_cpu.md").is_file() and (tmp_path / f"{name}_cpu.png").is_file()
    assert "no device kernel here" in result.output  # the skipped zaya rows are announced
    assert "speedup vs best baseline" in (tmp_path / "route_cpu.md").read_text()
    assert _results_listing() == before


@no_gpu_only
def test_bench_takes_the_compile_options_and_new_suites(tmp_path):
    result = _invoke("bench", "--quick", "--suite", "experts", "--no-compile", "--compile-mode", "default",
                     "--compile-budget", "5", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "experts_cpu.json").read_text())["rows"]
    assert rows and not any(r["impl"] == "torch_compile" for r in rows)
    assert _invoke("bench", "--suite", "nope").exit_code != 0


@no_gpu_only
def test_bench_on_cpu_without_out_writes_nothing():
    before = _results_listing()
    result = _invoke("bench", "--quick", "--suite", "topk")
    assert result.exit_code == 0, result.output
    assert "topk_gating" in result.output and "wrote" not in result.output
    assert _results_listing() == before
