# SPDX-License-Identifier: Apache-2.0
"""The benchmark harness every bench script and the CLI share (DESIGN.md §7).

- time_cuda: CUDA/HIP events, warm-up, a cold cache before every timed sample, median and p20/p80;
  optional CUDA-graph replay for microsecond kernels, with rotated input sets.
- measure_ceilings: device copy bandwidth and bf16 matmul rate, measured in the same run as the rows.
- Results: the rows of one suite, written as <suite>.json (exactly DESIGN.md §7's shape), .md, .png.
- FLOP/byte helpers and PERF.md's floor: max(bytes at the copy ceiling, FLOPs at the matmul ceiling).
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
ProgressFn = Callable[[int, int, str], None]  # (cases done, cases in total, label of the case starting now)

# Calls captured into one graph when no rotation sets say otherwise: 20 calls of a ~5 us kernel make
# a ~100 us replay, long enough that the replay's own launch (~10 us) and event resolution (~1 us) vanish.
GRAPH_CALLS = 20
# MI300X (gfx94x): 4 MB of L2 per XCD, but a 256 MB memory-side Infinity Cache in front of HBM that a
# "cold" measurement must also empty.
_MI300_INFINITY_CACHE_BYTES = 256 * 2**20
_UNKNOWN_CACHE_BYTES = 64 * 2**20  # above every Ampere/Hopper L2 (H200: 60 MB)
_MIN_TIME_US = 1e-3                 # 1 ns: a time no timer here resolves; keeps every rate finite


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

def last_level_cache_bytes(device=None) -> int:
    """Bytes of the GPU's last cache level before HBM (L2 on NVIDIA, Infinity Cache on MI300X)."""
    props = torch.cuda.get_device_properties(device)
    cache = getattr(props, "L2_cache_size", 0) or 0
    if torch.version.hip and getattr(props, "gcnArchName", "").startswith("gfx94"):
        cache = max(cache, _MI300_INFINITY_CACHE_BYTES)
    return cache or _UNKNOWN_CACHE_BYTES


def flush_bytes(device) -> int:
    """Size of the flush buffer (2x the last cache level) and the working set rotation sets should exceed."""
    device = torch.device(device)
    if device.type == "cpu":
        return 2 * _UNKNOWN_CACHE_BYTES
    return 2 * last_level_cache_bytes(device)


_flush_buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def flush_cache() -> None:
    """Evict the current GPU's caches: write a buffer of 2x the last cache level, then read it back.
    The read leaves clean lines behind, so the next timed call does not pay to write the flush's dirty
    lines back to HBM (up to 60 MB on the H200, ~15 us at 4 TB/s)."""
    index = torch.cuda.current_device()
    if index not in _flush_buffers:
        device = torch.device("cuda", index)
        buf = torch.empty(flush_bytes(device) // 4, dtype=torch.float32, device=device)  # [2*LLC/4] fp32
        _flush_buffers[index] = (buf, torch.empty((), dtype=torch.float32, device=device))
    buf, sink = _flush_buffers[index]
    buf.zero_()
    torch.sum(buf, dim=0, out=sink)


def _bind(fn: Callable, args) -> Callable[[], object]:
    if isinstance(args, dict):
        return lambda: fn(**args)
    if isinstance(args, (tuple, list)):
        return lambda: fn(*args)
    return lambda: fn(args)


def _calls(fn: Callable, rotate: Sequence | None) -> list[Callable[[], object]]:
    """One zero-argument call per input set: fn() without rotation, fn(*set) for each set with it."""
    if rotate is None:
        return [fn]
    if len(rotate) == 0:
        raise ValueError("rotate must hold at least one input set")
    return [_bind(fn, args) for args in rotate]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_us: Sequence[float]) -> dict:
    values = sorted(times_us)
    return {"median_us": statistics.median(values), "p20_us": _percentile(values, 0.2),
            "p80_us": _percentile(values, 0.8), "iters": len(values)}


def _capture_graph(calls: list[Callable[[], object]], count: int) -> torch.cuda.CUDAGraph:
    # Run every call once on a side stream first: lazy initialisation (cuBLAS/cuDNN handles,
    # workspaces, autotuning) must not happen inside the capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for j in range(count):
            calls[j % len(calls)]()
    return graph


