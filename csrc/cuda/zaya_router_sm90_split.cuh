// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_split.cuh: the mid-T router (ZayaRouterVariant::kSplit), two kernels.
//
// Why: between ~240 and ~1K tokens the cluster variant's exchange of fp32 partial sums through DSMEM
// (7 KB per token) runs at ~1 TB/s chip-wide and takes most of its time (H200, T = 1024: exchange 1
// alone 7.9 us of 26), while the tile variant puts only T/128 SMs to work. Here the same K split
// goes through L2 instead, and no step needs another CTA's shared memory:
//   down:  grid (T/64, 8): CTA (m, s) computes x[64m.., K slice s] W_down[:, K slice s]^T, a
//          [64 x 256] fp32 partial, and stores it to partials[s] (coalesced 32-byte row pieces);
//   mlp:   one CTA per 16 tokens: sums the 8 partials (+ bias, EDA) -> r (r_out), RMSNorm -> n, then
//          fc1 and fc2 as 8 chunks of 64 output columns whose weights (32 KB each) stream through 5
//          TMA slots, then the logits, softmax and the biased top-1.
// Both launches are programmatic dependent launches: the mlp kernel's weight loads (the first 5 fc
// chunks, W_out) are issued before its griddepcontrol.wait, under the down kernel's tail.
#pragma once

#include "zaya_router_sm90_blocks.cuh"

namespace zk {
namespace sm90 {

constexpr int kSplitDownRows = 64;                               // tokens per down CTA (4 m16 tiles)
constexpr int kSplitMaxKBoxes = kRouterMaxHidden / kRouterSplitK / 64;
constexpr int kSplitMlpRows = 16;                                // tokens per mlp CTA (one m16 tile)
constexpr int kFcChunkCols = 64;                                 // output columns per fc chunk
constexpr int kFcChunkBytes = kFcChunkCols * kRouterWidth * 2;   // [64 x 256] bf16 = 4 K boxes of [64 x 64]
constexpr int kFcChunksPerLayer = kRouterWidth / kFcChunkCols;
constexpr int kFcSlots = 5;  // fc1's 4 chunks + fc2's first; fc2's others reuse slots 0..2 once fc1 is done
static_assert(kFcSlots > kFcChunksPerLayer && 2 * kFcChunksPerLayer - kFcSlots <= kFcChunksPerLayer,
              "fc2's late chunks fit in the slots fc1 frees");

struct SplitDownSmem {
  uint8_t x[kSplitMaxKBoxes][kSplitDownRows * 128];        // [64 x 64] bf16 boxes, 128-byte swizzle
  uint8_t down_w[kSplitMaxKBoxes][kRouterWidth * 128];     // [256 x 64] bf16 boxes
  uint64_t box_ready[kSplitMaxKBoxes];
};

struct SplitMlpSmem {
  uint8_t fc[kFcSlots][kFcChunkBytes];                     // chunk c (fc1: 0..3, fc2: 4..7) in slot c % 5
  uint8_t out_w[4][kRouterMaxRoutes * 128];                // W_out as 4 K boxes of [32 x 64], rows >= E' zero
  uint16_t act_a[kSplitMlpRows][kActPitch];                // n, later h2
  uint16_t act_b[kSplitMlpRows][kActPitch];                // h1
  RouterVectors vec;
  float logits[kSplitMlpRows][kRouterMaxRoutes];
  uint64_t slot_ready[kFcSlots];
  uint64_t out_w_ready;
};

constexpr int kSplitDownSmemBytes = static_cast<int>(sizeof(SplitDownSmem)) + 1024;  // + alignment slack
constexpr int kSplitMlpSmemBytes = static_cast<int>(sizeof(SplitMlpSmem)) + 1024;
static_assert(kSplitMlpSmemBytes <= 227 * 1024, "fits one SM's shared memory");

// ---- down: one K slice of 64 tokens --------------------------------------------------------------

__global__ void __launch_bounds__(kBlockThreads, 1)
    zaya_router_split_down_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  extern __shared__ uint8_t smem_raw[];
  SplitDownSmem& s = *reinterpret_cast<SplitDownSmem*>(align_smem_1024(smem_raw));
  const int slice = static_cast<int>(blockIdx.y);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSplitDownRows;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, q = lane % 4;
  const int k_boxes = p.hidden / (kRouterSplitK * 64);
  const int k_first = slice * k_boxes * 64;

