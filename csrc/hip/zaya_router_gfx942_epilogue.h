// SPDX-License-Identifier: Apache-2.0
// zaya_router_gfx942_epilogue.h: what the gfx942 router does with its accumulators: the split-K scratch
// geometry, r = d + b + eda * r_prev, the packing to bf16, the GELU layers and the biased top-1 of the
// partial logits. The element-wise math is common/zaya_router_math.cuh (shared with the CUDA kernel:
// gelu_erf, rms_inverse, rms_normalize, pack_bf16x2, route_top1); only the lane/register bookkeeping
// of the MFMA layout lives here.
#pragma once

#include "../common/params.h"
#include "../common/zaya_router_math.cuh"
#include "zaya_router_gfx942_load.h"

namespace zk {
namespace gfx942 {

constexpr int kWidth = kRouterWidth;                        // R = 256 features
constexpr int kMlpKBlocks = kWidth / kKBlock;               // 4 K blocks per 256-wide layer input
constexpr int kLogitQuarters = 4;                           // the logits' K = 256 split in 4 x 64
static_assert(kWaves * 32 == kWidth, "8 waves x one 32-feature M tile cover a 256-wide layer");
static_assert(kMlpKBlocks == 4, "fc1/fc2/out_w: 4 K blocks of 64");
static_assert(kRouterMaxRoutes == 32, "the logits are one 32-route M tile");

// ---- split-K scratch (see the design note in zaya_router_gfx942.hip) -------------------------------
// One slot = the fp32 partial d of a 32-token tile over one K slice, [32 tokens][256] row-major.
constexpr int kSlotFloats = kTokensPerNTile * kWidth;
constexpr int kMaxSplitSlots = 320;  // >= tiles * split <= CUs (304 on MI300X): a workspace of <= 10 MB of fp32

// r = d + b [+ eda * r_prev]: the reference adds the bias to the fp32 product, then the EDA term.
// eda and r_prev are bf16, so eda * r_prev is exact in fp32 and a contracted fma rounds identically.
ZK_DEVICE float router_state(float d, float down_b, float eda, float r_prev) { return (d + down_b) + eda * r_prev; }

// 16 accumulator values -> 8 packed bf16x2 words, words 2g, 2g+1 = features 8g + 4h + 0..3.
ZK_DEVICE void pack16(const float (&v)[16], uint32_t (&packed)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) packed[i] = pack_bf16x2(v[2 * i], v[2 * i + 1]);
}

// One GELU layer of the MLP for this wave's 32 output features and all 32 kNT tokens:
//   out = bf16(gelu_erf(act . W[32 wave .. 32 wave + 31]^T + bias)), packed, token 32n + t.
// `ring` holds the wave's 32 weight rows (lane: row 32 wave + t, columns 64 kb + 32 h + [0, 32)) for
// the 4 K blocks; as block kb is consumed its slot is refilled with block kb of the next layer's rows
// (`next_rows`, or nothing when null: a compile-time choice after inlining, so no branch around the
// loads), so the next layer's weights stream in under this layer's MFMAs.
template <int kNT>
ZK_DEVICE void gelu_layer(KRun (&ring)[kMlpKBlocks], const uint8_t* act, const uint16_t* bias,
                          const uint16_t* next_rows, int wave, int lane, uint32_t (&out)[kNT][8]) {
  const int t = router_gfx942::acc_token(lane);
  f32x16 acc[kNT];
  zero(acc);
#pragma unroll
  for (int kb = 0; kb < kMlpKBlocks; ++kb) {
    KRun b[kNT];
#pragma unroll
    for (int n = 0; n < kNT; ++n) b[n] = lds_act_run(act, kTokensPerNTile * n + t, kb, lane);
    mfma_kblock(acc, ring[kb], b);
    if (next_rows != nullptr) ring[kb] = load_run(next_rows + kKBlock * kb);
  }
  u32x2 bias4[4];
  load_pieces(bias, wave, lane, bias4);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    float v[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) v[r] = gelu_erf(acc[n][r] + piece_value(bias4[r / 4], r % 4));
    pack16(v, out[n]);
  }
}

// Softmax + biased top-1 of the tile's tokens from the 4 K-quarter partial logits in LDS
// ([quarter][token][32 routes] fp32, swizzled 128-byte rows). 4 consecutive lanes share a token, each
// holding routes 8q..8q+7 (route_top1<4, 8> of zaya_router_math.cuh); the quarters are summed in a
// fixed order, so the logits do not depend on timing. Called by the first 4 * kTokens threads
// (whole waves).
template <int kTokens>
ZK_DEVICE void route_tokens(const ZayaRouterParams& p, const uint8_t* logit_parts, int tid, int64_t tok0, int valid) {
  const int token = tid / 4, q = tid % 4;
  float logit[8], bias[8];
  int route[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) logit[e] = 0.f;
#pragma unroll
  for (int quarter = 0; quarter < kLogitQuarters; ++quarter) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const u32x4 v = lds_load16(logit_parts, router_gfx942::logit_read_offset(quarter, kTokens, token, q, half));
#pragma unroll
      for (int e = 0; e < 4; ++e) logit[4 * half + e] += __builtin_bit_cast(float, v[e]);
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    route[e] = 8 * q + e;
    bias[e] = route[e] < p.num_routes ? p.balancing_bias[route[e]] : 0.f;
  }
  const RouteChoice choice = route_top1<4, 8>(logit, route, bias, p.num_routes);
  if (q == 0 && token < valid) {
    const int64_t row = tok0 + token;
    p.weights[row * p.weights_row_stride] = choice.prob;
    p.ids[row * p.ids_row_stride] = choice.route;
  }
}

}  // namespace gfx942
}  // namespace zk
