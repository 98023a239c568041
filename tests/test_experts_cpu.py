# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the index math of the experts kernels' small (decode) regime, csrc/common/experts_schedule.h,
and the moe_mlp workspace layout of csrc/common/params.h.

The header is compiled for the host with g++ into a small shared library and called through ctypes, so
these tests run the exact C++ the sm_90a kernel calls (experts_sm90_small.cuh): the MMA operand assembly
from 16-byte loads (the k permutation of swap-AB), the weight rows of a tile, the work list's expert
search and item coordinates. The hardware side is an independent model of mma.sync.m16n8k16's fragments
written from the PTX ISA's tables ("Matrix fragments for mma.m16n8k16", bf16): a simulated warp's product
must equal W @ X^T.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

SHIM = r"""
#include <stdint.h>
#define ZK_HOST_DEVICE inline
#include "common/experts_schedule.h"
#include "common/params.h"
namespace x = zk::experts;
extern "C" {
int chunk_k_of_logical(int q, int s, int l) { return x::chunk_k_of_logical(q, s, l); }
int lane_chunk_k(int lane) { return x::lane_chunk_k(lane); }
int lane_group(int lane) { return x::lane_group(lane); }
void mma_a_fragment(const uint32_t* wa, const uint32_t* wb, int s, uint32_t* a) {
  const uint32_t wa4[4] = {wa[0], wa[1], wa[2], wa[3]}, wb4[4] = {wb[0], wb[1], wb[2], wb[3]};
  uint32_t out[4];
  x::mma_a_fragment(wa4, wb4, s, out);
  for (int i = 0; i < 4; ++i) a[i] = out[i];
}
void mma_b_fragment(const uint32_t* tok, int s, uint32_t* b) {
  const uint32_t t4[4] = {tok[0], tok[1], tok[2], tok[3]};
  uint32_t out[2];
  x::mma_b_fragment(t4, s, out);
  b[0] = out[0];
  b[1] = out[1];
}
long long plain_weight_row(long long tile, int r) { return x::plain_weight_row(tile, r); }
long long swiglu_weight_row(long long tile, int r, long long ffn) { return x::swiglu_weight_row(tile, r, ffn); }
long long row_tiles(long long cols, int swiglu) { return x::row_tiles(cols, swiglu != 0); }
int token_chunks(int count) { return x::token_chunks(count); }
int find_expert(const int32_t* prefix, int num, int item) { return x::find_expert(prefix, num, item); }
void item_coords(int local, int chunks, int* tile, int* chunk) {
  const x::ItemCoords c = x::item_coords(local, chunks);
  *tile = c.tile;
  *chunk = c.chunk;
}
long long act_bytes(long long capacity, long long ffn) { return zk::moe_mlp_act_bytes(capacity, ffn); }
long long pair_out_bytes(long long pairs, long long hidden, long long k) {
  return zk::moe_mlp_pair_out_bytes(pairs, hidden, k);
}
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("g++ not found: the CPU tier compiles csrc/common/experts_schedule.h for the host")
    tmp = tmp_path_factory.mktemp("experts_schedule")
    src, so = tmp / "shim.cpp", tmp / "libshim.so"
    src.write_text(SHIM)
    subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{REPO / 'csrc'}", str(src), "-o", str(so)],
                   check=True, capture_output=True, text=True)
    dll = ctypes.CDLL(str(so))
    ll = ctypes.c_longlong
    for name, res, args in (("plain_weight_row", ll, (ll, ctypes.c_int)),
                            ("swiglu_weight_row", ll, (ll, ctypes.c_int, ll)),
                            ("row_tiles", ll, (ll, ctypes.c_int)), ("act_bytes", ll, (ll, ll)),
                            ("pair_out_bytes", ll, (ll, ll, ll))):
        getattr(dll, name).restype = res
        getattr(dll, name).argtypes = args
    return dll


# ---- an independent model of mma.sync.m16n8k16 (bf16) from the PTX ISA's fragment tables --------------
# g = lane // 4, q = lane % 4. Each 32-bit register holds two bf16, the lower k in the low half.
#   A (16x16, row): a0 = (g, 2q..2q+1), a1 = (g+8, 2q..2q+1), a2 = (g, 2q+8..2q+9), a3 = (g+8, 2q+8..2q+9)
#   B (16x8, col):  b0 = (k 2q..2q+1, n g), b1 = (k 2q+8..2q+9, n g)
#   C (16x8, f32):  c0, c1 = (g, 2q), (g, 2q+1); c2, c3 = (g+8, 2q), (g+8, 2q+1)

def hw_mma(a_regs, b_regs):
    """a_regs [32][4], b_regs [32][2] of (lo, hi) value pairs -> C [16, 8] = A @ B, and the lanes' C layout."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for lane in range(32):
        g, q = lane // 4, lane % 4
        for reg, (row, k0) in enumerate(((g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8), (g + 8, 2 * q + 8))):
            A[row, k0], A[row, k0 + 1] = a_regs[lane][reg]
        for reg, k0 in enumerate((2 * q, 2 * q + 8)):
            B[k0, g], B[k0 + 1, g] = b_regs[lane][reg]
    assert not np.isnan(A).any() and not np.isnan(B).any(), "a fragment element was never supplied"
    return A @ B


