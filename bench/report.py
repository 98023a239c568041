# SPDX-License-Identifier: Apache-2.0
"""Reports from a results JSON (DESIGN.md §7): a markdown table with each row's speedup over the
baseline of the same op and shape and its % of the ceilings, a plot, and the comparison of two files.

    python -m bench.report bench/results/h200/baselines.json   # (re)writes baselines.md and .png beside it
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# The baselines of each op: its speedups are stated against the BEST (fastest successful) of these impls
# measured for the same op and shape in the same file. Ops not listed: every impl that is neither ours
# nor a speed bound. dense_mm is never a baseline: it computes with one expert's weights (a speed bound).
BASELINE_IMPLS = {
    "route": ("eager", "torch_graph", "torch_compile"),
    "topk_gating": ("eager", "torch_graph", "torch_compile"),
    "grouped_gemm_fc1": ("torch_grouped_mm", "torch_mm_loop", "torch_compile"),
    "moe_mlp": ("torch_grouped_mm", "torch_compile"),
    "attention_prefill": ("sdpa_cudnn", "sdpa_flash"),
    "attention_decode": ("sdpa_cudnn", "sdpa_flash"),
    "cca_prep": ("eager", "torch_graph", "torch_compile"),
}
BOUND_IMPLS = ("dense_mm",)
OURS = "zaya"
COLUMNS = ("op", "impl", "shape", "median µs", "TFLOP/s", "% matmul", "TB/s", "% copy", "floor µs",
           "speedup vs best baseline", "correct", "note")


def is_ours(impl: str) -> bool:
    """"zaya" and its variants ("zaya_two_ops", "zaya_page64", ...)."""
    return impl == OURS or impl.startswith(OURS + "_")


def is_baseline(op: str, impl: str) -> bool:
    listed = BASELINE_IMPLS.get(op)
    if listed is not None:
        return impl in listed
    return not is_ours(impl) and impl not in BOUND_IMPLS


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


def shape_key(shape: dict) -> str:
    return json.dumps(shape, sort_keys=True)


def shape_label(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def baseline_row(rows: list[dict], row: dict) -> dict | None:
    """The best baseline of `row`: the fastest successful row (positive median) of the same op and shape
    whose impl is_baseline; None when there is none."""
    same = [r for r in rows if r["op"] == row["op"] and shape_key(r["shape"]) == shape_key(row["shape"])
            and _positive(r.get("median_us")) and is_baseline(r["op"], r["impl"])]
    return min(same, key=lambda r: r["median_us"]) if same else None


def speedup(rows: list[dict], row: dict) -> tuple[float, str] | None:
    """(best baseline's median / row's median, that baseline's impl): > 1 means faster than every baseline.
    None for a failed row or one without a baseline (never a division by zero)."""
    base = baseline_row(rows, row)
    if base is None or not _positive(row.get("median_us")):
        return None
    return base["median_us"] / row["median_us"], base["impl"]


def percent_of(value, ceiling) -> float | None:
    """100 * value / ceiling, None when either is missing or the ceiling is not positive."""
    if value is None or not _positive(ceiling):
        return None
    return 100 * value / ceiling


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table_cells(data: dict) -> list[list[str]]:
    """One list of strings per row, in COLUMNS order (shared by the markdown and the CLI's rich table)."""
    ceilings, rows = data["ceilings"], data["rows"]
    cells = []
    for row in rows:
        tflops, tbps = row.get("tflops"), row.get("tbps")
        ratio = speedup(rows, row)
        if baseline_row(rows, row) is row:
            ratio_text = "best baseline"
        else:
            ratio_text = "" if ratio is None else f"{ratio[0]:.2f}x {ratio[1]}"
        correct = row.get("correct")
        cells.append([
            row["op"], row["impl"], shape_label(row["shape"]), _num(row.get("median_us"), ".2f"),
            _num(tflops, ".1f"), _num(percent_of(tflops, ceilings.get("matmul_bf16_TFLOPs")), ".0f"),
            _num(tbps, ".3f"), _num(percent_of(tbps, ceilings.get("copy_TBps")), ".0f"),
            _num(row.get("floor_us"), ".1f"), ratio_text,
            "" if correct is None else ("yes" if correct else "NO"),
            f"error: {row['error']}" if row.get("error") else row.get("note", ""),
        ])
    return cells


def markdown(data: dict, title: str = "results") -> str:
    ceilings = data["ceilings"]
    lines = [
        f"# {title} on {data['device']}", "",
        f"torch {data['torch']}, {data['runtime']}, commit `{data['commit']}`, {data['date']}.", "",
        f"Ceilings measured in this run: device copy {_ceiling(ceilings, 'copy_TBps')} TB/s (read + write), "
        f"bf16 matmul {_ceiling(ceilings, 'matmul_bf16_TFLOPs')} TFLOP/s.", "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("op", "impl", "shape", "note") else "---:" for c in COLUMNS) + "|",
    ]
    for cells in table_cells(data):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    baselines = "; ".join(f"{op}: {', '.join(impls)}" for op, impls in BASELINE_IMPLS.items()
                          if any(r["op"] == op for r in data["rows"]))
    lines += ["", "speedup vs best baseline = the best baseline's median / this row's median (> 1: faster than "
              f"every baseline), the best baseline being the fastest of ({baselines or 'none'}) measured for the "
              "same op and shape in this run. floor = max(bytes at the copy ceiling, FLOPs at the matmul "
              "ceiling).", ""]
    return "\n".join(lines)


def _ceiling(ceilings: dict, key: str) -> str:
    value = ceilings.get(key)
    return format(value, ".4g") if isinstance(value, (int, float)) else "?"


def plot(data: dict, path, title: str = "results") -> Path | None:
    """Median time per shape, one bar per impl, one panel per op (log scale; floors as black ticks).
    Returns the path written, or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = [r for r in data["rows"] if r.get("median_us")]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig = Figure(figsize=(12, 3.2 * max(1, len(ops))))
    FigureCanvasAgg(fig)  # the Agg canvas: no display needed, whatever pyplot's backend is
    fig.suptitle(f"{title} ({data['device']}, torch {data['torch']})")
    for index, op in enumerate(ops):
        ax = fig.add_subplot(max(1, len(ops)), 1, index + 1)
        op_rows = [r for r in rows if r["op"] == op]
        labels = {shape_key(r["shape"]): shape_label(r["shape"]) for r in reversed(op_rows)}  # first-seen key order
        shapes = list(dict.fromkeys(shape_key(r["shape"]) for r in op_rows))
        impls = list(dict.fromkeys(r["impl"] for r in op_rows))
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for r in op_rows:
                if r["impl"] == impl:
                    xs.append(shapes.index(shape_key(r["shape"])) + (j - (len(impls) - 1) / 2) * width)
                    ys.append(r["median_us"])
            ax.bar(xs, ys, width=width, label=impl)
        floors = {shape_key(r["shape"]): r["floor_us"] for r in op_rows if r.get("floor_us")}
        if floors:
            ax.scatter([shapes.index(s) for s in floors], list(floors.values()), marker="_", s=600, c="black",
                       label="floor", zorder=3)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([labels[s] for s in shapes], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median µs")
        ax.set_title(op, fontsize=10)
        ax.legend(fontsize=7)
    if not ops:
        fig.text(0.5, 0.5, "no successful rows", ha="center")
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # leave the top strip to the suptitle
    fig.savefig(path, dpi=110)
    return Path(path)


def _ratio(num, den) -> float | None:
    return num / den if _positive(num) and _positive(den) else None


def compare(a_path, b_path) -> list[dict]:
    """Rows of two result files matched by (op, impl, shape): {op, impl, shape, a_us, b_us, ratio} with
    ratio = b_us / a_us (< 1: B is faster). Rows present in one file only come last, with None for the other."""
    a_rows, b_rows = load_json(a_path)["rows"], load_json(b_path)["rows"]
    key = lambda r: (r["op"], r["impl"], shape_key(r["shape"]))  # noqa: E731
    b_by_key = {key(r): r for r in b_rows}
    a_keys = {key(r) for r in a_rows}
    matched = []
    for a in a_rows:
        b = b_by_key.get(key(a), {})
        a_us, b_us = a.get("median_us"), b.get("median_us")
        matched.append({"op": a["op"], "impl": a["impl"], "shape": a["shape"], "a_us": a_us, "b_us": b_us,
                        "ratio": _ratio(b_us, a_us)})
    only_b = [{"op": b["op"], "impl": b["impl"], "shape": b["shape"], "a_us": None, "b_us": b.get("median_us"),
               "ratio": None} for b in b_rows if key(b) not in a_keys]
    return matched + only_b


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip())
        return 2
    for name in argv:
        path = Path(name)
        data = load_json(path)
        path.with_suffix(".md").write_text(markdown(data, title=path.stem))
        plot(data, path.with_suffix(".png"), title=f"{path.stem} on {data['device']}")
        print(f"wrote {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
