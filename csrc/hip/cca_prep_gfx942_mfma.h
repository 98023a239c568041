// SPDX-License-Identifier: Apache-2.0
// cca_prep_gfx942_mfma.h: the CDNA3 matrix-core step of cca_prep (common/cca_prep.cuh): the grouped 128x128
// per-head conv as Z[rows, 128] = A[rows, 256] . W[128, 256]^T with v_mfma_f32_16x16x16_bf16.
// Operand layouts: common/mfma_layout.h (m16_*), checked on the CPU by tests/test_mfma_layout.py: lane l
// supplies A[l % 16][4 (l / 16) + e] and B[4 (l / 16) + e][l % 16] = W[l % 16][4 (l / 16) + e], e = 0..3,
// i.e. 4 consecutive K of one row of A and of W: one 8-byte LDS read each; D register r is
// D[4 (l / 16) + r][l % 16].
// LDS budget (64 KiB per workgroup on gfx942): W is staged in two K halves of 128 columns (128 x 136 bf16 =
// 34 KB) per 32-row tile, A is 32 x 264 bf16 (17 KB); ~52 KB in all. W is re-read from L2 for every tile
// (64 KB per 32 rows) because the whole head's W (66 KB) alone would fill the LDS.
#pragma once

#include "../common/compat.h"
#include "../common/mfma_layout.h"

namespace zk {
namespace cca {

struct ArchConfig {
  static constexpr int kThreads = 256;    // 4 waves; wave w owns output columns [32 w, 32 w + 32)
  static constexpr int kTileRows = 32;
  static constexpr int kChunkK = 128;     // W's K columns in LDS at a time (two chunks per tile)
  static constexpr int kCtasPerSm = 1;    // ~52 KB of 64 KB LDS
  static constexpr bool kStaticSmem = true;  // a static LDS array: its size shows in the metadata
};

using bf16x4 = short __attribute__((ext_vector_type(4)));
using f32x4 = float __attribute__((ext_vector_type(4)));

struct Conv2Accumulator {
  static constexpr int kMTiles = ArchConfig::kTileRows / mfma::k16M;  // 2
  static constexpr int kNTiles = 2;                                    // 2 x 16 = the wave's 32 columns
  f32x4 acc[kMTiles][kNTiles];

  ZK_DEVICE void zero() {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) acc[mt][nt] = f32x4{0.0f, 0.0f, 0.0f, 0.0f};
  }

  ZK_DEVICE void mma_chunk(const uint16_t* a, int a_stride, int a_k0, const uint16_t* w, int w_stride,
                           int rows_used, int wave, int lane) {
#pragma unroll 2
    for (int ks = 0; ks < ArchConfig::kChunkK; ks += mfma::k16K) {
      bf16x4 bf[kNTiles];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int n = wave * 32 + nt * 16 + mfma::m16_b_col(lane);
        bf[nt] = *reinterpret_cast<const bf16x4*>(w + n * w_stride + ks + mfma::m16_b_k(lane, 0));
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if (mt * 16 >= rows_used) break;  // wave-uniform
        const int row = mt * 16 + mfma::m16_a_row(lane);
        const bf16x4 af = *reinterpret_cast<const bf16x4*>(a + row * a_stride + a_k0 + ks + mfma::m16_a_k(lane, 0));
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          acc[mt][nt] = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(af, bf[nt], acc[mt][nt], 0, 0, 0);
        }
      }
    }
  }

  ZK_DEVICE void store(float* z, int z_stride, int rows_used, int wave, int lane) const {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      if (mt * 16 >= rows_used) break;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int col = wave * 32 + nt * 16 + mfma::m16_c_col(lane);
#pragma unroll
        for (int r = 0; r < 4; ++r) z[(mt * 16 + mfma::m16_c_row(lane, r)) * z_stride + col] = acc[mt][nt][r];
      }
    }
  }
};

}  // namespace cca
}  // namespace zk
