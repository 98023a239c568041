// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_schedule.cuh: the work list of the tiled experts kernels. Every CTA derives it from
// expert_offsets on the device (no host sync): expert e's segment [offsets[e], offsets[e+1]) is cut into row tiles
// of kTileM rows, and each row tile into units of kCluster adjacent column tiles, one per CTA of a cluster (they
// share the row tile's A boxes by TMA multicast). A unit costs 2 (a full row tile) or 1 (a segment's last row tile
// when it has at most 64 rows: a half tile, half the MMA time). Units are laid out expert-major, then row tile,
// then column unit, each at its cost position p (the costs of the units before it); cluster b of G takes the units
// that start in slots s = b, b + G, ... of two cost positions (p in [2s, 2s + 2)). So the clusters' work differs by
// at most a half tile's where plain round-robin over units could differ by a whole unit per wave (uniform top-1
// routing, T = 16384: fc2's busiest CTA 12.9% above the mean with round-robin, 0.4% so; fc1 3.5% -> 0.4%), and the
// units in flight at once are still a few row tiles x all column tiles of one or two experts: one expert's weights
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

// The row tiles of a segment of `rows` rows (none for an empty or malformed, i.e. negative, segment): `full`
// of cost 2 (the last one too when it has more than 64 rows) and `half` (0 or 1) last one of at most 64 rows.
struct SegmentTiles {
  int32_t full;
  int32_t half;
};

ZK_HOST_DEVICE SegmentTiles segment_tiles(int32_t rows) {
  if (rows <= 0) return SegmentTiles{0, 0};
  const int32_t rest = rows % kTileM;
  const int32_t half = rest > 0 && rest <= kTileM / 2 ? 1 : 0;
  return SegmentTiles{(rows + kTileM - 1) / kTileM - half, half};
}

// Cost of a segment's units: col_units per row tile, 2 per full and 1 per half row tile.
ZK_HOST_DEVICE int32_t segment_cost(int32_t rows, int32_t col_units) {
  const SegmentTiles t = segment_tiles(rows);
  return col_units * (2 * t.full + t.half);
}

// The last e in [0, num_experts) with prefix[e] <= position, for a non-decreasing prefix (prefix[0] = 0) and
// position < prefix[num_experts]. Experts without units share their prefix with the next expert that has some,
// so "last" skips them.
ZK_HOST_DEVICE int expert_at(const int32_t* prefix, int num_experts, int32_t position) {
  int lo = 0, hi = num_experts - 1;  // invariant: prefix[lo] <= position < prefix[hi + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= position) {
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
  int32_t col_tile; // column tile: plain B rows [kTileN * col_tile, +kTileN); SwiGLU act columns [128 * col_tile, +128)
  // A tile of at most 64 segment rows (a segment's last) is a "half tile": both consumers multiply A rows
  // [0, 64), each by 128 of the 256 B rows, in half the time of a full tile (wgmma M is 64 per warpgroup).
  ZK_HOST_DEVICE bool half() const { return row_end - row0 <= kTileM / 2; }
};

// Whether a unit starts at cost position `position` (< cost_prefix[num_experts]), and if so the tile of CTA `rank`
// (0..cluster-1) of its cluster in it. cost_prefix[e] = cost of the experts before e. Column tiles past the
// output's (an odd count split over a pair) compute on zero / other rows and store nothing.
ZK_HOST_DEVICE bool tile_at(const int32_t* offsets, const int32_t* cost_prefix, int num_experts, int32_t col_units,
                            int cluster, int rank, int32_t position, TileCoords& c) {
  const int e = expert_at(cost_prefix, num_experts, position);
  const int32_t local = position - cost_prefix[e];
  const SegmentTiles tiles = segment_tiles(offsets[e + 1] - offsets[e]);
  const int32_t full_cost = 2 * col_units * tiles.full;
  int32_t row_tile, col_unit;
  if (local < full_cost) {
    if (local % 2 != 0) return false;  // the second half of a full unit
    row_tile = local / 2 / col_units;
    col_unit = local / 2 - row_tile * col_units;
  } else {
    row_tile = tiles.full;
    col_unit = local - full_cost;
  }
  c.expert = e;
  c.row0 = offsets[e] + row_tile * kTileM;
  c.row_end = offsets[e + 1];
  c.col_tile = col_unit * cluster + rank;
  return true;
}

}  // namespace tiled
}  // namespace zk
