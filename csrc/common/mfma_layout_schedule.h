// SPDX-License-Identifier: Apache-2.0
// mfma_layout_schedule.h: the workgroup schedule shared by the gfx942 expert GEMMs and the gfx942
// attention prefill: row tiles over device-resident segment offsets (expert_offsets, cu_seqlens_q),
// read by each workgroup on the device (no host sync), the static bound on their number that sizes
// the grid, and the workgroup -> XCD renaming. Integer functions only, __host__ __device__; checked by
// tests/test_mfma_layout_experts.py and tests/test_mfma_layout_attention.py.
#pragma once

#include <stdint.h>

#include "mfma_layout.h"

namespace zk {
namespace gfx942_schedule {

constexpr int kXcds = 8;  // MI300X: 8 XCDs, the hardware sends workgroup b to XCD b % 8

// Logical workgroup index: consecutive logical indices run on the same XCD (router_gfx942::xcd_remap,
// a bijection on [0, grid)), so tiles that are adjacent in a kernel's logical order share one L2.
ZK_LAYOUT_FN int64_t logical_block(int64_t block, int64_t grid) { return router_gfx942::xcd_remap(block, grid, kXcds); }

// Row tile `index` of a list of segments walked in order, each contributing ceil(len / tile) tiles.
// Segment i is [bound(i), bound(i + 1)); with_outer adds [0, offsets[0]) before and [offsets[E], m)
// after the E segments of offsets[0..E] (grouped_gemm's rows outside every expert). Bounds are clamped
// into [0, m] and made non-decreasing, so offsets that break the contract cannot make a tile address
// rows outside [0, m). The walk is E + 2 scalar steps per workgroup (E = 16 experts, B sequences).
struct MTile {
  int expert;   // segment's id: 0..E-1, or -1 for the outer segments
  int row0;     // first row of the tile
  int rows;     // rows in the tile (<= tile); 0: `index` is past the last tile
};

ZK_LAYOUT_FN int clamp_rows(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

ZK_LAYOUT_FN int segment_bound(const int32_t* offsets, int num_segments, int m, bool with_outer, int i) {
  if (!with_outer) return offsets[i];
  if (i == 0) return 0;
  if (i == num_segments + 2) return m;
  return offsets[i - 1];
}

ZK_LAYOUT_FN MTile locate_mtile(const int32_t* offsets, int num_segments, int m, bool with_outer, int tile, int index) {
  const int segments = with_outer ? num_segments + 2 : num_segments;
  int lo = clamp_rows(segment_bound(offsets, num_segments, m, with_outer, 0), 0, m);
  for (int s = 0; s < segments; ++s) {
    const int hi = clamp_rows(segment_bound(offsets, num_segments, m, with_outer, s + 1), lo, m);
    const int tiles = (hi - lo + tile - 1) / tile;
    if (index < tiles) {
      const int row0 = lo + index * tile;
      const int id = with_outer ? (s >= 1 && s <= num_segments ? s - 1 : -1) : s;
      return MTile{id, row0, hi - row0 < tile ? hi - row0 : tile};
    }
    index -= tiles;
    lo = hi;
  }
  return MTile{-1, 0, 0};
}

// A static bound on the tiles of `segments` segments covering at most `rows` rows:
// sum ceil(len_s / tile) <= sum (floor(len_s / tile) + [len_s > 0]) <= floor(rows / tile) + min(segments, rows).
ZK_LAYOUT_FN int64_t mtile_bound(int64_t rows, int segments, int tile) {
  return rows / tile + (segments < rows ? segments : rows);
}

}  // namespace gfx942_schedule
}  // namespace zk
