// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_blocks.cuh: the warp-level (mma.sync m16n8k16) pieces that the cluster and split
// router variants share: a K slice of the down-projection from TMA boxes, and some output columns of
// one MLP layer on rows held in shared memory. 8 warps (256 threads) throughout.
#pragma once

#include "zaya_router_sm90_epilogue.cuh"
#include "zaya_router_sm90_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace sm90 {

constexpr int kBlockThreads = 256;             // 8 warps: each owns 32 of the 256 down-projection columns
constexpr int kActPitch = kRouterWidth + 8;    // bf16 rows of activations: +16 B keeps ldmatrix conflict-free
static_assert(kBlockThreads / 32 * 32 == kRouterWidth, "8 warps x 32 columns cover the down-projection");

// n = bf16(r / rms * norm_w) for 8 consecutive columns of one token row, as the A-operand words of
// the next product. The row's sum of squares arrives as kParts partial sums (one per CTA of a
// cluster) at part_sums[0], part_sums[stride], ...; norm_w: the 8 columns' fp32 weights.
template <int kParts>
ZK_DEVICE uint4 rms_normalize_piece(const float* part_sums, int stride, const float (&r)[8], const float* norm_w,
                                    float eps) {
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kParts; ++i) total += part_sums[i * stride];
  const float inv_rms = rms_inverse(total, kRouterWidth, eps);
  uint32_t n[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    n[w] = pack_bf16x2_rn(rms_normalize(r[2 * w], inv_rms, norm_w[2 * w]),
                          rms_normalize(r[2 * w + 1], inv_rms, norm_w[2 * w + 1]));
  }
  return make_uint4(n[0], n[1], n[2], n[3]);
}

// acc (+)= x[kRows x K-slice] W_down[256 x K-slice]^T for the calling warp's 32 columns [32w, 32w+32):
// k_boxes boxes of 64 K each, box b landing on box_ready[b] (phase 0): x box [kRows x 64] at
// x_boxes + b * kRows * 128, W box [256 x 64] at w_boxes + b * 256 * 128, both 128-byte swizzled.
// acc[mt][j]: m16 tile mt, n8 tile j of the warp's columns, in the mma C layout.
template <int kRows>
ZK_DEVICE void down_slice_mma(float (&acc)[kRows / 16][4][4], const uint64_t* box_ready, uint32_t x_boxes,
                              uint32_t w_boxes, int k_boxes, int warp, int lane) {
  constexpr int kMTiles = kRows / 16;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;
  for (int b = 0; b < k_boxes; ++b) {
    mbar_wait(smem_addr(&box_ready[b]), 0);
    const uint32_t x_box = x_boxes + b * (kRows * 128);
    const uint32_t w_box = w_boxes + b * (kRouterWidth * 128);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        ldmatrix_x4(a[mt], x_box + swizzle128_offset(16 * mt + lane % 16, 16 * kk + (lane / 16) * 8));
      }
      uint32_t bw[2][4];  // n8 tiles 2h, 2h+1: {b0, b1, b0, b1}
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = lane / 8;
        ldmatrix_x4(bw[h], w_box + swizzle128_offset(32 * warp + 16 * h + (m / 2) * 8 + lane % 8, 16 * kk + (m % 2) * 8));
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[mt][j], a[mt], bw[j / 2][(j % 2) * 2], bw[j / 2][(j % 2) * 2 + 1]);
    }
  }
}

// in [kRows, 256] bf16 -> output columns [col_base, col_base + kCols) of GELU(in W^T + b), rounded to
// bf16, written to the same columns of `out`. W's rows for those columns arrive as 4 K boxes of
// [kCols x 64] (128-byte swizzle) at w_boxes. in/out: [kRows][kActPitch] bf16; bias: [256] fp32.
// A warp owns one item at a time: an m16 tile by kNPerItem n8 tiles, whose A fragments it loads once
// (shared-memory reads per layer: items x (8 KB of A + kNPerItem x 4 KB of W); at 32 rows x 64
// columns, 1 n8 tile per item read 192 KB, 2 read 128 KB, and two CTAs share an SM there). The 16 k16
// steps of each n8 tile go round-robin into 4 / kNPerItem accumulators summed at the end: one
// accumulator made them a chain of 16 dependent MMAs.
template <int kRows, int kCols, int kNPerItem, int kWarps>
ZK_DEVICE void mlp_layer_columns(const uint16_t (*in)[kActPitch], uint16_t (*out)[kActPitch], uint32_t w_boxes,
                                 const float* bias, int col_base, int warp, int lane) {
  constexpr int kMTiles = kRows / 16;
  constexpr int kItemsPerMTile = kCols / (8 * kNPerItem);
  constexpr int kChains = 4 / kNPerItem;
  static_assert(kCols % (8 * kNPerItem) == 0 && kChains >= 1, "whole items of n8 tiles");
  const int g = lane / 4, q = lane % 4;
  for (int item = warp; item < kMTiles * kItemsPerMTile; item += kWarps) {
    const int mt = item / kItemsPerMTile, j0 = (item % kItemsPerMTile) * kNPerItem;  // m16 tile, first n8 tile
    float c[kNPerItem][kChains][4] = {};
#pragma unroll
    for (int s = 0; s < kRouterWidth / 32; ++s) {
      uint32_t b[kNPerItem][4];  // per n8 tile: b0/b1 of k16 steps 2s and 2s+1
#pragma unroll
      for (int n = 0; n < kNPerItem; ++n) {
        const int m = lane / 8, row = 8 * (j0 + n) + lane % 8, k = 32 * s + 8 * m;
        ldmatrix_x4(b[n], w_boxes + (k / 64) * (kCols * 128) + swizzle128_offset(row, k % 64));
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[4];
        ldmatrix_x4(a, smem_addr(&in[16 * mt + lane % 16][32 * s + 16 * h + (lane / 16) * 8]));
#pragma unroll
        for (int n = 0; n < kNPerItem; ++n) {
          mma_bf16_16816(c[n][(2 * s + h) % kChains], a, b[n][2 * h], b[n][2 * h + 1]);
        }
      }
    }
#pragma unroll
    for (int n = 0; n < kNPerItem; ++n) {
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int ch = 0; ch < kChains; ++ch)
#pragma unroll
        for (int e = 0; e < 4; ++e) sum[e] += c[n][ch][e];
      const int col = col_base + 8 * (j0 + n) + 2 * q;
      *reinterpret_cast<uint32_t*>(&out[16 * mt + g][col]) =
          pack_bf16x2_rn(gelu_erf(sum[0] + bias[col]), gelu_erf(sum[1] + bias[col + 1]));
      *reinterpret_cast<uint32_t*>(&out[16 * mt + g + 8][col]) =
          pack_bf16x2_rn(gelu_erf(sum[2] + bias[col]), gelu_erf(sum[3] + bias[col + 1]));
    }
  }
}

}  // namespace sm90
}  // namespace zk
