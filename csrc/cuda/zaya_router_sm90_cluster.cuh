// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_cluster.cuh: the small-T router (ZayaRouterVariant::kCluster).
//
// Why: at T <= ~1K the router reads ~1.3 MB of weights for little arithmetic, and one SM pulls only
// tens of GB/s (the tile variant, one 128-token CTA pair, takes 57 us on the H200 for what is ~20 us
// of tensor work), so the weight reads must be spread over many SMs. Here a cluster of 8 CTAs (8 SMs)
// serves a group of kRows tokens and each CTA reads 1/8 of every weight (H200: 12.8 us at T = 1,
// 13.3 us at T = 128 with kRows = 16; 49.6 us at T = 1024 with kRows = 64):
//   down-projection: CTA c owns the K slice [c*H/8, (c+1)*H/8): a [kRows x 256] fp32 partial sum;
//   exchange 1: CTA c pulls column slice [32c, 32c+32) of all 8 partials over DSMEM and sums them
//               -> d, + bias, + EDA -> r, and sends the slice's sums of squares to every CTA;
//   exchange 2: every CTA has the row sums -> 1/RMS; CTA c normalises its slice (n, bf16);
//   fc1, fc2: CTA c computes output columns [32c, 32c+32) (+bias, GELU, bf16);
//   each of n, h1, h2: written to the CTA's own columns of a local [kRows x 256] buffer, then every
//               CTA pulls the 7 other slices in 16-byte loads (a pull of 64-byte row pieces: 4x fewer
//               DSMEM transactions than pushing 4-byte MMA fragments to 8 CTAs);
//   logits: CTA c computes the 32-wide (E' <= 32) logits of its kRows/8 tokens, softmax, top-1.
// Six cluster barriers in all (the last keeps CTAs alive while peers pull from them); each is a release/acquire at cluster scope (a MEMBAR.ALL.GPU in SASS),
// so the global stores of r_out wait until after the last one. mma.sync m16n8k16 (warp-level) keeps
// kRows as small as 16.
//
// Shared memory (kRows = 64, H = 2048): x slice 32 KB + W_down slice 128 KB (later reused for the
// partials and the two activation buffers) + fc1/fc2/out_w slices 48 KB + vectors 5 KB = ~213 KB.
#pragma once

#include "zaya_router_sm90_epilogue.cuh"
#include "zaya_router_sm90_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace sm90 {

constexpr int kClusterThreads = 256;  // 8 warps: each owns 32 of the 256 partial-sum columns
constexpr int kClusterMaxKBoxes = kRouterMaxHidden / kRouterClusterSize / 64;  // 64-wide K boxes per CTA
constexpr int kClusterFcRows = kRouterWidth / kRouterClusterSize;             // fc1/fc2 rows per CTA
constexpr int kPartialPitch = kRouterWidth + 4;  // floats: +16 B per row keeps the float2 stores conflict-free
constexpr int kActPitch = kRouterWidth + 8;      // bf16: +16 B per row keeps ldmatrix conflict-free
static_assert(kClusterThreads / 32 * 32 == kRouterWidth, "8 warps x 32 columns cover the down-projection");
static_assert(kClusterFcRows == 32, "each CTA computes 4 n8 tiles of fc1/fc2 and owns 32 reduced columns");
static_assert(kRouterMaxRoutes == 32, "the logits: one lane per route in a warp");