  allow_dependent_launch();
  if (thread == 0) {  // W_down first: it does not depend on the kernel before this one
    for (int b = 0; b < k_boxes; ++b) mbar_init(smem_addr(&s.box_ready[b]), 1);
    mbar_init_fence();
    for (int b = 0; b < k_boxes; ++b) {
      const uint32_t bar = smem_addr(&s.box_ready[b]);
      mbar_arrive_expect_tx(bar, kSplitDownRows * 128 + kRouterWidth * 128);
      tma_load_2d(smem_addr(s.down_w[b]), &maps.down_w, k_first + 64 * b, 0, bar);
      tma_load_2d(smem_addr(s.down_w[b]) + 128 * 128, &maps.down_w, k_first + 64 * b, 128, bar);
    }
  }
  wait_for_prerequisite_grids();
  if (thread == 0) {
    for (int b = 0; b < k_boxes; ++b) {
      tma_load_2d(smem_addr(s.x[b]), &maps.x, k_first + 64 * b, static_cast<int32_t>(row0),
                  smem_addr(&s.box_ready[b]));
    }
  }
  __syncthreads();  // the barriers are initialised before any thread waits on them

  float acc[kSplitDownRows / 16][4][4];
  down_slice_mma<kSplitDownRows>(acc, s.box_ready, smem_addr(s.x[0]), smem_addr(s.down_w[0]), k_boxes, warp, lane);
  float* partial = p.partials + static_cast<int64_t>(slice) * p.num_tokens * kRouterWidth;
#pragma unroll
  for (int mt = 0; mt < kSplitDownRows / 16; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = row0 + 16 * mt + g;
      const int col = 32 * warp + 8 * j + 2 * q;
      if (row < p.num_tokens) {
        *reinterpret_cast<float2*>(partial + row * kRouterWidth + col) = make_float2(acc[mt][j][0], acc[mt][j][1]);
      }
      if (row + 8 < p.num_tokens) {
        *reinterpret_cast<float2*>(partial + (row + 8) * kRouterWidth + col) =
            make_float2(acc[mt][j][2], acc[mt][j][3]);
      }
    }
}

// ---- mlp: everything after the down-projection for 16 tokens --------------------------------------

// fc chunk c (fc1 rows [64c, 64c+64) for c < 4, fc2 rows [64(c-4), ...) after) into its slot.
ZK_DEVICE void load_fc_chunk(const RouterTensorMaps& maps, SplitMlpSmem& s, int chunk) {
  const int slot = chunk % kFcSlots;
  const uint32_t bar = smem_addr(&s.slot_ready[slot]);
  const CUtensorMap* map = chunk < kFcChunksPerLayer ? &maps.fc1_w : &maps.fc2_w;
  const int first_row = kFcChunkCols * (chunk % kFcChunksPerLayer);
  mbar_arrive_expect_tx(bar, kFcChunkBytes);
  for (int b = 0; b < kRouterWidth / 64; ++b) {
    tma_load_2d(smem_addr(s.fc[slot]) + b * (kFcChunkCols * 128), map, 64 * b, first_row, bar);
  }
}

// One GELU layer of the 16 rows: chunks [first_chunk, first_chunk + 4) of the fc stream.
ZK_DEVICE void split_mlp_layer(SplitMlpSmem& s, const uint16_t (*in)[kActPitch], uint16_t (*out)[kActPitch],
                               const float* bias, int first_chunk, int warp, int lane) {
  for (int c = first_chunk; c < first_chunk + kFcChunksPerLayer; ++c) {
    mbar_wait(smem_addr(&s.slot_ready[c % kFcSlots]), static_cast<uint32_t>(c / kFcSlots));
    mlp_layer_columns<kSplitMlpRows, kFcChunkCols>(in, out, smem_addr(s.fc[c % kFcSlots]), bias,
                                                   kFcChunkCols * (c - first_chunk), warp, lane);
  }
}

// The row block's 32 logit columns (routes >= E' are zero rows of W_out): warp w < 4 computes n8
// tile w over K = 256 from h2 (rows in `in`) and W_out's boxes.
ZK_DEVICE void split_logits(SplitMlpSmem& s, const uint16_t (*in)[kActPitch], int warp, int lane) {
  if (warp >= kRouterMaxRoutes / 8) return;
  const int g = lane / 4, q = lane % 4;
  const uint32_t w_boxes = smem_addr(s.out_w[0]);
  float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int k16 = 0; k16 < kRouterWidth / 32; ++k16) {
    uint32_t b[4];
    {
      const int m = lane / 8, n = 8 * warp + lane % 8, k = 32 * k16 + 8 * m;
      ldmatrix_x4(b, w_boxes + (k / 64) * (kRouterMaxRoutes * 128) + swizzle128_offset(n, k % 64));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t a[4];
      ldmatrix_x4(a, smem_addr(&in[lane % 16][32 * k16 + 16 * h + (lane / 16) * 8]));
      mma_bf16_16816(c, a, b[2 * h], b[2 * h + 1]);
    }
  }
  const int col = 8 * warp + 2 * q;
  s.logits[g][col] = c[0];
  s.logits[g][col + 1] = c[1];
  s.logits[g + 8][col] = c[2];
  s.logits[g + 8][col + 1] = c[3];
}

