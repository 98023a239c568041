# SPDX-License-Identifier: Apache-2.0
"""The model as users expect it (issue 11 finding 8): Hugging Face conventions on top of the packed
prefill / decode_step interface. Each test fails on the code before the fix (named in its docstring)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zaya_kernels
from zaya_kernels.model import (ZayaModel, load_model, pack_sequences, random_model, save_native, tiny,
                                to_hf_config)
from zaya_kernels.model.loader import save_checkpoint

from .util import assert_close_2x

REPO = Path(__file__).resolve().parents[1]
FLOOR = 1e-5


@pytest.fixture(scope="module")
def model():
    return random_model(tiny(), seed=51)


def packed_logits(model, sequences):
    state = model.new_state(len(sequences), max(len(s) for s in sequences))
    ids, cu = pack_sequences(sequences)
    return model.prefill(state, ids, cu, all_logits=True), cu


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

def test_forward_returns_batched_fp32_logits(model, gen):
    """model(input_ids [B, T]) -> [B, T, V] fp32, row b = the packed prefill's rows of sequence b.
    Before: calling the model raised (nn.Module without forward)."""
    ids = torch.randint(0, tiny().vocab_size, (3, 6), generator=gen)
    logits = model(ids)
    assert logits.shape == (3, 6, tiny().vocab_size) and logits.dtype == torch.float32
    packed, cu = packed_logits(model, list(ids))
    for b in range(3):
        assert torch.equal(logits[b], packed[int(cu[b]):int(cu[b + 1])].float())


@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_with_padding_equals_unpadded_rows(model, gen, side):
    lengths = (7, 3, 5)
    rows = [torch.randint(0, tiny().vocab_size, (n,), generator=gen) for n in lengths]
    ids = torch.full((3, 7), 1, dtype=torch.int64)
    mask = torch.zeros(3, 7, dtype=torch.int64)
    for b, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(7 - len(row), 7)
        ids[b, cols], mask[b, cols] = row, 1
    logits = model(ids, attention_mask=mask)
    for b, row in enumerate(rows):
        kept = mask[b].bool()
        # A row alone and in a batch differ only in GEMM blocking (bf16 activations): DESIGN.md §6's rule.
        alone = model(row[None])[0]
        low = model.use_backend("reference", torch.bfloat16)(row[None])[0]
        model.use_backend("reference")
        assert_close_2x(logits[b][kept], alone, low, FLOOR, f"row {b}")
        assert torch.equal(logits[b][~kept], torch.zeros_like(logits[b][~kept])), "padding gets logits 0"


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(4, dtype=torch.int64),), r"input_ids must be an integer tensor \[batch, tokens\]"),
    ((torch.zeros(1, 4),), r"input_ids must be an integer tensor"),
    ((torch.tensor([[1, 512]]),), r"input_ids must lie in \[0, vocab_size=512\)"),
    ((torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 3)), r"attention_mask must be a tensor of input_ids' shape"),
    ((torch.ones(1, 4, dtype=torch.int64), torch.tensor([[1, 0, 1, 1]])), "one contiguous run"),
    ((torch.ones(1, 4, dtype=torch.int64), torch.tensor([[1, 2, 1, 1]])), "0 \\(padding\\) and 1"),
])
def test_forward_rejects_bad_input_by_name(model, args, match):
    with pytest.raises(ValueError, match=match):
        model(*args)


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------

def test_generate_takes_a_tensor_and_returns_prompt_plus_new_tokens(model, gen):
    """Before: a tensor prompt gave "Boolean value of Tensor with more than one value is ambiguous"."""
    ids = torch.randint(3, tiny().vocab_size, (2, 5), generator=gen)
    out = model.generate(ids, max_new_tokens=4, stop_token=-1)
    assert out.dtype == torch.int64 and out.shape == (2, 9) and torch.equal(out[:, :5], ids)
    assert out[:, 5:].tolist() == model.generate(ids.tolist(), max_new_tokens=4, stop_token=-1)
    assert out[:, 5:].tolist() == model.generate(list(ids), max_new_tokens=4, stop_token=-1)  # 1-D tensors


def test_generate_pads_rows_after_their_stop_token(model, gen):
    ids = torch.randint(3, tiny().vocab_size, (2, 4), generator=gen)
    free = model.generate(ids, max_new_tokens=6, stop_token=-1)
    stop = int(free[0, 5])  # row 0's second new token
    out = model.generate(ids, max_new_tokens=6, stop_token=stop)
    for b in range(2):
        new = free[b, 4:].tolist()
        kept = new[:new.index(stop) + 1] if stop in new else new
        assert out[b, 4:4 + len(kept)].tolist() == kept
        assert (out[b, 4 + len(kept):] == tiny().pad_token_id).all()


def test_generate_left_padded_batch_equals_rows_alone(model, gen):
    rows = [torch.randint(3, tiny().vocab_size, (n,), generator=gen) for n in (6, 2)]
    ids = torch.zeros(2, 6, dtype=torch.int64)
    mask = torch.zeros(2, 6, dtype=torch.int64)
    for b, row in enumerate(rows):
        ids[b, 6 - len(row):], mask[b, 6 - len(row):] = row, 1
    out = model.generate(ids, max_new_tokens=3, attention_mask=mask, stop_token=-1)
    assert torch.equal(out[:, :6], ids)
    for b, row in enumerate(rows):
        assert torch.equal(out[b, 6:], model.generate(row[None], max_new_tokens=3, stop_token=-1)[0, len(row):])
    with pytest.raises(ValueError, match="attention_mask goes with a tensor"):
        model.generate([[1, 2]], max_new_tokens=2, attention_mask=torch.ones(1, 2))


# ---------------------------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------------------------

def test_fp32_model_agrees_with_bf16_model(gen):
    """dtype=torch.float32 for the reference backend: weights, activations and cache in fp32; the bf16
    model of the same weights is within DESIGN.md §6's rule of it (fp32 as the reference, the bf16 model's
    own rounding as the measure). Before: no dtype argument (every model was bf16)."""
    fp32 = random_model(tiny(), seed=52, dtype=torch.float32)
    assert fp32.dtype == torch.float32 and {p.dtype for p in fp32.parameters()} == {torch.float32}
    state = fp32.new_state(1, 8)
    assert state.k_cache.dtype == torch.float32 and state.decode_ws.x.dtype == torch.float32
    bf16 = random_model(tiny(), seed=52)
    fp32_of_bf16 = random_model(tiny(), seed=52).float()  # the same bf16-rounded weights, run in fp32
    ids = torch.randint(0, tiny().vocab_size, (2, 9), generator=gen)
    ref = fp32_of_bf16(ids)
    assert_close_2x(bf16(ids), ref, bf16.use_backend("reference", torch.bfloat16)(ids), FLOOR, "bf16 vs fp32")
    bf16.use_backend("reference")
    assert not torch.equal(fp32(ids), bf16(ids)), "fp32 weights are not rounded to bf16"


def test_model_float_and_back_keeps_balancing_biases(gen):
    """model.float() used to fail in index_select (bf16 workspaces); and .bfloat16() would round the
    balancing biases, which pick routes by small differences."""
    model = random_model(tiny(), seed=53)
    fine = 2.0 ** -20  # not representable next to 0.02 in bf16
    with torch.no_grad():
        model.blocks[0].moe.router.balancing_biases[0] += fine
    before = [b.moe.router.balancing_biases.clone() for b in model.blocks]
    ids = torch.randint(0, tiny().vocab_size, (1, 5), generator=gen)
    bf16_logits = model(ids)
    model.float()
    assert model.dtype == torch.float32 and model(ids).shape == bf16_logits.shape
    model.to(torch.bfloat16)
    assert torch.equal(model(ids), bf16_logits)
    for block, kept in zip(model.blocks, before):
        assert block.moe.router.balancing_biases.dtype == torch.float32
        assert torch.equal(block.moe.router.balancing_biases, kept)


def test_state_of_another_dtype_is_refused(model, gen):
    fp32 = random_model(tiny(), seed=54, dtype=torch.float32)
    state = model.new_state(1, 8)  # bf16
    with pytest.raises(ValueError, match="the state is torch.bfloat16, the model torch.float32"):
        fp32.prefill(state, torch.tensor([1, 2]), torch.tensor([0, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="the state is torch.bfloat16"):
        fp32.decode_step(state, torch.tensor([1]))
    with pytest.raises(ValueError, match="dtype must be one of"):
        ZayaModel(tiny(), dtype=torch.float16)


@pytest.mark.skipif(not zaya_kernels.extension_loaded(), reason=f"needs torch.ops.zaya: {zaya_kernels.BUILD_ERROR}")
def test_kernels_backend_refuses_fp32():
    with pytest.raises(ValueError, match="backend='kernels' runs bf16 weights"):
        random_model(tiny(), seed=55, dtype=torch.float32, backend="kernels")
    model = random_model(tiny(), seed=55, backend="kernels")
    with pytest.raises(ValueError, match="backend='kernels' runs bf16 weights"):
        model.float()(torch.ones(1, 2, dtype=torch.int64))


def test_load_model_keeps_fp32_checkpoints_fp32(tmp_path, gen):
    """Before: load_model cast every checkpoint to bf16 silently."""
    source = random_model(tiny(), seed=56, dtype=torch.float32)
    save_native(source, tmp_path)
    model = load_model(tmp_path)
    assert model.dtype == torch.float32
    ids = torch.randint(0, tiny().vocab_size, (1, 6), generator=gen)
    assert torch.equal(model(ids), source(ids))
    assert load_model(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# skip_mode default per layout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, expected", [("native", "zero"), ("legacy", "scaled_input")])
def test_skip_mode_default_follows_the_layout(tmp_path, layout, expected):
    """Native (HF) checkpoints run as the upstream HF model (skipped token -> 0, tests/test_model_hf.py),
    legacy ones as Zyphra's original code. Before: "scaled_input" for both."""
    save_checkpoint(random_model(tiny(), seed=57), tmp_path, layout)
    assert load_model(tmp_path).config.skip_mode == expected
    other = {"zero": "scaled_input", "scaled_input": "zero"}[expected]
    assert load_model(tmp_path, skip_mode=other).config.skip_mode == other
    assert "skip_mode" not in to_hf_config(tiny(), layout)


