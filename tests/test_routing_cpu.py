# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the routing kernels' host-checkable parts.

1. A step-by-step model of the moe_align kernels' walk (chunks of CTAs, warps, steps of one pair per
   lane, ballot groups, per-warp running slots) at warp 32 and wave 64, against reference.moe_align:
   the index math that must cover every pair once, in ascending order, at either width. Likewise the
   one-CTA fast path's scan over expert-owning lanes and its padding/block writes (each element once).
2. The __host__ __device__ helpers of csrc/common/{moe_align,zaya_router_math}.cuh and the swizzle
   of csrc/cuda/zaya_router_sm90_load.cuh, compiled by nvcc into a host program (no GPU needed) and
   compared with Python: segment search, bucket bits, bf16 rounding, exact GELU, the tie rule.
3. The MMA layout fact the tile kernel relies on (wgmma accumulator columns = next A operand).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zaya_kernels import reference

REPO = Path(__file__).resolve().parent.parent
CHUNK_PAIRS = 8192   # csrc/common/params.h kAlignPairsPerChunk
ALIGN_THREADS = 512  # csrc/common/moe_align.cuh kAlignThreads
SMALL_PAIRS = 1024   # csrc/common/params.h kAlignSmallMaxPairs: the one-CTA fast path
SMALL_EXPERTS = 64   # csrc/common/params.h kAlignSmallMaxExperts
SMALL_THREADS = 256  # csrc/common/moe_align.cuh kAlignSmallThreads


# ---------------------------------------------------------------------------------------------
# 1. the moe_align walk
# ---------------------------------------------------------------------------------------------

