# SPDX-License-Identifier: Apache-2.0
"""The `zaya-kernels` command: info (what was built, what runs here), demo (the minimal ZAYA1 model),
bench (the benchmark suites, results under bench/results/<device>/) and compare (two result files).

    python -m zaya_kernels.cli bench --suite all      # from the repo root, after an in-place build
"""
import contextlib
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ZAYA1-8B kernels: build info, the demo model, benchmarks and their comparison.")
console = Console()
REPO_ROOT = Path(__file__).resolve().parent.parent


class Suite(str, Enum):
    baselines = "baselines"
    topk = "topk"
    route = "route"
    experts = "experts"
    attention = "attention"
    all = "all"


# The suites in their own files (bench/bench_<suite>.py, each with run(results, quick=, progress=, compiler=)).
SUITE_MODULES = {"route": "bench_route", "experts": "bench_experts", "attention": "bench_attention"}


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------

def _backend_text(zaya_kernels, cfg) -> str:
    built = zaya_kernels.compiled_backend()
    if built:
        return built
    if cfg is not None:
        return f"built for {cfg.BACKEND} but not loaded: {zaya_kernels.BUILD_ERROR}"
    return f"not built ({zaya_kernels.BUILD_ERROR})"


@app.command()
def info() -> None:
    """The compiled backend, its build flags, the runtime and device, and where each op has a kernel."""
    import torch

    import zaya_kernels
    from zaya_kernels import _backend, ops

    cfg = _backend.build_config()
    summary = Table(show_header=False, box=None)
    summary.add_row("compiled backend", _backend_text(zaya_kernels, cfg))
    summary.add_row("arch", str(cfg.ARCH) if cfg else "-")
    summary.add_row("build flags", " ".join(cfg.DEVICE_FLAGS) if cfg else "-")
    built_torch = cfg.TORCH_VERSION if cfg else "-"
    mismatch = cfg is not None and built_torch != torch.__version__
    warning = "  [red](differs from the running torch: rebuild)[/]" if mismatch else ""
    summary.add_row("built against torch", built_torch + warning)
    summary.add_row("torch", torch.__version__)
    summary.add_row("CUDA", torch.version.cuda or "-")
    summary.add_row("HIP", torch.version.hip or "-")
    if torch.cuda.is_available():
        summary.add_row("device", f"{torch.cuda.get_device_name(0)} ({_backend.gpu_arch()})")
    else:
        summary.add_row("device", "no GPU")
    console.print(summary)

    kernels = Table(title="ops (torch.ops.zaya.*)")
    kernels.add_column("op")
    kernels.add_column("GPU kernel")
    kernels.add_column("CPU reference")
    for op in ops.OP_NAMES:
        gpu = zaya_kernels.has_device_kernel(op)
        kernels.add_row(op, "[green]yes[/]" if gpu else "no", "yes")
    console.print(kernels)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------

@app.command()
def demo(checkpoint: Optional[Path] = typer.Option(None, help="ZAYA1 safetensors checkpoint (a folder); "
                                                               "without it the demo uses the tiny random model"),
         device: DeviceChoice = typer.Option(DeviceChoice.auto, help="where to run"),
         tokens: int = typer.Option(32, min=1, help="new tokens to generate")) -> None:
    """Run the minimal ZAYA1 model end to end (zaya_kernels.demo.run_demo)."""
    try:
        from zaya_kernels.demo import run_demo
    except ImportError as err:
        console.print(f"[red]The demo is not available in this build: {err}[/]")
        raise typer.Exit(1)
    run_demo(checkpoint=str(checkpoint) if checkpoint else None, device=device.value, max_new_tokens=tokens)


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------

def _import_bench():
    """bench/ is a top-level folder of the repo, not part of the installed package: import it from the
    checkout this zaya_kernels lives in."""
    if not (REPO_ROOT / "bench" / "harness.py").is_file():
        console.print(f"[red]bench/ not found in {REPO_ROOT}: benchmarks run from a source checkout.[/]")
        raise typer.Exit(1)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from bench import baselines, harness, report

    return baselines, harness, report


def _suite_runner(name: str):
    """bench.<SUITE_MODULES[name]>.run when that file exists, else None (an import error is raised, not hidden)."""
    module = SUITE_MODULES[name]
    if not (REPO_ROOT / "bench" / f"{module}.py").is_file():
        return None
    import importlib

    return importlib.import_module(f"bench.{module}").run


@contextlib.contextmanager
def _progress_bar(title: str):
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(title, total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, total=total, completed=done, description=f"{title}: {label}")

        yield update


def _print_results(results, report) -> None:
    table = Table(title=f"{results.suite} on {results.device}")
    for column in report.COLUMNS:
        table.add_column(column, overflow="fold")
    for cells in report.table_cells(results.to_dict()):
        table.add_row(*cells[:-1], cells[-1][:100])  # the full note is in the .json and .md
    _print_wide(table)


