# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the routing kernels' host-checkable parts.

1. A step-by-step model of the moe_align kernels (the chunk plan, warps' runs in passes of steps of one
   pair per lane, ballots, expert-owning lanes' masks and counts, ranks, chunk totals, the per-warp scan,
   the scatter, padding/block/tail writes) at warp 32 and wave 64, against reference.moe_align: the
   index math that must cover every pair once, in ascending order, and write every output element once.
2. The __host__ __device__ helpers of csrc/common/{moe_align,zaya_router_math}.cuh, the chunk plan of
   csrc/common/params.h, and the swizzle
   of csrc/cuda/zaya_router_sm90_load.cuh, compiled by nvcc into a host program (no GPU needed) and
   compared with Python: segment search, bucket bits, bf16 rounding, exact GELU, the tie rule.
3. The MMA layout fact the tile kernel relies on (wgmma accumulator columns = next A operand).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zaya_kernels  # noqa: F401  (registers torch.ops.zaya)
from zaya_kernels import reference

from . import naive
from .util import TIED_ROUTES, eps_router_case, reference_scores, router_args, router_weights, tie_weights

REPO = Path(__file__).resolve().parent.parent
PASS_PAIRS = 1024          # csrc/common/params.h kAlignPassPairs: a chunk of the chunked path is whole passes
MAX_CHUNKS = 128           # csrc/common/params.h kAlignMaxChunks
MAX_CHUNK_COUNTS = 8192    # csrc/common/params.h kAlignMaxChunkCounts: chunk_counts entries one sorting CTA reads
ALIGN_THREADS = 256        # csrc/common/moe_align.cuh kAlignThreads
MIN_BITS = 4               # csrc/common/moe_align.cuh kAlignMinBits
INDEX_SLACK = PASS_PAIRS * MAX_CHUNKS  # csrc/ops/routing.h kAlignIndexSlack


# ---------------------------------------------------------------------------------------------
# 1. the moe_align walk
# ---------------------------------------------------------------------------------------------

def one_cta_max_pairs(experts: int) -> int:
    """params.h align_one_cta_max_pairs."""
    return 4096 if experts <= 64 else 2048 if experts <= 128 else 1024


