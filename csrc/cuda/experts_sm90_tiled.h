// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled.h: the tensor-core-bound ("tiled") regime of the sm_90a experts kernels (owner: D1-tiled),
// called by the regime dispatch in experts_sm90.cu (owner: D2-decode). No torch headers; CUDA TUs only.
//
// What the tiled kernels are: one persistent, warp-specialised kernel template (experts_sm90_tiled_*.cuh):
// a producer thread issues TMA loads of A [128 x 64] and B [256 x 64] (128-byte swizzle) into a 4-stage mbarrier
// ring; two consumer warpgroups each multiply 64 rows x 256 columns with wgmma m64n256k16 (fp32 accumulators in
// registers; a segment's last tile of <= 64 rows as 64 x 128 per consumer), then store 16-byte pieces through a
// per-warp staging buffer. Every CTA reads expert_offsets on the device, counts the 128-row tiles of each segment
// and walks the tile list (segment-major, then row tile, then column tile) round-robin over a grid of at most one
// CTA per SM: no host sync, graph-capturable.
//
// Requirements (checked by *_tiled_supported; the dispatch picks the small regime or fails otherwise):
//   * K (grouped_gemm), H (fc1's K), F (fc2's K) multiples of 8 and A / w rows 16-byte aligned (TMA strides
//     are multiples of 16 bytes). Any such K works: TMA zero-fills the columns past K of the last k-step.
//   * N, H, F: any value >= 1 (columns past N are computed on zero-filled / neighbouring weight rows and
//     never stored).
//   * Segments of any length (block_m >= 1): rows of a tile past its segment's end are not stored.
#pragma once

#include <stdint.h>

#include "../common/params.h"

namespace zk {

// ---- grouped_gemm -----------------------------------------------------------------------------------
// Writes EVERY row of p.c: rows of segment e get a @ w[e]^T (bf16 of the fp32 sum), and the rows outside
// every segment ([0, offsets[0]) and [offsets[E], M)) get zeros, in the same kernel. Needs no workspace
// (p.workspace is ignored). M == 0 or N == 0: nothing is launched.
bool grouped_gemm_tiled_supported(const GroupedGemmParams& p);
const char* launch_grouped_gemm_tiled_sm90(const GroupedGemmParams& p, void* stream);

// ---- moe_mlp, tiled regime: three launches, in this order ---------------------------------------------
//  1. launch_moe_fc1_swiglu_tiled_sm90: first gathers x_sorted[s] = x[sorted_token_ids[s] / k] for every
//     slot s < offsets[E] that is not padding (a memory-bound kernel of this file's; padding slots' rows of
//     x_sorted are not written), then act[s] = bf16(SiLU(x_sorted[s] @ W1g^T) * (x_sorted[s] @ W1u^T)) for
//     every slot of every segment that is not padding. act rows of padding slots are never written.
//     A tile's 256 B rows are the gate rows and the matching up rows F + .. of 128 act columns of w_fc1[e]
//     (64-row boxes gate, up, gate, up), so each thread holds the gate and up of the same act column.
//  2. launch_moe_fc2_combine_tiled_sm90: y = act[s] @ w_fc2[e]^T times topk_weights[pair] (fp32), for every
//     non-padding slot s of every segment (pair = sorted_token_ids[s], t = pair / k):
//       k == 1: out[t] = bf16(topk_weights[t] * y)  (pair_out_or_null must be nullptr)
//       k  > 1: pair_out[pair] = topk_weights[pair] * y in fp32 ([T*k, H], row stride H)
//     Rows of out / pair_out that no segment slot names (skip-route and dropped pairs) are NOT written:
//     the dispatch's skip / combine kernels (common/experts_rows.cuh, D2) write them / sum them.
//  3. (the dispatch's) experts::moe_rows_kernel (common/experts_rows.cuh): k == 1 the skip / no-expert rows,
//     k > 1 the combine of pair_out.
//  Buffers, all in params.workspace: act [capacity, F] bf16, then pair_out [T*k, H] fp32 when k > 1 (params.h's
//  layout), then x_sorted [capacity, H] bf16 at moe_mlp_act_bytes + moe_mlp_pair_out_bytes (moe_tiled_x_sorted_bytes
//  more bytes; every region 256-byte aligned). moe_mlp_tiled_supported(p) must hold (the launches check it too).
constexpr int64_t moe_tiled_x_sorted_bytes(int64_t capacity, int64_t hidden) {
  return experts_align_up(capacity * hidden * 2);
}
bool moe_mlp_tiled_supported(const MoeMlpParams& p);
const char* launch_moe_fc1_swiglu_tiled_sm90(const MoeMlpParams& p, uint16_t* x_sorted, uint16_t* act,
                                             void* stream);
const char* launch_moe_fc2_combine_tiled_sm90(const MoeMlpParams& p, const uint16_t* act, float* pair_out_or_null,
                                              void* stream);

}  // namespace zk