template <int kRows>
struct ClusterSmem {
  static_assert(kRows % 16 == 0 && kRows <= 64, "kRows: whole m16 tiles, at most 4 per warp");
  static_assert(kRows * 128 % 1024 == 0, "swizzled boxes start on 1024-byte boundaries");
  union Staging {
    struct Load {  // during the down-projection
      uint8_t x[kClusterMaxKBoxes][kRows * 128];             // [kRows x 64] bf16 boxes, 128-byte swizzle
      uint8_t down_w[kClusterMaxKBoxes][kRouterWidth * 128];  // [256 x 64] bf16 boxes
    } load;
    struct Exchange {  // after it; act_a overlays `partial` (its last reader is done before act_a's first writer)
      float partial[kRows][kPartialPitch];    // [kRows, 256] fp32 partial sums of this CTA's K slice
      uint16_t act_b[kRows][kActPitch];       // [kRows, 256] bf16 h1
    } exchange;
  } staging;
  uint8_t fc1_w[4][kClusterFcRows * 128];     // rows [32c, 32c+32) of fc1_w, 4 K boxes of [32 x 64]
  uint8_t fc2_w[4][kClusterFcRows * 128];
  uint8_t out_w[4][kRouterMaxRoutes * 128];   // all E' rows (zero-padded to 32), 4 K boxes
  RouterVectors vec;
  float sum_squares[kRouterClusterSize][kRows];            // [source CTA, token] partial sums of r^2
  float logits[kRows / kRouterClusterSize][kRouterMaxRoutes];
  uint64_t k_box_ready[kClusterMaxKBoxes];                 // x + W_down box b landed
  uint64_t mlp_ready;                                      // fc1/fc2/out_w slices landed
};

template <int kRows>
constexpr int cluster_smem_bytes() {
  return static_cast<int>(sizeof(ClusterSmem<kRows>)) + 1024;  // + alignment slack
}

// in [kRows, 256] bf16 -> this CTA's 32 output columns of GELU(in W^T + b), rounded to bf16, written
// to the same columns of its local `out`. in/out: [kRows][kActPitch] bf16 buffers.
template <int kRows>
ZK_DEVICE void cluster_mlp_layer(const uint16_t (*in)[kActPitch], uint16_t (*out)[kActPitch], uint32_t w_boxes,
                                 const float* bias, int rank, int warp, int lane) {
  constexpr int kMTiles = kRows / 16;
  const int g = lane / 4, q = lane % 4;
  for (int item = warp; item < kMTiles * 4; item += kClusterThreads / 32) {
    const int mt = item / 4, j = item % 4;  // m16 tile, n8 tile of this CTA's 32 columns
    float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int s = 0; s < kRouterWidth / 32; ++s) {
      uint32_t b[4];  // b0/b1 of k16 steps 2s and 2s+1
      {
        const int m = lane / 8, n = 8 * j + lane % 8, k = 32 * s + 8 * m;
        ldmatrix_x4(b, w_boxes + (k / 64) * (kClusterFcRows * 128) + swizzle128_offset(n, k % 64));
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[4];
        ldmatrix_x4(a, smem_addr(&in[16 * mt + lane % 16][32 * s + 16 * h + (lane / 16) * 8]));
        mma_bf16_16816(c, a, b[2 * h], b[2 * h + 1]);
      }
    }
    const int col = kClusterFcRows * rank + 8 * j + 2 * q;
    *reinterpret_cast<uint32_t*>(&out[16 * mt + g][col]) =
        pack_bf16x2_rn(gelu_erf(c[0] + bias[col]), gelu_erf(c[1] + bias[col + 1]));
    *reinterpret_cast<uint32_t*>(&out[16 * mt + g + 8][col]) =
        pack_bf16x2_rn(gelu_erf(c[2] + bias[col]), gelu_erf(c[3] + bias[col + 1]));
  }
}

// After a cluster barrier: copy the 7 other CTAs' column slices of rows [first_row, first_row + rows)
// of `act` (each CTA wrote its own slice locally) into this CTA's `act`, 16 bytes a load. No CTA
// writes the slices being read until the next cluster barrier.
ZK_DEVICE void cluster_gather_slices(uint16_t (*act)[kActPitch], int first_row, int rows, int rank, int thread) {
  constexpr int kPieces = kClusterFcRows * 2 / 16;  // 16-byte pieces per row of a slice
  for (int i = thread; i < (kRouterClusterSize - 1) * rows * kPieces; i += kClusterThreads) {
    const int peer = (rank + 1 + i / (rows * kPieces)) % kRouterClusterSize;
    const int row = first_row + (i / kPieces) % rows, piece = i % kPieces;
    uint16_t* local = &act[row][kClusterFcRows * peer + 8 * piece];
    const float4 v = dsmem_load_f32x4(dsmem_map(smem_addr(local), peer));
    *reinterpret_cast<float4*>(local) = v;
  }
  __syncthreads();
}