def _print_wide(renderable) -> None:
    """Logs (the GPU machine's output, CliRunner) are not terminals: rich would fold 12 columns into 80."""
    if not console.is_terminal:
        console.width = max(console.width, 220)
    console.print(renderable)


def _runners(suite: Suite, baselines) -> list[tuple[str, object]]:
    chosen = [s.value for s in Suite if s != Suite.all] if suite == Suite.all else [suite.value]
    runners = []
    for name in chosen:
        if name not in SUITE_MODULES:
            runners.append((name, {"baselines": baselines.run, "topk": baselines.run_topk}[name]))
            continue
        try:
            runner = _suite_runner(name)
        except Exception as err:  # noqa: BLE001  (report it, keep the other suites)
            console.print(f"[red]bench/{SUITE_MODULES[name]}.py failed to import: {err}[/]")
            if suite.value == name:
                raise typer.Exit(1)
            continue
        if runner is None:
            console.print(f"[yellow]{name}: bench/{SUITE_MODULES[name]}.py is not there yet; skipped.[/]")
            if suite.value == name:
                raise typer.Exit(1)
            continue
        runners.append((name, runner))
    return runners


@app.command()
def bench(suite: Suite = typer.Option(Suite.all, help="which suite to run"),
          out: Optional[Path] = typer.Option(None, help="output folder (default on a GPU: bench/results/<device>/)"),
          quick: bool = typer.Option(False, help="fewer shapes and iterations"),
          compile: bool = typer.Option(True, "--compile/--no-compile",  # noqa: A002 (the flag's name)
                                       help="torch_compile baseline rows (GPU only; autotuning costs time)"),
          compile_mode: str = typer.Option("max-autotune-no-cudagraphs",
                                           help="torch.compile mode of the torch_compile rows"),
          compile_budget: float = typer.Option(60.0, min=0, help="seconds of compilation per op and suite; "
                                               "shapes past it get an error row saying so")) -> None:
    """Run benchmark suites; each writes <suite>.json, .md and .png. Speedups are stated against the best
    baseline (eager, torch_graph, torch_compile, library kernels) measured in the same run."""
    import torch

    baselines, harness, report = _import_bench()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        out = out or REPO_ROOT / "bench" / "results" / harness.device_slug(harness.device_name(device))
    else:
        console.print("[yellow]No GPU here: running the PyTorch reference path at tiny sizes on the CPU. "
                      "These timings say nothing about kernel speed; results are written only with --out; "
                      "no torch_compile rows.[/]")
    suffix = "" if on_gpu else "_cpu"
    ceilings = None
    failed = []
    for name, run in _runners(suite, baselines):
        results = harness.Results(name + suffix, device=device, ceilings=ceilings)
        compiler = harness.Compiler(compile_mode if compile and on_gpu else None, compile_budget)
        if ceilings is None:
            with console.status("measuring the ceilings (device copy, bf16 matmul)"):
                ceilings = results.ceilings  # measured once, shared by every suite of this run
            console.print(f"ceilings on {results.device}: copy {ceilings['copy_TBps']:.4g} TB/s, "
                          f"bf16 matmul {ceilings['matmul_bf16_TFLOPs']:.4g} TFLOP/s")
        try:
            with _progress_bar(results.suite) as progress:
                run(results, quick=quick, progress=progress, compiler=compiler)
        except Exception:  # noqa: BLE001  (keep the other suites and the rows measured so far)
            console.print(f"[red]suite {name} stopped:[/]\n{traceback.format_exc()}")
            failed.append(name)
        _print_results(results, report)
        if out is not None:
            for path in results.write(out):
                console.print(f"wrote {path}")
    if failed:
        console.print(f"[red]failed suites: {', '.join(failed)}[/]")
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------

def _us(value) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command()
def compare(a: Path = typer.Argument(..., exists=True, dir_okay=False, help="results JSON (A)"),
            b: Path = typer.Argument(..., exists=True, dir_okay=False, help="results JSON (B)")) -> None:
    """Two result files side by side, rows matched by (op, impl, shape); B/A < 1 means B is faster."""
    _, _, report = _import_bench()
    meta_a, meta_b = report.load_json(a), report.load_json(b)
    table = Table(title=f"A = {a} ({meta_a['device']}, {meta_a['commit'][:12]})\n"
                        f"B = {b} ({meta_b['device']}, {meta_b['commit'][:12]})")
    for column, justify in (("op", "left"), ("impl", "left"), ("shape", "left"), ("A µs", "right"),
                            ("B µs", "right"), ("B/A", "right")):
        table.add_column(column, justify=justify)
    for row in report.compare(a, b):
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        table.add_row(row["op"], row["impl"], report.shape_label(row["shape"]), _us(row["a_us"]), _us(row["b_us"]),
                      ratio)
    _print_wide(table)


if __name__ == "__main__":
    app()
