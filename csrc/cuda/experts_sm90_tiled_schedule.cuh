// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_schedule.cuh: the tile list of the tiled experts kernels. Every CTA derives it from
// expert_offsets on the device (no host sync): expert e's segment [offsets[e], offsets[e+1]) is cut into
// row tiles of kTileM rows (the last one partial), and each row tile into units of kCluster adjacent column
// tiles, one per CTA of a cluster (they share the row tile's A boxes by TMA multicast). Unit ids run
// expert-major, then row tile, then column unit, and cluster b of G takes units b, b + G, ...: the units in
// flight at once are a few row tiles x all column tiles of one or two experts, so one expert's weights
// (fc1: 16 MB) and those row tiles (0.5 MB each) are read from DRAM once and then hit in L2 (50 MB).
// The index math is host-callable so that it can be checked on the CPU.
#pragma once

#include <stdint.h>

#ifndef ZK_HOST_DEVICE
#define ZK_HOST_DEVICE __host__ __device__ __forceinline__
#endif

namespace zk {
namespace tiled {

constexpr int kTileM = 128;   // rows per tile: 2 consumer warpgroups x 64 (wgmma M)
constexpr int kTileN = 256;   // columns per tile: one wgmma m64n256k16 per warpgroup and k16
constexpr int kTileK = 64;    // k per pipeline stage: one 128-byte swizzled TMA box row
constexpr int kSwigluCols = 128; // act columns of a SwiGLU tile (its 256 B rows are their gate and up rows)
constexpr int kBBoxRows = 64; // rows of a B TMA box: a half tile's consumer takes two of the four

// Row tiles of a segment of `rows` rows (0 for an empty or malformed, i.e. negative, segment).
ZK_HOST_DEVICE int32_t segment_row_tiles(int32_t rows) { return rows > 0 ? (rows + kTileM - 1) / kTileM : 0; }

// Index of the expert owning global row tile `row_tile`: the last e in [0, num_experts) with
// prefix[e] <= row_tile, where prefix[e] = row tiles of the experts before e (prefix[0] = 0, non-decreasing)
// and row_tile < prefix[num_experts]. Experts without tiles share their prefix with the next expert that
// has some, so "last" skips them.
ZK_HOST_DEVICE int expert_of_row_tile(const int32_t* prefix, int num_experts, int32_t row_tile) {
  int lo = 0, hi = num_experts - 1;  // invariant: prefix[lo] <= row_tile < prefix[hi + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= row_tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct TileCoords {
  int32_t expert;
  int32_t row0;     // first row of the tile (of A and of the row-indexed output)
  int32_t row_end;  // end of the tile's segment: rows >= row_end belong to another segment (not stored)
  // A tile of at most 64 segment rows (a segment's last) is a "half tile": both consumers multiply A rows
  // [0, 64), each by 128 of the 256 B rows, in half the time of a full tile (wgmma M is 64 per warpgroup).
  ZK_HOST_DEVICE bool half() const { return row_end - row0 <= kTileM / 2; }
  int32_t col_tile; // column tile: plain B rows [kTileN * col_tile, +kTileN); SwiGLU act columns [128 * col_tile, +128)
};

// The tile of CTA `rank` (0..cluster-1) of its cluster in unit `unit`, with col_units units per row tile. Column
// tiles past the output's (an odd count split over a pair) compute on zero / other rows and store nothing.
ZK_HOST_DEVICE TileCoords tile_coords(const int32_t* offsets, const int32_t* prefix, int num_experts,
                                      int32_t col_units, int cluster, int rank, int32_t unit) {
  const int32_t row_tile = unit / col_units;
  const int e = expert_of_row_tile(prefix, num_experts, row_tile);
  TileCoords c;
  c.expert = e;
  c.row0 = offsets[e] + (row_tile - prefix[e]) * kTileM;
  c.row_end = offsets[e + 1];
  c.col_tile = (unit - row_tile * col_units) * cluster + rank;
  return c;
}

}  // namespace tiled
}  // namespace zk
