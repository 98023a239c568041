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

// Exact (erf) GELU, x * 0.5 * (1 + erf(x / sqrt(2))), as 0.5 x (2 - erfc(z)) for x >= 0 and
// 0.5 x erfc(z) for x < 0, z = |x| / sqrt(2), with erfc from the Chebyshev fit of Numerical Recipes
// (erfcc: t exp(-z^2 + P(t)), t = 1 / (1 + z/2), fractional error < 1.2e-7 for every z >= 0).
// Why not erff: the library erf is ~30 instructions with two polynomial branches, and at 65536
// GELUs per 128-token tile it was the largest part of the tile kernel's MLP (ncu, H200); this is
// ~19 with one rcp and one exp2. In fp32 it is within 3.9e-7 of float64 GELU on [-12, 12], and its
// bf16 rounding differs from that of the float64 value for 3.6e-5 of the points with |x| < 4 (the
// relative accuracy on the negative side is what keeps small |GELU| values right).
ZK_HOST_DEVICE float gelu_erf(float x) {
  constexpr float kSqrtHalf = 0.70710678118654752440f;
  constexpr float kLog2e = 1.44269504088896340736f;
  const float z = fabsf(x) * kSqrtHalf;
  const float t = fast_rcp(fmaf(0.5f, z, 1.0f));
  float p = 0.17087277f;
  p = fmaf(t, p, -0.82215223f);
  p = fmaf(t, p, 1.48851587f);
  p = fmaf(t, p, -1.13520398f);
  p = fmaf(t, p, 0.27886807f);
  p = fmaf(t, p, -0.18628806f);
  p = fmaf(t, p, 0.09678418f);
  p = fmaf(t, p, 0.37409196f);
  p = fmaf(t, p, 1.00002368f);
  p = fmaf(t, p, -1.26551223f);
  const float erfc_z = t * fast_exp2((p - z * z) * kLog2e);
  return 0.5f * x * (x < 0.f ? erfc_z : 2.0f - erfc_z);
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
