// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_epilogue.cuh: what the tiled experts kernel's consumers do with a finished tile (16-byte
// stores through a per-warp staging buffer where the output rows allow them, else straight from the wgmma
// accumulators), the zero rows of grouped_gemm, and the row gather that feeds moe fc1.
//
// Accumulator layout (wgmma m64n256 D, zaya_router_sm90_mma.cuh), g = lane / 4, q = lane % 4: thread
// (warp w of consumer c) holds tile rows 64c + 16w + g ("row a") and +8 ("row b"); acc[4i + 0, 1] are
// row a's columns 8i + 2q, +1 and acc[4i + 2, 3] row b's, i = 0..31.
#pragma once

#include "experts_sm90_tiled_layout.cuh"
#include "experts_sm90_tiled_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace tiled {

// Two adjacent bf16 outputs at columns col, col + 1 of a row; columns at or past `cols` are not stored.
ZK_DEVICE void store_bf16_pair(uint16_t* row, int32_t col, int32_t cols, float v0, float v1, bool pair_stores) {
  if (pair_stores && col + 1 < cols) {
    *reinterpret_cast<uint32_t*>(row + col) = sm90::pack_bf16x2_rn(v0, v1);
  } else {
    if (col < cols) row[col] = float_to_bf16(v0);
    if (col + 1 < cols) row[col + 1] = float_to_bf16(v1);
  }
}

// SiLU(g) * u in fp32 as the reference computes it (g * sigmoid(g)); for g -> -inf the quotient is -0.
ZK_DEVICE float swiglu(float gate, float up) { return __fdividef(gate, 1.f + __expf(-gate)) * up; }

// The pair index a slot holds, or -1 for padding (and for anything outside [0, num_pairs)).
ZK_DEVICE int32_t slot_pair(const TiledGemmArgs& args, int32_t slot) {
  const int32_t pair = args.sorted_token_ids[slot];
  return pair >= 0 && pair < args.num_pairs ? pair : -1;
}

ZK_DEVICE void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

ZK_DEVICE uint4 ld_shared_u32x4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// Where row (or slot) `row` of A's result goes, or nullptr when it is not stored (past the segment, padding).
template <EpilogueKind kKind>
ZK_DEVICE void* output_row(const TiledGemmArgs& args, int32_t row, int32_t row_limit) {
  if (row >= row_limit) return nullptr;
  if constexpr (kKind == EpilogueKind::kPlain) {
    return static_cast<uint16_t*>(args.out) + row * args.out_row_stride;
  } else {
    const int32_t pair = slot_pair(args, row);
    if (pair < 0) return nullptr;
    if constexpr (kKind == EpilogueKind::kSwiglu) return static_cast<uint16_t*>(args.out) + row * args.out_row_stride;
    if constexpr (kKind == EpilogueKind::kCombineBf16) {
      return static_cast<uint16_t*>(args.out) + (pair / args.top_k) * args.out_row_stride;
    }
    return static_cast<float*>(args.out) + pair * args.out_row_stride;
  }
}

// Staged stores (experts_sm90_tiled_layout.cuh): the warp's 16 rows (from warp_row0) go out 64 columns at a time
// through its staging buffer as 16-byte pieces, to output columns [col0, col0 + 64 kChunks) (those at or past
// args.out_cols, a multiple of 8, skipped). word(i, h) is the bf16x2 word of this thread's fragment column
// block i (columns 8i + 2q, +1) of row half h.
template <EpilogueKind kKind, int kChunks, class Word>
ZK_DEVICE void store_staged(const TiledGemmArgs& args, TiledSmem& s, int32_t warp_row0, int32_t row_limit,
                            int32_t col0, int warp_index, int lane, const Word& word) {
  uint16_t* rows[4];
#pragma unroll
  for (int it = 0; it < 4; ++it) {
    rows[it] = static_cast<uint16_t*>(output_row<kKind>(args, warp_row0 + readback_row(it, lane), row_limit));
  }
  const uint32_t staging = sm90::smem_addr(s.staging[warp_index]);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      stmatrix_x4(staging + stmatrix_lane_offset(j, lane),
                  word(8 * c + stmatrix_block(j, 0), stmatrix_half(0)),
                  word(8 * c + stmatrix_block(j, 1), stmatrix_half(1)),
                  word(8 * c + stmatrix_block(j, 2), stmatrix_half(2)),
                  word(8 * c + stmatrix_block(j, 3), stmatrix_half(3)));
    }
    __syncwarp();
    const int32_t col = col0 + kChunkCols * c + 8 * readback_piece(lane);
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const uint4 v = ld_shared_u32x4(staging + staging_offset(readback_row(it, lane), readback_piece(lane)));
      if (rows[it] != nullptr && col < args.out_cols) *reinterpret_cast<uint4*>(rows[it] + col) = v;
    }
    __syncwarp();  // the next chunk's stmatrix overwrites what the lanes just read
  }
}