def chunk_plan(num_pairs: int, experts: int) -> tuple[int, int]:
    """params.h align_chunk_pairs / align_num_chunks: (pairs per chunk, chunks)."""
    if num_pairs <= one_cta_max_pairs(experts):
        return one_cta_max_pairs(experts), 1
    per_pass_max = PASS_PAIRS * min(MAX_CHUNKS, MAX_CHUNK_COUNTS // experts)
    chunk = -(-num_pairs // per_pass_max) * PASS_PAIRS
    return chunk, -(-num_pairs // chunk)


def kernel_bits(experts: int) -> int:
    """moe_align.cuh align_kernel_bits: ballots per step, at least MIN_BITS."""
    return max(MIN_BITS, math.ceil(math.log2(experts)) if experts > 1 else 0)


def lane_experts(bits: int, warp: int) -> int:
    """moe_align.cuh align_lane_experts: R, the experts each lane owns."""
    return 1 if (1 << bits) <= warp else (1 << bits) // warp


def one_cta_steps(r: int, warp: int) -> int:
    """moe_align.cuh align_one_cta_steps."""
    return min(16, 1024 // (r * warp))


def model_moe_align(ids: torch.Tensor, num_experts: int, block_m: int, warp: int, plan: tuple[int, int] | None = None):
    """The kernels' algorithm in Python, lane by lane (see csrc/common/moe_align.cuh): the chunk plan, each
    warp's run in passes of S steps, the ballots, the owner lanes' masks and counts, ranks and offsets, the
    chunk totals, the per-warp scan, the scatter, and every other output written exactly once.
    `plan` (pairs per chunk, chunks) overrides chunk_plan to reach passes > 1 with small inputs."""
    flat = ids.reshape(-1).tolist()
    n = len(flat)
    chunk_pairs, num_chunks = plan or chunk_plan(n, num_experts)
    assert num_chunks == max(1, -(-n // chunk_pairs))
    warps = ALIGN_THREADS // warp
    bits = kernel_bits(num_experts)
    r_per_lane = lane_experts(bits, warp)
    low = r_per_lane.bit_length() - 1
    # moe_align_launch_for: one CTA of 4 steps up to 1024 pairs, of one_cta_steps above; 4 steps per pass chunked
    one_cta = num_chunks == 1 and plan is None and n > PASS_PAIRS
    steps = one_cta_steps(r_per_lane, warp) if one_cta else PASS_PAIRS // ALIGN_THREADS
    full = (1 << warp) - 1
    owners = -(-num_experts // r_per_lane)
    assert owners <= warp and num_experts <= r_per_lane * warp <= max(warp, 1 << bits)

    def runs(c):  # (first pair, pairs) of each warp's run of chunk c
        first = c * chunk_pairs
        chunk_n = min(chunk_pairs, n - first)
        run = -(-(-(-chunk_n // warps)) // warp) * warp  # align_run_length
        return [(first + w * run, max(0, min(run, chunk_n - w * run))) for w in range(warps)]

    def ballot(preds):
        return sum(1 << lane for lane, pred in enumerate(preds) if pred)

    def walk(first, pairs, pass_index):
        """align_load_pass + align_walk: per step the lanes' (pair, expert or -1, offset); the owners' counts."""
        done = pass_index * steps * warp
        m = max(0, min(pairs - done, steps * warp))
        count = [[0] * r_per_lane for _ in range(warp)]  # owner lane, r
        out = []
        for s in range(-(-m // warp)):
            pair = [first + done + s * warp + lane for lane in range(warp)]
            ident = [flat[pair[lane]] if s * warp + lane < m else -1 for lane in range(warp)]
            bucket = [v if 0 <= v < num_experts else -1 for v in ident]
            valid = ballot(b >= 0 for b in bucket)
            bit_set = [ballot((b >> k) & 1 for b in bucket) for k in range(bits)]  # -1 sets every bit
            masks = []
            for lane in range(warp):
                high = valid
                for k in range(low, bits):
                    high &= bit_set[k] if (lane >> (k - low)) & 1 else full & ~bit_set[k]
                row = []
                for r in range(r_per_lane):
                    mask = high
                    for k in range(low):
                        mask &= bit_set[k] if (r >> k) & 1 else full & ~bit_set[k]
                    row.append(mask)
                    e = lane * r_per_lane + r
                    if e < num_experts:
                        assert mask == ballot(b == e for b in bucket), "an owner's mask is exactly its expert's lanes"
                masks.append(row)
            lanes = []
            for lane, b in enumerate(bucket):
                if b < 0:
                    lanes.append((pair[lane], -1, 0))
                    continue
                owner, r = b >> low, b & (r_per_lane - 1)
                peers = masks[owner][r]
                if r_per_lane > 1:  # the pair's own AND of the ballots
                    peers = valid
                    for k in range(bits):
                        peers &= bit_set[k] if (b >> k) & 1 else full & ~bit_set[k]
                rank = bin(peers & ((1 << lane) - 1)).count("1")
                lanes.append((pair[lane], b, count[owner][r] + rank))
            for lane in range(warp):
                for r in range(r_per_lane):
                    count[lane][r] += bin(masks[lane][r]).count("1")
            out.append(lanes)
        by_expert = [count[e // r_per_lane][e % r_per_lane] for e in range(num_experts)]
        return out, by_expert

    def passes(pairs):
        return -(-pairs // (steps * warp))

    # counting (per chunk; with one chunk, the sorting CTA counts for itself)
    visited = []
    warp_counts = []  # [chunk][warp][e]
    for c in range(num_chunks):
        rows = []
        for first, pairs in runs(c):
            total = [0] * num_experts
            for pi in range(max(1, passes(pairs))):
                lanes_by_step, counted = walk(first, pairs, pi)
                total = [a + b for a, b in zip(total, counted)]
                visited += [pr for lanes in lanes_by_step for pr, b, _ in lanes if 0 <= pr - first < pairs]
            rows.append(total)
        warp_counts.append(rows)
    assert sorted(set(visited)) == list(range(n)) and len(visited) == n, "every pair walked exactly once"
    chunk_counts = [[sum(warp_counts[c][w][e] for w in range(warps)) for c in range(num_chunks)]
                    for e in range(num_experts)]  # [E, num_chunks]

    capacity = n + num_experts * (block_m - 1)
    num_blocks = -(-capacity // block_m)
    sorted_ids, block_ids, offsets, num_padded_out = [None] * capacity, [None] * num_blocks, [None] * (num_experts + 1), []

    def write(buffer, index, v):
        assert buffer[index] is None, f"element {index} written twice"
        buffer[index] = v

    for c in range(num_chunks):
        for w, (first, pairs) in enumerate(runs(c)):
            # align_scan of warp w: owner lanes' totals and blocks, a prefix over the owner lanes
            total = [sum(chunk_counts[e]) if num_chunks > 1 else sum(warp_counts[c][ww][e] for ww in range(warps))
                     for e in range(num_experts)]
            before = [sum(warp_counts[c][ww][e] for ww in range(w)) + (sum(chunk_counts[e][:c]) if num_chunks > 1 else 0)
                      for e in range(num_experts)]
            blocks = [-(-t // block_m) for t in total]
            lane_blocks = [sum(blocks[o * r_per_lane:(o + 1) * r_per_lane]) for o in range(owners)]
            first_block, acc = [], 0
            for o in range(owners):
                for e in range(o * r_per_lane, min(num_experts, (o + 1) * r_per_lane)):
                    first_block.append(acc)
                    acc += blocks[e]
            padded_blocks = sum(lane_blocks)
            assert acc == padded_blocks
            running = [first_block[e] * block_m + before[e] for e in range(num_experts)]
            # align_scatter, pass by pass
            for pi in range(max(1, passes(pairs))):
                lanes_by_step, counted = walk(first, pairs, pi)
                for lanes in lanes_by_step:
                    for pr, b, offset in lanes:
                        if b >= 0:
                            write(sorted_ids, running[b] + offset, pr)
                running = [a + b for a, b in zip(running, counted)]
            # align_write_rest of global warp g: experts g, g + all warps, ...
            g, all_warps = c * warps + w, num_chunks * warps
            for e in range(g, num_experts, all_warps):
                end_block = first_block[e] + blocks[e]
                for slot in range(first_block[e] * block_m + total[e], end_block * block_m):
                    write(sorted_ids, slot, n)
                for blk in range(first_block[e], end_block):
                    write(block_ids, blk, e)
            for lane in range(warp):
                thread, all_threads = c * ALIGN_THREADS + w * warp + lane, num_chunks * ALIGN_THREADS
                for slot in range(padded_blocks * block_m + thread, capacity, all_threads):
                    write(sorted_ids, slot, n)
                for blk in range(padded_blocks + thread, num_blocks, all_threads):
                    write(block_ids, blk, -1)
            if c == 0 and w == 0:
                for e in range(num_experts):
                    write(offsets, e, first_block[e] * block_m)
                write(offsets, num_experts, padded_blocks * block_m)
                num_padded_out.append(padded_blocks * block_m)
    assert None not in sorted_ids and None not in block_ids, "every output element written"
    return sorted_ids, block_ids, offsets, num_padded_out[0]


@pytest.mark.parametrize("warp", (32, 64))
@pytest.mark.parametrize("tokens,k,experts,block_m,plan", [
    # one CTA: empty, one pair, the ZAYA1 shapes at the 1024 / 4096 bounds, R = 2 (warp 32) and E = 1
    (0, 1, 16, 64, None), (1, 1, 16, 64, None), (37, 2, 16, 16, None), (1024, 1, 16, 64, None),
    (4096, 1, 16, 64, None), (341, 3, 64, 1, None), (77, 1, 1, 128, None), (500, 1, 7, 3, None),
    # one CTA with 4 and 8 experts per lane (E <= 128: 2048 pairs, E <= 256: 1024 pairs)
    (1000, 2, 100, 16, None), (1024, 1, 256, 64, None),
    # chunked: one past the one-CTA bound, a multiple of the chunk, one past it, E = 33 (R = 2 on warp 32)
    (4097, 1, 16, 64, None), (5120, 1, 16, 64, None), (5121, 1, 16, 8, None), (2100, 2, 33, 5, None),
    (1025, 1, 256, 7, None), (700, 3, 129, 16, None),
    # several passes per chunk, forced with a small input (the default plan needs T*k > 131072 at E = 16)
    (3000, 2, 16, 32, (3 * PASS_PAIRS, 2)), (2500, 1, 40, 4, (2 * PASS_PAIRS, 2)), (1500, 1, 256, 64, (2 * PASS_PAIRS, 1))])
def test_moe_align_walk_matches_reference(warp, tokens, k, experts, block_m, plan, gen):
    ids = torch.randint(-1, experts + 2, (tokens, k), generator=gen, dtype=torch.int32)
    sorted_ids, blocks, offsets, num_padded = reference.moe_align(ids, experts, block_m)
    got = model_moe_align(ids, experts, block_m, warp, plan)
    assert got[0] == sorted_ids.tolist()
    assert got[1] == blocks.tolist()
    assert got[2] == offsets.tolist()
    assert got[3] == num_padded.item()


def test_moe_align_walk_all_pairs_on_one_expert(gen):
    ids = torch.full((5000, 1), 3, dtype=torch.int32)
    for warp in (32, 64):
        got = model_moe_align(ids, 16, 64, warp)
        assert got[0] == reference.moe_align(ids, 16, 64)[0].tolist()


@pytest.mark.parametrize("experts", (1, 2, 7, 8, 16, 17, 32, 33, 64, 65, 128, 129, 255, 256))
def test_moe_align_plan(experts):
    """The chunk plan's promises (params.h): one chunk up to the one-CTA bound and walked in one pass; above
    it whole passes of 1024 pairs, at most align_max_chunks(E) chunks and kAlignMaxChunkCounts entries of
    chunk_counts per sorting CTA; the grid-stride loops' overshoot within the launcher's int32 slack."""
    bound = one_cta_max_pairs(experts)
    for warp in (32, 64):
        r = lane_experts(kernel_bits(experts), warp)
        assert experts <= r * warp
        run = -(-(-(-bound // (ALIGN_THREADS // warp))) // warp) * warp
        assert run <= one_cta_steps(r, warp) * warp, "the one-CTA launch walks its pairs in one pass"
    for n in (0, 1, bound, bound + 1, 4 * PASS_PAIRS + 1, 65536, 131072, 131073, 262144, 2**20 + 3, 2**29):
        chunk, chunks = chunk_plan(n, experts)
        assert chunks == max(1, -(-n // chunk))
        if n <= bound:
            assert chunks == 1
            continue
        assert chunk % PASS_PAIRS == 0 and chunks >= 2
        assert chunks <= min(MAX_CHUNKS, MAX_CHUNK_COUNTS // experts) and chunks * experts <= MAX_CHUNK_COUNTS
        assert chunks * ALIGN_THREADS <= INDEX_SLACK
        assert chunk == PASS_PAIRS or (chunk - PASS_PAIRS) * min(MAX_CHUNKS, MAX_CHUNK_COUNTS // experts) < n, \
            "chunks grow past one pass only when there would be too many"
    assert chunk_plan(65536, 16) == (1024, 64), "ZAYA1 prefill T = 65536: 64 CTAs per launch"
    assert chunk_plan(4096, 16) == (4096, 1) and chunk_plan(4097, 16) == (1024, 5)


@pytest.mark.parametrize("warp", (32, 64))
def test_moe_align_chunk_prefix_groups(warp):
    """align_chunk_prefix: `group` lanes per expert, group-aligned inside one warp (for shfl_xor), every
    (expert, chunk) entry read by exactly one lane, every expert covered by the CTA's threads."""
    for experts in range(1, 257):
        group = warp
        while group * experts > ALIGN_THREADS:
            group //= 2
        assert group >= 1 and warp % group == 0
        for chunks in (2, 5, 64, 128):
            if chunks * experts > MAX_CHUNK_COUNTS:
                continue
            seen = {}
            for t in range(ALIGN_THREADS):
                e, j = t // group, t % group
                assert t // warp == (t - j) // warp == (t - j + group - 1) // warp, "a group stays in one warp"
                if e < experts:
                    for c in range(j, chunks, group):
                        seen[(e, c)] = seen.get((e, c), 0) + 1
            assert seen == {(e, c): 1 for e in range(experts) for c in range(chunks)}


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
  for (int e = 1; e <= 256; ++e) std::printf("%d%s", align_expert_bits(e), e < 256 ? "," : "");
  std::printf("], \"kernel_bits\": [");
  for (int e = 1; e <= 256; ++e) std::printf("%d%s", align_kernel_bits(e), e < 256 ? "," : "");
  std::printf("], \"lane_experts\": [");
  for (int b = 4; b <= 8; ++b) std::printf("[%d, %d]%s", align_lane_experts(b, 32), align_lane_experts(b, 64), b < 8 ? "," : "");
  std::printf("], \"one_cta_steps\": [%d, %d, %d, %d]", align_one_cta_steps(1), align_one_cta_steps(2),
              align_one_cta_steps(4), align_one_cta_steps(8));
  std::printf(", \"round_up\": [%d, %d, %d, %d]", round_up_to(0, 64), round_up_to(1, 64), round_up_to(64, 64),
              round_up_to(65, 3));
  std::printf(", \"run\": [%d, %d, %d, %d]", align_run_length(0, 8, 32), align_run_length(1, 8, 32),
              align_run_length(4096, 8, 32), align_run_length(1000, 4, 64));
  const long long pairs[] = {0, 1, 1024, 1025, 2048, 2049, 4096, 4097, 5120, 5121, 65536, 131072, 131073, 262144,
                             1048579, 536870912};
  const int experts[] = {1, 16, 17, 64, 65, 128, 129, 256};
  std::printf(", \"plan\": [");
  bool first = true;
  for (long long n : pairs) {
    for (int e : experts) {
      std::printf("%s[%lld, %d, %lld, %lld]", first ? "" : ",", n, e, (long long)align_chunk_pairs(n, e),
                  (long long)align_num_chunks(n, e));
      first = false;
    }
  }
  std::printf("]");
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
    assert host_helpers["bits"] == [math.ceil(math.log2(e)) for e in range(1, 257)]
    assert host_helpers["kernel_bits"] == [kernel_bits(e) for e in range(1, 257)]
    assert host_helpers["lane_experts"] == [[lane_experts(b, 32), lane_experts(b, 64)] for b in range(4, 9)]
    assert host_helpers["one_cta_steps"] == [one_cta_steps(r, 32) for r in (1, 2, 4, 8)] == [16, 16, 8, 4]
    assert host_helpers["round_up"] == [0, 64, 64, 66]
    assert host_helpers["run"] == [0, 32, 512, 256]
    for n, e, chunk, chunks in host_helpers["plan"]:
        assert (chunk, chunks) == chunk_plan(n, e), f"align_chunk_pairs / align_num_chunks at T*k={n}, E={e}"


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


# ---------------------------------------------------------------------------------------------
# 4. the routing ops through torch.ops.zaya on the CPU (the reference), on the cases the GPU tests
#    (tests/test_routing_gpu.py) give the kernels: each checked here against the naive loops or a
#    documented rule, so that the GPU tests compare the kernels with something known right
# ---------------------------------------------------------------------------------------------

ROUTES = 17
SKIP = ROUTES - 1
needs_ops = pytest.mark.skipif(not zaya_kernels.extension_loaded(),
                               reason=f"zaya_kernels._C not built: {zaya_kernels.BUILD_ERROR}")


def cpu_workspace() -> torch.Tensor:
    return torch.zeros(1024, dtype=torch.uint8)


def small_router_case(tokens, gen, hidden=512, routes=ROUTES, eda=True):
    w = router_weights(gen, routes=routes, hidden=hidden)
    x = torch.randn(tokens, hidden, generator=gen).bfloat16()
    r_prev = torch.randn(tokens, 256, generator=gen).bfloat16() if eda else None
    return x, r_prev, w


@needs_ops
@pytest.mark.parametrize("eps", (1e-2, 1e-8))
def test_router_eps_is_used(eps):
    """eps = 1e-2 and 1e-8 against 1e-5, on rows small enough that RMSNorm's eps decides n: the op
    equals the naive loops at that eps, and differs from eps = 1e-5 for many tokens (a kernel that
    ignored eps would fail the GPU twin of this test). The GPU test's own case (ZAYA1 shape, 1000
    tokens) is checked to move at least 10% of the tokens too."""
    x, r_prev, w = eps_router_case(160, eps, hidden=64, width=16, routes=5)
    weights, ids, _ = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w, eps))
    naive_weights, naive_ids, _ = naive.zaya_router(*router_args(x, r_prev, w, eps))
    assert ids.flatten().tolist() == naive_ids
    torch.testing.assert_close(weights.flatten().double(), torch.tensor(naive_weights, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)
    default_ids = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w, 1e-5))[1]
    assert (ids != default_ids).float().mean().item() > 0.1
    x, r_prev, w = eps_router_case(1000, eps)
    moved = (torch.ops.zaya.zaya_router(*router_args(x, r_prev, w, eps))[1]
             != torch.ops.zaya.zaya_router(*router_args(x, r_prev, w, 1e-5))[1]).float().mean().item()
    assert moved > 0.1, f"eps = {eps:g} moved only {moved:.1%} of the GPU test's tokens"


@needs_ops
@pytest.mark.parametrize("block_m", (1, 16, 64, 128))
@pytest.mark.parametrize("tokens", (0, 1, 300))
def test_route_align_with_skip_tokens(tokens, block_m, gen):
    """zaya_route's align outputs equal the naive align of its ids over the E' - 1 experts: skip-route
    tokens in no segment; its router outputs equal zaya_router's."""
    x, r_prev, w = small_router_case(tokens, gen)
    w["balancing_bias"][SKIP] = 0.06  # about a third of the tokens take the skip route
    out = torch.ops.zaya.zaya_route(*router_args(x, r_prev, w)[:-1], cpu_workspace(), block_m, 1e-5)
    router = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w))
    for got, want in zip(out[:3], router):
        assert torch.equal(got, want)
    ids = out[1]
    if tokens > 1:
        share = (ids == SKIP).float().mean().item()
        assert 0.1 < share < 0.9, f"the case needs skip-route tokens and experts, got {share:.0%} skips"
    sorted_ids, blocks, offsets, num_padded = naive.moe_align(ids, SKIP, block_m)
    assert out[3].tolist() == sorted_ids and out[4].tolist() == blocks
    assert out[5].tolist() == offsets and out[6].tolist() == [num_padded]
    placed = set(out[3][:num_padded].tolist()) - {tokens}
    assert placed == set((ids.flatten() != SKIP).nonzero().flatten().tolist()), "skip tokens go to no expert"


@needs_ops
def test_router_row_strided_inputs(gen):
    """x and r_prev as column windows of wider tensors (row strides H + 24 and R + 16) give the results
    of their contiguous copies."""
    x, r_prev, w = small_router_case(37, gen)
    x_wide = torch.randn(37, 512 + 24, generator=gen).bfloat16()
    r_wide = torch.randn(37, 256 + 16, generator=gen).bfloat16()
    x_wide[:, 8:520], r_wide[:, 8:264] = x, r_prev
    x_view, r_view = x_wide[:, 8:520], r_wide[:, 8:264]
    assert x_view.stride() == (536, 1) and r_view.stride() == (272, 1)
    for got, want in zip(torch.ops.zaya.zaya_router(*router_args(x_view, r_view, w)),
                         torch.ops.zaya.zaya_router(*router_args(x, r_prev, w))):
        assert torch.equal(got, want)


@needs_ops
def test_router_non_finite_r_prev_rows(gen):
    """A token whose r_prev row holds NaN or an infinity gets id 0 and weight NaN, its r_out row is
    non-finite; every other token is as without those rows."""
    x, r_prev, w = small_router_case(40, gen)
    bad = [0, 9, 21, 39]
    r_prev[0, 3] = float("nan")
    r_prev[9, 100] = float("inf")
    r_prev[21, 255] = -float("inf")
    r_prev[39] = float("nan")
    weights, ids, r_out = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w))
    assert ids[bad].flatten().tolist() == [0] * 4 and torch.isnan(weights[bad]).all()
    assert (~torch.isfinite(r_out[bad].float())).any(dim=1).all()
    good = [t for t in range(40) if t not in bad]
    clean = torch.ops.zaya.zaya_router(*router_args(x[good], r_prev[good], w))
    for got, want in zip((weights[good], ids[good], r_out[good]), clean):
        assert torch.equal(got, want)


@needs_ops
@pytest.mark.parametrize("tied", TIED_ROUTES)
def test_router_exact_ties_go_to_the_lower_index(tied, gen):
    w = tie_weights(gen, tied)
    x = torch.randn(50, 2048, generator=gen).bfloat16()
    r_prev = torch.randn(50, 256, generator=gen).bfloat16()
    scores = reference_scores(x, r_prev, w)
    assert (scores[:, list(tied)] == scores[:, tied[:1]]).all(), "the tied routes' scores are exactly equal"
    weights, ids, _ = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w))
    assert (ids == tied[0]).all()
    naive_weights, naive_ids, _ = naive.zaya_router(*router_args(x[:2], r_prev[:2], w))
    assert naive_ids == [tied[0]] * 2
    torch.testing.assert_close(weights[:2].flatten().double(), torch.tensor(naive_weights, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)


@needs_ops
@pytest.mark.parametrize("hidden,routes", [(512, 2), (1024, 5), (1536, 32), (512, 32)])
def test_router_hidden_and_routes(hidden, routes, gen):
    """H and E' other than ZAYA1's 2048 / 17 (the kernels take H a multiple of 512 up to 2048 and E' in
    2..32): the op equals the naive loops; zaya_route's align runs over E' - 1 experts."""
    x, r_prev, w = small_router_case(3, gen, hidden=hidden, routes=routes)
    weights, ids, r_out = torch.ops.zaya.zaya_router(*router_args(x, r_prev, w))
    naive_weights, naive_ids, naive_r = naive.zaya_router(*router_args(x, r_prev, w))
    assert ids.flatten().tolist() == naive_ids
    torch.testing.assert_close(weights.flatten().double(), torch.tensor(naive_weights, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)
    out = torch.ops.zaya.zaya_route(*router_args(x, r_prev, w)[:-1], cpu_workspace(), 16, 1e-5)
    assert out[5].shape == (routes,) and out[5].tolist() == naive.moe_align(ids, routes - 1, 16)[2]


@needs_ops
def test_topk_gating_nan_bias_ranks_last():
    """A NaN bias entry ranks its route as -inf: chosen only after every finite score, weight still its p."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5], [3.0, 1.0, 2.0, 0.5]])
    bias = torch.tensor([0.0, 0.0, float("nan"), 0.0])
    weights, ids = torch.ops.zaya.topk_gating(logits, bias, 2)
    p = torch.softmax(logits, dim=-1)
    assert ids.tolist() == [[1, 3], [0, 1]]
    assert torch.equal(weights, torch.gather(p, 1, ids.long()))
    weights, ids = torch.ops.zaya.topk_gating(logits, torch.full((4,), float("nan")), 3)
    assert ids.tolist() == [[0, 1, 2]] * 2 and torch.equal(weights, p[:, :3])


@needs_ops
def test_topk_gating_renormalize_over_zero_p_is_nan():
    """renormalize over chosen routes whose p are all 0 (a bias outranks every route with p > 0): 0 / 0."""
    logits = torch.tensor([[0.0, -200.0, -200.0, -1.0]])
    bias = torch.tensor([0.0, 2.0, 2.0, 0.0])
    weights, ids = torch.ops.zaya.topk_gating(logits, bias, 2, True)
    assert ids.tolist() == [[1, 2]] and torch.isnan(weights).all()
    weights, ids = torch.ops.zaya.topk_gating(logits, bias, 2, False)
    assert weights.tolist() == [[0.0, 0.0]]


# ---------------------------------------------------------------------------------------------
# 5. the HIP router's split path, read from its gfx942 ISA (no MI300X to run it)
# ---------------------------------------------------------------------------------------------

def test_hip_router_split_state_is_per_launch_and_released_once(tmp_path):
    """The split plan keeps no state in static device arrays (two launches in flight would share them,
    and a counter left non-zero would break every later launch): the code object has no device global.
    Its arrival is released once per workgroup: one buffer_wbl2 in the split kernel, whose own
    s_waitcnt vmcnt(0) comes before the arrival atomic, after a barrier that every wave reaches with
    its partial stores complete (s_waitcnt vmcnt(0) before the s_barrier)."""
    rocm = REPO / ".toolchain" / "rocm" / "usr"
    devlibs = rocm / "lib" / "x86_64-linux-gnu" / "amdgcn" / "bitcode"
    clang = shutil.which("clang-19")
    if clang is None or not (devlibs / "oclc_isa_version_942.bc").is_file():
        pytest.skip("clang-19 and the gfx942 device libs (tools/setup_hip_toolchain.sh) are needed")
    asm = tmp_path / "router.s"
    done = subprocess.run([clang, "-x", "hip", "--offload-arch=gfx942", "--cuda-device-only", "-mcode-object-version=5",
                           "-O3", "-std=c++17", f"--rocm-path={rocm}", f"--rocm-device-lib-path={devlibs}",
                           f"-I{REPO / 'csrc'}", "-S", str(REPO / "csrc" / "hip" / "zaya_router_gfx942.hip"),
                           "-o", str(asm)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = asm.read_text()
    objects = [name for name in re.findall(r"\.type\s+([^,\s]+),@object", text) if not name.startswith("__hip_cuid")]
    assert not objects, f"device globals in the router's code object: {objects}"
    start = text.index("zaya_router_gfx942_kernelILi1ELb1E")
    split = text[start:text.index("s_endpgm", start)]
    lines = [line.strip() for line in split.splitlines() if line.strip() and not line.strip().startswith(";")]
    wbl2 = [i for i, line in enumerate(lines) if line.startswith("buffer_wbl2")]
    atomic = next(i for i, line in enumerate(lines) if line.startswith("global_atomic_add"))
    assert len(wbl2) == 1 and wbl2[0] < atomic, "one agent-scope writeback, before the arrival atomic"
    assert any(line.startswith("s_waitcnt vmcnt(0)") for line in lines[wbl2[0]:atomic])
    barrier = max(i for i in range(wbl2[0]) if lines[i] == "s_barrier")
    assert lines[barrier - 1].startswith("s_waitcnt vmcnt(0)"), "every wave's partial stores complete"