def time_cuda(fn: Callable, *, warmup: int = 10, iters: int = 100, graph: bool = False, flush_l2: bool = True,
              rotate: Sequence | None = None, graph_calls: int | None = None) -> dict:
    """Median device time of fn on the current CUDA/HIP stream: dict(median_us, p20_us, p80_us, iters).

    Each of the `iters` samples is bracketed by events recorded AFTER the cache flush, so only fn is
    timed; the flush (~60 us on the H200) also gives the CPU a head start, so a single-kernel fn is not
    timed waiting for its own launch. fn is called as fn() or, with rotate=[set, ...], as fn(*set) for
    the sets in turn (a set may also be a dict of keyword arguments or a single argument).

    graph=True captures `graph_calls` calls (default: max(len(rotate), GRAPH_CALLS)) into one
    torch.cuda.CUDAGraph and reports replay time / calls. The cache is flushed before each replay but
    cannot be between the calls inside one: only the first call of a replay starts cold unless the
    rotated sets together exceed flush_bytes(). fn must be capturable (no host syncs).
    Works on ROCm, where torch.cuda events and graphs are HIP events and graphs.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("time_cuda needs a CUDA or ROCm GPU; use time_cpu (or time_on) on the CPU")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters} warmup={warmup}")
    calls = _calls(fn, rotate)
    if graph:
        calls_per_sample = graph_calls or max(len(calls), GRAPH_CALLS)
        captured = _capture_graph(calls, calls_per_sample)
        run_sample = lambda i: captured.replay()  # noqa: E731
    else:
        calls_per_sample = 1
        run_sample = lambda i: calls[i % len(calls)]()  # noqa: E731
    for i in range(warmup):
        if flush_l2:
            flush_cache()
        run_sample(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        if flush_l2:
            flush_cache()
        starts[i].record()
        run_sample(warmup + i)
        ends[i].record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) * 1e3 / calls_per_sample for s, e in zip(starts, ends)])


def time_cpu(fn: Callable, *, warmup: int = 2, iters: int = 10, graph: bool = False, flush_l2: bool = False,
             rotate: Sequence | None = None, graph_calls: int | None = None) -> dict:
    """Wall-clock twin of time_cuda for CPU tensors (the CPU smoke path); graph, flush_l2 and
    graph_calls have no CPU meaning and are ignored."""
    calls = _calls(fn, rotate)
    for i in range(warmup):
        calls[i % len(calls)]()
    times_us = []
    for i in range(iters):
        start = time.perf_counter()
        calls[(warmup + i) % len(calls)]()
        times_us.append((time.perf_counter() - start) * 1e6)
    return summarize(times_us)


def time_on(device, fn: Callable, **kwargs) -> dict:
    """time_cuda on a GPU device ("cuda" is also ROCm's device type), time_cpu on the CPU."""
    return (time_cpu if torch.device(device).type == "cpu" else time_cuda)(fn, **kwargs)


def run_cases(cases: Sequence[tuple[str, Callable[[], None]]], progress: ProgressFn | None = None) -> None:
    """Run (label, thunk) cases in order, reporting progress(done, total, label) before each and at the end."""
    for done, (label, case) in enumerate(cases):
        if progress is not None:
            progress(done, len(cases), label)
        case()
    if progress is not None:
        progress(len(cases), len(cases), "done")


# ---------------------------------------------------------------------------------------------
# one row: timing policy, capture fallback, torch.compile, correctness
# ---------------------------------------------------------------------------------------------

# A graph replay holds enough calls to last ~REPLAY_TARGET_US (so the replay's own launch and the event
# resolution vanish), at most GRAPH_CALLS unless the rotation needs more, and at least every rotated set.
REPLAY_TARGET_US = 200.0
FLUSH_ESTIMATE_US = 60.0   # flush_cache on the H200 (2 x 60 MB written, then read)
MIN_ITERS = 10
ROW_BUDGET_MS = 2000.0     # the timed samples of one row stop growing past this (a multi-ms case: fewer samples)
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"
DEFAULT_COMPILE_BUDGET_S = 60.0


def note(message: str) -> None:
    """A line for whoever watches the run (a skipped row, a compile budget spent); not stored in the JSON."""
    print(f"note: {message}", flush=True)


def error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


def replay_plan(probe_us: float, sets: int, iters: int) -> tuple[int, int]:
    """(calls captured per graph replay, timed replays) for a call that takes ~probe_us: every rotated
    set at least once per replay, ~REPLAY_TARGET_US per replay, and the samples of a multi-millisecond
    case cut so that a row costs at most ~ROW_BUDGET_MS (never fewer than MIN_ITERS)."""
    probe_us = max(float(probe_us), _MIN_TIME_US)
    calls = max(sets, min(GRAPH_CALLS, math.ceil(REPLAY_TARGET_US / probe_us)))
    affordable = int(ROW_BUDGET_MS * 1e3 / (calls * probe_us + FLUSH_ESTIMATE_US))
    return calls, max(MIN_ITERS, min(iters, affordable))


def measure(device, fn: Callable, *, rotate: Sequence | None = None, graph: bool = False, warmup: int = 10,
            iters: int = 100) -> tuple[dict, str]:
    """(timing stats, how they were taken) with the harness's policy, the same for ours and every baseline:
    cold cache before each sample, inputs rotated through `rotate`, and with graph=True a CUDA-graph replay
    sized by replay_plan from one eager probe. A call that cannot be captured (a host sync) is timed with
    events instead, and `how` says why. On the CPU: wall clock, 1 warm-up and 3 samples (a smoke test)."""
    device = torch.device(device)
    if device.type == "cpu":
        return time_cpu(fn, warmup=1, iters=3, rotate=rotate), "wall"
    sets = 1 if rotate is None else len(rotate)
    probe = time_cuda(fn, rotate=rotate, warmup=1, iters=3)["median_us"]
    calls, iters = replay_plan(probe, sets if graph else 1, iters)
    warmup = min(warmup, max(2, iters // 10))
    if graph:
        try:
            return time_cuda(fn, rotate=rotate, graph=True, graph_calls=calls, warmup=warmup, iters=iters), "graph"
        except RuntimeError as err:  # not capturable: time it eagerly, inputs still rotated
            torch.cuda.synchronize()
            how = f"events (graph capture failed: {error_text(err)[:120]})"
            return time_cuda(fn, rotate=rotate, warmup=warmup, iters=iters), how
    return time_cuda(fn, rotate=rotate, warmup=warmup, iters=iters), "events"


def record(results: "Results", op: str, impl: str, shape: dict, fn: Callable, *, rotate: Sequence | None = None,
           graph: bool = False, check: Callable[[], bool] | None = None, warmup: int = 10, iters: int = 100,
           **row) -> dict:
    """Check (check() -> bool becomes `correct`), time fn with measure(), add the row. Any failure becomes a
    row with median_us None and `error` (a backend that cannot run a shape must not stop the suite)."""
    try:
        correct = check() if check is not None else None
        stats, how = measure(results.torch_device, fn, rotate=rotate, graph=graph, warmup=warmup, iters=iters)
    except Exception as err:  # noqa: BLE001
        release_memory(results.torch_device)
        return results.add_row(op, impl, shape, None, error=error_text(err))
    return results.add_row(op, impl, shape, stats["median_us"], correct=correct, p20_us=stats["p20_us"],
                           p80_us=stats["p80_us"], timing=how, **row)


def release_memory(device) -> None:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class Compiler:
    """torch.compile for the `torch_compile` baseline rows, bounded in time.

    Each shape is compiled for itself (dynamic=False, fullgraph=True: a graph break is an error, never a
    silent eager fallback), as a server compiles its batch sizes. The default mode is
    "max-autotune-no-cudagraphs": max-autotune's kernel choices (Triton GEMM templates, autotuned
    pointwise kernels) without inductor's own CUDA graphs, which cannot be captured inside the harness's
    graph; the harness replays the compiled code in its own graph, with the same rotation as ours.
    Autotuning costs seconds to minutes per shape, so each op gets budget_s seconds of compilation: once
    spent, that op's later shapes get an error row saying so. mode None: no torch_compile rows at all."""

    def __init__(self, mode: str | None = DEFAULT_COMPILE_MODE, budget_s: float = DEFAULT_COMPILE_BUDGET_S):
        self.mode = mode
        self.budget_s = budget_s
        self.spent_s: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def compile(self, op: str, fn: Callable, example_args: Sequence) -> tuple[Callable, float]:
        """(compiled fn, seconds its first call took on example_args). Raises RuntimeError when this op's
        budget is spent, or whatever torch.compile raised."""
        spent = self.spent_s.get(op, 0.0)
        if spent >= self.budget_s:
            raise RuntimeError(f"not compiled: {op} spent its compile budget ({spent:.0f} of {self.budget_s:.0f} s; "
                               "--compile-budget raises it)")
        _allow_recompiles()
        compiled = torch.compile(fn, mode=self.mode, fullgraph=True, dynamic=False)
        device = next((a.device for a in example_args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        start = time.perf_counter()
        try:
            compiled(*example_args)
            if device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            self.spent_s[op] = spent + time.perf_counter() - start
        return compiled, time.perf_counter() - start


def _allow_recompiles() -> None:
    """One recompile per shape is the point of dynamic=False here: lift dynamo's per-function limit (8),
    past which it would silently run eagerly."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))


def record_compiled(results: "Results", compiler: Compiler, op: str, shape: dict, fn: Callable, sets: Sequence, *,
                    graph: bool = True, check: Callable[[Callable], bool] | None = None, **row) -> dict | None:
    """The `torch_compile` row of fn (whose arguments are each rotation set): compiled by `compiler`, then
    timed exactly as the other rows; a compile failure or a spent budget becomes the row's `error`.
    check(compiled) -> bool becomes `correct`. No row (None) when compiling is off or on the CPU."""
    if not compiler.enabled or results.torch_device.type == "cpu":
        return None
    try:
        compiled, seconds = compiler.compile(op, fn, sets[0])
    except Exception as err:  # noqa: BLE001  (the reason is the row's content)
        release_memory(results.torch_device)
        return results.add_row(op, "torch_compile", shape, None, error=error_text(err), compile_mode=compiler.mode)
    return record(results, op, "torch_compile", shape, compiled, rotate=sets, graph=graph,
                  check=None if check is None else (lambda: check(compiled)), compile_mode=compiler.mode,
                  compile_s=seconds, **row)


def within_bf16_rule(out: torch.Tensor, ref: torch.Tensor, ref_bf16: torch.Tensor, *, floor: float = 1e-3) -> bool:
    """DESIGN.md §6: |out - ref| at most 2x the error of the same reference run in bf16, plus a small floor;
    every element finite; shapes equal. ref is the fp32-compute reference."""
    if out.shape != ref.shape or not bool(torch.isfinite(out.float()).all()):
        return False
    allowed = 2 * (ref_bf16.double() - ref.double()).abs().max() + floor if ref.numel() else 0
    return bool(ref.numel() == 0 or (out.double() - ref.double()).abs().max() <= allowed)


def gemm_agrees(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """DeepGEMM's global similarity 1 - 2<x,y>/(|x|^2+|y|^2) (float64) below 1e-4: two fp32-accumulating
    bf16 GEMMs differ by output rounding (~1e-6); a wrong segment or layout gives ~0.5-1."""
    if out.shape != ref.shape:
        return False
    x, y = out.double(), ref.double()
    if not bool(torch.isfinite(x).all()):
        return False
    denom = (x * x + y * y).sum()
    return bool(denom == 0 or 1 - 2 * (x * y).sum() / denom < 1e-4)


def rotation_count(device, set_bytes: int, cap: int = 64) -> int:
    """How many input sets make the rotated working set exceed the flush size (so that calls inside one
    graph replay start cold), at most `cap`; 1 on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return 1
    return max(1, min(cap, math.ceil(flush_bytes(device) / max(1, set_bytes))))


def generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def standalone_main(suite: str, run: Callable, doc: str | None) -> None:
    """`python -m bench.bench_<suite>`: run one suite on this machine's device and write its files
    (default bench/results/<device>/); the CLI (`zaya-kernels bench --suite <suite>`) does the same."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or suite).strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and iterations")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch_compile rows (default on)")
    parser.add_argument("--compile-mode", default=DEFAULT_COMPILE_MODE)
    parser.add_argument("--compile-budget", type=float, default=DEFAULT_COMPILE_BUDGET_S,
                        help="seconds of compilation per op")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for {suite}.json/.md/.png")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = Results(suite if device.type == "cuda" else suite + "_cpu", device=device)
    compiler = Compiler(args.compile_mode if args.compile else None, args.compile_budget)
    run(results, quick=args.quick, compiler=compiler,
        progress=lambda done, total, label: print(f"[{done}/{total}] {label}", flush=True))
    out = args.out or (REPO_ROOT / "bench" / "results" / device_slug(device_name(device))
                       if device.type == "cuda" else None)
    from . import report

    print(report.markdown(results.to_dict(), title=results.suite))
    if out is not None:
        for path in results.write(out):
            print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# ceilings, FLOPs, bytes, floors
# ---------------------------------------------------------------------------------------------

def measure_ceilings(device, *, quick: bool = False) -> dict:
    """{"copy_TBps", "matmul_bf16_TFLOPs"} of this device now: a 2 GiB device-to-device copy (read +
    write bytes counted) and an 8192^3 bf16 matmul on random data. On the CPU: 64 MiB and 512^3."""
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    copy_bytes = 64 * 2**20 if on_cpu else 2 * 2**30  # 2 GiB >> any cache (MI300X's 256 MB included)
    size = 512 if on_cpu else 8192
    timing = dict(warmup=1, iters=3) if on_cpu else dict(warmup=5, iters=10 if quick else 30, flush_l2=False)
    src = torch.randn(copy_bytes // 2, dtype=torch.bfloat16, device=device)  # [copy_bytes / 2] bf16
    dst = torch.empty_like(src)
    copy_us = time_on(device, lambda: dst.copy_(src), **timing)["median_us"]
    del src, dst
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)  # [size, size] bf16
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)  # [size, size] bf16
    c = torch.empty(size, size, dtype=torch.bfloat16, device=device)
    matmul_us = time_on(device, lambda: torch.mm(a, b, out=c), **timing)["median_us"]
    # Significant digits, never decimals: a loaded 2-core CPU does ~0.004 TFLOP/s, which two decimals
    # rounded to 0.0 (and every rate divided by it). A ceiling is a rate over a positive time, so it is
    # positive; the floor below keeps it so even for a timer that reads 0.
    return {"copy_TBps": _round(2 * copy_bytes / max(copy_us, _MIN_TIME_US) / 1e6, 6),
            "matmul_bf16_TFLOPs": _round(gemm_flops(size, size, size) / max(matmul_us, _MIN_TIME_US) / 1e6, 6)}


def safe_ratio(numerator, denominator) -> float | None:
    """numerator / denominator, or None when either is missing, not finite, or the denominator is not
    positive (a failed row, a ceiling of 0 in an old results file): no ratio is ever a division by zero."""
    try:
        num, den = float(numerator), float(denominator)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return num / den


def gemm_flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def attention_flops(batch: int, q_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, *, causal: bool,
                    head_dim_v: int | None = None) -> float:
    """QK^T and PV at 2 FLOPs per multiply-add over the keys each query actually sees. Causal masking
    aligns the queries with the LAST seqlen_q keys (a KV cache): query i sees seqlen_k - seqlen_q + i + 1
    keys, on average seqlen_k - seqlen_q + (seqlen_q + 1) / 2 (= (S + 1) / 2 when seqlen_q = seqlen_k = S)."""
    keys = seqlen_k - seqlen_q + (seqlen_q + 1) / 2 if causal else seqlen_k
    return 2.0 * batch * q_heads * seqlen_q * keys * (head_dim + (head_dim_v or head_dim))


def grouped_gemm_bytes(tokens: int, experts_touched: int, n: int, k: int, elem_bytes: int = 2) -> int:
    """PERF.md's traffic of an expert GEMM: the touched experts' [N, K] weights + A [T, K] + C [T, N]."""
    return elem_bytes * (experts_touched * n * k + tokens * k + tokens * n)


def floor_us(ceilings: dict, *, flops: float = 0, bytes: float = 0) -> float | None:  # noqa: A002 (as add_row)
    """PERF.md's floor: max(bytes at the measured copy bandwidth, FLOPs at the measured matmul rate).
    None when a ceiling the floor needs is missing or not positive (no division by zero)."""
    terms = [0.0]
    for amount, ceiling in ((bytes, ceilings.get("copy_TBps")), (flops, ceilings.get("matmul_bf16_TFLOPs"))):
        if amount:
            term = safe_ratio(amount, None if ceiling is None else ceiling * 1e6)
            if term is None:
                return None
            terms.append(term)
    return max(terms)


# ---------------------------------------------------------------------------------------------
# run metadata
# ---------------------------------------------------------------------------------------------

def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    if not name and torch.version.hip:
        name = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
    return name


def device_slug(name: str) -> str:
    """Folder name under bench/results: "NVIDIA H200" -> "h200", "AMD Instinct MI300X" -> "mi300x",
    "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA GeForce RTX 4090" -> "rtx-4090"."""
    vendor_words = {"nvidia", "amd", "instinct", "geforce", "tesla", "radeon"}
    words = [w for w in re.findall(r"[a-z0-9]+", name.lower()) if w not in vendor_words]
    if not words:
        return "unknown"
    if re.search(r"[a-z]", words[0]) and re.search(r"[0-9]", words[0]):
        return words[0]
    return "-".join(words)


def runtime_version() -> str:
    if torch.version.hip:
        return f"HIP {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "cpu"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str:
    """The ZAYA_COMMIT environment variable when set (the caller names the commit it shipped: the GPU
    machine gets a copy of the working tree whose .git need not match it; seen: a stale HEAD), else
    HEAD of the checkout ("-dirty" when tracked files differ from it), else "unknown"."""
    if os.environ.get("ZAYA_COMMIT"):
        return os.environ["ZAYA_COMMIT"]
    # Only this checkout's own .git: a copy of the tree placed inside another repository must not
    # report that repository's commit.
    head = _git("rev-parse", "HEAD") if (REPO_ROOT / ".git").exists() else None
    if head:
        changes = _git("status", "--porcelain", "--untracked-files=no")
        return head + ("-dirty" if changes else "")
    return "unknown"


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

_META_KEYS = ("device", "torch", "runtime", "commit", "date")


def _round(value: float, digits: int = 4) -> float:
    """Keep `digits` significant digits: the noise of a shared GPU is far above that."""
    return float(f"{value:.{digits}g}")


class Results:
    """The rows of one suite, measured on one device in one run (DESIGN.md §7).

    The ceilings are measured on first use (or given, to share one measurement between the suites of
    a run); `write` produces <suite>.json, <suite>.md and <suite>.png.
    """

    def __init__(self, suite: str, *, device=None, ceilings: dict | None = None):
        self.suite = suite
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch_device = torch.device(device)
        self.device = device_name(self.torch_device)
        self.torch = torch.__version__
        self.runtime = "cpu" if self.torch_device.type == "cpu" else runtime_version()
        self.commit = git_commit()
        self.date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._ceilings = dict(ceilings) if ceilings is not None else None
        self.rows: list[dict] = []

    @property
    def ceilings(self) -> dict:
        if self._ceilings is None:
            self._ceilings = measure_ceilings(self.torch_device)
        return self._ceilings

    def add_row(self, op: str, impl: str, shape: dict, median_us: float | None, *, flops: float | None = None,
                bytes: float | None = None, floor_us: float | None = None, correct: bool | None = None,  # noqa: A002
                **extra) -> dict:
        """One measurement. median_us None (with extra error="...") records a failure; flops and bytes
        become tflops and tbps. Extra keyword arguments are stored in the row as given."""
        for key, value in shape.items():
            if not isinstance(value, (int, float, str, bool)):
                raise TypeError(f"shape[{key!r}] must be a JSON scalar, got {type(value).__name__}")
        row = {"op": op, "impl": impl, "shape": dict(shape),
               "median_us": None if median_us is None else _round(float(median_us))}
        if median_us is not None and median_us > 0:
            if flops is not None:
                row["tflops"] = _round(flops / median_us / 1e6)
            if bytes is not None:
                row["tbps"] = _round(bytes / median_us / 1e6)
        if floor_us is not None:
            row["floor_us"] = _round(float(floor_us))
        if correct is not None:
            row["correct"] = bool(correct)
        row.update({k: _round(v) if isinstance(v, float) else v for k, v in extra.items()})
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        meta = {key: getattr(self, key) for key in _META_KEYS}
        return {**meta, "ceilings": dict(self.ceilings), "rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, suite: str, data: dict) -> "Results":
        missing = [k for k in (*_META_KEYS, "ceilings", "rows") if k not in data]
        if missing:
            raise ValueError(f"not a zaya-kernels results file: missing {missing}")
        results = cls.__new__(cls)
        results.suite, results.torch_device = suite, None
        for key in _META_KEYS:
            setattr(results, key, data[key])
        results._ceilings = dict(data["ceilings"])
        results.rows = [dict(r) for r in data["rows"]]
        return results

    def write(self, directory) -> list[Path]:
        """Write <suite>.json, <suite>.md and (when matplotlib is installed) <suite>.png into directory."""
        from . import report

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        json_path = directory / f"{self.suite}.json"
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        md_path = directory / f"{self.suite}.md"
        md_path.write_text(report.markdown(data, title=self.suite))
        written = [json_path, md_path]
        png_path = report.plot(data, directory / f"{self.suite}.png", title=f"{self.suite} on {self.device}")
        return written + ([png_path] if png_path else [])


def load(path) -> Results:
    """Read a results JSON back; the suite name is the file's stem."""
    path = Path(path)
    return Results.from_dict(path.stem, json.loads(path.read_text()))
