// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_load.cuh: what the tiled experts kernel loads and how: its arguments (tensor maps
// and the epilogue's pointers), the shared-memory layout (a ring of kStages stages of A [128 x 64] and
// B [256 x 64] bf16 boxes, 128-byte swizzled, and the epilogue's staging buffers) and the producer, one thread
// issuing the TMA loads of every tile this CTA owns, kStages - 1 stages ahead of the consumers and across tile
// boundaries.
// The TMA, mbarrier and wgmma wrappers are the router's (zaya_router_sm90_load.cuh / _mma.cuh).
#pragma once

#include <cuda.h>  // CUtensorMap (the type only; tensor maps are encoded on the host)
#include <stdint.h>

#include "../common/params.h"
#include "experts_sm90_tiled_layout.cuh"
#include "experts_sm90_tiled_schedule.cuh"
#include "zaya_router_sm90_load.cuh"

namespace zk {
namespace tiled {

// Which output the consumers' epilogue writes (experts_sm90_tiled_epilogue.cuh).
enum class EpilogueKind : int32_t {
  kPlain = 0,        // grouped_gemm: c[row] = bf16(acc), every row outside the segments zeroed
  kSwiglu = 1,       // moe fc1: act[slot] = bf16(SiLU(gate) * up) for slots that are not padding
  kCombineBf16 = 2,  // moe fc2, k == 1: out[t] = bf16(topk_weights[t] * acc)
  kCombineF32 = 3,   // moe fc2, k > 1: pair_out[pair] = topk_weights[pair] * acc (fp32)
};

struct TiledGemmArgs {
  CUtensorMap a;                     // A [rows, K] bf16, box {64, kTileM / kCluster}; rows past it read as 0
  CUtensorMap b;                     // B [E * b_rows_per_expert, K] bf16 (weights as one matrix), box {64, 64}
  const int32_t* offsets;            // [E + 1] int32 segment starts (device)
  int32_t num_experts;               // E, 1..kExpertsMaxExperts
  int32_t k;                         // reduction length (K); k-steps = ceil(k / kTileK), the tail zero-filled
  int32_t col_units;                 // units of kCluster column tiles per row tile (tile_at)
  int32_t b_rows_per_expert;         // N (plain, combine) or 2F (SwiGLU)
  int32_t up_offset;                 // SwiGLU: F, the up rows' offset from the gate rows; else 0
  void* out;                         // kPlain: c [M, N] bf16; kSwiglu: act [capacity, F] bf16;
                                     // kCombineBf16: out [T, H] bf16; kCombineF32: pair_out [T*k, H] fp32
  int64_t out_row_stride;            // elements
  int32_t out_cols;                  // columns stored: N, F or H
  int32_t rows;                      // rows of A and of the row-indexed output (M or capacity): none past it
                                     // is stored; kPlain zeroes the rows of c outside every segment
  const int32_t* sorted_token_ids;   // moe: [capacity] int32 pair index per slot, padding = num_pairs
  const float* topk_weights;         // moe fc2: [T, k] fp32, contiguous (index = pair)
  int32_t num_pairs;                 // moe: T * k, the padding value
  int32_t top_k;                     // moe: k
  int32_t pair_stores;               // 1: out and out_row_stride allow 4-byte bf16x2 stores
  int32_t wide_stores;               // kPlain: 1: c, its row stride and N allow 16-byte stores (the zero rows)
  int32_t staged_stores;             // 1: out rows take 16-byte stores of 8 columns (store_tile_staged)
};

constexpr int kStages = 4;  // 4 x 48 KB: the producer runs 3 stages (~2 us of MMA at 128x256x64) ahead
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kStageABytes = kTileM * kTileK * 2;
constexpr int kStageBBytes = kTileN * kTileK * 2;
constexpr int kConsumerWarps = 8;  // every consumer warp releases each stage it read

struct TiledSmem {
  struct Stage {
    uint8_t a[kStageABytes];  // [128 x 64] bf16: rows of the tile (consumer c reads rows 64c..64c+63)
    uint8_t b[kStageBBytes];  // [256 x 64] bf16: four boxes of 64 weight rows (b_box_row)
  } stages[kStages];
  uint8_t staging[kConsumerWarps][kStagingBytes];  // each consumer warp's epilogue buffer (tiled_layout.cuh)
  uint64_t full[kStages];     // the producer's expect_tx + the TMA bytes
  uint64_t empty[kStages];    // kConsumerWarps arrivals from each CTA of the cluster
  int32_t offsets[kExpertsMaxExperts + 1];
  int32_t cost_prefix[kExpertsMaxExperts + 1];  // cost of the units of the experts before e (tile_at)
};
constexpr int kSmemBytes = static_cast<int>(sizeof(TiledSmem)) + 1024;  // + alignment slack
static_assert(sizeof(TiledSmem::Stage) % 1024 == 0, "every box starts on a 1024-byte boundary (128-byte swizzle)");
static_assert(kStageABytes == kTileM * 128 && kStageBBytes == kTileN * 128, "A and B boxes are 128-byte rows");
static_assert(kSmemBytes <= 227 * 1024, "fits one SM's shared memory");

// Arrive once on a barrier of this CTA.
ZK_DEVICE void mbar_arrive_local(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Running position in the stage ring, the same sequence in the producer and the consumers.
struct RingPosition {
  int stage = 0;
  uint32_t phase = 0;
  ZK_DEVICE void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

ZK_DEVICE int32_t total_cost(const TiledSmem& s, const TiledGemmArgs& args) { return s.cost_prefix[args.num_experts]; }

// Calls tile(t) for every tile of CTA `rank` of this cluster, in order: the units starting in the cluster's slots
// of two cost positions (experts_sm90_tiled_schedule.cuh). The producer and the consumers walk the same sequence.
template <int kCluster, class Tile>
ZK_DEVICE void for_each_tile(const TiledGemmArgs& args, const TiledSmem& s, int rank, const Tile& tile) {
  const int32_t total = total_cost(s, args);
  for (int32_t slot = blockIdx.x / kCluster; 2 * slot < total; slot += gridDim.x / kCluster) {
    for (int32_t position = 2 * slot; position < 2 * slot + 2 && position < total; ++position) {
      TileCoords t;
      if (tile_at(s.offsets, s.cost_prefix, args.num_experts, args.col_units, kCluster, rank, position, t)) tile(t);
    }
  }
}

ZK_DEVICE int32_t k_steps(const TiledGemmArgs& args) { return (args.k + kTileK - 1) / kTileK; }

// First weight row (of B as one [E * b_rows_per_expert, K] matrix) of B box q (0..3, 64 rows each, stored at
// stage rows 64q..). Plain / combine: columns 256 ct + 64q.. of the expert's N. SwiGLU: gate rows 128 ct + [0, 64),
// their up rows F + 128 ct + [0, 64), then the next 64 gate and up rows: each 128-row half of the stage is the gate
// and up of the same 64 act columns, so a half tile's consumer (B rows [128c, 128c + 128)) has both too. Rows past
// the expert's own belong to the next expert or lie past the tensor (zeros): they only feed unstored columns.
ZK_DEVICE int32_t b_box_row(const TiledGemmArgs& args, const TileCoords& t, int q) {
  const int32_t base = t.expert * args.b_rows_per_expert;
  if (args.up_offset > 0) return base + kSwigluCols * t.col_tile + kBBoxRows * (q >> 1) + (q & 1) * args.up_offset;
  return base + kTileN * t.col_tile + kBBoxRows * q;
}

// kCluster == 2: each CTA loads half of the A box (64 rows) into both CTAs (multicast), and its own B; a stage
// is refilled once the consumers of both CTAs released it (the empty barrier counts both).
template <int kCluster>
ZK_DEVICE void tiled_producer(const TiledGemmArgs& args, TiledSmem& s, int rank) {
  const int32_t steps = k_steps(args);
  constexpr int kABoxBytes = kStageABytes / kCluster;
  RingPosition ring;
  for_each_tile<kCluster>(args, s, rank, [&](const TileCoords& t) {
    for (int32_t step = 0; step < steps; ++step) {
      sm90::mbar_wait(sm90::smem_addr(&s.empty[ring.stage]), ring.phase ^ 1u);
      const uint32_t full = sm90::smem_addr(&s.full[ring.stage]);
      const uint32_t a_dst = sm90::smem_addr(s.stages[ring.stage].a);
      const uint32_t b_dst = sm90::smem_addr(s.stages[ring.stage].b);
      // Out-of-bounds box parts arrive as zeros and count toward the transaction bytes.
      sm90::mbar_arrive_expect_tx(full, kStageABytes + kStageBBytes);
      if constexpr (kCluster == 1) {
        sm90::tma_load_2d(a_dst, &args.a, kTileK * step, t.row0, full);
      } else {
        sm90::tma_load_2d_multicast(a_dst + rank * kABoxBytes, &args.a, kTileK * step,
                                    t.row0 + rank * (kTileM / kCluster), full, (1u << kCluster) - 1u);
      }
#pragma unroll
      for (int q = 0; q < kTileN / kBBoxRows; ++q) {
        sm90::tma_load_2d(b_dst + q * (kBBoxRows * 128), &args.b, kTileK * step, b_box_row(args, t, q), full);
      }
      ring.advance();
    }
  });
}

}  // namespace tiled
}  // namespace zk
