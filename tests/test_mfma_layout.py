# SPDX-License-Identifier: Apache-2.0
"""CPU tier: the index math of the gfx942 (MI300X) HIP router, csrc/common/mfma_layout.h.

No AMD GPU exists here, so the HIP kernel (csrc/hip/zaya_router_gfx942.hip) is verified in two halves:
tools/compile_hip.sh reads its ISA (MFMA present, no spills/scratch, LDS <= 64 KiB), and this file checks
every lane/register/LDS address it computes. The header is compiled for the host with g++ (__host__ and
__device__ defined away) into a small shared library and called through ctypes, so the tests exercise
the exact C++ the kernel calls, not a Python restatement of it.

The reference for the MFMA operand layouts is AMD's documentation (CDNA3 ISA guide §7, the Matrix
Instruction Calculator, the ROCm blog "Matrix Core Programming on AMD CDNA3 and CDNA4"): `HW` below is
an independent model of what the hardware does with the registers, written from those tables and
anchored by literal entries copied from them. A simulated MFMA = the registers the C++ layout functions
fill, pushed through HW, read back through the C++ accumulator layout; it must equal A @ B + C.
"""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
WAVE = 64

SHIM = r"""
#define __host__
#define __device__
#include "common/mfma_layout.h"
namespace m = zk::mfma;
namespace r = zk::router_gfx942;
extern "C" {
int m32_a_row(int l) { return m::m32_a_row(l); }
int m32_a_k(int l, int e) { return m::m32_a_k(l, e); }
int m32_b_col(int l) { return m::m32_b_col(l); }
int m32_b_k(int l, int e) { return m::m32_b_k(l, e); }
int m32_c_row(int l, int i) { return m::m32_c_row(l, i); }
int m32_c_col(int l) { return m::m32_c_col(l); }
int m16_a_row(int l) { return m::m16_a_row(l); }
int m16_a_k(int l, int e) { return m::m16_a_k(l, e); }
int m16_b_col(int l) { return m::m16_b_col(l); }
int m16_b_k(int l, int e) { return m::m16_b_k(l, e); }
int m16_c_row(int l, int i) { return m::m16_c_row(l, i); }
int m16_c_col(int l) { return m::m16_c_col(l); }
int kblock_col(int l, int step, int e) { return r::kblock_col(l, step, e); }
int acc_feature(int wave, int l, int i) { return r::acc_feature(wave, l, i); }
int acc_token(int l) { return r::acc_token(l); }
int x_write_offset(int tid, int piece_bytes) { return r::x_write_offset(tid, piece_bytes); }
int x_read_offset(int token, int l, int c) { return r::x_read_offset(token, l, c); }
int act_write_offset(int token, int wave, int l, int g) { return r::act_write_offset(token, wave, l, g); }
int act_read_offset(int token, int kb, int l, int c) { return r::act_read_offset(token, kb, l, c); }
int logit_write_offset(int q, int tokens, int token, int l, int g) { return r::logit_write_offset(q, tokens, token, l, g); }
int logit_read_offset(int q, int tokens, int token, int lq, int half) { return r::logit_read_offset(q, tokens, token, lq, half); }
void xcd_remap_all(long long grid, int xcds, long long* out) {
  for (long long b = 0; b < grid; ++b) out[b] = r::xcd_remap(b, grid, xcds);
}
void router_plan(long long tokens, int hidden, int cus, int slots, long long* out) {
  const r::RouterPlan p = r::router_plan(tokens, hidden, cus, slots);
  out[0] = p.nt; out[1] = p.split; out[2] = p.tiles; out[3] = p.grid;
}
int constant(int which) {
  switch (which) {
    case 0: return r::kKBlock;        case 1: return r::kStepsPerKBlock; case 2: return r::kWaves;
    case 3: return r::kThreads;       case 4: return r::kTokensPerNTile; case 5: return r::kXRowBytes;
    case 6: return r::kActRowBytes;   case 7: return r::kLogitRowBytes;  case 8: return r::kMaxSplit;
    case 9: return m::kWave;
  }
  return -1;
}
}
"""