def c_position(lane, i):
    """(row, column) of accumulator element i of a lane."""
    g, q = lane // 4, lane % 4
    return (g + (8 if i >= 2 else 0), 2 * q + (i & 1))


# The words are packed as integer ids (index into a value table) so that the C++ shuffles them untouched.
def pack_ids(ids_lo, ids_hi):
    return (int(ids_hi) << 16) | int(ids_lo)


def unpack(word, table):
    return table[word & 0xFFFF], table[word >> 16]


def lane_vector(lib, matrix_ids, row, chunk, lane):
    """The lane's 16-byte load of `row` at chunk `chunk`: 8 consecutive k from chunk*32 + lane_chunk_k(lane),
    as 4 words of bf16 pairs (ids)."""
    k0 = chunk * 32 + lib.lane_chunk_k(lane)
    return [pack_ids(matrix_ids[row, k0 + 2 * j], matrix_ids[row, k0 + 2 * j + 1]) for j in range(4)]


@pytest.mark.parametrize("chunks", (1, 3))
def test_swap_ab_mma_equals_matmul(lib, chunks):
    """W [16, K] (weight rows) x X [8, K] (tokens): the kernel's loads and operand assembly through the
    hardware model, summed over MMAs s = 0, 1 of every chunk, equal W @ X^T, read back through the C layout."""
    rng = np.random.default_rng(chunks)
    k = 32 * chunks
    w = rng.integers(-8, 8, size=(16, k)).astype(np.float64)
    x = rng.integers(-8, 8, size=(8, k)).astype(np.float64)
    table = np.concatenate([w.ravel(), x.ravel()])
    w_ids = np.arange(w.size).reshape(w.shape)
    x_ids = w.size + np.arange(x.size).reshape(x.shape)
    c = np.zeros((16, 8))
    u32x4, u32x2 = ctypes.c_uint32 * 4, ctypes.c_uint32 * 2
    for chunk in range(chunks):
        for s in range(2):
            a_regs, b_regs = [], []
            for lane in range(32):
                g = lib.lane_group(lane)
                wa = u32x4(*lane_vector(lib, w_ids, g, chunk, lane))
                wb = u32x4(*lane_vector(lib, w_ids, g + 8, chunk, lane))
                tok = u32x4(*lane_vector(lib, x_ids, g, chunk, lane))
                a, b = u32x4(), u32x2()
                lib.mma_a_fragment(wa, wb, s, a)
                lib.mma_b_fragment(tok, s, b)
                a_regs.append([unpack(r, table) for r in a])
                b_regs.append([unpack(r, table) for r in b])
            c += hw_mma(a_regs, b_regs)
    np.testing.assert_array_equal(c, w @ x.T)
    # Every (row, token) of the tile is held by exactly one (lane, element): the epilogue's partial layout.
    held = sorted(c_position(lane, i) for lane in range(32) for i in range(4))
    assert held == [(r, t) for r in range(16) for t in range(8)]


