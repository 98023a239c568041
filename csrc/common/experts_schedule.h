// SPDX-License-Identifier: Apache-2.0
// experts_schedule.h: the index math of the small (decode) regime of the experts kernels, as
// host-callable functions so that tests/test_experts_cpu.py checks them on the CPU (compiled with g++,
// __host__ / __device__ defined away) against the documented mma.sync fragment layout and a Python model
// of the work list.
//
// The small regime computes out^T = W x^T ("swap-AB"): a weight tile of kRowTile rows is the MMA's A
// (M = 16) and up to kTokenTile tokens are its B (N = 8), so that one expert's weights stream through every
// SM even when a handful of tokens use it. Work item = (expert e, row tile, token chunk); every CTA derives
// the item list from expert_offsets on the device (no host sync).
#pragma once

#include <stdint.h>

#ifndef ZK_HOST_DEVICE
#define ZK_HOST_DEVICE __host__ __device__ __forceinline__
#endif

namespace zk {
namespace experts {

constexpr int kRowTile = 16;    // weight rows per item: the M of mma.m16n8k16
constexpr int kTokenTile = 8;   // tokens per item: its N
constexpr int kKChunk = 32;     // k per lane load round: each lane loads 8 contiguous k (16 bytes), 4 lanes a row
constexpr int kLaneK = 8;       // bf16 elements per 16-byte lane load

// ---- the k permutation that makes every operand load a 16-byte vector ------------------------------
// mma.m16n8k16 (PTX ISA "Matrix fragments"), g = lane / 4, q = lane % 4: A's a0/a2 hold row g at logical
// k {2q, 2q+1} / {2q+8, 2q+9} (a1/a3 the same for row g+8); B's b0/b1 hold column g at the same logical k.
// A dot product does not care which physical k a logical k stands for, as long as A and B agree. So
// lane (g, q) loads the 8 physical k [32c + 8q, 32c + 8q + 8) of its row (A: weight rows g and g+8, B:
// token g) as one 16-byte vector of 4 bf16 pairs, and MMA s (0 or 1) of chunk c takes pairs 2s and 2s+1
// as its logical {2q, 2q+1} and {2q+8, 2q+9}. Both operands use the same map, so each MMA pair of a chunk
// sums exactly the 32 products of that chunk.

// The physical k (within the 32-chunk) of logical k `logical` (0..15) of MMA `s` (0, 1) for lane quad q.
ZK_HOST_DEVICE int chunk_k_of_logical(int q, int s, int logical) {
  const int pair = (logical >= 8 ? 1 : 0) + 2 * s;   // which 32-bit word of the lane's 16-byte vector
  return kLaneK * q + 2 * pair + (logical & 1);
}

// The operands of MMA s of a chunk from the lane's three 16-byte vectors (4 words each: bf16 pairs in k
// order): wa / wb = weight rows g / g + 8, tok = token g. a = {a0, a1, a2, a3}, b = {b0, b1}.
ZK_HOST_DEVICE void mma_a_fragment(const uint32_t (&wa)[4], const uint32_t (&wb)[4], int s, uint32_t (&a)[4]) {
  a[0] = wa[2 * s];
  a[1] = wb[2 * s];
  a[2] = wa[2 * s + 1];
  a[3] = wb[2 * s + 1];
}
ZK_HOST_DEVICE void mma_b_fragment(const uint32_t (&tok)[4], int s, uint32_t (&b)[2]) {
  b[0] = tok[2 * s];
  b[1] = tok[2 * s + 1];
}

// The k offset (within the 32-chunk) of lane's 16-byte vector, and the row (A) / column (B) it serves.
ZK_HOST_DEVICE int lane_chunk_k(int lane) { return kLaneK * (lane % 4); }
ZK_HOST_DEVICE int lane_group(int lane) { return lane / 4; }

// ---- weight rows of a row tile ----------------------------------------------------------------------
// Plain GEMM (grouped_gemm, fc2): MMA row r of row tile t is weight row 16t + r.
ZK_HOST_DEVICE int64_t plain_weight_row(int64_t tile, int r) { return tile * kRowTile + r; }
// fc1 with the SwiGLU epilogue: rows 0..7 of tile t are gate rows 8t..8t+7 and rows 8..15 the matching up
// rows F + 8t.., so the accumulator rows g and g+8 of one lane (c0/c1 and c2/c3) are the gate and up of
// the same act column 8t + g: the epilogue's SiLU(gate) * up needs nothing from another tile.
ZK_HOST_DEVICE int64_t swiglu_weight_row(int64_t tile, int r, int64_t ffn) {
  return r < 8 ? tile * 8 + r : ffn + tile * 8 + (r - 8);
}
// Output columns per row tile: 16 (plain) or 8 act columns (SwiGLU).
ZK_HOST_DEVICE int64_t row_tiles(int64_t out_columns, bool swiglu) {
  const int64_t per = swiglu ? 8 : kRowTile;
  return (out_columns + per - 1) / per;
}

// ---- the work list ----------------------------------------------------------------------------------
// Expert e has rows [start_e, start_e + count_e) (count_e = its token rows, padding excluded where known),
// chunks_e = ceil(count_e / 8) token chunks and chunks_e * tiles items; prefix[e] = items of experts < e,
// prefix[E] = all items. Item i belongs to the last e with prefix[e] <= i (experts with no items share
// their prefix with the next one, and the search skips them); inside it, items run row tile major, token
// chunk minor, so the CTAs working at once share a weight tile (read from DRAM once) across the chunks of
// an expert with many tokens.
ZK_HOST_DEVICE int32_t token_chunks(int32_t count) { return (count + kTokenTile - 1) / kTokenTile; }

// The expert of item `item` (0 <= item < prefix[num]): binary search for the last e with prefix[e] <= item.
ZK_HOST_DEVICE int find_expert(const int32_t* prefix, int num, int32_t item) {
  int lo = 0, hi = num - 1;  // invariant: prefix[lo] <= item < prefix[hi + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= item) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct ItemCoords {
  int32_t tile;   // row tile
  int32_t chunk;  // token chunk of the expert's rows
};

ZK_HOST_DEVICE ItemCoords item_coords(int32_t local_item, int32_t chunks) {
  return ItemCoords{local_item / chunks, local_item % chunks};
}

}  // namespace experts
}  // namespace zk
