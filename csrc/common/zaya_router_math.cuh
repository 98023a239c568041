// SPDX-License-Identifier: Apache-2.0
// zaya_router_math.cuh: the element-wise and row-wise math of the ZAYA1 router's epilogues, shared by
// every backend's router kernel (CUDA: cuda/zaya_router_sm90*.cuh; the HIP/MFMA twin reuses it).
// Nothing here knows the MMA layouts: a caller holds some columns of a row in each lane and names how
// many consecutive lanes share the row (kRowLanes, a power of two dividing the warp/wave).
//
// The numerics are those of reference.zaya_router (ZAYA1_ARCHITECTURE.md §5.1, §8.1):
//   r = (x W_down^T + b_down) [+ eda_scale * r_prev]             fp32, stored as bf16 (r_out)
//   n = bf16((r * rsqrt(mean(r^2) + eps)) * norm_w)                fp32 statistics, rounded once
//   h = bf16(gelu_erf(n W^T + b))                                   twice (fc1, fc2)
//   l = h2 W_out^T ; p = softmax(l) in fp32 with expf
//   e* = argmax(p + balancing_bias), the lower index on ties, a NaN score ranks as -inf
//   weight = p[e*] (unbiased)
// Non-finite input: a token whose x (or r_prev) row holds a NaN or an infinity has a non-finite norm,
// so every logit and every p is NaN: the token gets id 0 (all scores rank as -inf, the lowest index
// wins) and weight NaN, and r_out carries the non-finite values. Never an id outside [0, E').
#pragma once

#include <math.h>

#include "compat.h"
#include "route_order.cuh"

namespace zk {

// ---- element-wise ---------------------------------------------------------------------------------

// Exact GELU, in the order of ATen's CUDA kernel: x * 0.5 * (1 + erf(x / sqrt(2))).
ZK_HOST_DEVICE float gelu_erf(float x) {
  constexpr float kSqrtHalf = 0.70710678118654752440f;
  return x * 0.5f * (1.0f + erff(x * kSqrtHalf));
}

// 1 / RMS of a row from the sum of its squares: rsqrt(sum / width + eps), as torch.rsqrt(mean + eps).
ZK_DEVICE float rms_inverse(float sum_of_squares, int width, float eps) {
  return rsqrtf(sum_of_squares * (1.0f / static_cast<float>(width)) + eps);
}

// One normalised element before its bf16 rounding: (r * inv_rms) * weight, the reference's order.
ZK_HOST_DEVICE float rms_normalize(float r, float inv_rms, float weight) { return (r * inv_rms) * weight; }

// Two fp32 values as one bf16x2 word (lo in the low half), each rounded to nearest even: the layout
// of an MMA A-operand register. Backends with a conversion instruction (CUDA: cvt.rn.bf16x2.f32) use
// it instead; it rounds identically.
ZK_HOST_DEVICE uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

// ---- reductions over the kRowLanes consecutive lanes that share a row ----------------------------

template <int kRowLanes>
ZK_DEVICE float row_sum(float v) {
  static_assert((kRowLanes & (kRowLanes - 1)) == 0 && kRowLanes <= 32, "row lanes: a power of two <= 32");
#pragma unroll
  for (int offset = kRowLanes / 2; offset > 0; offset /= 2) v += shfl_xor(v, offset);
  return v;
}

template <int kRowLanes>
ZK_DEVICE float row_max(float v) {
#pragma unroll
  for (int offset = kRowLanes / 2; offset > 0; offset /= 2) v = fmaxf(v, shfl_xor(v, offset));
  return v;
}

// ---- softmax + biased top-1 ------------------------------------------------------------------------

struct RouteChoice {
  int route;    // in [0, num_routes)
  float prob;   // the unbiased softmax probability of `route`
};

// Softmax over the num_routes logits of one row and the top-1 of p + bias. Each of the row's kRowLanes
// lanes holds kCols (logit, route index) entries; entries with route >= num_routes are padding.
// bias[c] is the balancing bias of route[c] (any value for padding). Every lane of the row returns the
// same choice.
template <int kRowLanes, int kCols>
ZK_DEVICE RouteChoice route_top1(const float (&logit)[kCols], const int (&route)[kCols], const float (&bias)[kCols],
                                 int num_routes) {
  float m = -INFINITY;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    if (route[c] < num_routes) m = fmaxf(m, logit[c]);  // fmaxf skips NaN; the sum below catches it
  }
  m = row_max<kRowLanes>(m);
  float e[kCols];
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    e[c] = route[c] < num_routes ? expf(logit[c] - m) : 0.f;
    sum += e[c];
  }
  sum = row_sum<kRowLanes>(sum);
  float best_score = -INFINITY, best_prob = 0.f;
  int best_route = -1;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    if (route[c] >= num_routes) continue;
    const float prob = e[c] / sum;
    const float score = route_score(prob, bias[c]);
    if (route_better(score, route[c], best_score, best_route)) {
      best_score = score;
      best_route = route[c];
      best_prob = prob;
    }
  }
#pragma unroll
  for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
    const float other_score = shfl_xor(best_score, offset);
    const int other_route = shfl_xor(best_route, offset);
    const float other_prob = shfl_xor(best_prob, offset);
    if (route_better(other_score, other_route, best_score, best_route)) {
      best_score = other_score;
      best_route = other_route;
      best_prob = other_prob;
    }
  }
  return RouteChoice{best_route, best_prob};
}

}  // namespace zk