def test_k_permutation_documented_map(lib):
    """chunk_k_of_logical (the comment's map) is what the loads + operand assembly do, and is a bijection
    of the 32 k of a chunk."""
    seen = []
    for s in range(2):
        for q in range(4):
            for logical in (2 * q, 2 * q + 1, 2 * q + 8, 2 * q + 9):
                physical = lib.chunk_k_of_logical(q, s, logical)
                word, half = (logical >= 8) + 2 * s, logical & 1
                assert physical == lib.lane_chunk_k(q) + 2 * word + half
                seen.append(physical)
    assert sorted(seen) == list(range(32))


def test_weight_rows(lib):
    ffn = 72
    for tile in range(lib.row_tiles(ffn, 1)):
        rows = [lib.swiglu_weight_row(tile, r, ffn) for r in range(16)]
        assert rows[:8] == [8 * tile + r for r in range(8)]
        assert rows[8:] == [ffn + 8 * tile + r for r in range(8)]
    assert lib.row_tiles(72, 1) == 9 and lib.row_tiles(100, 0) == 7 and lib.row_tiles(2048, 1) == 256
    assert [lib.plain_weight_row(3, r) for r in (0, 15)] == [48, 63]


def model_work_list(counts, tiles):
    """What build_work_list computes: chunks per expert and the exclusive prefix of items."""
    chunks = [-(-c // 8) for c in counts]
    items = [ch * tiles for ch in chunks]
    return chunks, [0] + list(np.cumsum(items))


@pytest.mark.parametrize("case", range(6))
def test_work_list_covers_every_tile_once(lib, case):
    rng = np.random.default_rng(case)
    experts = int(rng.integers(1, 257))
    counts = rng.integers(0, 40, size=experts)
    counts[rng.random(experts) < 0.5] = 0  # many empty experts, the first and last among them sometimes
    if case == 0:
        counts[:] = 0
        counts[experts // 2] = 1000  # all tokens on one expert
    tiles = int(rng.integers(1, 20))
    counts = [int(c) for c in counts]
    assert all(lib.token_chunks(c) == -(-c // 8) for c in counts)
    chunks, prefix = model_work_list(counts, tiles)
    chunks, prefix = [int(c) for c in chunks], [int(p) for p in prefix]
    prefix_c = (ctypes.c_int32 * (experts + 1))(*prefix)
    seen = set()
    for item in range(prefix[-1]):
        e = lib.find_expert(prefix_c, experts, item)
        assert prefix[e] <= item < prefix[e + 1] and counts[e] > 0
        tile, chunk = ctypes.c_int(), ctypes.c_int()
        lib.item_coords(item - prefix[e], chunks[e], ctypes.byref(tile), ctypes.byref(chunk))
        assert 0 <= tile.value < tiles and 0 <= chunk.value < chunks[e]
        seen.add((e, tile.value, chunk.value))
        if item > prefix[e]:  # row tile major, token chunk minor
            assert (tile.value, chunk.value) > prev
        prev = (tile.value, chunk.value)
    expected = {(e, t, ch) for e in range(experts) for t in range(tiles) for ch in range(chunks[e])}
    assert seen == expected


def test_moe_mlp_workspace_layout(lib):
    """act [capacity, F] bf16 then pair_out [T*k, H] fp32 (k > 1), each 256-byte aligned (params.h)."""
    capacity, ffn, hidden = 1 + 16 * 63, 2048, 2048
    act = lib.act_bytes(capacity, ffn)
    assert act % 256 == 0 and act >= capacity * ffn * 2 and act - capacity * ffn * 2 < 256
    assert lib.pair_out_bytes(7, hidden, 1) == 0
    assert lib.pair_out_bytes(14, 136, 2) == -(-14 * 136 * 4 // 256) * 256
