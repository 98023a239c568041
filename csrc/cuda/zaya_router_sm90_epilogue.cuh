// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_epilogue.cuh: what the sm_90a router variants share besides data movement and
// MMA: the tensor maps they read, the router's vectors staged in shared memory as fp32, and the
// per-token outputs.
#pragma once

#include <cuda.h>
#include <stdint.h>

#include "../common/compat.h"
#include "../common/params.h"
#include "../common/zaya_router_math.cuh"

namespace zk {
namespace sm90 {

// Tensor maps of the router's matrices (bf16, 128-byte swizzle, 64-element inner box), encoded on the
// host per call and passed by value (__grid_constant__). Box rows depend on the variant.
struct RouterTensorMaps {
  CUtensorMap x;       // [T, H]: box {64, token rows of a CTA}; rows >= T read as zeros
  CUtensorMap down_w;  // [R, H]: box {64, 128}
  CUtensorMap fc1_w;   // [R, R]: box {64, output rows a CTA loads per box}
  CUtensorMap fc2_w;   // [R, R]: same box as fc1_w
  CUtensorMap out_w;   // [E', R]: box {64, 32}; rows >= E' read as zeros, so the logits tile is 32 wide
};

// The router's vectors, converted once per CTA to fp32 (the reference adds them in fp32).
struct RouterVectors {
  float down_b[kRouterWidth];
  float eda_scale[kRouterWidth];  // zeros when there is no EDA term
  float norm_w[kRouterWidth];
  float fc1_b[kRouterWidth];
  float fc2_b[kRouterWidth];
  float balancing_bias[kRouterMaxRoutes];  // zeros past E' (never read there)
};

// Entries thread, thread + kThreads, ... (below kRouterWidth) of the bf16 vectors and entry `thread`
// of the balancing bias, in registers: fetched before a kernel's griddepcontrol.wait, so that their
// round trip (HBM when the weights are cold) overlaps the wait, and stored into RouterVectors after it.
template <int kThreads>
struct RouterVectorEntries {
  static constexpr int kPerThread = (kRouterWidth + kThreads - 1) / kThreads;
  static_assert(kThreads >= kRouterMaxRoutes, "one balancing-bias entry per thread covers E'");
  // Whether entry j of this thread exists: always when kThreads divides the width (no compare).
  static ZK_HOST_DEVICE constexpr bool exists(int thread, int j) {
    return kRouterWidth % kThreads == 0 || thread + j * kThreads < kRouterWidth;
  }
  uint16_t down_b[kPerThread], eda_scale[kPerThread], norm_w[kPerThread], fc1_b[kPerThread], fc2_b[kPerThread];
  float balancing_bias;
};

template <int kThreads>
ZK_DEVICE RouterVectorEntries<kThreads> fetch_router_vectors(const ZayaRouterParams& p, int thread) {
  RouterVectorEntries<kThreads> v;
#pragma unroll
  for (int j = 0; j < v.kPerThread; ++j) {
    const int i = thread + j * kThreads;
    if (!v.exists(thread, j)) break;
    v.down_b[j] = p.down_b[i];
    v.eda_scale[j] = p.eda_scale != nullptr ? p.eda_scale[i] : uint16_t(0);
    v.norm_w[j] = p.norm_w[i];
    v.fc1_b[j] = p.fc1_b[i];
    v.fc2_b[j] = p.fc2_b[i];
  }
  v.balancing_bias = thread < p.num_routes ? p.balancing_bias[thread] : 0.f;
  return v;
}

template <int kThreads>
ZK_DEVICE void store_router_vectors(const RouterVectorEntries<kThreads>& v, RouterVectors& s, int thread) {
#pragma unroll
  for (int j = 0; j < v.kPerThread; ++j) {
    const int i = thread + j * kThreads;
    if (!v.exists(thread, j)) break;
    s.down_b[i] = bf16_to_float(v.down_b[j]);
    s.eda_scale[i] = bf16_to_float(v.eda_scale[j]);
    s.norm_w[i] = bf16_to_float(v.norm_w[j]);
    s.fc1_b[i] = bf16_to_float(v.fc1_b[j]);
    s.fc2_b[i] = bf16_to_float(v.fc2_b[j]);
  }
  if (thread < kRouterMaxRoutes) s.balancing_bias[thread] = v.balancing_bias;
}

// Two consecutive fp32 vector entries from shared memory. Volatile on purpose: the tile kernel's
// persistent loop would otherwise hoist all 5 x 64 of a thread's vector entries out of the loop and
// spill them (measured: ~1.4 KB of spills with plain loads).
ZK_DEVICE float2 load_vector_pair(const float* entry) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];"
               : "=f"(v.x), "=f"(v.y)
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(entry))));
  return v;
}

// r = d + eda_scale * r_prev with the product rounded first, as the reference computes it.
ZK_DEVICE float eda_update(float d, float eda_scale, float r_prev) { return d + __fmul_rn(eda_scale, r_prev); }

ZK_DEVICE void store_route(const ZayaRouterParams& p, int64_t token, const RouteChoice& choice) {
  p.weights[token * p.weights_row_stride] = choice.prob;
  p.ids[token * p.ids_row_stride] = choice.route;
}

// Start of the 1024-byte aligned region (128-byte swizzled TMA boxes need it) inside dynamic shared
// memory; the launch asks for 1024 bytes more than the layout needs.
ZK_DEVICE uint8_t* align_smem_1024(uint8_t* raw) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  return raw + ((1024u - (addr & 1023u)) & 1023u);
}

}  // namespace sm90
}  // namespace zk
