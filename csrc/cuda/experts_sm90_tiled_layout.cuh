// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_layout.cuh: the index math of the tiled epilogue's staged stores, host-callable so that a CPU
// test can replay it lane by lane. Each consumer warp owns 16 rows of the tile (wgmma D: warp w of a consumer
// warpgroup, rows 16w..16w+15) and stages them 64 columns (one "chunk", 8 pieces of 16 bytes) at a time through a
// 2 KB buffer of its own: stmatrix writes the accumulator fragments (4 x4 instructions per chunk), then every lane
// reads 16-byte pieces back and stores them to global memory, 8 lanes per 128-byte row segment (4 rows per warp
// store instruction instead of 8 rows x 16 bytes for fragment-order stores).
//
// Buffer layout: row r (0..15) at r * 128 bytes, its 16-byte piece p (columns 8p..8p+7) at piece slot p ^ (r % 8):
// stmatrix's 8 row addresses of a matrix and the 8 lanes reading one row each hit 8 different bank groups.
#pragma once

#include <stdint.h>

#ifndef ZK_HOST_DEVICE
#define ZK_HOST_DEVICE __host__ __device__ __forceinline__
#endif

namespace zk {
namespace tiled {

constexpr int kChunkCols = 64;                       // columns staged at once
constexpr int kWarpRows = 16;                        // rows per consumer warp
constexpr int kStagingBytes = kWarpRows * kChunkCols * 2;

ZK_HOST_DEVICE uint32_t staging_offset(int row, int piece) {
  return static_cast<uint32_t>(row * 128 + ((piece ^ (row & 7)) << 4));
}

// stmatrix x4 number j (0..3) of a chunk writes 4 matrices of 8 rows x 8 columns; matrix s (0..3) is the row half
// h = s & 1 (rows 8h..8h+7) and column block b = 2j + (s >> 1) of the chunk (columns 8b..8b+7). Its fragment in
// lane L is the accumulator word of row 8h + L / 4, columns 8b + 2 (L % 4), +1; lanes 8s..8s+7 give its row addresses.
ZK_HOST_DEVICE int stmatrix_half(int s) { return s & 1; }
ZK_HOST_DEVICE int stmatrix_block(int j, int s) { return 2 * j + (s >> 1); }
ZK_HOST_DEVICE uint32_t stmatrix_lane_offset(int j, int lane) {
  const int s = lane >> 3;
  return staging_offset(8 * stmatrix_half(s) + (lane & 7), stmatrix_block(j, s));
}

// Read-back: load `it` (0..3) of lane L is row 4 it + L / 8 of the warp's 16, piece L % 8 (columns 8 (L % 8) ..+7).
ZK_HOST_DEVICE int readback_row(int it, int lane) { return 4 * it + (lane >> 3); }
ZK_HOST_DEVICE int readback_piece(int lane) { return lane & 7; }

}  // namespace tiled
}  // namespace zk
