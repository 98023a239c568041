# SPDX-License-Identifier: Apache-2.0
"""Hugging Face transformers' ZAYA (`ZayaForCausalLM`) end to end, one model in one run, three implementations:
`eager` (HF's eager experts and attention), `hf_grouped_mm_sdpa` (HF's grouped_mm experts + SDPA) and `zaya`
(experts_implementation / attn_implementation "zaya_kernels" + kernelize for the router), issue 16.

    python bench/bench_hf.py                        # full ZAYA1-8B geometry, random bf16 weights, on the GPU
    python bench/bench_hf.py --layers 2 --vocab 4096 --device cpu --prefill 64 --new-tokens 4 --out /tmp/hf
                                                    # a dry run anywhere

Rows (DESIGN.md §7 JSON, suite hf_generate):
- e2e_hf_decode: `generate` at batch 1 after a 128-token prompt, median_us = microseconds per new token
  = (time of 1 + N new tokens - time of 1 new token) / N, CUDA-synchronised wall clock, median of --reps;
- e2e_hf_prefill: one forward over 1 x --prefill tokens with a fresh cache and logits for the last token only
  (what generate's prefill runs), median_us per forward, tokens_per_s.
Our rows carry speedup_vs_eager and speedup_vs_grouped_mm (same run) and tokens_equal (greedy tokens equal to
eager's from the same prompt: bf16 implementations may legitimately differ on random weights; reported, not
judged). A failing implementation gets a row with median_us null and its error; the others still run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's packages
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.zaya.modeling_zaya import ZayaRotaryEmbedding, ZayaSparseMoeBlock  # noqa: E402

from bench.harness import Results, device_name, device_slug  # noqa: E402

IMPLS = {"eager": ("eager", "eager", False), "hf_grouped_mm_sdpa": ("grouped_mm", "sdpa", False),
         "zaya": ("zaya_kernels", "zaya_kernels", True)}
PROMPT = 128


def log(message: str) -> None:
    print(f"[bench_hf {time.strftime('%H:%M:%S')}] {message}", flush=True)


def random_model(config, device: torch.device) -> torch.nn.Module:
    """ZayaForCausalLM of `config` in bf16 on `device`, built without a CPU copy (meta, then to_empty), every
    tensor random and O(1)-preserving: matrices N(0, 1/fan_in), norms and scales 1 +- 0.2, biases +- 0.1,
    temperatures in [0.5, 2.5] (HF's 0 would make attention uniform), balancing biases N(0, 0.05) with -1 on
    the skip slot, router output gain 3 (a decisive router, as a trained one)."""
    with torch.device("meta"):
        model = transformers.ZayaForCausalLM(config)
    model = model.to_empty(device=device).to(torch.bfloat16).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qk_norm.temp"):
                p.uniform_(0.5, 2.5, generator=gen)
            elif p.dim() == 1:
                p.normal_(1.0 if ("scale" in name or "norm" in name) else 0.0,
                          0.2 if ("scale" in name or "norm" in name) else 0.1, generator=gen)
            else:
                fan_in = p[0].numel() if p.dim() != 3 or "conv" in name else p.shape[-1]
                gain = 3.0 if name.endswith("out_proj.weight") else 1.0
                std = (1.0 if "embed_tokens" in name else 0.7 if "conv_qk_depthwise" in name
                       else gain / math.sqrt(fan_in))
                p.normal_(0.0, std, generator=gen)
        for module in model.modules():
            if hasattr(module, "balancing_biases"):
                module.balancing_biases.normal_(0.0, 0.05, generator=gen)
                module.balancing_biases[-1] = -1.0
    model.model.rotary_emb = ZayaRotaryEmbedding(config, device=device)  # fp32 frequencies, as from_pretrained
    model.tie_weights()
    return model


def use(model, impl: str) -> None:
    """Switch the one model to an implementation (kernelize's instance forwards are removed for HF's rows)."""
    from zaya_kernels.integrations import transformers as zk

    experts, attn, router = IMPLS[impl]
    model.set_experts_implementation(experts)
    model.set_attn_implementation(attn)
    for block in (m for m in model.modules() if isinstance(m, ZayaSparseMoeBlock)):
        block.__dict__.pop("forward", None)
        block.gate.__dict__.pop("forward", None)
    if router:
        zk.kernelize(model)


def synced(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def generate(model, ids, new_tokens: int):
    mask = torch.ones_like(ids)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0)


def measure_impl(model, impl, device, args, results, eager_tokens):
    use(model, impl)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(6, vocab, (1, PROMPT), generator=gen).to(device)
    long_ids = torch.randint(6, vocab, (1, args.prefill), generator=gen).to(device)
    with torch.no_grad():
        generate(model, prompt, 2)  # warm-up: first launches, autotuning, allocator
        one = [synced(device, lambda: generate(model, prompt, 1))[1] for _ in range(args.reps)]
        many = []
        for _ in range(args.reps):
            tokens, seconds = synced(device, lambda: generate(model, prompt, 1 + args.new_tokens))
            many.append(seconds)
        per_token_us = (statistics.median(many) - statistics.median(one)) / args.new_tokens * 1e6
        equal = None if eager_tokens is None else bool(torch.equal(tokens.cpu(), eager_tokens))
        log(f"{impl}: decode {per_token_us / 1e3:.2f} ms/token")
        decode = results.add_row("e2e_hf_decode", impl, dict(batch=1, prompt=PROMPT, new_tokens=args.new_tokens,
                                                               layers=model.config.num_hidden_layers),
                                 per_token_us, ms_per_token=per_token_us / 1e3,
                                 **({} if equal is None else {"tokens_equal_eager": equal}))

        def prefill():
            return model(long_ids, use_cache=True, logits_to_keep=1)

        prefill()
        times = [synced(device, prefill)[1] for _ in range(args.reps)]
        prefill_us = statistics.median(times) * 1e6
        log(f"{impl}: prefill 1x{args.prefill} {prefill_us / 1e3:.1f} ms = {args.prefill / prefill_us * 1e6:.0f} tok/s")
        pre = results.add_row("e2e_hf_prefill", impl, dict(batch=1, tokens=args.prefill,
                                                           layers=model.config.num_hidden_layers),
                              prefill_us, tokens_per_s=args.prefill / prefill_us * 1e6)
    return decode, pre, tokens.cpu()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=40, help="decoder blocks (ZAYA1-8B: 40)")
    parser.add_argument("--vocab", type=int, default=262272)
    parser.add_argument("--prefill", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--out", type=Path, default=None, help="folder for hf_generate.json/.md/.png")
    args = parser.parse_args()
    device = torch.device(args.device)
    import zaya_kernels.integrations.transformers  # noqa: F401  (registers "zaya_kernels")

    config = transformers.ZayaConfig(num_hidden_layers=args.layers, vocab_size=args.vocab)
    log(f"building ZAYA ({args.layers} blocks, vocab {args.vocab}) with random bf16 weights on {device}")
    model, seconds = synced(device, lambda: random_model(config, device))
    log(f"built in {seconds:.1f} s")
    results = Results("hf_generate" if device.type == "cuda" else "hf_generate_cpu", device=device)
    rows, eager_tokens, failed = {}, None, False
    for impl in args.impls.split(","):
        try:
            decode, pre, tokens = measure_impl(model, impl, device, args, results, eager_tokens)
            rows[impl] = (decode, pre)
            if impl == "eager":
                eager_tokens = tokens
        except Exception as err:  # noqa: BLE001 (one failing implementation must not lose the others' rows)
            failed = True
            traceback.print_exc()
            message = f"{type(err).__name__}: {err}"[:500]
            for op in ("e2e_hf_decode", "e2e_hf_prefill"):
                results.add_row(op, impl, dict(batch=1), None, error=message)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "zaya" in rows:
        for base, key in (("eager", "speedup_vs_eager"), ("hf_grouped_mm_sdpa", "speedup_vs_grouped_mm")):
            if base in rows:
                for ours, theirs in zip(rows["zaya"], rows[base]):
                    ours[key] = round(theirs["median_us"] / ours["median_us"], 3)
    out = args.out or (REPO_ROOT / "bench" / "results" / device_slug(device_name(device)))
    for path in results.write(out):
        log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