__global__ void __launch_bounds__(kBlockThreads, 1)
    zaya_router_split_mlp_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  extern __shared__ uint8_t smem_raw[];
  SplitMlpSmem& s = *reinterpret_cast<SplitMlpSmem*>(align_smem_1024(smem_raw));
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSplitMlpRows;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;

  allow_dependent_launch();
  if (thread == 0) {  // weights first: they do not depend on the down kernel
    for (int slot = 0; slot < kFcSlots; ++slot) mbar_init(smem_addr(&s.slot_ready[slot]), 1);
    mbar_init(smem_addr(&s.out_w_ready), 1);
    mbar_init_fence();
    for (int c = 0; c < kFcSlots; ++c) load_fc_chunk(maps, s, c);
    const uint32_t bar = smem_addr(&s.out_w_ready);
    mbar_arrive_expect_tx(bar, 4 * kRouterMaxRoutes * 128);
    for (int b = 0; b < 4; ++b) tma_load_2d(smem_addr(s.out_w[b]), &maps.out_w, 64 * b, 0, bar);
  }
  load_router_vectors(p, s.vec, thread, kBlockThreads);
  wait_for_prerequisite_grids();  // the partial sums (and r_prev) come from the kernels before this one
  __syncthreads();                // vectors stored, barriers initialised

  // ---- r = sum of the 8 partials + bias [+ EDA]; 16 threads per token row, 16 columns each
  constexpr int kRowThreads = kBlockThreads / kSplitMlpRows;
  constexpr int kCols = kRouterWidth / kRowThreads;
  static_assert(kCols == 16, "two 16-byte pieces of bf16 per thread");
  const int row = thread / kRowThreads, col0 = kCols * (thread % kRowThreads);
  const int64_t token = row0 + row;
  const bool valid = token < p.num_tokens;
  float r[kCols];
