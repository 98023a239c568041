# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the op contract through torch.ops.zaya — schemas, fakes, the .out forms, opcheck,
torch.compile(fullgraph=True), the missing-kernel error, and bad-input errors that name the argument.
Needs the compiled extension (any backend). Skipped only where no build was ever made; where
setup.py ran (it writes zaya_kernels/_build_config.py) a missing or broken _C fails here."""
import pytest
import torch

import zaya_kernels
from zaya_kernels import ops

from .samples import sample

if not zaya_kernels.extension_loaded():
    if zaya_kernels._backend.build_config() is not None:
        raise RuntimeError(f"setup.py ran but zaya_kernels._C does not load: {zaya_kernels.BUILD_ERROR}")
    pytest.skip(f"zaya_kernels._C not built: {zaya_kernels.BUILD_ERROR}", allow_module_level=True)

ALL_OPS = list(ops.OP_NAMES)


def _clone_args(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_has_both_schemas(op):
    packet = getattr(torch.ops.zaya, op)
    assert set(packet.overloads()) == {"default", "out"}
    out_schema = packet.out._schema
    outs = [a for a in out_schema.arguments if a.kwarg_only]
    assert outs and all(a.alias_info is not None and a.alias_info.is_write for a in outs)
    assert len(out_schema.returns) == 0


@pytest.mark.parametrize("op", ALL_OPS)
def test_opcheck_functional(op):
    args, _ = sample(op)
    torch.library.opcheck(getattr(torch.ops.zaya, op).default, _clone_args(args))


@pytest.mark.parametrize("op", ALL_OPS)
def test_opcheck_out(op):
    args, outs = sample(op)
    torch.library.opcheck(getattr(torch.ops.zaya, op).out, _clone_args(args), outs)


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_form_equals_functional(op):
    args, outs = sample(op)
    functional = getattr(ops, op)(*_clone_args(args))
    functional = functional if isinstance(functional, tuple) else (functional,)
    for t in outs.values():
        t.fill_(float("nan") if t.is_floating_point() else -7777)
    returned = getattr(ops, op)(*_clone_args(args), out=tuple(outs.values()) if len(outs) > 1 else next(iter(outs.values())))
    returned = returned if isinstance(returned, tuple) else (returned,)
    for name, a, b, r in zip(outs, functional, outs.values(), returned):
        assert r is b, f"{op}: out= must return the tensors it was given"
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"{op}.out wrote a different {name}"


@pytest.mark.parametrize("op", ["topk_gating", "moe_align", "attention_decode", "cca_prep"])
def test_compile_fullgraph_cpu(op):
    args, _ = sample(op)
    eager = getattr(ops, op)(*_clone_args(args))
    compiled = torch.compile(lambda *a: getattr(torch.ops.zaya, op)(*a), fullgraph=True, backend="aot_eager")
    got = compiled(*_clone_args(args))
    for a, b in zip(eager if isinstance(eager, tuple) else (eager,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_has_device_kernel_matches_the_build():
    assert zaya_kernels.has_device_kernel("topk_gating") == (zaya_kernels.compiled_backend() in ("cuda", "rocm"))


@pytest.mark.gpu
@pytest.mark.parametrize("op", sorted(ops.DEVICE_PLACEHOLDERS))
def test_missing_device_kernel_names_the_op(op):
    args, _ = sample(op, device="cuda")
    with pytest.raises(NotImplementedError, match=f"zaya::{op} is not implemented on cuda"):
        getattr(ops, op)(*args)


# -- bad input: the error names the argument, expected and actual -------------------------------

def _replace(args, index, value):
    return tuple(value if i == index else a for i, a in enumerate(args))


BAD_INPUTS = [
    ("topk_gating", 0, lambda a: a[0].int(), r"logits must be .*bfloat16 or .*float32, got torch\.int32"),
    ("topk_gating", 0, lambda a: a[0][0], r"logits must be 2-D, got shape \(17,\)"),
    ("topk_gating", 1, lambda a: a[1][:5], r"bias must have shape \(17,\), got \(5,\)"),
    ("topk_gating", 2, lambda a: 9, r"k must be in 1\.\.min\(8, E'=17\), got 9"),
    ("topk_gating", 4, lambda a: 17, r"skip_index must be -1 or in \[0, 17\), got 17"),
    ("zaya_router", 0, lambda a: a[0].float(), r"x must be torch\.bfloat16, got torch\.float32"),
    ("zaya_router", 1, lambda a: a[1][:3], r"r_prev must have shape \(6, 256\), got \(3, 256\)"),
    ("zaya_router", 4, lambda a: None, r"eda_scale is required when r_prev is given"),
    ("zaya_router", 10, lambda a: a[10][:, :8], r"out_w must have shape \(17, 256\), got \(17, 8\)"),
    ("moe_align", 0, lambda a: a[0].long(), r"ids must be torch\.int32, got torch\.int64"),
    ("moe_align", 2, lambda a: 0, r"block_m must be >= 1, got 0"),
    ("grouped_gemm", 1, lambda a: a[1][:, :, :8], r"w must be \[E, N, K=32\], got \(3, 16, 8\)"),
    ("grouped_gemm", 2, lambda a: a[2][:3], r"expert_offsets must have shape \(4,\), got \(3,\)"),
    ("moe_mlp", 7, lambda a: "drop", r"skip_mode must be one of \('scaled_input', 'zero'\), got 'drop'"),
    ("moe_mlp", 6, lambda a: a[6][:, :, :4], r"w_fc2 must have shape \(4, 32, 8\), got \(4, 32, 4\)"),
    ("cca_prep", 0, lambda a: a[0][:, :100], r"proj must be \[T, 1536\] \(q\|k\|v1\|v2\), got \(5, 100\)"),
    ("cca_prep", 3, lambda a: a[3].bfloat16(), r"conv_state must be torch\.float32, got torch\.bfloat16"),
    ("cca_prep", 14, lambda a: 65, r"rotary_dim must be even and in \(0, 128\], got 65"),
    ("attention_prefill", 0, lambda a: a[0][:, :3], r"q heads \(3\) must be a multiple of the KV heads \(2\)"),
    ("attention_prefill", 5, lambda a: a[5][:1], r"seq_lens_k must have shape \(2,\), got \(1,\)"),
    ("attention_decode", 3, lambda a: a[3].long(), r"block_table must be torch\.int32, got torch\.int64"),
]


@pytest.mark.parametrize("op,index,mutate,message", BAD_INPUTS, ids=[f"{b[0]}-{b[3][:24]}" for b in BAD_INPUTS])
def test_bad_input_error_names_the_argument(op, index, mutate, message):
    args, _ = sample(op)
    bad = _replace(args, index, mutate(args))
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(*bad)


@pytest.mark.gpu
@pytest.mark.parametrize("op,index,mutate,message",
                         [b for b in BAD_INPUTS if b[0] not in ops.DEVICE_PLACEHOLDERS],
                         ids=[f"{b[0]}-{b[3][:24]}" for b in BAD_INPUTS if b[0] not in ops.DEVICE_PLACEHOLDERS])
def test_bad_input_error_names_the_argument_on_gpu(op, index, mutate, message):
    """The C++ launchers' checks: the same words as the CPU kernels', and a RuntimeError, never a crash."""
    args, _ = sample(op, device="cuda")
    bad = _replace(args, index, mutate(args))
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(*bad)


def test_bad_out_tensor_is_rejected():
    args, outs = sample("topk_gating")
    with pytest.raises(RuntimeError, match=r"ids must be torch\.int32, got torch\.int64"):
        ops.topk_gating(*args, out=(outs["weights"], outs["ids"].long()))
