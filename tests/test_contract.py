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


def _out_arg(outs: dict):
    """The wrappers' out=: the tensor of a one-output op, else the tuple in schema order."""
    return tuple(outs.values()) if len(outs) > 1 else next(iter(outs.values()))


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
    returned = getattr(ops, op)(*_clone_args(args), out=_out_arg(outs))
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
@pytest.mark.parametrize("op", ALL_OPS)
def test_missing_device_kernel_names_the_op(op):
    """An op without a device kernel raises NotImplementedError naming the op; one with a kernel runs.
    Every op is a case, so that the list never runs empty (an empty parametrisation is a skip, which
    --require-gpu fails)."""
    args, _ = sample(op, device="cuda")
    if op in ops.DEVICE_PLACEHOLDERS:
        with pytest.raises(NotImplementedError, match=f"zaya::{op} is not implemented on cuda"):
            getattr(ops, op)(*args)
    else:
        getattr(ops, op)(*args)
        torch.cuda.synchronize()


# -- bad input: the error names the argument, expected and actual -------------------------------

def _replace(args, index, value):
    return tuple(value if i == index else a for i, a in enumerate(args))


def _other_device(t: torch.Tensor) -> torch.Tensor:
    """The same tensor on another device: meta beside CPU arguments (the dispatcher then picks the fake,
    which runs the same checks), the CPU beside GPU arguments (the C++ launcher's check)."""
    return t.to("meta") if t.device.type == "cpu" else t.cpu()


_ON_OTHER = r"must be on (cpu|cuda:0), got (meta|cpu)"

