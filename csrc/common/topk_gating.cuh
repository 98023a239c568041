// SPDX-License-Identifier: Apache-2.0
// topk_gating.cuh: the portable top-k gating kernel, written once for CUDA (warp 32) and HIP
// (wave 64). One warp per token row: each lane owns the experts lane, lane + W, lane + 2W, ...
//
// Semantics (the contract of zaya::topk_gating, mirrored by reference.topk_gating):
//   p = softmax(logits) in fp32; score = p + bias; pick the k largest scores, the lower expert
//   index first among equal scores; a NaN score ranks as -inf. weights = p of the chosen ids
//   (not p + bias); renormalised over the k slots when asked. Once the skip route is chosen, the
//   later slots are the skip route too, with weight 0. A row whose softmax is undefined (a NaN or
//   +inf logit, or every logit -inf) gets NaN weights and ids 0..k-1: never an id out of range.
#pragma once

#include <math.h>

#include "compat.h"
#include "launch.h"
#include "params.h"
#include "route_order.cuh"

namespace zk {

template <typename T, int kWarp, int kPerLane>
__global__ void __launch_bounds__(256) topk_gating_kernel(const TopkGatingParams p) {
  static_assert(kPerLane * kWarp <= 2 * kTopkMaxExperts, "per-lane slots exceed the expert bound");
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= p.num_tokens) return;  // uniform per warp: every lane of a warp shares the row

  const T* logits = static_cast<const T*>(p.logits) + row * p.logits_row_stride;
  float logit[kPerLane];
  float row_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + i * kWarp;
    logit[i] = e < p.num_experts ? load_as_float<T>(logits + e) : -INFINITY;
    row_max = fmaxf(row_max, logit[i]);  // NaN logits are caught by the sum below
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) row_max = fmaxf(row_max, shfl_xor(row_max, offset));

  float prob[kPerLane];
  float row_sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + i * kWarp;
    prob[i] = e < p.num_experts ? expf(logit[i] - row_max) : 0.f;
    row_sum += prob[i];
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) row_sum += shfl_xor(row_sum, offset);

  float score[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + i * kWarp;
    prob[i] = prob[i] / row_sum;
    score[i] = e < p.num_experts ? route_score(prob[i], p.bias != nullptr ? p.bias[e] : 0.f) : -INFINITY;
  }

  uint32_t taken = 0;  // bit i: this lane's expert lane + i * kWarp already chosen
  float slot_weight[kTopkMaxK];
  int slot_id[kTopkMaxK];
  bool skipped = false;
  float weight_sum = 0.f;
#pragma unroll
  for (int s = 0; s < kTopkMaxK; ++s) {
    if (s >= p.k) break;
    if (skipped) {
      slot_id[s] = p.skip_index;
      slot_weight[s] = 0.f;
      continue;
    }
    float best_score = -INFINITY;
    int best_id = -1;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + i * kWarp;
      if (e < p.num_experts && !(taken & (1u << i)) && route_better(score[i], e, best_score, best_id)) {
        best_score = score[i];
        best_id = e;
      }
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float other_score = shfl_xor(best_score, offset);
      const int other_id = shfl_xor(best_id, offset);
      if (route_better(other_score, other_id, best_score, best_id)) {
        best_score = other_score;
        best_id = other_id;
      }
    }
    // Every lane now holds the same winner; its owner marks it taken and broadcasts its p.
    const int owner = best_id % kWarp;
    const int owner_slot = best_id / kWarp;
    float owner_prob = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (i == owner_slot) owner_prob = prob[i];
    }
    if (lane == owner) taken |= 1u << owner_slot;
    slot_weight[s] = shfl(owner_prob, owner);
    slot_id[s] = best_id;
    weight_sum += slot_weight[s];
    skipped = best_id == p.skip_index;
  }

#pragma unroll
  for (int s = 0; s < kTopkMaxK; ++s) {
    if (s >= p.k) break;
    if (lane == s) {
      p.weights[row * p.weights_row_stride + s] = p.renormalize ? slot_weight[s] / weight_sum : slot_weight[s];
      p.ids[row * p.ids_row_stride + s] = slot_id[s];
    }
  }
}

// Host side, shared by both backends' translation units: picks the per-lane width and launches.
template <typename T>
inline void topk_gating_launch_typed(const TopkGatingParams& p, stream_t stream) {
  constexpr int kThreads = 256;
  constexpr int kRowsPerBlock = kThreads / kWarpSize;
  const unsigned grid = static_cast<unsigned>((p.num_tokens + kRowsPerBlock - 1) / kRowsPerBlock);
  // Smallest per-lane width that covers E': 17 experts on a 32-lane warp need 1 slot a lane.
  if (p.num_experts <= kWarpSize) {
    topk_gating_kernel<T, kWarpSize, 1><<<grid, kThreads, 0, stream>>>(p);
  } else if (p.num_experts <= 2 * kWarpSize) {
    topk_gating_kernel<T, kWarpSize, 2><<<grid, kThreads, 0, stream>>>(p);
  } else if (p.num_experts <= 4 * kWarpSize) {
    topk_gating_kernel<T, kWarpSize, 4><<<grid, kThreads, 0, stream>>>(p);
  } else {
    static_assert(kTopkMaxExperts <= 8 * 32, "8 slots a lane must cover the expert bound at warp 32");
    topk_gating_kernel<T, kWarpSize, (kTopkMaxExperts + kWarpSize - 1) / kWarpSize><<<grid, kThreads, 0, stream>>>(p);
  }
}

inline void topk_gating_launch(const TopkGatingParams& p, stream_t stream) {
  if (p.num_tokens == 0) return;
  if (p.logits_dtype == DType::kFloat32) {
    topk_gating_launch_typed<float>(p, stream);
  } else {
    topk_gating_launch_typed<bf16_bits>(p, stream);
  }
}

}  // namespace zk
