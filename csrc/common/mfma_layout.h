// SPDX-License-Identifier: Apache-2.0
// mfma_layout.h: which element of an MFMA operand each lane of a gfx942 (CDNA3, wave64) wavefront
// holds, for the two bf16 instructions the HIP kernels use, plus the index math of the HIP router
// (hip/zaya_router_gfx942*.h) built on them: the K order inside a 64-wide block, the LDS swizzle, the
// workgroup -> XCD order and the variant/split plan. Integer functions only, __host__ __device__:
// the kernels call them, and tests/test_mfma_layout.py compiles this header for the host (g++, with
// __host__/__device__ defined away) and checks them by simulating whole MFMAs against A @ B.
//
// Layouts (AMD "AMD Instinct MI300 (CDNA3) ISA Reference Guide" §7 Matrix Arithmetic Instructions;
// the same tables come out of AMD's Matrix Instruction Calculator, and the example kernels of the
// ROCm blog "Matrix Core Programming on AMD CDNA3 and CDNA4" (2025) address them so):
//   v_mfma_f32_32x32x8_bf16 (__builtin_amdgcn_mfma_f32_32x32x8bf16_1k): D[32x32] += A[32x8] B[8x32]
//     A: lane l, element e (0..3 of its 4 x bf16 = 2 VGPRs, e = 0 in bits 15:0 of the first):
//        A[l % 32][4 * (l / 32) + e]
//     B: B[4 * (l / 32) + e][l % 32]
//     C/D: 16 fp32 registers r: D[8 * (r / 4) + 4 * (l / 32) + r % 4][l % 32]
//   v_mfma_f32_16x16x16_bf16 (__builtin_amdgcn_mfma_f32_16x16x16bf16_1k): D[16x16] += A[16x16] B[16x16]
//     A: A[l % 16][4 * (l / 16) + e]   B: B[4 * (l / 16) + e][l % 16]   C/D (4 regs r): D[4 * (l / 16) + r][l % 16]
// Note the symmetry the router exploits: a lane's A elements and its B elements are both "4
// consecutive k of one row/column l % 32", and the 4 registers 4g..4g+3 of a 32x32 accumulator are
// "4 consecutive rows 8g + 4(l/32) + 0..3 of column l % 32": with features on M and tokens on N, the
// accumulator of one layer holds, per lane, exactly the (token, 4 consecutive features) pieces the
// next layer's B operand wants.
//
// No CUDA/HIP spelling here (tools/check_portability.sh): only the __host__/__device__ qualifiers,
// which every translation unit that includes this defines (compat.h, or the test's host shim).
#pragma once

#include <stdint.h>

#define ZK_LAYOUT_FN __host__ __device__ inline constexpr

