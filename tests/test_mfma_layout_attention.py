# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the index math of the gfx942 attention prefill, csrc/common/mfma_layout_attention.h.

No AMD GPU exists here: tools/compile_hip.sh reads the kernel's ISA (csrc/hip/attention_prefill_gfx942.hip)
and this file checks every address it computes: the K / V^T tiles staged through the loader maps and LDS
swizzles, the score MFMAs (S^T = K Q^T) and the P.V MFMAs (O^T = V^T P^T, P^T taken from the score
registers) simulated with the hardware model of tests/test_mfma_layout.py, the bank-conflict claims, the
paged-cache addresses against reference.gather_kv, and the tile schedule. The header is compiled for the
host with g++ and called through ctypes (the exact C++ the kernel calls).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_mfma_layout import HW, WAVE, conflict_degree
from zaya_kernels import reference

REPO = Path(__file__).resolve().parent.parent

SHIM = r"""
#define __host__
#define __device__
#include "common/mfma_layout_attention.h"
namespace a = zk::attention_gfx942;
namespace s = zk::gfx942_schedule;
extern "C" {
int query_row(int w, int l) { return a::query_row(w, l); }
int wave_head(int w) { return a::wave_head(w); }
int key_of_mfma_row(int rho) { return a::key_of_mfma_row(rho); }
int score_key(int b, int l, int r) { return a::score_key(b, l, r); }
int score_d(int c, int l, int step, int e) { return a::score_d(c, l, step, e); }
int k_offset(int key, int chunk) { return a::k_offset(key, chunk); }
int k_read_offset(int b, int c, int l, int cc) { return a::k_read_offset(b, c, l, cc); }
int k_load_key(int v, int i) { return a::k_load_key(v, i); }
int k_load_chunk(int v) { return a::k_load_chunk(v); }
int pv_key(int b, int l, int j, int e) { return a::pv_key(b, l, j, e); }
int out_d(int db, int l, int r) { return a::out_d(db, l, r); }
int vt_offset(int d, int chunk) { return a::vt_offset(d, chunk); }
int vt_read_offset(int db, int b, int l, int rr) { return a::vt_read_offset(db, b, l, rr); }
int v_key_quad(int v) { return a::v_key_quad(v); }
int v_d_chunk(int v) { return a::v_d_chunk(v); }
int v_load_key(int v, int j) { return a::v_load_key(v, j); }
int vt_write_offset(int v, int i) { return a::vt_write_offset(v, i); }
long long kv_offset(int page, int page_size, int kv_heads, int pos, int kvh) {
  return a::kv_offset(page, page_size, kv_heads, pos, kvh);
}
int page_slot(int pos, int page_size) { return a::page_slot(pos, page_size); }
void qtile_coord(long long logical, int bound, int* out) {
  const a::QTileCoord c = a::qtile_coord(logical, bound); out[0] = c.tile; out[1] = c.kvh;
}
int key_tiles(int last, int len, int causal) { return a::key_tiles(last, len, causal != 0); }
long long logical_block(long long b, long long g) { return s::logical_block(b, g); }
long long mtile_bound(long long rows, int segments, int tile) { return s::mtile_bound(rows, segments, tile); }
void locate(const int* cu, int batch, int m, int index, int* out) {
  const s::MTile t = s::locate_mtile(cu, batch, m, false, a::kQueryTile, index);
  out[0] = t.expert; out[1] = t.row0; out[2] = t.rows;
}
int constant(int which) {
  switch (which) {
    case 0: return a::kThreads; case 1: return a::kStageBytes; case 2: return a::kKTileBytes;
    case 3: return a::kQueryTile;
    case 4: return a::kKeyTile; case 5: return a::kLoaderThreads;
  }
  return -1;
}
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the layout header is compiled for the host with it")
    work = tmp_path_factory.mktemp("mfma_layout_attention")
    (work / "shim.cpp").write_text(SHIM)
    so = work / "libattention_layout.so"
    done = subprocess.run([gxx, "-x", "c++", "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC",
                           f"-I{REPO / 'csrc'}", str(work / "shim.cpp"), "-o", str(so)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"g++ failed on csrc/common/mfma_layout_attention.h:\n{done.stderr[-3000:]}"
    h = ctypes.CDLL(str(so))
    h.kv_offset.restype = h.logical_block.restype = h.mtile_bound.restype = ctypes.c_longlong
    h.logical_block.argtypes = [ctypes.c_longlong, ctypes.c_longlong]
    h.mtile_bound.argtypes = [ctypes.c_longlong, ctypes.c_int, ctypes.c_int]
    h.qtile_coord.argtypes = [ctypes.c_longlong, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    h.locate.argtypes = [ctypes.POINTER(ctypes.c_int)] + [ctypes.c_int] * 3 + [ctypes.POINTER(ctypes.c_int)]
    return h


def test_constants(lib):
    assert lib.constant(0) == 512 and lib.constant(3) == 64 and lib.constant(4) == 64 and lib.constant(5) == 256
    assert 2 * lib.constant(1) == 65536, "two [K | V^T] stages fill exactly the 64 KiB of a CU"


# ---------------------------------------------------------------------------------------------
# 1. K and V^T tiles through the loaders and LDS
# ---------------------------------------------------------------------------------------------

class Lds:
    def __init__(self, size):
        self.size, self.cells, self.writes = size, {}, {}

    def write(self, offset, values):
        assert offset % (2 * len(values)) == 0 and 0 <= offset and offset + 2 * len(values) <= self.size
        for i, v in enumerate(values):
            self.writes[offset + 2 * i] = self.writes.get(offset + 2 * i, 0) + 1
            self.cells[offset + 2 * i] = v

    def read16(self, offset):
        assert offset % 16 == 0 and offset + 16 <= self.size
        return [self.cells[offset + 2 * i] for i in range(8)]


def stage_k(lib, k):
    """K loaders (threads 0..255): 4 x 16 bytes each -> the swizzled K tile."""
    lds = Lds(lib.constant(2))
    for v in range(256):
        for i in range(4):
            key, chunk = lib.k_load_key(v, i), lib.k_load_chunk(v)
            lds.write(lib.k_offset(key, chunk), list(k[key, 8 * chunk:8 * chunk + 8]))
    assert len(lds.writes) == 64 * 128 and set(lds.writes.values()) == {1}
    return lds


def stage_vt(lib, v_tile):
    """V loaders: keys 4kq..4kq+3 x d 8dc..8dc+7 loaded, transposed, written as 8 pieces (d, 4 keys)."""
    lds = Lds(128 * 128)
    for v in range(256):
        keys = [lib.v_load_key(v, j) for j in range(4)]
        kq, dc = lib.v_key_quad(v), lib.v_d_chunk(v)
        assert keys == [4 * kq + j for j in range(4)]
        rows = [v_tile[key, 8 * dc:8 * dc + 8] for key in keys]  # what the 4 x 16-byte loads hold
        for i in range(8):
            lds.write(lib.vt_write_offset(v, i), [rows[j][i] for j in range(4)])
    assert len(lds.writes) == 128 * 64 and set(lds.writes.values()) == {1}
    for d in range(128):  # the tile is V^T
        for key in range(64):
            chunk = key // 8
            assert lds.cells[lib.vt_offset(d, chunk) + 2 * (key % 8)] == v_tile[key, d]
    return lds


def test_loaders_cover_the_tiles(lib):
    pairs = sorted((lib.v_key_quad(v), lib.v_d_chunk(v)) for v in range(256))
    assert pairs == [(q, c) for q in range(16) for c in range(16)]
    rng = np.random.default_rng(0)
    stage_k(lib, rng.standard_normal((64, 128)))
    stage_vt(lib, rng.standard_normal((64, 128)))


def test_key_permutation(lib):
    assert sorted(lib.key_of_mfma_row(r) for r in range(32)) == list(range(32))
    for b in range(2):
        for lane in range(WAVE):
            assert [lib.score_key(b, lane, r) for r in range(16)] == [32 * b + 16 * (lane // 32) + r for r in range(16)]
            for j in range(4):
                for e in range(4):
                    assert lib.pv_key(b, lane, j, e) == lib.score_key(b, lane, 4 * j + e)


def test_scores_and_pv_equal_attention_products(lib):
    """One wave, one 64-key tile: S^T through the K tile and the Q registers; P^T = the score registers
    themselves (as the kernel packs them); O^T through the V^T tile. Both equal the matrix products."""
    rng = np.random.default_rng(1)
    k, v_tile, q = rng.standard_normal((64, 128)), rng.standard_normal((64, 128)), rng.standard_normal((32, 128))
    k_lds, vt_lds = stage_k(lib, k), stage_vt(lib, v_tile)
    for wave in (0, 5):
        scores = []
        for b in range(2):
            acc = [[0.0] * 16 for _ in range(WAVE)]
            for c in range(2):
                a_runs = [sum((k_lds.read16(lib.k_read_offset(b, c, lane, cc)) for cc in range(4)), [])
                          for lane in range(WAVE)]
                q_runs = [[q[lib.query_row(wave, lane) % 32, lib.score_d(c, lane, step, e)]
                           for step in range(8) for e in range(4)]
                          for lane in range(WAVE)]
                for step in range(8):
                    acc = HW.mfma(32, [r[4 * step:4 * step + 4] for r in a_runs],
                                  [r[4 * step:4 * step + 4] for r in q_runs], acc)
            scores.append(acc)
        want = k @ q.T  # [key, query]
        for b in range(2):
            for lane in range(WAVE):
                for r in range(16):
                    assert abs(scores[b][lane][r] - want[lib.score_key(b, lane, r), lane % 32]) < 1e-9
        # P.V with P^T = the score registers (any values exercise the index math)
        p = np.zeros((64, 32))
        for b in range(2):
            for lane in range(WAVE):
                for r in range(16):
                    p[lib.score_key(b, lane, r), lane % 32] = scores[b][lane][r]
        for db in range(4):
            acc = [[0.0] * 16 for _ in range(WAVE)]
            for b in range(2):
                vt_runs = [sum((vt_lds.read16(lib.vt_read_offset(db, b, lane, rr)) for rr in range(2)), [])
                           for lane in range(WAVE)]
                for j in range(4):
                    b_ops = [scores[b][lane][4 * j:4 * j + 4] for lane in range(WAVE)]
                    acc = HW.mfma(32, [r[4 * j:4 * j + 4] for r in vt_runs], b_ops, acc)
            want_o = v_tile.T @ p  # [d, query]
            for lane in range(WAVE):
                for r in range(16):
                    assert abs(acc[lane][r] - want_o[lib.out_d(db, lane, r), lane % 32]) < 1e-8


def test_output_pieces_are_4_consecutive_d(lib):
    for db in range(4):
        for lane in range(WAVE):
            for g in range(4):
                base = lib.out_d(db, lane, 4 * g)
                assert base % 4 == 0
                assert [lib.out_d(db, lane, 4 * g + e) for e in range(4)] == [base + e for e in range(4)]
    covered = sorted((lib.out_d(db, lane, r), lane % 32) for db in range(4) for lane in range(WAVE) for r in range(16))
    assert covered == [(d, q) for d in range(128) for q in range(32)]


def test_lds_accesses_are_conflict_free(lib):
    for b in range(2):
        for c in range(2):
            for cc in range(4):
                assert conflict_degree([lib.k_read_offset(b, c, lane, cc) for lane in range(WAVE)], 16) == 1
        for db in range(4):
            for rr in range(2):
                assert conflict_degree([lib.vt_read_offset(db, b, lane, rr) for lane in range(WAVE)], 16) == 1
    for w in range(4):  # K loader waves: ds_write_b128
        for i in range(4):
            addrs = [lib.k_offset(lib.k_load_key(64 * w + lane, i), lib.k_load_chunk(64 * w + lane))
                     for lane in range(WAVE)]
            assert conflict_degree(addrs, 16) == 1
    for w in range(4):  # V loader waves: ds_write_b64 of the transposed pieces
        for i in range(8):
            assert conflict_degree([lib.vt_write_offset(64 * w + lane, i) for lane in range(WAVE)], 8) == 1


def test_global_loads_are_coalesced(lib):
    for v in range(0, 256, 16):  # K: 16 lanes = one key's 256 contiguous bytes
        for i in range(4):
            assert len({lib.k_load_key(v + j, i) for j in range(16)}) == 1
            assert [lib.k_load_chunk(v + j) for j in range(16)] == list(range(16))
    for v in range(0, 256, 8):  # V: 8 lanes = 128 contiguous bytes of one key
        assert len({lib.v_key_quad(v + j) for j in range(8)}) == 1
        assert sorted(lib.v_d_chunk(v + j) % 8 for j in range(8)) == list(range(8))


# ---------------------------------------------------------------------------------------------
# 2. paged cache and schedule
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_paged_addresses_match_reference_gather(lib, page_size):
    rng = np.random.default_rng(page_size)
    kv_heads, length = 2, 700
    pages_needed = -(-length // page_size)
    num_pages = pages_needed + 5
    cache = torch.randn(num_pages, page_size, kv_heads, 128)
    table = torch.tensor(rng.permutation(num_pages)[:pages_needed + 2], dtype=torch.int32)  # shuffled pages
    want = reference.gather_kv(cache, table, length)  # [length, kv_heads, 128]
    flat = cache.reshape(-1)
    for pos in list(range(0, length, 37)) + [length - 1, page_size - 1, page_size]:
        if pos >= length:
            continue
        for kvh in range(kv_heads):
            page = int(table[lib.page_slot(pos, page_size)])
            off = lib.kv_offset(page, page_size, kv_heads, pos, kvh)
            assert torch.equal(flat[off:off + 128], want[pos, kvh])


def qcoord(lib, logical, bound):
    out = (ctypes.c_int * 2)()
    lib.qtile_coord(logical, bound, out)
    return tuple(out)


def test_schedule_covers_every_query_tile_once(lib):
    rng = np.random.default_rng(3)
    for trial in range(20):
        lens = rng.integers(0, 300, size=int(rng.integers(1, 9)))
        cu = [0] + [int(x) for x in np.cumsum(lens)]
        total, batch = cu[-1], len(lens)
        if total == 0:
            continue
        bound = lib.mtile_bound(total, batch, 64)
        grid = bound * 2
        arr = (ctypes.c_int * len(cu))(*cu)
        work = []
        for b in range(grid):
            tile, kvh = qcoord(lib, lib.logical_block(b, grid), bound)
            out = (ctypes.c_int * 3)()
            lib.locate(arr, batch, total, tile, out)
            if out[2]:
                work.append((out[0], out[1], out[2], kvh))
        want = [(s, r0, min(64, cu[s + 1] - r0), kvh) for kvh in range(2) for s in range(batch)
                for r0 in range(cu[s], cu[s + 1], 64)]
        assert sorted(work) == sorted(want)


def test_key_tiles(lib):
    for length in (1, 2, 3, 17, 63, 64, 65, 128, 1000):
        for last in range(max(0, length - 70), length):
            assert lib.key_tiles(last, length, 1) == -(-(last + 1) // 64)
        assert lib.key_tiles(0, length, 0) == -(-length // 64)
    assert lib.key_tiles(5, 0, 1) == 0
