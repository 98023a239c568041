// SPDX-License-Identifier: Apache-2.0
// experts_rows.cuh: the memory-bound row kernels around the expert GEMMs, portable (CUDA and HIP, any
// warp size: no warp primitives), shared by every regime of both backends:
//   * moe_mlp with k == 1: the output rows of tokens that run no expert: p_skip * x (skip route, mode
//     "scaled_input") or 0 (mode "zero", or an id outside [0, E]);
//   * moe_mlp with k != 1: the combine of the k per-pair fp32 rows (params.h, pair_out) in slot order,
//     plus the skip term, rounded once to bf16 (reference.moe_mlp's order of additions);
//   * grouped_gemm: the rows of c outside every expert segment, zeroed.
// Each thread handles 8 consecutive columns of a row (16-byte loads and stores of bf16: the callers
// check that H is a multiple of 8 and that x / out rows are 16-byte aligned).
#pragma once

#include <stdint.h>

#include "compat.h"
#include "params.h"

namespace zk {
namespace experts {

constexpr int kRowsThreads = 256;  // threads of the standalone row kernels below

union Bf16x8 {
  uint4 v;
  bf16_bits h[8];
};

ZK_DEVICE uint4 bf16x8_from_floats(const float (&f)[8]) {
  Bf16x8 out;
#pragma unroll
  for (int i = 0; i < 8; ++i) out.h[i] = float_to_bf16(f[i]);
  return out.v;
}

// out[t, c..c+7] for a k == 1 token that runs no expert; nothing for a token that does.
ZK_DEVICE void skip_row_piece(const MoeMlpParams& p, int32_t t, int32_t c) {
  const int32_t id = p.topk_ids[t];
  if (id >= 0 && id < p.num_experts) return;  // fc2 writes it
  float f[8];
  if (id == p.num_experts && p.skip_mode == SkipMode::kScaledInput) {
    const float w = p.topk_weights[t];
    Bf16x8 x;
    x.v = *reinterpret_cast<const uint4*>(p.x + t * p.x_row_stride + c);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = w * bf16_to_float(x.h[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = 0.f;
  }
  *reinterpret_cast<uint4*>(p.out + t * p.out_row_stride + c) = bf16x8_from_floats(f);
}

// out[t, c..c+7] = sum over slots j in order of (expert j's pair_out row, or p_skip * x, or 0), rounded once.
ZK_DEVICE void combine_piece(const MoeMlpParams& p, const float* pair_out, int32_t t, int32_t c) {
  float f[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = 0.f;
  Bf16x8 x;
  x.v = *reinterpret_cast<const uint4*>(p.x + t * p.x_row_stride + c);
  for (int32_t j = 0; j < p.k; ++j) {
    const int64_t pair = static_cast<int64_t>(t) * p.k + j;
    const int32_t id = p.topk_ids[pair];
    if (id >= 0 && id < p.num_experts) {
      const float4 lo = *reinterpret_cast<const float4*>(pair_out + pair * p.hidden + c);
      const float4 hi = *reinterpret_cast<const float4*>(pair_out + pair * p.hidden + c + 4);
      f[0] += lo.x, f[1] += lo.y, f[2] += lo.z, f[3] += lo.w;
      f[4] += hi.x, f[5] += hi.y, f[6] += hi.z, f[7] += hi.w;
    } else if (id == p.num_experts && p.skip_mode == SkipMode::kScaledInput) {
      const float w = p.topk_weights[pair];
      // Two roundings, as the reference's y += w * x: a fused multiply-add would round once and could
      // land on the other side of a bf16 rounding boundary.
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = __fadd_rn(f[i], __fmul_rn(w, bf16_to_float(x.h[i])));
    }
  }
  *reinterpret_cast<uint4*>(p.out + t * p.out_row_stride + c) = bf16x8_from_floats(f);
}

// Pieces [first, T * H/8) of out with stride `stride` (k == 1: the skip rows only; else the combine).
ZK_DEVICE void moe_rows(const MoeMlpParams& p, const float* pair_out, int64_t first, int64_t stride) {
  const int64_t pieces_per_row = p.hidden / 8;
  const int64_t total = static_cast<int64_t>(p.num_tokens) * pieces_per_row;
  for (int64_t i = first; i < total; i += stride) {
    const int32_t t = static_cast<int32_t>(i / pieces_per_row);
    const int32_t c = static_cast<int32_t>(i % pieces_per_row) * 8;
    if (p.k == 1) {
      skip_row_piece(p, t, c);
    } else {
      combine_piece(p, pair_out, t, c);
    }
  }
}

// grouped_gemm: rows [0, offsets[0]) and [offsets[E], M) of c belong to no expert: zeroed element by
// element (c needs only a contiguous last dimension), elements [first, ...) with stride `stride`.
ZK_DEVICE void zero_outside_rows(const GroupedGemmParams& p, int64_t first, int64_t stride) {
  const int32_t lo = min(max(p.expert_offsets[0], 0), p.m);
  const int32_t hi = min(max(p.expert_offsets[p.num_experts], lo), p.m);
  const int64_t head = static_cast<int64_t>(lo) * p.n;
  const int64_t total = head + static_cast<int64_t>(p.m - hi) * p.n;
  for (int64_t i = first; i < total; i += stride) {
    const int64_t row = i < head ? i / p.n : hi + (i - head) / p.n;
    const int64_t col = i < head ? i % p.n : (i - head) % p.n;
    p.c[row * p.c_row_stride + col] = 0;
  }
}

ZK_DEVICE int64_t grid_thread() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
ZK_DEVICE int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// The standalone form, for a regime whose fc2 does not fuse it, and for the k != 1 combine.
static __global__ void __launch_bounds__(kRowsThreads) moe_rows_kernel(MoeMlpParams p, const float* pair_out) {
  wait_for_prerequisite_grids();
  moe_rows(p, pair_out, grid_thread(), grid_threads());
  allow_dependent_launch();
}

}  // namespace experts
}  // namespace zk