// Direct stores from the fragments: this thread's rows row_a and row_a + 8 (h = 0, 1), column blocks
// i < kBlocks at output columns col0 + 8i + 2q, +1; value(i, h, e) is the fp32 result of column 8i + 2q + e.
// The form for outputs whose rows do not take 16-byte stores (odd N) and for kCombineF32.
template <EpilogueKind kKind, int kBlocks, class Value>
ZK_DEVICE void store_direct(const TiledGemmArgs& args, int32_t row_a, int32_t row_limit, int32_t col0, int q,
                            const Value& value) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    void* out = output_row<kKind>(args, row_a + 8 * h, row_limit);
    if (out == nullptr) continue;
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      const int32_t col = col0 + 8 * i + 2 * q;
      if constexpr (kKind == EpilogueKind::kCombineF32) {
        // pair_out rows are H fp32 (H % 8 == 0) in a 256-byte aligned workspace: 8-byte pair stores.
        if (col < args.out_cols) {
          *reinterpret_cast<float2*>(static_cast<float*>(out) + col) = make_float2(value(i, h, 0), value(i, h, 1));
        }
      } else {
        store_bf16_pair(static_cast<uint16_t*>(out), col, args.out_cols, value(i, h, 0), value(i, h, 1),
                        args.pair_stores != 0);
      }
    }
  }
}

// Stores a finished tile. kAcc = 128: a full tile, consumer c holds rows [64c, 64c + 64) x the 256 columns;
// kAcc = 64: a half tile (at most 64 rows), consumer c holds rows [0, 64) x B rows [128c, 128c + 128).
// B's 256 rows (b_box_rows): plain / combine, output columns 256 ct + [0, 256); SwiGLU, four 64-row boxes gate,
// up, gate, up of act columns 128 ct + [0, 64) and + [64, 128), so act column block a of a fragment has its gate
// in fragment block (a & 7) + 16 (a >> 3) and its up 8 blocks further.
template <EpilogueKind kKind, int kAcc>
ZK_DEVICE void store_tile(const TiledGemmArgs& args, TiledSmem& s, const TileCoords& t, const float (&acc)[kAcc],
                          int consumer, int warp, int lane) {
  constexpr bool kHalf = kAcc == 64;
  const int32_t row_limit = t.row_end < args.rows ? t.row_end : args.rows;
  const int32_t warp_row0 = t.row0 + (kHalf ? 0 : 64 * consumer) + 16 * warp;
  const int warp_index = 4 * consumer + warp;
  const int q = lane % 4;
  if constexpr (kKind == EpilogueKind::kSwiglu) {
    constexpr int kBlocks = kAcc / 8;  // act column blocks: gate and up fragments pair up
    const int32_t col0 = kSwigluCols * t.col_tile + (kHalf ? 64 * consumer : 0);
    const auto value = [&](int i, int h, int e) {
      const int gate = (i & 7) + 16 * (i >> 3);
      return swiglu(acc[4 * gate + 2 * h + e], acc[4 * (gate + 8) + 2 * h + e]);
    };
    if (args.staged_stores) {
      store_staged<kKind, kBlocks / 8>(args, s, warp_row0, row_limit, col0, warp_index, lane, [&](int i, int h) {
        return sm90::pack_bf16x2_rn(value(i, h, 0), value(i, h, 1));
      });
    } else {
      store_direct<kKind, kBlocks>(args, warp_row0 + lane / 4, row_limit, col0, q, value);
    }
  } else {
    constexpr int kBlocks = kAcc / 4;
    const int32_t col0 = kTileN * t.col_tile + (kHalf ? kTileN / 2 * consumer : 0);
    float weight[2] = {1.f, 1.f};  // the combine weight of this thread's rows g and g + 8 (0: not stored)
    if constexpr (kKind != EpilogueKind::kPlain) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int32_t row = warp_row0 + lane / 4 + 8 * h;
        const int32_t pair = row < row_limit ? slot_pair(args, row) : -1;
        weight[h] = pair >= 0 ? args.topk_weights[pair] : 0.f;
      }
    }
    const auto value = [&](int i, int h, int e) {
      return kKind == EpilogueKind::kPlain ? acc[4 * i + 2 * h + e] : weight[h] * acc[4 * i + 2 * h + e];
    };
    if constexpr (kKind == EpilogueKind::kCombineF32) {
      store_direct<kKind, kBlocks>(args, warp_row0 + lane / 4, row_limit, col0, q, value);
    } else if (args.staged_stores) {
      store_staged<kKind, kBlocks / 8>(args, s, warp_row0, row_limit, col0, warp_index, lane, [&](int i, int h) {
        return sm90::pack_bf16x2_rn(value(i, h, 0), value(i, h, 1));
      });
    } else {
      store_direct<kKind, kBlocks>(args, warp_row0 + lane / 4, row_limit, col0, q, value);
    }
  }
}