# ---------------------------------------------------------------------------------------------
# unbuilt extension, README
# ---------------------------------------------------------------------------------------------

def test_unbuilt_extension_message_says_run_install(tmp_path):
    """A copy of the package without the compiled module, imported in a fresh interpreter (the editable
    install's finder removed, so that it cannot supply the built one). Before: BUILD_ERROR quoted Python's
    "partially initialized module ... (most likely due to a circular import)"."""
    shutil.copytree(REPO / "zaya_kernels", tmp_path / "zaya_kernels",
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    probe = ("import sys\n"
             "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n"
             "import zaya_kernels\n"
             "assert zaya_kernels.__file__.startswith(sys.argv[1]), zaya_kernels.__file__\n"
             "print(zaya_kernels.BUILD_ERROR)\n"
             "from zaya_kernels.model import ZayaModel, tiny\n"
             "try:\n    ZayaModel(tiny(), backend='kernels')\nexcept RuntimeError as err:\n    print(err)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    build_error, kernels_error = result.stdout.strip().splitlines()
    assert build_error == "the compiled extension zaya_kernels._C is not built: run tools/install.sh"
    assert "circular" not in result.stdout and "tools/install.sh" in kernels_error


def test_readme_model_example_runs(tmp_path, monkeypatch):
    """The README's "Using the model" example, executed as written."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using the model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("/tmp/zaya_tiny", str(tmp_path / "zaya_tiny")), "README.md", "exec"), {})


def test_demo_runs_an_fp32_checkpoint_on_both_backends(tmp_path):
    """The demo compares the backends on the same weights: it loads a checkpoint in bf16 (the kernels' dtype)."""
    from zaya_kernels.demo import run_demo

    save_native(random_model(tiny().replace(num_blocks=1), seed=58, dtype=torch.float32), tmp_path)
    report = run_demo(checkpoint=str(tmp_path), device="cpu", max_new_tokens=2)
    assert report["backends"]["reference"]["error"] is None
    if zaya_kernels.extension_loaded():
        assert report["agreement"]["identical_tokens"]


@pytest.mark.gpu
def test_gpu_forward_and_generate_on_the_kernels(gen):
    """The HF-style interface on the GPU kernels: forward agrees with the reference backend (DESIGN.md §6),
    generate returns a CUDA LongTensor [B, T + n] that starts with the prompt."""
    from .test_model import _skip_without_device_kernels, gpu_config

    _skip_without_device_kernels()
    ids = torch.randint(3, 2048, (2, 9), generator=gen).cuda()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    kernels = random_model(gpu_config(), seed=59, device="cuda", backend="kernels")
    ref = random_model(gpu_config(), seed=59, device="cuda")
    low = random_model(gpu_config(), seed=59, device="cuda").use_backend("reference", torch.bfloat16)
    out, expected, lowp = (m(ids, attention_mask=mask) for m in (kernels, ref, low))
    assert out.is_cuda and out.shape == (2, 9, 2048)
    assert_close_2x(out.cpu(), expected.cpu(), lowp.cpu(), FLOOR, "kernels forward vs reference")
    generated = kernels.generate(ids, max_new_tokens=4, attention_mask=mask, stop_token=-1)
    assert generated.is_cuda and generated.shape == (2, 13) and torch.equal(generated[:, :9], ids)