namespace zk {
namespace mfma {

constexpr int kWave = 64;  // gfx9 runs wave64 only

// ---- v_mfma_f32_32x32x8_bf16 ------------------------------------------------------------------------
constexpr int k32M = 32, k32N = 32, k32K = 8, k32AccRegs = 16;
ZK_LAYOUT_FN int m32_a_row(int lane) { return lane % 32; }
ZK_LAYOUT_FN int m32_a_k(int lane, int e) { return 4 * (lane / 32) + e; }
ZK_LAYOUT_FN int m32_b_col(int lane) { return lane % 32; }
ZK_LAYOUT_FN int m32_b_k(int lane, int e) { return 4 * (lane / 32) + e; }
ZK_LAYOUT_FN int m32_c_row(int lane, int r) { return 8 * (r / 4) + 4 * (lane / 32) + r % 4; }
ZK_LAYOUT_FN int m32_c_col(int lane) { return lane % 32; }

// ---- v_mfma_f32_16x16x16_bf16 -----------------------------------------------------------------------
constexpr int k16M = 16, k16N = 16, k16K = 16, k16AccRegs = 4;
ZK_LAYOUT_FN int m16_a_row(int lane) { return lane % 16; }
ZK_LAYOUT_FN int m16_a_k(int lane, int e) { return 4 * (lane / 16) + e; }
ZK_LAYOUT_FN int m16_b_col(int lane) { return lane % 16; }
ZK_LAYOUT_FN int m16_b_k(int lane, int e) { return 4 * (lane / 16) + e; }
ZK_LAYOUT_FN int m16_c_row(int lane, int r) { return 4 * (lane / 16) + r; }
ZK_LAYOUT_FN int m16_c_col(int lane) { return lane % 16; }

}  // namespace mfma

// =====================================================================================================
// The HIP router's index math (hip/zaya_router_gfx942.hip). Orientation: every GEMM is computed
// transposed, D^T[feature, token] = W[feature, :] . act[token, :], so A = a weight matrix (features on
// M, rows read straight from global memory) and B = the activations (tokens on N, from LDS). A wave
// owns the 32 features [32w, 32w+32) of a layer for the workgroup's 32 * kNT tokens.
// =====================================================================================================
namespace router_gfx942 {

constexpr int kKBlock = 64;        // K columns per pipeline step: 8 MFMA steps of K = 8
constexpr int kStepsPerKBlock = kKBlock / mfma::k32K;
constexpr int kWaves = 8;          // 512 threads: wave w owns features [32w, 32w+32)
constexpr int kThreads = kWaves * mfma::kWave;
constexpr int kTokensPerNTile = mfma::k32N;

// K order inside a 64-wide K block. MFMA step j (0..7), element e (0..3) of lane l uses column
//   32 * (l / 32) + 4 * j + e
// of the block, for A and B alike (any bijection shared by both leaves the sum unchanged). So lane l
// reads ONE contiguous 64-byte run (columns [32 h, 32 h + 32), h = l / 32) of its row per block: four
// 16-byte loads from global (weights) or four ds_read_b128 (activations), dwords 2j, 2j+1 = step j.
ZK_LAYOUT_FN int kblock_col(int lane, int step, int e) { return 32 * (lane / 32) + 4 * step + e; }

// LDS rows of 16-byte chunks, XOR-swizzled: chunk c of row `row` lives at chunk c ^ (row % 8).
// The 8 lanes of a ds_read_b128 / ds_write_b128 phase (lanes 8i..8i+7) then always touch 8 different
// 16-byte bank groups (banks 4c'..4c'+3 of the 32 x 4-byte banks) whenever they read the same chunk
// of 8 consecutive rows: the pattern of every B-operand read here. Rows are 128 or 512 bytes, both
// multiples of the 128-byte bank period, so padding would cost 1/8 .. 1/32 of the buffer for nothing.
ZK_LAYOUT_FN int swizzled_chunk(int row, int chunk) { return chunk ^ (row & 7); }
ZK_LAYOUT_FN int lds_offset(int row, int row_bytes, int chunk) { return row * row_bytes + 16 * swizzled_chunk(row, chunk); }

// Byte offsets of the three LDS tiles:
//   x stage      [32 kNT tokens][64 bf16]   128-byte rows: one K block of x
//   activations  [32 kNT tokens][256 bf16]  512-byte rows: n, h1, h2 (bf16 B operands of fc1/fc2/out)
//   logit parts  [4 K quarters][32 kNT tokens][32 fp32 routes] 128-byte rows
constexpr int kXRowBytes = kKBlock * 2;
constexpr int kActRowBytes = 256 * 2;
constexpr int kLogitRowBytes = 32 * 4;
ZK_LAYOUT_FN int x_stage_offset(int token, int chunk) { return lds_offset(token, kXRowBytes, chunk); }
ZK_LAYOUT_FN int act_offset(int token, int chunk) { return lds_offset(token, kActRowBytes, chunk); }
ZK_LAYOUT_FN int logit_offset(int quarter, int tokens, int token, int chunk) {
  return lds_offset(quarter * tokens + token, kLogitRowBytes, chunk);
}

// ---- every per-lane address the kernel computes (the kernel calls exactly these) --------------------
// Feature (M row of the layer) held by accumulator register r of `lane` in wave `wave`. Registers
// 4g..4g+3 are the 4 consecutive features acc_feature(wave, lane, 4g) + 0..3 ("piece" g).
ZK_LAYOUT_FN int acc_feature(int wave, int lane, int r) { return 32 * wave + mfma::m32_c_row(lane, r); }
// Token (N column within its 32-token tile) of every accumulator register of `lane`.
ZK_LAYOUT_FN int acc_token(int lane) { return mfma::m32_c_col(lane); }

// x: thread `tid` loads piece `tid % (128 / piece_bytes)` (piece_bytes = 8 or 16) of token row
// tid / (128 / piece_bytes) of the K block and stores it here.
ZK_LAYOUT_FN int x_write_offset(int tid, int piece_bytes) {
  const int pieces = kXRowBytes / piece_bytes, row = tid / pieces, byte = (tid % pieces) * piece_bytes;
  return x_stage_offset(row, byte / 16) + byte % 16;
}
// B run of `token` for the block: ds_read_b128 number c (0..3) of `lane` (columns 32h + 8c .. + 7).
ZK_LAYOUT_FN int x_read_offset(int token, int lane, int c) { return x_stage_offset(token, 4 * (lane / 32) + c); }

// Activation tile: piece g of `lane` in wave `wave` (features acc_feature(wave, lane, 4g) + 0..3,
// 8 bytes) for token `token`, and ds_read_b128 number c of the B run of K block kb (features
// 64 kb + 32 h + 8c .. + 7).
ZK_LAYOUT_FN int act_write_offset(int token, int wave, int lane, int g) {
  return act_offset(token, acc_feature(wave, lane, 4 * g) / 8) + 2 * (acc_feature(wave, lane, 4 * g) % 8);
}
ZK_LAYOUT_FN int act_read_offset(int token, int kb, int lane, int c) {
  return act_offset(token, 8 * kb + 4 * (lane / 32) + c);
}

// Partial logits: the logit wave of K quarter `quarter` writes piece g of `lane` (routes
// mfma::m32_c_row(lane, 4g) + 0..3, 16 bytes) of `token`; the top-1 lane q of a token reads routes
// 8q + 4 half .. + 3 of each quarter.
ZK_LAYOUT_FN int logit_write_offset(int quarter, int tokens, int token, int lane, int g) {
  return logit_offset(quarter, tokens, token, mfma::m32_c_row(lane, 4 * g) / 4);
}
ZK_LAYOUT_FN int logit_read_offset(int quarter, int tokens, int token, int q, int half) {
  return logit_offset(quarter, tokens, token, 2 * q + half);
}

// Workgroup order over the XCDs. MI300X dispatches workgroup b of a grid to XCD b % 8 (round robin;
// each XCD has its own 4 MB L2). Logical index L = xcd_remap(b) makes consecutive L run on the same
// XCD: XCD x gets L in [x q + min(x, r), ... + q + (x < r)), q = G / X, r = G % X. A bijection on
// [0, G) for any G, so correctness never depends on the dispatch order; only L2 locality does.
ZK_LAYOUT_FN int64_t xcd_remap(int64_t block, int64_t grid, int num_xcds) {
  const int64_t q = grid / num_xcds, r = grid % num_xcds;
  const int64_t x = block % num_xcds, i = block / num_xcds;
  return x * q + (x < r ? x : r) + i;
}

// Launch plan. kNT = 2 (64 tokens per workgroup) once there are enough 64-token tiles to give every CU
// one: the weights are then re-read from L2 once per 64 tokens (~31 B/clk per CU at full MFMA rate,
// within the ~64 B/clk an MI300X CU draws from L2). Below that, kNT = 1 (32 tokens), and when even
// 32-token tiles leave CUs idle the down-projection's K is split over `split` workgroups per tile
// (fp32 partials through a global scratch, the last workgroup to arrive finishes the tile). The split
// minimises the bytes on a tile's critical path, W_down/split (its K slice) + (split - 1) * valid
// tokens * 1 KB (the other partials the finisher reads), keeps tiles * split <= CUs (one wave of
// workgroups) and <= the scratch slots, and divides the number of 64-wide K blocks.
struct RouterPlan {
  int nt;          // 32-token N tiles per workgroup (1 or 2)
  int split;       // workgroups per tile along K (1 = no split)
  int64_t tiles;   // token tiles
  int64_t grid;    // workgroups = tiles * split
};

constexpr int kMaxSplit = 32;

ZK_LAYOUT_FN RouterPlan router_plan(int64_t tokens, int hidden, int num_cus, int max_slots) {
  const int64_t tiles64 = (tokens + 63) / 64;
  if (tiles64 >= num_cus) return RouterPlan{2, 1, tiles64, tiles64};
  const int64_t tiles32 = (tokens + 31) / 32;
  const int64_t valid = tokens < 32 ? tokens : 32;
  const int64_t down_bytes = int64_t{256} * hidden * 2;
  const int kblocks = hidden / kKBlock;
  int best = 1;
  int64_t best_cost = down_bytes;
  for (int s = 2; s <= kMaxSplit; s *= 2) {
    if (kblocks % s != 0 || tiles32 * s > num_cus || tiles32 * s > max_slots) break;
    const int64_t cost = down_bytes / s + (s - 1) * valid * 1024;
    if (cost < best_cost) {
      best = s;
      best_cost = cost;
    }
  }
  return RouterPlan{1, best, tiles32, tiles32 * best};
}

}  // namespace router_gfx942
}  // namespace zk