K_KBLOCK, K_STEPS, K_WAVES, K_THREADS, K_TOKENS_PER_NTILE, K_XROW, K_ACTROW, K_LOGITROW, K_MAXSPLIT, K_WAVE = range(10)
MAX_SPLIT_SLOTS = 320   # csrc/hip/zaya_router_gfx942_epilogue.h kMaxSplitSlots
X_STAGES = 3            # csrc/hip/zaya_router_gfx942.hip kXStages
MI300X_CUS = 304


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the layout header is compiled for the host with it")
    work = tmp_path_factory.mktemp("mfma_layout")
    (work / "shim.cpp").write_text(SHIM)
    so = work / "libmfma_layout.so"
    done = subprocess.run([gxx, "-x", "c++", "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC",
                           f"-I{REPO / 'csrc'}", str(work / "shim.cpp"), "-o", str(so)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"g++ failed on csrc/common/mfma_layout.h:\n{done.stderr[-3000:]}"
    handle = ctypes.CDLL(str(so))
    handle.xcd_remap_all.argtypes = [ctypes.c_longlong, ctypes.c_int, ctypes.POINTER(ctypes.c_longlong)]
    handle.router_plan.argtypes = [ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_longlong)]
    return handle


def plan(lib, tokens, hidden, cus=MI300X_CUS, slots=MAX_SPLIT_SLOTS):
    out = (ctypes.c_longlong * 4)()
    lib.router_plan(tokens, hidden, cus, slots, out)
    return dict(nt=out[0], split=out[1], tiles=out[2], grid=out[3])


# ---------------------------------------------------------------------------------------------
# The hardware: an independent model of the two MFMA instructions, from AMD's tables
# ---------------------------------------------------------------------------------------------

class HW:
    """v_mfma_f32_{32x32x8,16x16x16}_bf16 as the CDNA3 ISA guide / Matrix Instruction Calculator tabulate it.

    Lane l, element e of the A operand holds A[i][k]; the 4 elements of a lane are 4 consecutive k
    (e = 0 in bits 15:0 of the first VGPR). 32x32x8: i = l % 32, k = 4 * (l // 32) + e; B symmetric with
    j = l % 32; D register r of lane l is D[8 (r // 4) + 4 (l // 32) + r % 4][l % 32] (the blog's store
    loop: C[l%32 + (l/32)*4*32 + i*32*8 + 32*j] = c[4i+j]). 16x16x16: i = l % 16, k = 4 * (l // 16) + e;
    D register r of lane l is D[4 (l // 16) + r][l % 16].
    """

    @staticmethod
    def a_index(shape, lane, e):
        if shape == 32:
            return lane % 32, 4 * (lane // 32) + e
        return lane % 16, 4 * (lane // 16) + e

    @staticmethod
    def b_index(shape, lane, e):
        if shape == 32:
            return 4 * (lane // 32) + e, lane % 32
        return 4 * (lane // 16) + e, lane % 16

    @staticmethod
    def d_index(shape, lane, r):
        if shape == 32:
            return 8 * (r // 4) + 4 * (lane // 32) + r % 4, lane % 32
        return 4 * (lane // 16) + r, lane % 16

    @classmethod
    def mfma(cls, shape, a_regs, b_regs, c_regs):
        """One wave-wide MFMA on register files a_regs/b_regs [64][4] and c_regs [64][acc] -> d_regs."""
        m = n = shape
        k = 8 if shape == 32 else 16
        acc = 16 if shape == 32 else 4
        a = np.full((m, k), np.nan)
        b = np.full((k, n), np.nan)
        c = np.full((m, n), np.nan)
        for lane in range(WAVE):
            for e in range(4):
                a[cls.a_index(shape, lane, e)] = a_regs[lane][e]
                b[cls.b_index(shape, lane, e)] = b_regs[lane][e]
            for r in range(acc):
                c[cls.d_index(shape, lane, r)] = c_regs[lane][r]
        assert not (np.isnan(a).any() or np.isnan(b).any() or np.isnan(c).any()), "the ISA layout covers every element"
        d = c + a @ b
        return [[d[cls.d_index(shape, lane, r)] for r in range(acc)] for lane in range(WAVE)]


# Literal entries of AMD's tables (Matrix Instruction Calculator / CDNA3 ISA §7), the anchor of HW.
ISA_SPOTS = {
    32: {"a": [((0, 0), (0, 0)), ((0, 4), (32, 0)), ((31, 7), (63, 3)), ((5, 2), (5, 2))],
         "d": [((0, 0), (0, 0)), ((4, 0), (32, 0)), ((8, 0), (0, 4)), ((3, 31), (31, 3)), ((31, 31), (63, 15))]},
    16: {"a": [((0, 0), (0, 0)), ((0, 2), (0, 2)), ((0, 4), (16, 0)), ((15, 15), (63, 3))],
         "d": [((0, 0), (0, 0)), ((4, 0), (16, 0)), ((15, 15), (63, 3)), ((1, 5), (5, 1))]},
}


def test_hw_model_matches_isa_table_entries():
    for shape, spots in ISA_SPOTS.items():
        for (row, col), (lane, e) in spots["a"]:
            assert HW.a_index(shape, lane, e) == (row, col)
        for (row, col), (lane, r) in spots["d"]:
            assert HW.d_index(shape, lane, r) == (row, col)


# ---------------------------------------------------------------------------------------------
# 1. the C++ operand layouts against the hardware
# ---------------------------------------------------------------------------------------------

def cxx_layout(lib, shape):
    p = f"m{shape}_"
    acc = 16 if shape == 32 else 4
    a = {(lane, e): (getattr(lib, p + "a_row")(lane), getattr(lib, p + "a_k")(lane, e)) for lane in range(WAVE) for e in range(4)}
    b = {(lane, e): (getattr(lib, p + "b_k")(lane, e), getattr(lib, p + "b_col")(lane)) for lane in range(WAVE) for e in range(4)}
    d = {(lane, r): (getattr(lib, p + "c_row")(lane, r), getattr(lib, p + "c_col")(lane)) for lane in range(WAVE) for r in range(acc)}
    return a, b, d


@pytest.mark.parametrize("shape", [32, 16])
def test_layouts_are_bijections(lib, shape):
    m, k = shape, (8 if shape == 32 else 16)
    a, b, d = cxx_layout(lib, shape)
    assert sorted(a.values()) == [(i, j) for i in range(m) for j in range(k)]
    assert sorted(b.values()) == [(i, j) for i in range(k) for j in range(m)]
    assert sorted(d.values()) == [(i, j) for i in range(m) for j in range(m)]


@pytest.mark.parametrize("shape", [32, 16])
def test_layouts_match_the_isa(lib, shape):
    a, b, d = cxx_layout(lib, shape)
    assert all(a[key] == HW.a_index(shape, *key) for key in a)
    assert all(b[key] == HW.b_index(shape, *key) for key in b)
    assert all(d[key] == HW.d_index(shape, *key) for key in d)


@pytest.mark.parametrize("shape", [32, 16])
def test_simulated_mfma_equals_matmul(lib, shape):
    """Registers filled through the C++ A/B/C layouts, one HW MFMA, D read through the C++ C layout."""
    rng = np.random.default_rng(1 + shape)
    m, k = shape, (8 if shape == 32 else 16)
    a_mat, b_mat, c_mat = rng.standard_normal((m, k)), rng.standard_normal((k, m)), rng.standard_normal((m, m))
    a, b, d = cxx_layout(lib, shape)
    acc = 16 if shape == 32 else 4
    a_regs = [[a_mat[a[(lane, e)]] for e in range(4)] for lane in range(WAVE)]
    b_regs = [[b_mat[b[(lane, e)]] for e in range(4)] for lane in range(WAVE)]
    c_regs = [[c_mat[d[(lane, r)]] for r in range(acc)] for lane in range(WAVE)]
    d_regs = HW.mfma(shape, a_regs, b_regs, c_regs)
    got = np.full((m, m), np.nan)
    for lane in range(WAVE):
        for r in range(acc):
            got[d[(lane, r)]] = d_regs[lane][r]
    np.testing.assert_allclose(got, a_mat @ b_mat + c_mat, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 2. the router's K order, LDS tiles and chained layers
# ---------------------------------------------------------------------------------------------

def test_constants(lib):
    c = lib.constant
    assert (c(K_KBLOCK), c(K_STEPS), c(K_WAVES), c(K_THREADS), c(K_TOKENS_PER_NTILE)) == (64, 8, 8, 512, 32)
    assert (c(K_XROW), c(K_ACTROW), c(K_LOGITROW), c(K_WAVE)) == (128, 512, 128, 64)


def test_kblock_order_is_one_contiguous_run_per_lane(lib):
    """Each 64-wide K block: every column once per lane half; lane half h's 32 columns in register order
    (step j, element e) are exactly [32h, 32h + 32), i.e. dwords 2j, 2j+1 of one 64-byte load run."""
    for lane in range(WAVE):
        cols = [lib.kblock_col(lane, j, e) for j in range(8) for e in range(4)]
        assert cols == list(range(32 * (lane // 32), 32 * (lane // 32) + 32))
    for j in range(8):  # within one MFMA step, the two lane halves hold 8 distinct columns
        step_cols = {lib.kblock_col(lane, j, e) for lane in (0, 32) for e in range(4)}
        assert len(step_cols) == 8
    for lane in range(WAVE):  # and the step's k (hardware index) for A and B is the same column
        for j in range(8):
            assert [lib.kblock_col(lane, j, e) for e in range(4)] == [lib.kblock_col(lane % 32, j, e) + 32 * (lane // 32) for e in range(4)]


def kblock_registers(lib, matrix_rows, lane):
    """The lane's KRun (32 values, register order) of row `matrix_rows` for one 64-wide block."""
    return [matrix_rows[lib.kblock_col(lane, j, e)] for j in range(8) for e in range(4)]


def run_kblock(lib, w_rows, act_rows, acc):
    """8 HW MFMA steps of one 64-wide block: A lane l = W row l % 32, B lane l = act row (token) l % 32."""
    a_runs = [kblock_registers(lib, w_rows[lane % 32], lane) for lane in range(WAVE)]
    b_runs = [kblock_registers(lib, act_rows[lane % 32], lane) for lane in range(WAVE)]
    for j in range(8):
        acc = HW.mfma(32, [r[4 * j:4 * j + 4] for r in a_runs], [r[4 * j:4 * j + 4] for r in b_runs], acc)
    return acc


def test_down_projection_kblocks_equal_matmul(lib):
    """A K slice of the down-projection exactly as the kernel issues it (several 64-wide blocks, one
    wave's 32 feature rows, one 32-token tile): acc = W[32 x K] . X[32 x K]^T in the C layout."""
    rng = np.random.default_rng(7)
    blocks = 3
    w = rng.standard_normal((32, 64 * blocks))
    x = rng.standard_normal((32, 64 * blocks))
    acc = [[0.0] * 16 for _ in range(WAVE)]
    for kb in range(blocks):
        acc = run_kblock(lib, w[:, 64 * kb:64 * kb + 64], x[:, 64 * kb:64 * kb + 64], acc)
    want = w @ x.T  # [feature, token]
    for lane in range(WAVE):
        for r in range(16):
            feature, token = lib.acc_feature(0, lane, r), lib.acc_token(lane)
            assert math.isclose(acc[lane][r], want[feature, token], rel_tol=1e-12, abs_tol=1e-12)


class Lds:
    """Byte-addressed LDS holding one float per bf16 (2-byte) or fp32 (4-byte) element slot."""

    def __init__(self, size, elem_bytes):
        self.size, self.elem = size, elem_bytes
        self.cells = {}
        self.writes = {}

    def write(self, offset, values):
        assert offset % self.elem == 0 and 0 <= offset and offset + self.elem * len(values) <= self.size
        for i, v in enumerate(values):
            addr = offset + self.elem * i
            self.writes[addr] = self.writes.get(addr, 0) + 1
            self.cells[addr] = v

    def read(self, offset, count):
        assert offset % 16 == 0 and offset + self.elem * count <= self.size, "ds_read_b128 is 16-byte aligned"
        return [self.cells[offset + self.elem * i] for i in range(count)]


@pytest.mark.parametrize("nt", [1, 2])
def test_x_stage_roundtrip(lib, nt):
    """All 512 threads store one x piece (8 nt bytes) of a [32 nt x 64] block; every lane of every wave
    then reads its B runs (4 x ds_read_b128) and gets x[token][kblock_col(lane, j, e)]."""
    tokens, piece_bytes = 32 * nt, 8 * nt
    rng = np.random.default_rng(nt)
    x = rng.standard_normal((tokens, 64))
    lds = Lds(tokens * 128, 2)
    per_row = 128 // piece_bytes
    for tid in range(512):
        row, piece = tid // per_row, tid % per_row
        lds.write(lib.x_write_offset(tid, piece_bytes), list(x[row, piece * piece_bytes // 2:(piece + 1) * piece_bytes // 2]))
    assert len(lds.writes) == tokens * 64 and set(lds.writes.values()) == {1}, "every element written once"
    for n in range(nt):
        for lane in range(WAVE):
            token = 32 * n + lib.acc_token(lane)
            run = sum((lds.read(lib.x_read_offset(token, lane, c), 8) for c in range(4)), [])
            assert run == kblock_registers(lib, x[token], lane)


@pytest.mark.parametrize("nt", [1, 2])
def test_layer_chain_through_the_activation_tile(lib, nt):
    """Two chained 256-wide layers as the kernel runs them: 8 waves, wave w = output features
    [32w, 32w+32) for all 32 nt tokens; accumulators written to the swizzled activation tile with
    act_write_offset, read back as the next layer's B runs with act_read_offset. Must equal
    (X W1^T) W2^T (no rounding or GELU here: pure index math)."""
    tokens = 32 * nt
    rng = np.random.default_rng(10 + nt)
    x = rng.standard_normal((tokens, 256))
    w1, w2 = rng.standard_normal((256, 256)) / 16, rng.standard_normal((256, 256)) / 16

    def store(lds, acc_by_wave):
        for wave in range(8):
            for n in range(nt):
                for lane in range(WAVE):
                    token = 32 * n + lib.acc_token(lane)
                    for g in range(4):
                        lds.write(lib.act_write_offset(token, wave, lane, g), acc_by_wave[wave][n][lane][4 * g:4 * g + 4])
        assert len(lds.writes) == tokens * 256 and set(lds.writes.values()) == {1}, "every element written once"

    def layer(lds, w):
        out = []
        for wave in range(8):
            rows = w[32 * wave:32 * wave + 32]
            per_n = []
            for n in range(nt):
                acc = [[0.0] * 16 for _ in range(WAVE)]
                for kb in range(4):
                    a_runs = [kblock_registers(lib, rows[lane % 32, 64 * kb:64 * kb + 64], lane) for lane in range(WAVE)]
                    b_runs = [sum((lds.read(lib.act_read_offset(32 * n + lib.acc_token(lane), kb, lane, c), 8)
                                   for c in range(4)), []) for lane in range(WAVE)]
                    for j in range(8):
                        acc = HW.mfma(32, [r[4 * j:4 * j + 4] for r in a_runs], [r[4 * j:4 * j + 4] for r in b_runs], acc)
                per_n.append(acc)
            out.append(per_n)
        return out

    # layer input written the way the RMSNorm writes n: from accumulator-layout registers
    act0 = Lds(tokens * 512, 2)
    store(act0, [[[[x[32 * n + lib.acc_token(lane), lib.acc_feature(wave, lane, r)] for r in range(16)]
                   for lane in range(WAVE)] for n in range(nt)] for wave in range(8)])
    act1 = Lds(tokens * 512, 2)
    store(act1, layer(act0, w1))
    h2 = layer(act1, w2)
    want = (x @ w1.T) @ w2.T
    got = np.full((tokens, 256), np.nan)
    for wave in range(8):
        for n in range(nt):
            for lane in range(WAVE):
                for r in range(16):
                    got[32 * n + lib.acc_token(lane), lib.acc_feature(wave, lane, r)] = h2[wave][n][lane][r]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_accumulator_pieces_are_consecutive_features(lib):
    """The epilogue moves 4 registers 4g..4g+3 as one 8-byte piece: 4 consecutive features; the wave's
    lanes cover its 32 features for each of the 32 tokens exactly once."""
    for wave in range(8):
        seen = set()
        for lane in range(WAVE):
            for g in range(4):
                base = lib.acc_feature(wave, lane, 4 * g)
                assert base % 4 == 0
                assert [lib.acc_feature(wave, lane, 4 * g + e) for e in range(4)] == [base + e for e in range(4)]
            seen |= {(lib.acc_token(lane), lib.acc_feature(wave, lane, r)) for r in range(16)}
        assert seen == {(t, f) for t in range(32) for f in range(32 * wave, 32 * wave + 32)}


@pytest.mark.parametrize("nt", [1, 2])
def test_logit_parts_roundtrip(lib, nt):
    """Logit wave (n tile, quarter) writes its [32 routes x 32 tokens] accumulator; top-1 lane q of token T
    reads routes 8q..8q+7 of each quarter and must get exactly those values."""
    tokens = 32 * nt
    rng = np.random.default_rng(20 + nt)
    parts = rng.standard_normal((4, tokens, 32))  # [quarter, token, route]
    lds = Lds(4 * tokens * 128, 4)
    for quarter in range(4):
        for n in range(nt):
            for lane in range(WAVE):
                token = 32 * n + lib.acc_token(lane)
                for g in range(4):
                    routes = [lib.m32_c_row(lane, 4 * g + e) for e in range(4)]
                    assert routes == list(range(routes[0], routes[0] + 4))
                    lds.write(lib.logit_write_offset(quarter, tokens, token, lane, g), list(parts[quarter, token, routes]))
    assert len(lds.writes) == 4 * tokens * 32 and set(lds.writes.values()) == {1}
    assert max(lds.writes) + 4 == 4 * tokens * 128 == tokens * 512, "the partial logits exactly fill the activation tile"
    for quarter in range(4):
        for token in range(tokens):
            for q in range(4):
                got = lds.read(lib.logit_read_offset(quarter, tokens, token, q, 0), 4) + \
                      lds.read(lib.logit_read_offset(quarter, tokens, token, q, 1), 4)
                assert got == list(parts[quarter, token, 8 * q:8 * q + 8])


# ---------------------------------------------------------------------------------------------
# 3. LDS bank conflicts (32 banks x 4 bytes; a wave64 access is served in phases of 8 lanes for
#    128-bit, 16 lanes for 64-bit accesses: AMD CK documentation, "LDS bank conflicts")
# ---------------------------------------------------------------------------------------------

def conflict_degree(addresses, width_bytes):
    """Max over phases and banks of the number of distinct dwords a bank must serve."""
    phase = {16: 8, 8: 16, 4: 32}[width_bytes]
    worst = 0
    for start in range(0, WAVE, phase):
        per_bank = {}
        for addr in addresses[start:start + phase]:
            for dword in range(addr // 4, (addr + width_bytes) // 4):
                per_bank.setdefault(dword % 32, set()).add(dword)
        worst = max(worst, max(len(s) for s in per_bank.values()))
    return worst


@pytest.mark.parametrize("nt", [1, 2])
def test_lds_b_operand_reads_are_conflict_free(lib, nt):
    for n in range(nt):
        for c in range(4):
            x_addrs = [lib.x_read_offset(32 * n + lib.acc_token(lane), lane, c) for lane in range(WAVE)]
            assert conflict_degree(x_addrs, 16) == 1
            for kb in range(4):
                a_addrs = [lib.act_read_offset(32 * n + lib.acc_token(lane), kb, lane, c) for lane in range(WAVE)]
                assert conflict_degree(a_addrs, 16) == 1


@pytest.mark.parametrize("nt", [1, 2])
def test_lds_writes_conflicts(lib, nt):
    piece = 8 * nt
    for wave in range(8):  # x pieces: conflict-free (b64 for nt = 1, b128 for nt = 2)
        assert conflict_degree([lib.x_write_offset(64 * wave + lane, piece) for lane in range(WAVE)], piece) == 1
    tokens = 32 * nt
    for n in range(nt):
        for g in range(4):
            logit = [lib.logit_write_offset(q, tokens, 32 * n + lib.acc_token(lane), lane, g) for lane in range(WAVE) for q in [0]]
            assert conflict_degree(logit, 16) == 1
            for wave in range(8):  # activation pieces (b64): the documented 2-way conflict, never worse
                act = [lib.act_write_offset(32 * n + lib.acc_token(lane), wave, lane, g) for lane in range(WAVE)]
                assert conflict_degree(act, 8) == 2
    reads = [lib.logit_read_offset(0, tokens, tid // 4, tid % 4, half) for half in (0, 1) for tid in range(WAVE)]
    assert conflict_degree(reads[:WAVE], 16) == 1 and conflict_degree(reads[WAVE:], 16) == 1


@pytest.mark.parametrize("nt", [1, 2])
def test_lds_tiles_fit_the_workgroup_allocation(lib, nt):
    tokens = 32 * nt
    lds_bytes = tokens * 512  # the kernel's static array: the activation tile
    assert lds_bytes <= 32 * 1024, "<= 32 KiB: two workgroups' worth of LDS per 64 KiB CU"
    x_max = max(lib.x_write_offset(tid, 8 * nt) for tid in range(512)) + 8 * nt
    assert X_STAGES * x_max <= lds_bytes
    act_max = max(lib.act_read_offset(t, kb, lane, c) for t in range(tokens) for kb in range(4) for lane in (0, 32) for c in range(4)) + 16
    assert act_max == lds_bytes
    assert 8 * tokens * 4 + 4 <= lds_bytes, "row sums of squares [8 waves][tokens] + the split flag"


# ---------------------------------------------------------------------------------------------
# 4. workgroup schedule: XCD remap and the launch plan
# ---------------------------------------------------------------------------------------------

def remap(lib, grid, xcds=8):
    out = (ctypes.c_longlong * grid)()
    lib.xcd_remap_all(grid, xcds, out)
    return list(out)


@pytest.mark.parametrize("grid", [1, 2, 7, 8, 9, 16, 31, 32, 100, 256, 303, 304, 305, 1024, 1025])
def test_xcd_remap_is_a_bijection_grouping_consecutive_blocks(lib, grid):
    logical = remap(lib, grid)
    assert sorted(logical) == list(range(grid))
    xcd_of_logical = [None] * grid
    for block, l in enumerate(logical):
        xcd_of_logical[l] = block % 8  # the hardware's round robin
    assert xcd_of_logical == sorted(xcd_of_logical), "consecutive logical blocks share an XCD"
    sizes = [xcd_of_logical.count(x) for x in range(8)]
    assert max(sizes) - min(sizes) <= 1, "balanced over the 8 XCDs"


def test_xcd_remap_every_grid_size(lib):
    for grid in range(1, 600):
        assert sorted(remap(lib, grid)) == list(range(grid))


@pytest.mark.parametrize("tokens, hidden, want", [
    (1, 2048, dict(nt=1, split=32, tiles=1)),
    (7, 2048, dict(nt=1, split=16, tiles=1)),
    (32, 2048, dict(nt=1, split=4, tiles=1)),
    (128, 2048, dict(nt=1, split=4, tiles=4)),
    (4096, 2048, dict(nt=1, split=2, tiles=128)),
    (8192, 2048, dict(nt=1, split=1, tiles=256)),
    (19392, 2048, dict(nt=1, split=1, tiles=606)),
    (19393, 2048, dict(nt=2, split=1, tiles=304)),
    (65536, 2048, dict(nt=2, split=1, tiles=1024)),
    (1, 512, dict(nt=1, split=8, tiles=1)),
    (1, 1536, dict(nt=1, split=8, tiles=1)),
])
def test_router_plan_examples(lib, tokens, hidden, want):
    got = plan(lib, tokens, hidden)
    assert {k: got[k] for k in want} == want
    assert got["grid"] == got["tiles"] * got["split"]


def test_router_plan_invariants(lib):
    for cus in (304, 228, 120, 80):
        for hidden in (512, 1024, 1536, 2048):
            for tokens in list(range(1, 80)) + [127, 128, 129, 500, 1000, 2431, 2432, 4095, 4096, 9000, 2 ** 16, 300000]:
                p = plan(lib, tokens, hidden, cus)
                rows = 32 * p["nt"]
                assert p["nt"] in (1, 2) and p["tiles"] == -(-tokens // rows)
                assert (p["nt"] == 2) == (-(-tokens // 64) >= cus)
                s = p["split"]
                assert s & (s - 1) == 0 and (hidden // 64) % s == 0 and s <= 32
                if s > 1:
                    assert p["nt"] == 1 and p["grid"] <= min(cus, MAX_SPLIT_SLOTS)
                    # the chosen split minimises the critical-path bytes among the admissible ones
                    valid = min(tokens, 32)
                    cost = lambda k: 256 * hidden * 2 // k + (k - 1) * valid * 1024  # noqa: E731
                    admissible = [k for k in (1, 2, 4, 8, 16, 32)
                                  if (hidden // 64) % k == 0 and p["tiles"] * k <= min(cus, MAX_SPLIT_SLOTS)]
                    assert cost(s) == min(cost(k) for k in admissible)


def test_split_workgroups_of_a_slice_share_an_xcd(lib):
    """Slice-major numbering (L = slice * tiles + tile) + the remap: each XCD runs workgroups of at most
    ceil(split / 8) + 1 distinct W_down K slices, so each L2 holds ~1/8 of W_down (the plain round robin
    would give every XCD nearly every slice), while all 8 XCDs share the reading of W_down."""
    for tokens in (1, 7, 32, 100, 1000, 2000, 4096):
        p = plan(lib, tokens, 2048)
        assert p["split"] > 1
        logical = remap(lib, p["grid"])
        slices_of_xcd = {}
        for block, l in enumerate(logical):
            slices_of_xcd.setdefault(block % 8, set()).add(l // p["tiles"])
        assert max(len(s) for s in slices_of_xcd.values()) <= -(-p["split"] // 8) + 1
        assert len(slices_of_xcd) == min(8, p["grid"]), "all XCDs pull W_down"
        round_robin = {}
        for block in range(p["grid"]):
            round_robin.setdefault(block % 8, set()).add(block // p["tiles"])
        assert sum(map(len, slices_of_xcd.values())) <= sum(map(len, round_robin.values()))