# Shapes, dtypes, devices and scalar arguments: the same error on every device (the C++ launchers
# mirror ops.py's _check_* functions).
BAD_INPUTS = [
    ("topk_gating", 0, lambda a: a[0].int(), r"logits must be .*bfloat16 or .*float32, got torch\.int32"),
    ("topk_gating", 0, lambda a: a[0][0], r"logits must be 2-D, got shape \(17,\)"),
    ("topk_gating", 0, lambda a: a[0][:, :1], r"k must be in 1\.\.min\(8, E'=1\), got 2"),  # k > E'
    ("topk_gating", 1, lambda a: a[1][:5], r"bias must have shape \(17,\), got \(5,\)"),
    ("topk_gating", 1, lambda a: _other_device(a[1]), "bias " + _ON_OTHER),
    ("topk_gating", 2, lambda a: 9, r"k must be in 1\.\.min\(8, E'=17\), got 9"),
    ("topk_gating", 2, lambda a: 2**40, r"k must be in 1\.\.min\(8, E'=17\), got 1099511627776"),
    ("topk_gating", 4, lambda a: 17, r"skip_index must be -1 or in \[0, 17\), got 17"),
    ("zaya_router", 0, lambda a: a[0].float(), r"x must be torch\.bfloat16, got torch\.float32"),
    ("zaya_router", 1, lambda a: a[1][:3], r"r_prev must have shape \(6, 256\), got \(3, 256\)"),
    ("zaya_router", 1, lambda a: None, r"eda_scale must be None when r_prev is None"),
    ("zaya_router", 1, lambda a: _other_device(a[1]), "r_prev " + _ON_OTHER),
    ("zaya_router", 4, lambda a: None, r"eda_scale is required when r_prev is given"),
    ("zaya_router", 10, lambda a: a[10][:, :8], r"out_w must have shape \(17, 256\), got \(17, 8\)"),
    ("zaya_router", 11, lambda a: _other_device(a[11]), "balancing_bias " + _ON_OTHER),
    ("zaya_router", 12, lambda a: 0.0, r"eps must be a finite number > 0, got 0"),
    ("zaya_router", 12, lambda a: -1e-5, r"eps must be a finite number > 0, got -"),
    ("zaya_router", 12, lambda a: float("nan"), r"eps must be a finite number > 0, got -?nan"),
    ("zaya_route", 12, lambda a: _other_device(a[12]), "workspace " + _ON_OTHER),
    ("zaya_route", 13, lambda a: 0, r"block_m must be >= 1, got 0"),
    ("zaya_route", 13, lambda a: 2**40, r"T\*k \+ E\*\(block_m-1\) must fit int32, got T\*k=6, E=16, block_m="),
    ("zaya_route", 14, lambda a: float("inf"), r"eps must be a finite number > 0, got inf"),
    ("moe_align", 0, lambda a: a[0].long(), r"ids must be torch\.int32, got torch\.int64"),
    ("moe_align", 1, lambda a: 0, r"num_experts must be in 1\.\.256, got 0"),
    ("moe_align", 1, lambda a: 257, r"num_experts must be in 1\.\.256, got 257"),
    ("moe_align", 1, lambda a: 2**40, r"num_experts must be in 1\.\.256, got 1099511627776"),
    ("moe_align", 2, lambda a: 0, r"block_m must be >= 1, got 0"),
    ("moe_align", 2, lambda a: 2**40, r"T\*k \+ E\*\(block_m-1\) must fit int32, got T\*k=18, E=16, block_m="),
    ("moe_align", 2, lambda a: 2**27, r"T\*k \+ E\*\(block_m-1\) must fit int32, got T\*k=18, E=16, block_m=134217728"),
    ("grouped_gemm", 1, lambda a: a[1][:, :, :8], r"w must be \[E, N, K=32\], got \(3, 16, 8\)"),
    ("grouped_gemm", 1, lambda a: _other_device(a[1]), "w " + _ON_OTHER),
    ("grouped_gemm", 2, lambda a: a[2][:3], r"expert_offsets must have shape \(4,\), got \(3,\)"),
    ("grouped_gemm", 2, lambda a: _other_device(a[2]), "expert_offsets " + _ON_OTHER),
    ("moe_mlp", 7, lambda a: "drop", r"skip_mode must be one of \('scaled_input', 'zero'\), got 'drop'"),
    ("moe_mlp", 6, lambda a: a[6][:, :, :4], r"w_fc2 must have shape \(4, 32, 8\), got \(4, 32, 4\)"),
    ("moe_mlp", 4, lambda a: _other_device(a[4]), "expert_offsets " + _ON_OTHER),
    ("cca_prep", 0, lambda a: a[0][:, :100], r"proj must be \[T, 1536\] \(q\|k\|v1\|v2\), got \(5, 100\)"),
    ("cca_prep", 3, lambda a: a[3].bfloat16(), r"conv_state must be torch\.float32, got torch\.bfloat16"),
    ("cca_prep", 12, lambda a: _other_device(a[12]), "block_table " + _ON_OTHER),
    ("cca_prep", 13, lambda a: 0.0, r"rope_theta must be a finite number > 0, got 0"),
    ("cca_prep", 13, lambda a: -5e6, r"rope_theta must be a finite number > 0, got -5"),
    ("cca_prep", 14, lambda a: 65, r"rotary_dim must be even and in \(0, 128\], got 65"),
    ("attention_prefill", 0, lambda a: a[0][:, :3], r"q heads \(3\) must be a multiple of the KV heads \(2\)"),
    ("attention_prefill", 4, lambda a: _other_device(a[4]), "cu_seqlens_q " + _ON_OTHER),
    ("attention_prefill", 5, lambda a: a[5][:1], r"seq_lens_k must have shape \(2,\), got \(1,\)"),
    ("attention_prefill", 6, lambda a: float("nan"), r"softmax_scale must be a finite number > 0, got -?nan"),
    ("attention_decode", 3, lambda a: a[3].long(), r"block_table must be torch\.int32, got torch\.int64"),
    ("attention_decode", 4, lambda a: _other_device(a[4]), "seq_lens " + _ON_OTHER),
    ("attention_decode", 5, lambda a: -1.0, r"softmax_scale must be a finite number > 0, got -1"),
]

