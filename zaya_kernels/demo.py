# SPDX-License-Identifier: Apache-2.0
"""The minimal ZAYA1 model end to end: prefill + greedy generation with both backends, their speed and
how they agree. Called by `zaya-kernels demo`."""
from __future__ import annotations

import time

import torch

from .model import load_model, random_model, tiny
from .model.layers import BACKENDS
from .model.state import pack_sequences

PROMPT_LENGTHS = (12, 5)  # two prompts of different lengths: a packed varlen prefill


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _run_backend(model, backend: str, prompts, max_new_tokens: int) -> dict:
    model.use_backend(backend)
    device = model.device
    state = model.new_state(len(prompts), max(len(p) for p in prompts) + max_new_tokens)
    token_ids, cu_seqlens = pack_sequences(prompts, device)
    start = _now(device)
    logits = model.prefill(state, token_ids, cu_seqlens)
    prefilled = _now(device)
    first_logits = logits.float().cpu()
    tokens = model.greedy_decode(state, logits, max_new_tokens)
    done = _now(device)
    decoded = sum(len(t) for t in tokens) - len(tokens)  # tokens that took a decode step (the first came from prefill)
    return {"prefill_tokens_per_s": token_ids.numel() / (prefilled - start),
            "decode_tokens_per_s": decoded / (done - prefilled) if decoded else None,
            "tokens": tokens, "logits": first_logits, "error": None}


def _agreement(a: dict, b: dict) -> dict:
    same = total = 0
    for x, y in zip(a["tokens"], b["tokens"]):
        total += max(len(x), len(y))
        same += sum(1 for u, v in zip(x, y) if u == v)
    return {"max_logit_diff": float((a["logits"] - b["logits"]).abs().max()),
            "token_agreement": same / total if total else 1.0,
            "identical_tokens": a["tokens"] == b["tokens"]}


def run_demo(checkpoint: str | None = None, device: str = "auto", max_new_tokens: int = 16) -> dict:
    """Build the tiny model with random weights (or load `checkpoint`, a folder with config.json and
    safetensors), prefill two prompts and generate greedily with each backend; print and return tokens/s
    and how the backends agree (max |logit difference| of the first generated position, token agreement)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if checkpoint is None:
        model, source = random_model(tiny(), seed=0, device=dev), "tiny config, random weights"
    else:
        # bf16: the kernels take no other dtype, and both backends must run the same weights.
        model, source = load_model(checkpoint, device=dev, dtype=torch.bfloat16), f"checkpoint {checkpoint}"
    config = model.config
    gen = torch.Generator().manual_seed(0)
    prompts = [[config.bos_token_id] + torch.randint(3, config.vocab_size, (n - 1,), generator=gen).tolist()
               for n in PROMPT_LENGTHS]
    print(f"ZAYA1 demo: {source}, {config.num_blocks} blocks, hidden {config.hidden_size}, on {dev}")
    if dev.type == "cpu":
        print("Running on the CPU: both backends run the reference path here (torch.ops.zaya's CPU kernels are "
              "reference.py), so the comparison checks the model's plumbing of the ops, not device kernels.")
    results = {}
    for backend in BACKENDS:
        try:
            _run_backend(model, backend, prompts, 2)  # warm-up: first-call costs out of the timings
            results[backend] = _run_backend(model, backend, prompts, max_new_tokens)
        except (NotImplementedError, RuntimeError) as err:
            results[backend] = {"error": f"{type(err).__name__}: {err}"}
    model.use_backend("reference")
    for backend, r in results.items():
        if r["error"]:
            print(f"  {backend:9s} unavailable: {r['error']}")
            continue
        decode = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        print(f"  {backend:9s} prefill {r['prefill_tokens_per_s']:.1f} tok/s, decode {decode} tok/s, "
              f"tokens {r['tokens']}")
    agreement = None
    if all(not r["error"] for r in results.values()):
        agreement = _agreement(results["reference"], results["kernels"])
        print(f"  agreement: max |logit diff| {agreement['max_logit_diff']:.3g}, "
              f"token agreement {agreement['token_agreement']:.1%}")
    for r in results.values():
        r.pop("logits", None)
    return {"device": str(dev), "source": source, "prompts": prompts, "max_new_tokens": max_new_tokens,
            "backends": results, "agreement": agreement}
