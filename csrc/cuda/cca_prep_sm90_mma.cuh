// SPDX-License-Identifier: Apache-2.0
// cca_prep_sm90_mma.cuh: the Hopper tensor-core step of cca_prep (common/cca_prep.cuh): the grouped 128x128
// per-head conv as Z[rows, 128] = A[rows, 256] . W[128, 256]^T with mma.sync m16n8k16 bf16 -> fp32.
// (wgmma would need 64-row warpgroup tiles and the B operand in its swizzled layout; at 10.7 GFLOP for
// T = 16384 the op is bound by its 100 MB of traffic, and mma.sync's fragments read the padded row-major
// shared tiles that the portable code writes directly.)
// A and W live in shared memory row-major, K contiguous, rows padded by 8 bf16 (16 bytes): a row is then
// 132 words long, so the 8 rows x 4 words of one fragment load fall in 32 different banks.
// Fragments (PTX ISA, "mma.m16n8k16" for .bf16): lane l, g = l / 4, c = 2 * (l % 4)
//   A (16x16, row): {A[g][c..c+1]}, {A[g+8][c..c+1]}, {A[g][c+8..c+9]}, {A[g+8][c+8..c+9]}
//   B (16x8, col):  {B[c..c+1][g]}, {B[c+8..c+9][g]}  with B[k][n] = W[n][k]
//   C (16x8 fp32):  C[g][c], C[g][c+1], C[g+8][c], C[g+8][c+1]
#pragma once

#include "../common/compat.h"

namespace zk {
namespace cca {

// Tile shape of the sm_90a build: 64 token rows per tile; the whole W of a head (128 x 256 bf16, 66 KB
// padded) stays in shared memory for all the tiles a persistent CTA does.
struct ArchConfig {
  static constexpr int kThreads = 256;    // 8 warps; warp w owns output columns [16 w, 16 w + 16)
  static constexpr int kTileRows = 64;
  static constexpr int kChunkK = 256;     // W's K columns in shared memory at a time: all of them
  static constexpr int kCtasPerSm = 2;    // ~103 KB of shared memory each (cca_prep.cuh smem_bytes)
  static constexpr bool kStaticSmem = false;  // dynamic shared memory (opted in above 48 KB)
};

struct Conv2Accumulator {
  static constexpr int kMTiles = ArchConfig::kTileRows / 16;
  static constexpr int kNTiles = 2;  // 2 x n8 = the warp's 16 columns
  float acc[kMTiles][kNTiles][4];

  ZK_DEVICE void zero() {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;
  }

  // acc += A[:, a_k0 : a_k0 + kChunkK] . W_chunk^T; m-tiles at or past rows_used are skipped (decode: 1 row).
  ZK_DEVICE void mma_chunk(const uint16_t* a, int a_stride, int a_k0, const uint16_t* w, int w_stride,
                           int rows_used, int warp, int lane) {
    const int g = lane / 4;
    const int c = 2 * (lane % 4);
#pragma unroll 4
    for (int ks = 0; ks < ArchConfig::kChunkK; ks += 16) {
      uint32_t bf[kNTiles][2];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const uint16_t* wr = w + (warp * 16 + nt * 8 + g) * w_stride + ks + c;
        bf[nt][0] = *reinterpret_cast<const uint32_t*>(wr);
        bf[nt][1] = *reinterpret_cast<const uint32_t*>(wr + 8);
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if (mt * 16 >= rows_used) break;  // warp-uniform
        const uint16_t* ar = a + (mt * 16 + g) * a_stride + a_k0 + ks + c;
        const uint32_t a0 = *reinterpret_cast<const uint32_t*>(ar);
        const uint32_t a1 = *reinterpret_cast<const uint32_t*>(ar + 8 * a_stride);
        const uint32_t a2 = *reinterpret_cast<const uint32_t*>(ar + 8);
        const uint32_t a3 = *reinterpret_cast<const uint32_t*>(ar + 8 * a_stride + 8);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          float* d = acc[mt][nt];
          asm volatile(
              "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
              "{%0,%1,%2,%3};\n"
              : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
              : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(bf[nt][0]), "r"(bf[nt][1]));
        }
      }
    }
  }

  // Z[row][col] = acc, fp32, for the m-tiles that were computed.
  ZK_DEVICE void store(float* z, int z_stride, int rows_used, int warp, int lane) const {
    const int g = lane / 4;
    const int c = 2 * (lane % 4);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      if (mt * 16 >= rows_used) break;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        float* zr = z + (mt * 16 + g) * z_stride + warp * 16 + nt * 8 + c;
        *reinterpret_cast<float2*>(zr) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
        *reinterpret_cast<float2*>(zr + 8 * z_stride) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
      }
    }
  }
};

}  // namespace cca
}  // namespace zk