# Checks that read tensor contents: the CPU kernels make them; on a GPU they are the caller's duty
# (each op's docstring says so), because checking would read the data back to the host.
_I32 = lambda *values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
BAD_VALUES = [
    ("grouped_gemm", 2, _I32(0, 5, 4, 10), r"expert_offsets must be non-decreasing, got expert_offsets\[2\]=4 < "
                                           r"expert_offsets\[1\]=5"),
    ("grouped_gemm", 2, _I32(-1, 4, 4, 10), r"expert_offsets must be >= 0, got expert_offsets\[0\]=-1"),
    ("grouped_gemm", 2, _I32(0, 4, 4, 11), r"expert_offsets\[-1\] must be <= M \(a\.shape\[0\]\)=10, got 11"),
    ("moe_mlp", 4, _I32(0, 2, 1, 3, 4), r"expert_offsets must be non-decreasing, got expert_offsets\[2\]=1"),
    ("moe_mlp", 4, _I32(0, 2, 2, 3, 5), r"expert_offsets\[-1\] must be <= sorted_token_ids\.shape\[0\]=4, got 5"),
    ("moe_mlp", 3, _I32(0, 3, 2, 6), r"sorted_token_ids must be pair indices in \[0, T\*k=5\] \(T\*k = padding\), "
                                     r"got sorted_token_ids\[3\]=6"),
    ("cca_prep", 1, _I32(0, 2, 4), r"cu_seqlens\[-1\] must equal proj\.shape\[0\]=5, got 4"),
    ("cca_prep", 1, _I32(1, 2, 5), r"cu_seqlens\[0\] must be 0, got 1"),
    ("cca_prep", 1, _I32(0, 6, 5), r"cu_seqlens must be non-decreasing, got cu_seqlens\[2\]=5 < cu_seqlens\[1\]=6"),
    ("cca_prep", 2, _I32(0, -1), r"seq_start must be >= 0, got seq_start\[1\]=-1"),
    ("cca_prep", 2, _I32(0, 10), r"the new tokens of sequence 1 reach position 12, past its block_table row's "
                                 r"capacity max_pages\*page_size = 3\*4 = 12"),
    ("cca_prep", 12, _I32([0, 1, 2], [3, 6, 5]), r"block_table\[1, 1\] = 6 must be a page of k_cache \(0\.\.5\)"),
    ("cca_prep", 12, _I32([0, 1, 2], [-1, 4, 5]), r"block_table\[1, 0\] = -1 must be a page of k_cache \(0\.\.5\)"),
    ("attention_prefill", 4, _I32(0, 2, 4), r"cu_seqlens_q\[-1\] must equal q\.shape\[0\]=5, got 4"),
    ("attention_prefill", 4, _I32(0, 6, 5), r"cu_seqlens_q must be non-decreasing, got cu_seqlens_q\[2\]=5"),
    ("attention_prefill", 5, _I32(1, 10), r"seq_lens_k\[0\]=1 must be >= the 2 queries of sequence 0"),
    ("attention_prefill", 5, _I32(0, 10), r"seq_lens_k\[0\]=0 must be >= the 2 queries of sequence 0"),
    ("attention_prefill", 5, _I32(7, 13), r"the keys of sequence 1 reach position 12, past its block_table row's"),
    ("attention_prefill", 3, _I32([0, -1, 2], [3, 4, 5]), r"block_table\[0, 1\] = -1 must be a page of k_cache"),
    ("attention_decode", 4, _I32(-1, 12), r"seq_lens must be >= 0, got seq_lens\[0\]=-1"),
    ("attention_decode", 4, _I32(7, 13), r"the keys of sequence 1 reach position 12, past its block_table row's"),
    ("attention_decode", 3, _I32([0, 1, 2], [3, 4, -1]), r"block_table\[1, 2\] = -1 must be a page of k_cache"),
    ("attention_decode", 3, _I32([0, 1, 2], [3, 4, 6]), r"block_table\[1, 2\] = 6 must be a page of k_cache"),
]


@pytest.mark.parametrize("op,index,mutate,message", BAD_INPUTS, ids=[f"{b[0]}-{b[3][:24]}" for b in BAD_INPUTS])
def test_bad_input_error_names_the_argument(op, index, mutate, message):
    args, _ = sample(op)
    bad = _replace(args, index, mutate(args))
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(*bad)


@pytest.mark.parametrize("op,index,value,message", BAD_VALUES, ids=[f"{b[0]}-{b[3][:32]}" for b in BAD_VALUES])
def test_bad_values_error_names_the_argument(op, index, value, message):
    """Both forms: the functional and the .out kernel run the same content checks before writing."""
    args, outs = sample(op)
    bad = _replace(args, index, value)
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(*_clone_args(bad))
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(*_clone_args(bad), out=_out_arg(outs))


@pytest.mark.parametrize("op", ["grouped_gemm", "cca_prep", "attention_prefill", "attention_decode"])
def test_content_checks_stay_out_of_the_fake(op):
    """The fake never reads tensor contents (a compiled graph would break on it): the same bad values that
    the CPU kernel rejects pass through torch.compile's tracing and fail only when the kernel runs."""
    index, value, message = next((i, v, m) for o, i, v, m in BAD_VALUES if o == op)
    args, _ = sample(op)
    bad = _replace(args, index, value)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bad)
        getattr(torch.ops.zaya, op)(*fake_args)
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.zaya, op)(*bad)


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