// grouped_gemm: rows of c outside every segment ([0, offsets[0]) and [offsets[E], M)) are zeros. Spread
// over every consumer thread of the grid (`thread` of `threads` in this CTA), after its tiles.
ZK_DEVICE void zero_rows_outside_segments(const TiledGemmArgs& args, const TiledSmem& s, int thread, int threads) {
  const int32_t rows = args.rows;
  const int32_t first = min(max(s.offsets[0], 0), rows);
  const int32_t last = min(max(s.offsets[args.num_experts], first), rows);
  const int64_t zero_rows = static_cast<int64_t>(first) + (rows - last);
  const int32_t per_chunk = args.wide_stores ? 8 : 1;  // 16-byte or 2-byte stores
  const int64_t chunks = (args.out_cols + per_chunk - 1) / per_chunk;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * threads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * threads + thread; i < zero_rows * chunks; i += stride) {
    const int64_t r = i / chunks;
    const int64_t row = r < first ? r : last + (r - first);
    uint16_t* out = static_cast<uint16_t*>(args.out) + row * args.out_row_stride + (i - r * chunks) * per_chunk;
    if (args.wide_stores) {
      *reinterpret_cast<uint4*>(out) = make_uint4(0u, 0u, 0u, 0u);
    } else {
      *out = 0;
    }
  }
}

// moe fc1's input rows: x_sorted[s] = x[sorted_token_ids[s] / k] for the slots s of every segment that are
// not padding (padding slots' rows are left as they are: nothing stores their results). One CTA per slot
// at a time, 16-byte copies where x's rows allow them.
struct GatherArgs {
  const uint16_t* x;                // [T, H] bf16, row stride x_row_stride
  int64_t x_row_stride;             // elements
  const int32_t* sorted_token_ids;  // [capacity] int32
  const int32_t* offsets;           // [E + 1] int32: the slots to gather are [offsets[0], offsets[E])
  int32_t num_experts;
  int32_t num_pairs;                // T * k (the padding value)
  int32_t top_k;
  int32_t hidden;                   // H, a multiple of 8
  int32_t capacity;
  int32_t wide_loads;               // 1: x and x_row_stride allow 16-byte loads
  uint16_t* x_sorted;               // [capacity, H] bf16, contiguous, 16-byte aligned
};

constexpr int kGatherThreads = 256;  // H = 2048: one 16-byte piece per thread

__global__ void __launch_bounds__(kGatherThreads) gather_rows_kernel(const GatherArgs args) {
  wait_for_prerequisite_grids();  // sorted_token_ids and offsets come from the align before this
  const int32_t first = max(args.offsets[0], 0);
  const int32_t last = min(args.offsets[args.num_experts], args.capacity);
  for (int32_t slot = first + blockIdx.x; slot < last; slot += gridDim.x) {
    const int32_t pair = args.sorted_token_ids[slot];
    if (pair < 0 || pair >= args.num_pairs) continue;
    const uint16_t* src = args.x + static_cast<int64_t>(pair / args.top_k) * args.x_row_stride;
    uint16_t* dst = args.x_sorted + static_cast<int64_t>(slot) * args.hidden;
    if (args.wide_loads) {
      for (int32_t c = threadIdx.x; c < args.hidden / 8; c += kGatherThreads) {
        reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
      }
    } else {
      for (int32_t c = threadIdx.x; c < args.hidden; c += kGatherThreads) dst[c] = src[c];
    }
  }
}

}  // namespace tiled
}  // namespace zk