def model_moe_align(ids: torch.Tensor, num_experts: int, block_m: int, warp: int, threads: int = ALIGN_THREADS,
                    chunk_pairs: int = CHUNK_PAIRS):
    """The kernels' algorithm in Python, lane by lane (see csrc/common/moe_align.cuh)."""
    flat = ids.reshape(-1).tolist()
    n = len(flat)
    warps, steps = threads // warp, chunk_pairs // threads
    chunks = max(1, -(-n // chunk_pairs))
    bucket = [e if 0 <= e < num_experts else num_experts for e in flat]

    def lanes(c, w, s):  # (pair, bucket) of each lane at step s of warp w in chunk c; bucket -1 = no pair
        chunk_n = min(chunk_pairs, n - c * chunk_pairs)
        run = -(-(-(-chunk_n // warps)) // warp) * warp  # align_warp_run: ceil(n / warps) up to whole steps
        assert run <= steps * warp and run * warps >= chunk_n
        result = []
        for lane in range(warp):
            in_run = s * warp + lane
            index = w * run + in_run
            valid = in_run < run and index < chunk_n
            result.append((c * chunk_pairs + index, bucket[c * chunk_pairs + index] if valid else -1))
        return result

    counts = [[[0] * num_experts for _ in range(warps)] for _ in range(chunks)]
    visited = []
    for c in range(chunks):
        for w in range(warps):
            for s in range(steps):
                for pair, b in lanes(c, w, s):
                    if 0 <= b < num_experts:
                        counts[c][w][b] += 1
                    if b >= 0:
                        visited.append(pair)
    assert sorted(visited) == list(range(n)), "every pair visited exactly once"
    totals = [sum(counts[c][w][e] for c in range(chunks) for w in range(warps)) for e in range(num_experts)]
    starts = [0]
    for e in range(num_experts):
        starts.append(starts[-1] + -(-totals[e] // block_m) * block_m)
    capacity = n + num_experts * (block_m - 1)
    out = [None] * capacity
    for c in range(chunks):
        for w in range(warps):
            running = [starts[e] + sum(counts[cc][ww][e] for cc in range(chunks) for ww in range(warps)
                                       if (cc, ww) < (c, w)) for e in range(num_experts)]
            for s in range(steps):
                group = lanes(c, w, s)
                for lane, (pair, b) in enumerate(group):
                    if 0 <= b < num_experts:
                        rank = sum(1 for other in group[:lane] if other[1] == b)
                        assert out[running[b] + rank] is None
                        out[running[b] + rank] = pair
                for b in {b for _, b in group if 0 <= b < num_experts}:
                    running[b] += sum(1 for _, other in group if other == b)
    sorted_ids = [n if v is None else v for v in out]
    blocks = [max(e for e in range(num_experts) if starts[e] <= blk * block_m) if blk * block_m < starts[-1] else -1
              for blk in range(-(-capacity // block_m))]
    return sorted_ids, blocks, starts, starts[-1]


@pytest.mark.parametrize("warp", (32, 64))
@pytest.mark.parametrize("tokens,k,experts,block_m,chunk_pairs,threads", [
    (1, 1, 16, 64, CHUNK_PAIRS, ALIGN_THREADS), (37, 2, 16, 16, CHUNK_PAIRS, ALIGN_THREADS),
    (500, 1, 7, 3, 256, 128), (333, 3, 16, 8, 128, 64), (2000, 2, 64, 32, 1024, 256), (0, 1, 4, 4, 256, 128),
    # the fast path's walk: one chunk of SMALL_PAIRS over SMALL_THREADS threads, at and below its bound
    (1, 1, 16, 64, SMALL_PAIRS, SMALL_THREADS), (1024, 1, 16, 64, SMALL_PAIRS, SMALL_THREADS),
    (128, 8, 64, 128, SMALL_PAIRS, SMALL_THREADS), (341, 3, 64, 1, SMALL_PAIRS, SMALL_THREADS)])
def test_moe_align_walk_matches_reference(warp, tokens, k, experts, block_m, chunk_pairs, threads, gen):
    ids = torch.randint(-1, experts + 2, (tokens, k), generator=gen, dtype=torch.int32)
    sorted_ids, blocks, offsets, num_padded = reference.moe_align(ids, experts, block_m)
    got = model_moe_align(ids, experts, block_m, warp, threads, chunk_pairs)
    assert got[0] == sorted_ids.tolist()
    assert got[1] == blocks.tolist()
    assert got[2] == offsets.tolist()
    assert got[3] == num_padded.item()


def model_small_rest(ids: torch.Tensor, num_experts: int, block_m: int, warp: int):
    """moe_align_small_kernel's steps 2 and 4 lane by lane (align_small_scan, align_small_write_rest):
    lane l owns experts l*R .. l*R + R-1, a shuffle scan of blocks over the owner lanes, then each
    warp writes its owners' padding and blocks and the CTA the tail. Returns (sorted_ids with None in
    the pairs' slots, blocks, offsets), each element written exactly once."""
    flat = ids.reshape(-1).tolist()
    n = len(flat)
    per_lane, warps = SMALL_EXPERTS // warp, SMALL_THREADS // warp
    totals = [sum(1 for v in flat if v == e) for e in range(num_experts)]
    total = [[totals[l * per_lane + r] if l * per_lane + r < num_experts else 0 for r in range(per_lane)]
             for l in range(warp)]
    blocks = [[-(-t // block_m) for t in lane] for lane in total]
    lane_blocks = [sum(b) for b in blocks]
    owners = -(-num_experts // per_lane)
    value, offset = list(lane_blocks), 1
    while offset < owners:  # warp_inclusive_sum
        value = [value[l] + (value[l - offset] if l >= offset else 0) for l in range(warp)]
        offset *= 2
    padded_blocks = value[owners - 1]
    first = [[value[l] - lane_blocks[l] + sum(blocks[l][:r]) for r in range(per_lane)] for l in range(warp)]

    capacity = n + num_experts * (block_m - 1)
    num_blocks = -(-capacity // block_m)
    sorted_ids, block_ids = [None] * capacity, [None] * num_blocks

    def write(buffer, index, v):
        assert buffer[index] is None, f"element {index} written twice"
        buffer[index] = v

    for w in range(warps):
        for owner in range(w, owners, warps):
            for r in range(per_lane):
                e = owner * per_lane + r
                if e >= num_experts:
                    break
                fb, eb = first[owner][r], first[owner][r] + blocks[owner][r]
                for slot in range(fb * block_m + total[owner][r], eb * block_m):
                    write(sorted_ids, slot, n)
                for b in range(fb, eb):
                    write(block_ids, b, e)
    for slot in range(padded_blocks * block_m, capacity):
        write(sorted_ids, slot, n)
    for b in range(padded_blocks, num_blocks):
        write(block_ids, b, -1)
    offsets = [first[e // per_lane][e % per_lane] * block_m for e in range(num_experts)] + [padded_blocks * block_m]
    return sorted_ids, block_ids, offsets


@pytest.mark.parametrize("warp", (32, 64))
@pytest.mark.parametrize("tokens,k,experts,block_m", [
    (1, 1, 16, 64), (1024, 1, 16, 64), (128, 8, 64, 128), (341, 3, 64, 1), (0, 1, 16, 64), (7, 2, 1, 16),
    (100, 1, 33, 16), (512, 2, 63, 3)])
def test_moe_align_small_rest_matches_reference(warp, tokens, k, experts, block_m, gen):
    ids = torch.randint(-1, experts + 2, (tokens, k), generator=gen, dtype=torch.int32)
    sorted_ids, blocks, offsets, _ = reference.moe_align(ids, experts, block_m)
    got_sorted, got_blocks, got_offsets = model_small_rest(ids, experts, block_m, warp)
    assert got_offsets == offsets.tolist()
    assert got_blocks == blocks.tolist()
    want = sorted_ids.tolist()
    pair_slots = [i for i, v in enumerate(got_sorted) if v is None]
    assert pair_slots == [i for i, v in enumerate(want) if v != ids.numel()], "the scatter fills exactly the rest"
    assert [v for v in got_sorted if v is not None] == [v for v in want if v == ids.numel()]


# ---------------------------------------------------------------------------------------------
# 2. the __host__ __device__ helpers, through nvcc
# ---------------------------------------------------------------------------------------------

HOST_PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include "common/moe_align.cuh"
#include "common/zaya_router_math.cuh"
#include "cuda/zaya_router_sm90_load.cuh"

int main() {
  using namespace zk;
  std::printf("{\"bits\": [");
  for (int e = 1; e <= 256; ++e) std::printf("%d%s", align_bucket_bits(e), e < 256 ? "," : "");
  const int32_t starts[5] = {0, 64, 64, 192, 256};
  std::printf("], \"segment\": [");
  for (int pos = 0; pos < 256; ++pos) std::printf("%d%s", align_segment_of(starts, 5, pos), pos < 255 ? "," : "");
  std::printf("], \"round_up\": [%d, %d, %d, %d]", round_up_to(0, 64), round_up_to(1, 64), round_up_to(64, 64),
              round_up_to(65, 3));
  std::printf(", \"bucket\": [%d, %d, %d, %d]", align_bucket(-1, 16), align_bucket(0, 16), align_bucket(15, 16),
              align_bucket(16, 16));
  std::printf(", \"small\": [%d, %d, %d, %d, %d]", align_is_small(1024, 64), align_is_small(1025, 64),
              align_is_small(1024, 65), align_is_small(0, 1), align_is_small(1, 256));
  std::printf(", \"swizzle\": [");
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 64; col += 8) std::printf("%u%s", sm90::swizzle128_offset(row, col), row == 15 && col == 56 ? "" : ",");
  std::printf("], \"gelu\": [");
  for (int i = 0; i <= 24000; ++i) {
    const float x = -12.f + 0.001f * i;
    std::printf("[%.9g, %.9g]%s", x, gelu_erf(x), i < 24000 ? "," : "");
  }
  std::printf("], \"pack\": [");
  const float vs[6] = {1.0f, 1.00390625f, 1.01171875f, -3.1415926f, 65504.5f, 1e-40f};
  for (int i = 0; i < 6; ++i) std::printf("%u%s", pack_bf16x2(vs[i], -vs[i]), i < 5 ? "," : "");
  std::printf("], \"pack_nan\": %u", pack_bf16x2(NAN, 0.f) & 0xffffu);
  std::printf(", \"better\": [%d, %d, %d, %d, %d]", route_better(0.5f, 3, 0.5f, 4), route_better(0.5f, 4, 0.5f, 3),
              route_better(0.4f, 1, 0.5f, 2), route_better(-INFINITY, 0, -INFINITY, -1), route_better(1.f, -1, 0.f, 0));
  std::printf(", \"score_nan_is_minus_inf\": %d, \"rms_normalize\": %.9g}\n", route_score(NAN, 0.1f) == -INFINITY,
              rms_normalize(3.f, 0.5f, 1.25f));
  return 0;
}
"""


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    candidates = [str(Path(home) / "bin" / "nvcc")] if home else []
    try:
        import nvidia  # the pip CUDA toolkit (CI, tools/install.sh)

        candidates.append(str(Path(nvidia.__path__[0]) / "cu13" / "bin" / "nvcc"))
    except ImportError:
        pass
    candidates.append(shutil.which("nvcc") or "")
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def host_helpers(tmp_path_factory):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME): the host program needs the CUDA headers and compiler")
    work = tmp_path_factory.mktemp("routing_host")
    (work / "main.cu").write_text(HOST_PROGRAM)
    exe = work / "helpers"
    lib = Path(nvcc).resolve().parent.parent / "lib"  # the shared cudart (the pip toolkit has no static one)
    done = subprocess.run([nvcc, "-std=c++17", "-O1", "-gencode=arch=compute_90a,code=compute_90a", "-cudart=shared",
                           f"-L{lib}", f"-Xlinker=-rpath={lib}", f"-I{REPO / 'csrc'}", str(work / "main.cu"),
                           "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"nvcc failed:\n{done.stderr[-3000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_align_helpers(host_helpers):
    assert host_helpers["bits"] == [math.ceil(math.log2(e + 1)) for e in range(1, 257)]
    starts = [0, 64, 64, 192, 256]
    assert host_helpers["segment"] == [max(e for e in range(5) if starts[e] <= p) for p in range(256)]
    assert host_helpers["round_up"] == [0, 64, 64, 66]
    assert host_helpers["bucket"] == [16, 0, 15, 16]
    assert host_helpers["small"] == [1, 0, 0, 1, 0], "fast path: T*k <= 1024 and E <= 64"


def test_swizzle_is_tma_128b(host_helpers):
    """CU_TENSOR_MAP_SWIZZLE_128B: the 16-byte chunk index of a 128-byte row XOR (row % 8)."""
    want = [row * 128 + (((col // 8) ^ (row % 8)) * 16) for row in range(16) for col in range(0, 64, 8)]
    assert host_helpers["swizzle"] == want


def test_router_math_matches_torch(host_helpers):
    # gelu_erf's erfc fit against float64 GELU on [-12, 12] (the formula's fp32 error: 3.9e-7 at most),
    # and its bf16 rounding, which is what the router's MLP consumes, against float64's.
    pairs = torch.tensor(host_helpers["gelu"], dtype=torch.float64)  # [24001, 2]: x (an fp32 value), gelu_erf(x)
    xs, got = pairs[:, 0], pairs[:, 1]
    want = F.gelu(xs)
    assert (got - want).abs().max().item() <= 5e-7
    small = xs.abs() < 4
    flips = (got.float().bfloat16() != want.float().bfloat16())[small].double().mean().item()
    assert flips <= 2e-4, f"bf16 roundings that differ from float64 GELU's: {flips:.2e} of |x| < 4"
    vs = torch.tensor([1.0, 1.00390625, 1.01171875, -3.1415926, 65504.5, 1e-40])
    lo = vs.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    hi = (-vs).to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    assert host_helpers["pack"] == (lo | (hi << 16)).tolist()
    nan_bits = host_helpers["pack_nan"]
    assert (nan_bits & 0x7F80) == 0x7F80 and (nan_bits & 0x7F) != 0, "NaN stays NaN"
    assert host_helpers["better"] == [1, 0, 0, 1, 0], "higher score first, then the lower route; -1 = none"
    assert host_helpers["score_nan_is_minus_inf"] == 1
    assert host_helpers["rms_normalize"] == (3.0 * 0.5) * 1.25


# ---------------------------------------------------------------------------------------------
# 3. wgmma accumulator -> A operand (the tile kernel's register-resident MLP)
# ---------------------------------------------------------------------------------------------

def test_accumulator_columns_are_the_next_a_fragment():
    """PTX ISA layouts: wgmma m64nNk16 D holds (row 16w + lane/4 [+8], col 8i + 2(lane%4) [+1]) in
    d[4i..4i+3]; the bf16 A fragment of k-block j holds (row, k 2q[+1]) / (row+8, ..) / (row, k 8+2q) /
    (row+8, k 8+2q) in its 4 words. The tile kernel packs d[8j..8j+7] pairwise into the 4 words."""
    for lane in range(32):
        g, q = lane // 4, lane % 4

        def d_pos(i):  # (row, col) of accumulator element i
            block, e = divmod(i, 4)
            return g + (8 if e >= 2 else 0), 8 * block + 2 * q + (e % 2)

        for j in range(16):
            a_words = [(g, 2 * q), (g + 8, 2 * q), (g, 8 + 2 * q), (g + 8, 8 + 2 * q)]  # (row, k) of each word's lo half
            packed = [(d_pos(8 * j + 2 * w), d_pos(8 * j + 2 * w + 1)) for w in range(4)]
            for (row, k), (lo, hi) in zip(a_words, packed):
                assert lo == (row, 16 * j + k) and hi == (row, 16 * j + k + 1)