#pragma unroll
  for (int e = 0; e < kCols; ++e) r[e] = 0.f;
  if (valid) {  // all 32 loads in flight before the first add
    float4 part[kRouterSplitK][kCols / 4];
#pragma unroll
    for (int sl = 0; sl < kRouterSplitK; ++sl)
#pragma unroll
      for (int v = 0; v < kCols / 4; ++v) {
        part[sl][v] = *reinterpret_cast<const float4*>(
            p.partials + (static_cast<int64_t>(sl) * p.num_tokens + token) * kRouterWidth + col0 + 4 * v);
      }
    uint4 prev[2] = {make_uint4(0u, 0u, 0u, 0u), make_uint4(0u, 0u, 0u, 0u)};
    if (p.r_prev != nullptr) {
      prev[0] = *reinterpret_cast<const uint4*>(p.r_prev + token * p.r_prev_row_stride + col0);
      prev[1] = *reinterpret_cast<const uint4*>(p.r_prev + token * p.r_prev_row_stride + col0 + 8);
    }
#pragma unroll
    for (int sl = 0; sl < kRouterSplitK; ++sl)
#pragma unroll
      for (int v = 0; v < kCols / 4; ++v) {
        r[4 * v] += part[sl][v].x;
        r[4 * v + 1] += part[sl][v].y;
        r[4 * v + 2] += part[sl][v].z;
        r[4 * v + 3] += part[sl][v].w;
      }
    const uint32_t words[8] = {prev[0].x, prev[0].y, prev[0].z, prev[0].w, prev[1].x, prev[1].y, prev[1].z, prev[1].w};
#pragma unroll
    for (int e = 0; e < kCols; ++e) {
      r[e] += s.vec.down_b[col0 + e];
      if (p.r_prev != nullptr) {
        r[e] = eda_update(r[e], s.vec.eda_scale[col0 + e], e % 2 ? bf16_hi(words[e / 2]) : bf16_lo(words[e / 2]));
      }
    }
  }
  float sum_sq = 0.f;
#pragma unroll
  for (int e = 0; e < kCols; ++e) sum_sq += r[e] * r[e];
  const float inv_rms = rms_inverse(row_sum<kRowThreads>(sum_sq), kRouterWidth, p.eps);
  uint32_t n[kCols / 2], r_bits[kCols / 2];
#pragma unroll
  for (int w = 0; w < kCols / 2; ++w) {
    r_bits[w] = pack_bf16x2_rn(r[2 * w], r[2 * w + 1]);
    n[w] = pack_bf16x2_rn(rms_normalize(r[2 * w], inv_rms, s.vec.norm_w[col0 + 2 * w]),
                          rms_normalize(r[2 * w + 1], inv_rms, s.vec.norm_w[col0 + 2 * w + 1]));
  }
  *reinterpret_cast<uint4*>(&s.act_a[row][col0]) = make_uint4(n[0], n[1], n[2], n[3]);
  *reinterpret_cast<uint4*>(&s.act_a[row][col0 + 8]) = make_uint4(n[4], n[5], n[6], n[7]);
  if (valid) {
    uint16_t* out = p.r_out + token * p.r_out_row_stride + col0;
    *reinterpret_cast<uint4*>(out) = make_uint4(r_bits[0], r_bits[1], r_bits[2], r_bits[3]);
    *reinterpret_cast<uint4*>(out + 8) = make_uint4(r_bits[4], r_bits[5], r_bits[6], r_bits[7]);
  }
  __syncthreads();  // n complete

  split_mlp_layer(s, s.act_a, s.act_b, s.vec.fc1_b, 0, warp, lane);
  __syncthreads();  // h1 complete; every warp is done with fc1's slots
  if (thread == 0) {
    for (int c = kFcSlots; c < 2 * kFcChunksPerLayer; ++c) load_fc_chunk(maps, s, c);
  }
  split_mlp_layer(s, s.act_b, s.act_a, s.vec.fc2_b, kFcChunksPerLayer, warp, lane);
  __syncthreads();  // h2 complete
  mbar_wait(smem_addr(&s.out_w_ready), 0);
  split_logits(s, s.act_a, warp, lane);
  __syncthreads();

  // ---- softmax + biased top-1: a warp per token, a lane per route
  for (int local_row = warp; local_row < kSplitMlpRows; local_row += kBlockThreads / 32) {
    const float logits[1] = {s.logits[local_row][lane]};
    const int route[1] = {lane};
    const float bias[1] = {s.vec.balancing_bias[lane]};
    const RouteChoice choice = route_top1<32, 1>(logits, route, bias, p.num_routes);
    const int64_t t = row0 + local_row;
    if (lane == 0 && t < p.num_tokens) store_route(p, t, choice);
  }
}

}  // namespace sm90
}  // namespace zk
