# SPDX-License-Identifier: Apache-2.0
"""End-to-end ZAYA1-8B on one GPU with the reference backend: random bf16 weights built on the device,
a 2,048-token prefill and 16 greedy decode steps; peak memory and CUDA-synchronised wall-clock times.

    python bench/model_h200.py --out bench/results/h200/model_reference.json
    python bench/model_h200.py --config tiny --device cpu --out /tmp/dry_run.json   # a dry run anywhere

Writes the results JSON of DESIGN.md §7 (rows e2e_prefill and e2e_decode, impl "reference"), plus
"memory" and "checks". Designed to run once, unattended, in well under 3 minutes on an H200: every
phase is reported as it finishes, and a failure still writes the JSON (with "error") before exiting 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's packages
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.harness import Results  # noqa: E402
from zaya_kernels.model import random_model, tiny, zaya1_8b  # noqa: E402

CONFIGS = {"zaya1_8b": zaya1_8b, "tiny": tiny}
# Extra timed prefills (after the warm-up) only while the warm-up shows they fit the time budget.
PREFILL_REPEATS = 3
REPEAT_IF_PREFILL_UNDER_S = 15.0


def log(message: str) -> None:
    print(f"[model_h200 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def synced_seconds(device: torch.device, fn):
    """(result, wall-clock seconds of fn with the device idle before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def fp32_logits_supported(device: torch.device) -> bool:
    """The fp32 LM head uses torch.mm(..., out_dtype=float32) on CUDA; check this torch has it."""
    if device.type != "cuda":
        return True
    a = torch.ones(2, 8, dtype=torch.bfloat16, device=device)
    try:
        torch.mm(a, a.T, out_dtype=torch.float32, out=torch.empty(2, 2, device=device))
    except (TypeError, RuntimeError):
        return False
    return True


def run(args, results: Results, report: dict) -> None:
    device = torch.device(args.device)
    config = CONFIGS[args.config]()
    if not fp32_logits_supported(device):
        config = config.replace(fp32_logits=False)
        report["notes"].append("torch.mm has no out_dtype here: bf16 logits")
    report["fp32_logits"] = config.fp32_logits
    prefill_tokens, steps = args.prefill_tokens, args.decode_steps

    log(f"building {args.config} with random bf16 weights on {device}")
    model, build_s = synced_seconds(device, lambda: random_model(
        config, seed=args.seed, device=device, matrix_std=0.02, balancing_std=0.0, skip_bias=-1.0))
    counts = model.parameter_counts()
    report["memory"]["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    log(f"built in {build_s:.1f} s: {counts['non_embedding']:,} non-embedding + {counts['embedding']:,} embedding "
        f"parameters")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    gen = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (prefill_tokens,), generator=gen, device=device)
    cu_seqlens = torch.tensor([0, prefill_tokens], dtype=torch.int32, device=device)
    state = model.new_state(1, prefill_tokens + steps + 1)

    def prefill():
        state.reset_()
        return model.prefill(state, prompt, cu_seqlens)

    logits, warm_prefill_s = synced_seconds(device, prefill)
    _, warm_decode_s = synced_seconds(device, lambda: model.decode_step(state, logits.argmax(dim=-1)))
    log(f"warm-up: prefill {warm_prefill_s:.2f} s, decode step {warm_decode_s * 1e3:.1f} ms")

    repeats = PREFILL_REPEATS if warm_prefill_s < REPEAT_IF_PREFILL_UNDER_S else 1
    prefill_s = []
    for _ in range(repeats):
        logits, seconds = synced_seconds(device, prefill)
        prefill_s.append(seconds)
    log(f"prefill of {prefill_tokens} tokens: median {statistics.median(prefill_s):.3f} s over {repeats}")
    results.add_row("e2e_prefill", "reference", {"model": args.config, "batch": 1, "tokens": prefill_tokens},
                    statistics.median(prefill_s) * 1e6, samples_us=[round(s * 1e6) for s in prefill_s],
                    tokens_per_s=prefill_tokens / statistics.median(prefill_s))

    generated = [int(logits[0].argmax())]
    decode_s = []
    for _ in range(steps):
        token = torch.tensor([generated[-1]], dtype=torch.int64, device=device)
        logits, seconds = synced_seconds(device, lambda: model.decode_step(state, token))
        decode_s.append(seconds)
        generated.append(int(logits[0].argmax()))
    log(f"{steps} decode steps: median {statistics.median(decode_s) * 1e3:.1f} ms per step")
    results.add_row("e2e_decode", "reference", {"model": args.config, "batch": 1, "context": prefill_tokens,
                                                "steps": steps},
                    statistics.median(decode_s) * 1e6, samples_us=[round(s * 1e6) for s in decode_s])
    if device.type == "cuda":
        report["memory"]["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        log(f"peak memory {report['memory']['peak_bytes'] / 2**30:.2f} GiB "
            f"(weights {report['memory']['weights_bytes'] / 2**30:.2f} GiB)")
    report["checks"]["finite_logits"] = bool(torch.isfinite(logits).all())
    report["checks"]["generated_tokens"] = generated

    # The decode path against one prefill of the whole sequence: the same last-position logits.
    full = torch.cat([prompt, torch.tensor(generated[:-1], dtype=torch.int64, device=device)])
    check_state = model.new_state(1, full.numel())
    reference = model.prefill(check_state, full, torch.tensor([0, full.numel()], dtype=torch.int32, device=device))
    report["checks"]["decode_vs_prefill_max_abs_logit_diff"] = float((reference - logits).abs().max())
    report["checks"]["decode_vs_prefill_same_argmax"] = int(reference[0].argmax()) == generated[-1]
    log(f"decode vs full prefill: max |logit diff| {report['checks']['decode_vs_prefill_max_abs_logit_diff']:.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the results JSON")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="zaya1_8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    results = Results("model_h200", device=args.device, ceilings={})
    report = {"memory": {}, "checks": {}, "notes": []}
    status = 0
    try:
        run(args, results, report)
    except Exception:  # report whatever happened in the JSON: the run is unattended
        report["error"] = traceback.format_exc()
        log("FAILED:\n" + report["error"])
        status = 1
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results.to_dict(), **report}, indent=2) + "\n")
    log(f"wrote {args.out} after {report['wall_s']} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
