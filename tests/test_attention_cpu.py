# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the index math of the cca_prep and attention_decode kernels (csrc/common/cca_prep_rows.cuh,
csrc/common/attention_decode_plan.cuh), compiled for the host with g++ and called through ctypes, so the tests
exercise the exact C++ the kernels and launchers call."""
from __future__ import annotations

import bisect
import ctypes
import random
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SHIM = r"""
#include "common/cca_prep_rows.cuh"
#include "common/attention_decode_plan.cuh"
extern "C" {
int sequence_of(const int* cu, int batch, int t) { return zk::cca::sequence_of(cu, batch, t); }
int tile_start(int k, int tokens, int rows, const int* cu, int batch) {
  return zk::cca::tile_start(k, tokens, rows, cu, batch);
}
int num_tiles(int tokens, int rows) { return zk::cca::num_tiles(tokens, rows); }
long long cache_row_offset(const int* row, int page_size, int pos, int elems) {
  return zk::cca::cache_row_offset(row, page_size, pos, elems);
}
void decode_plan(long long capacity, long long pairs, int sms, int* out) {
  const zk::DecodeSplitPlan p = zk::decode_split_plan(capacity, pairs, sms);
  out[0] = p.num_splits;
  out[1] = p.split_keys;
}
}
"""

TILE_ROWS = (64, 32)  # sm_90a (cuda/cca_prep_sm90_mma.cuh) and gfx942 (hip/cca_prep_gfx942_mfma.h)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.fail("g++ is needed to compile the index-math header")
    d = tmp_path_factory.mktemp("attn_index")
    src, so = d / "shim.cpp", d / "shim.so"
    src.write_text(SHIM)
    subprocess.run([gxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{REPO / 'csrc'}", str(src), "-o", str(so)],
                   check=True)
    lib = ctypes.CDLL(str(so))
    lib.cache_row_offset.restype = ctypes.c_longlong
    lib.decode_plan.argtypes = [ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    return lib


def _ints(values):
    return (ctypes.c_int * len(values))(*values)


def _cu(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def _random_lengths(rng, batch):
    return [rng.choice([0, 1, 1, 2, 3, rng.randint(1, 70), rng.randint(1, 300)]) for _ in range(batch)]


@pytest.mark.parametrize("seed", range(20))
def test_sequence_of(lib, seed):
    rng = random.Random(seed)
    lengths = _random_lengths(rng, rng.randint(1, 40))
    cu = _cu(lengths)
    arr = _ints(cu)
    for t in range(cu[-1]):
        want = bisect.bisect_right(cu, t) - 1  # the sequence whose [cu[b], cu[b+1]) holds t
        assert lib.sequence_of(arr, len(lengths), t) == want, (lengths, t)


@pytest.mark.parametrize("rows", TILE_ROWS)
@pytest.mark.parametrize("seed", range(30))
def test_tiles_keep_first_two_tokens_together(lib, rows, seed):
    rng = random.Random(seed * 7 + rows)
    lengths = _random_lengths(rng, rng.randint(1, 60))
    if seed == 0:  # a sequence's first token on every row of a tile
        lengths = [k % 3 + 1 for k in range(200)]
    cu = _cu(lengths)
    tokens, batch = cu[-1], len(lengths)
    arr = _ints(cu)
    if tokens == 0:
        return
    tiles = lib.num_tiles(tokens, rows)
    starts = [lib.tile_start(k, tokens, rows, arr, batch) for k in range(tiles + 1)]
    assert starts[0] == 0 and starts[-1] == tokens
    for a, b in zip(starts, starts[1:]):
        assert rows - 2 <= b - a <= rows or (b == tokens and 0 < b - a <= rows), (a, b)
    tile_of = [0] * tokens
    for k in range(tiles):
        for t in range(starts[k], starts[k + 1]):
            tile_of[t] = k
    for b, n in enumerate(lengths):
        if n >= 2:
            assert tile_of[cu[b]] == tile_of[cu[b] + 1], f"sequence {b}: tokens 0 and 1 in different tiles"


def test_cache_row_offset(lib):
    row = _ints([5, 0, 7, 2])
    for page_size in (1, 16, 64):
        for pos in range(4 * page_size):
            want = ([5, 0, 7, 2][pos // page_size] * page_size + pos % page_size) * 256
            assert lib.cache_row_offset(row, page_size, pos, 256) == want


@pytest.mark.parametrize("capacity,pairs,want", [(32768, 2, (256, 128)), (4096, 2, (64, 64)),
                                                 (32768, 64, (9, 3648)), (8192, 256, (3, 2752))])
def test_decode_plan_h200(lib, capacity, pairs, want):
    out = (ctypes.c_int * 2)()
    lib.decode_plan(capacity, pairs, 132, out)
    assert (out[0], out[1]) == want


@pytest.mark.parametrize("capacity", [0, 1, 31, 32, 33, 64, 100, 4096, 10**6, 2**30])
@pytest.mark.parametrize("pairs", [1, 2, 64, 10**5])
def test_decode_plan_covers_capacity(lib, capacity, pairs):
    out = (ctypes.c_int * 2)()
    lib.decode_plan(capacity, pairs, 132, out)
    splits, keys = out[0], out[1]
    assert splits >= 1 and keys >= 32 and keys % 32 == 0
    assert splits * keys >= capacity
    assert (splits - 1) * keys < max(capacity, 1)  # no split that starts past the capacity
