// SPDX-License-Identifier: Apache-2.0
// experts_gfx942_combine.h: moe_mlp's last step on gfx942, memory-bound, one thread per 4 features of
// one token (8-byte bf16 stores):
//   top_k == 1: tokens routed to an expert were written by fc2's epilogue; this writes the others:
//               skip route (id == E) -> bf16(p_skip * x) ("scaled_input") or 0 ("zero"); other ids -> 0.
//   top_k > 1:  y[t] = bf16(sum_j term_j) in slot order j (the reference's order), term_j = the pair's
//               fp32 row w * expert(x) from fc2 (pair_out), p_skip * x for the skip route
//               ("scaled_input"), else 0. One rounding, as the reference.
#pragma once

#include "experts_gfx942_gemm.h"

namespace zk {
namespace experts_hip {

struct CombineArgs {
  const uint16_t* x;            // [T, H] bf16, row stride x_row_stride
  int64_t x_row_stride;
  const float* topk_weights;    // [T, k] fp32, contiguous
  const int32_t* topk_ids;      // [T, k] int32, contiguous
  const float* pair_out;        // [T k, H] fp32 (top_k > 1)
  uint16_t* out;                // [T, H] bf16, row stride out_row_stride
  int64_t out_row_stride;
  int32_t num_tokens;
  int32_t top_k;
  int32_t hidden;               // H, a multiple of 4
  int32_t num_experts;          // E: id E is the skip route
  bool scaled_input;
};

ZK_DEVICE f32x4 bf16x4_to_float(u32x2 v) {
  return f32x4{bf16_to_float(static_cast<bf16_bits>(v.x & 0xffffu)), bf16_to_float(static_cast<bf16_bits>(v.x >> 16)),
               bf16_to_float(static_cast<bf16_bits>(v.y & 0xffffu)), bf16_to_float(static_cast<bf16_bits>(v.y >> 16))};
}

constexpr int kCombineThreads = 256;

__global__ void __launch_bounds__(kCombineThreads) moe_combine_kernel(const CombineArgs p) {
  const int groups = p.hidden / 4;
  const int64_t items = int64_t{p.num_tokens} * groups;
  for (int64_t i = int64_t{blockIdx.x} * kCombineThreads + threadIdx.x; i < items;
       i += int64_t{gridDim.x} * kCombineThreads) {
    const int64_t t = i / groups;
    const int f = 4 * static_cast<int>(i % groups);
    f32x4 sum = {0.f, 0.f, 0.f, 0.f};
    bool expert_written = false;
    for (int j = 0; j < p.top_k; ++j) {
      const int64_t pair = t * p.top_k + j;
      const int id = p.topk_ids[pair];
      if (id >= 0 && id < p.num_experts) {
        if (p.top_k == 1) {
          expert_written = true;
        } else {
          sum += *reinterpret_cast<const f32x4*>(p.pair_out + pair * p.hidden + f);
        }
      } else if (id == p.num_experts && p.scaled_input) {
        const f32x4 xv = bf16x4_to_float(*reinterpret_cast<const u32x2*>(p.x + t * p.x_row_stride + f));
        sum += p.topk_weights[pair] * xv;
      }
    }
    if (expert_written) continue;  // top_k == 1: fc2's epilogue owns this row
    *reinterpret_cast<u32x2*>(p.out + t * p.out_row_stride + f) = u32x2{pack_bf16x2(sum.x, sum.y), pack_bf16x2(sum.z, sum.w)};
  }
}

}  // namespace experts_hip
}  // namespace zk