template <int kRows>
__global__ void __cluster_dims__(kRouterClusterSize, 1, 1) __launch_bounds__(kClusterThreads, 1)
    zaya_router_cluster_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  constexpr int kMTiles = kRows / 16;
  constexpr int kRowsPerCta = kRows / kRouterClusterSize;  // tokens whose logits this CTA computes
  extern __shared__ uint8_t smem_raw[];
  ClusterSmem<kRows>& s = *reinterpret_cast<ClusterSmem<kRows>*>(align_smem_1024(smem_raw));
  const int rank = static_cast<int>(cluster_cta_rank());
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / kRouterClusterSize) * kRows;  // first token of the group
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, q = lane % 4;
  const int k_boxes = p.hidden / (kRouterClusterSize * 64);
  const int k_first = rank * k_boxes * 64;  // first column of this CTA's K slice

  if (thread == 32) {  // descriptor fetches overlap the barrier setup below
    tma_prefetch_descriptor(&maps.x);
    tma_prefetch_descriptor(&maps.down_w);
    tma_prefetch_descriptor(&maps.fc1_w);
    tma_prefetch_descriptor(&maps.fc2_w);
    tma_prefetch_descriptor(&maps.out_w);
  }
  if (thread == 0) {
    for (int b = 0; b < k_boxes; ++b) mbar_init(smem_addr(&s.k_box_ready[b]), 1);
    mbar_init(smem_addr(&s.mlp_ready), 1);
    mbar_init_fence();
    for (int b = 0; b < k_boxes; ++b) {
      const uint32_t bar = smem_addr(&s.k_box_ready[b]);
      mbar_arrive_expect_tx(bar, kRows * 128 + kRouterWidth * 128);
      tma_load_2d(smem_addr(s.staging.load.x[b]), &maps.x, k_first + 64 * b, static_cast<int32_t>(row0), bar);
      tma_load_2d(smem_addr(s.staging.load.down_w[b]), &maps.down_w, k_first + 64 * b, 0, bar);
      tma_load_2d(smem_addr(s.staging.load.down_w[b]) + 128 * 128, &maps.down_w, k_first + 64 * b, 128, bar);
    }
    const uint32_t bar = smem_addr(&s.mlp_ready);
    mbar_arrive_expect_tx(bar, 4 * (2 * kClusterFcRows + kRouterMaxRoutes) * 128);
    for (int b = 0; b < 4; ++b) {
      tma_load_2d(smem_addr(s.fc1_w[b]), &maps.fc1_w, 64 * b, kClusterFcRows * rank, bar);
      tma_load_2d(smem_addr(s.fc2_w[b]), &maps.fc2_w, 64 * b, kClusterFcRows * rank, bar);
      tma_load_2d(smem_addr(s.out_w[b]), &maps.out_w, 64 * b, 0, bar);
    }
  }
  load_router_vectors(p, s.vec, thread, kClusterThreads);
  __syncthreads();

  // ---- down-projection partial: [kRows x 256] over this CTA's K slice; warp w owns columns [32w, 32w+32)
  float acc[kMTiles][4][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;
  for (int b = 0; b < k_boxes; ++b) {
    mbar_wait(smem_addr(&s.k_box_ready[b]), 0);
    const uint32_t x_box = smem_addr(s.staging.load.x[b]);
    const uint32_t w_box = smem_addr(s.staging.load.down_w[b]);
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
  __syncthreads();  // every warp is done with the x / W_down boxes that `partial` overlays
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = 16 * mt + g, col = 32 * warp + 8 * j + 2 * q;
      *reinterpret_cast<float2*>(&s.staging.exchange.partial[row][col]) = make_float2(acc[mt][j][0], acc[mt][j][1]);
      *reinterpret_cast<float2*>(&s.staging.exchange.partial[row + 8][col]) = make_float2(acc[mt][j][2], acc[mt][j][3]);
    }
  cluster_sync();  // 1: partials visible to the cluster

  // ---- exchange 1: 4 threads per token row, 8 of this CTA's 32 columns each
  uint16_t(*act_a)[kActPitch] = reinterpret_cast<uint16_t(*)[kActPitch]>(&s.staging.exchange.partial[0][0]);
  const int red_row = thread / 4;
  const int col0 = kClusterFcRows * rank + (thread % 4) * 8;
  const bool red_active = red_row < kRows;  // uniform per warp (kRows rows x 4 threads = whole warps)
  const int64_t token = row0 + red_row;
  const bool token_valid = red_active && token < p.num_tokens;
  float r[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) r[e] = 0.f;
  float sum_sq = 0.f;
  if (red_active) {
    const uint32_t local = smem_addr(&s.staging.exchange.partial[red_row][col0]);
#pragma unroll
    for (int peer = 0; peer < kRouterClusterSize; ++peer) {
      const uint32_t remote = dsmem_map(local, peer);
      const float4 lo = dsmem_load_f32x4(remote), hi = dsmem_load_f32x4(remote + 16);
      r[0] += lo.x; r[1] += lo.y; r[2] += lo.z; r[3] += lo.w;
      r[4] += hi.x; r[5] += hi.y; r[6] += hi.z; r[7] += hi.w;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] += s.vec.down_b[col0 + e];
    if (p.r_prev != nullptr && token_valid) {
      const uint4 prev = *reinterpret_cast<const uint4*>(p.r_prev + token * p.r_prev_row_stride + col0);
      const uint32_t words[4] = {prev.x, prev.y, prev.z, prev.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        r[2 * w] = eda_update(r[2 * w], s.vec.eda_scale[col0 + 2 * w], bf16_lo(words[w]));
        r[2 * w + 1] = eda_update(r[2 * w + 1], s.vec.eda_scale[col0 + 2 * w + 1], bf16_hi(words[w]));
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sum_sq += r[e] * r[e];
  }
  sum_sq = row_sum<4>(sum_sq);
  if (red_active && thread % 4 == 0) {
    const uint32_t local = smem_addr(&s.sum_squares[rank][red_row]);
#pragma unroll
    for (int peer = 0; peer < kRouterClusterSize; ++peer) dsmem_store_f32(dsmem_map(local, peer), sum_sq);
  }
  cluster_sync();  // 2: row sums everywhere; every CTA is done reading partials (act_a may now be written)

  // ---- exchange 2: n = bf16(r / rms * norm_w), this CTA's slice, then everyone's
  if (red_active) {
    float total = 0.f;
#pragma unroll
    for (int peer = 0; peer < kRouterClusterSize; ++peer) total += s.sum_squares[peer][red_row];
    const float inv_rms = rms_inverse(total, kRouterWidth, p.eps);
    uint32_t n[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      n[w] = pack_bf16x2_rn(rms_normalize(r[2 * w], inv_rms, s.vec.norm_w[col0 + 2 * w]),
                            rms_normalize(r[2 * w + 1], inv_rms, s.vec.norm_w[col0 + 2 * w + 1]));
    }
    *reinterpret_cast<uint4*>(&act_a[red_row][col0]) = make_uint4(n[0], n[1], n[2], n[3]);
  }
  mbar_wait(smem_addr(&s.mlp_ready), 0);
  cluster_sync();  // 3: every CTA's n slice written
  cluster_gather_slices(act_a, 0, kRows, rank, thread);

  const uint32_t fc1_boxes = smem_addr(s.fc1_w[0]), fc2_boxes = smem_addr(s.fc2_w[0]);
  cluster_mlp_layer<kRows>(act_a, s.staging.exchange.act_b, fc1_boxes, s.vec.fc1_b, rank, warp, lane);
  cluster_sync();  // 4: every h1 slice written; every CTA is done pulling n (act_a may take h2)
  cluster_gather_slices(s.staging.exchange.act_b, 0, kRows, rank, thread);
  cluster_mlp_layer<kRows>(s.staging.exchange.act_b, act_a, fc2_boxes, s.vec.fc2_b, rank, warp, lane);
  cluster_sync();  // 5: every h2 slice written
  // Only this CTA's kRowsPerCta logit rows need all of h2. These pulls are the last DSMEM accesses; the
  // barrier that keeps the peers alive for them comes after the logits (below).
  cluster_gather_slices(act_a, rank * kRowsPerCta, kRowsPerCta, rank, thread);

  // ---- logits of this CTA's kRowsPerCta tokens: kParts threads split each 256-long dot product
  constexpr int kParts = kClusterThreads / (kRowsPerCta * kRouterMaxRoutes);
  constexpr int kKPerPart = kRouterWidth / kParts;
  static_assert(kParts * kRowsPerCta * kRouterMaxRoutes == kClusterThreads, "one thread per (row, route, part)");
  {
    const int part = thread % kParts;
    const int route = (thread / kParts) % kRouterMaxRoutes;
    const int local_row = thread / (kParts * kRouterMaxRoutes);
    const uint16_t* h2 = act_a[rank * kRowsPerCta + local_row];
    const uint32_t w_boxes = smem_addr(s.out_w[0]);
    float dot = 0.f;
#pragma unroll 4
    for (int k = part * kKPerPart; k < (part + 1) * kKPerPart; k += 8) {
      const uint4 hv = *reinterpret_cast<const uint4*>(h2 + k);
      uint4 wv;
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(wv.x), "=r"(wv.y), "=r"(wv.z), "=r"(wv.w)
                   : "r"(w_boxes + (k / 64) * (kRouterMaxRoutes * 128) + swizzle128_offset(route, k % 64)));
      const uint32_t hw[4] = {hv.x, hv.y, hv.z, hv.w}, ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        dot = fmaf(bf16_lo(hw[w]), bf16_lo(ww[w]), dot);
        dot = fmaf(bf16_hi(hw[w]), bf16_hi(ww[w]), dot);
      }
    }
#pragma unroll
    for (int offset = kParts / 2; offset > 0; offset /= 2) dot += shfl_xor(dot, offset);
    if (part == 0) s.logits[local_row][route] = dot;
  }
  __syncthreads();
  RouteChoice choice{0, 0.f};
  if (warp < kRowsPerCta) {
    const float logit[1] = {s.logits[warp][lane]};
    const int route[1] = {lane};
    const float bias[1] = {s.vec.balancing_bias[lane]};
    choice = route_top1<32, 1>(logit, route, bias, p.num_routes);
  }
  cluster_sync();  // 6: every CTA is done pulling h2 from its peers
  if (warp < kRowsPerCta) {
    const int64_t t = row0 + rank * kRowsPerCta + warp;
    if (lane == 0 && t < p.num_tokens) store_route(p, t, choice);
  }
  if (token_valid) {  // r_out last: no cluster barrier waits for these stores
    uint4 out;
    out.x = pack_bf16x2_rn(r[0], r[1]);
    out.y = pack_bf16x2_rn(r[2], r[3]);
    out.z = pack_bf16x2_rn(r[4], r[5]);
    out.w = pack_bf16x2_rn(r[6], r[7]);
    *reinterpret_cast<uint4*>(p.r_out + token * p.r_out_row_stride + col0) = out;
  }
}

}  // namespace sm90
}  // namespace zk
