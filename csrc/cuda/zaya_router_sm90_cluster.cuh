// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_cluster.cuh: the small-T router (ZayaRouterVariant::kCluster).
//
// Why: at T <= ~1K the router reads ~1.3 MB of weights for little arithmetic, and one SM pulls them
// at ~60 GB/s (H200: 180 KB per CTA took ~3 us from launch), so the weight reads must be spread over
// many SMs. A cluster of 8 CTAs (8 SMs) serves a group of kRows tokens and each CTA reads 1/8 of every
// weight:
//   down-projection: CTA c owns the K slice [c*H/8, (c+1)*H/8): a [kRows x 256] fp32 partial sum,
//               whose warp w holds columns [32w, 32w+32): it pushes them to CTA w;
//   exchange 1: CTA c sums the 8 partials of its column slice [32c, 32c+32) -> d, + bias, + EDA -> r,
//               and pushes the slice's sums of squares to every CTA;
//   exchange 2: every CTA has the row sums -> 1/RMS; CTA c normalises its slice (n, bf16) and pushes
//               it into every CTA's [kRows x 256] n buffer;
//   fc1, fc2: CTA c computes output columns [32c, 32c+32) (+bias, GELU, bf16); its h1 slice is pushed
//               into the 7 other CTAs;
//   logits: CTA c multiplies its h2 slice by the matching K slice of W_out: a partial [kRows x 32]
//               product, whose rows it pushes into the CTA that owns them (kRows/8 rows each); that CTA
//               sums the 8 parts, then softmax and the biased top-1.
// Every exchange is a push of st.async stores completing a barrier in the receiving CTA, which knows
// the bytes to wait for: no cluster barrier, whose release half is a GPU-scope fence (MEMBAR.ALL.GPU)
// on every use (the split variant measured 0.15-0.25 us per barrier replaced). A CTA has received
// every push into it once its last barrier completes, and nothing reads another CTA's shared memory,
// so every CTA may leave on its own.
//
// Latency is the whole game here (H200 timeline of the previous layout, per phase, T = 16: 2 us
// before the first MMA waiting for vector loads, 2 us in exchange 1, 2.2 us for the logits), so:
//   - the router's vectors, W_out's slice and r_prev are loaded into registers at the start and only
//     stored / used after the down-projection, their latency hidden behind the TMA wait;
//   - DSMEM traffic is pushes only (st.async): a pull, even with all of a thread's loads in flight,
//     costs a round trip, and with one load in flight per thread ran at ~11 GB/s per SM;
//   - programmatic dependent launch: weights and vectors are fetched before griddepcontrol.wait, so
//     their DRAM latency overlaps the tail of the kernel before this one; x and r_prev after it.
// mma.sync m16n8k16 (warp-level) keeps kRows as small as 16. kRows is chosen by the host so that all
// groups fit on the GPU at once (clusters of 8 CTAs of ~200 KB: 15 on the 132-SM H200).
//
// Shared memory (kRows = 32, H = 2048): x slice 16 KB + W_down slice 128 KB (later reused for the n and
// h1 buffers) + the 8 partials of the CTA's slice 32 KB + fc1/fc2 slices 32 KB + W_out slice 2 KB +
// vectors 5 KB + partial logits 4 KB = ~220 KB: groups of 16 or 32 tokens (the partials' receive
// buffer cannot overlay the boxes, which a CTA may still read when its peers' partials arrive).
#pragma once

#include "zaya_router_sm90_blocks.cuh"
#include "zaya_router_sm90_route.cuh"

namespace zk {
namespace sm90 {

constexpr int kClusterThreads = kBlockThreads;
constexpr int kClusterMaxKBoxes = kRouterMaxHidden / kRouterClusterSize / 64;  // 64-wide K boxes per CTA
constexpr int kClusterSlice = kRouterWidth / kRouterClusterSize;               // columns a CTA owns
constexpr int kSliceQuarters = 4;                // exchange 1: a row's slice as 4 pieces of 8 columns
static_assert(kClusterSlice == 32, "each CTA computes 4 n8 tiles of fc1/fc2 and owns 32 reduced columns");
static_assert(kRouterMaxRoutes == 32, "the logits: one lane per route in a warp");
static_assert(kClusterThreads == kRouterWidth, "the vector prefetch: one element of each vector per thread");

template <int kRows>
struct ClusterShape {
  static_assert(kRows % 16 == 0 && kRows <= 32, "kRows: whole m16 tiles, the partials' buffer within 32 KB");
  static_assert(kRows * 128 % 1024 == 0, "swizzled boxes start on 1024-byte boundaries");
  static constexpr int kMTiles = kRows / 16;
  static constexpr int kRowsPerCta = kRows / kRouterClusterSize;  // tokens whose top-1 this CTA computes
  // Exchange 1 items (token row, quarter of the slice) per thread.
  static constexpr int kReduceItems = (kRows * kSliceQuarters + kClusterThreads - 1) / kClusterThreads;
  // Bytes each CTA receives per exchange: the 8 partials of its slice, the row sums of squares and n
  // from every CTA (itself too), h1 from the 7 others, partial logits of its kRowsPerCta rows from all.
  static constexpr uint32_t kPartialsBytes = kRouterClusterSize * kRows * kClusterSlice * 4;
  static constexpr uint32_t kSumsBytes = kRouterClusterSize * kRows * 4;
  static constexpr uint32_t kNBytes = kRows * kRouterWidth * 2;
  static constexpr uint32_t kH1Bytes = (kRouterClusterSize - 1) * kRows * kClusterSlice * 2;
  static constexpr uint32_t kLogitsBytes = kRouterClusterSize * kRowsPerCta * kRouterMaxRoutes * 4;
  // (row, route) partial logits per thread.
  static constexpr int kLogitItems = kRows * kRouterMaxRoutes / kClusterThreads;
  static_assert(kRows * kRouterMaxRoutes % kClusterThreads == 0, "partial logits: whole items per thread");
};

template <int kRows>
struct ClusterSmem {
  union Staging {
    struct Load {  // during the down-projection
      uint8_t x[kClusterMaxKBoxes][kRows * 128];              // [kRows x 64] bf16 boxes, 128-byte swizzle
      uint8_t down_w[kClusterMaxKBoxes][kRouterWidth * 128];  // [256 x 64] bf16 boxes
    } load;
    struct Exchange {  // after it: peers push n only once they have this CTA's row sums, sent after its
                       // down-projection, and h1 only once they have its n
      uint16_t act_a[kRows][kActPitch];       // [kRows, 256] bf16 n, then h2 (this CTA's columns)
      uint16_t act_b[kRows][kActPitch];       // [kRows, 256] bf16 h1
    } exchange;
  } staging;
  float partials[kRouterClusterSize][kRows][kClusterSlice];  // [source CTA] fp32 partials of this slice
  uint8_t fc1_w[4][kClusterSlice * 128];      // rows [32c, 32c+32) of fc1_w, 4 K boxes of [32 x 64]
  uint8_t fc2_w[4][kClusterSlice * 128];
  uint32_t out_w[kRouterMaxRoutes][kClusterSlice / 2];  // W_out[:, 32c:32c+32] as bf16 pairs, 0 past E'
  RouterVectors vec;
  float sum_squares[kRouterClusterSize][kRows];                                // [source CTA, token]
  float logit_parts[kRouterClusterSize][ClusterShape<kRows>::kRowsPerCta][kRouterMaxRoutes];  // [source CTA]
  uint64_t k_box_ready[kClusterMaxKBoxes];                 // x + W_down box b landed
  uint64_t mlp_ready;                                      // fc1/fc2 slices landed
  // The exchanges: st.async from the cluster's CTAs complete these (ClusterShape has the bytes).
  uint64_t partials_ready;
  uint64_t sums_ready;
  uint64_t n_ready;
  uint64_t h1_ready;
  uint64_t logits_ready;
};

template <int kRows>
constexpr int cluster_smem_bytes() {
  return static_cast<int>(sizeof(ClusterSmem<kRows>)) + 1024;  // + alignment slack
}
static_assert(cluster_smem_bytes<32>() <= 227 * 1024, "the largest group fits one SM's shared memory");

// ---- the per-thread prefetch of everything that is not a TMA box ----------------------------------

// Loaded into registers before the first MMA, stored / used after it.
template <int kRows>
struct ClusterPrefetch {
  RouterVectorEntries<kClusterThreads> vectors;
  uint4 out_w;                                      // 8 bf16 of W_out's slice (threads < 4 E')
  uint4 r_prev[ClusterShape<kRows>::kReduceItems];  // 8 bf16 of each exchange-1 item's row
};

template <int kRows>
ZK_DEVICE void prefetch_weights(const ZayaRouterParams& p, int rank, int thread, ClusterPrefetch<kRows>& f) {
  f.vectors = fetch_router_vectors<kClusterThreads>(p, thread);
  const int route = thread / 4, piece = thread % 4;
  f.out_w = route < p.num_routes
                ? *reinterpret_cast<const uint4*>(p.out_w + route * kRouterWidth + kClusterSlice * rank + 8 * piece)
                : make_uint4(0u, 0u, 0u, 0u);
}

template <int kRows>
ZK_DEVICE void store_weights(const ClusterPrefetch<kRows>& f, ClusterSmem<kRows>& s, int thread) {
  store_router_vectors(f.vectors, s.vec, thread);
  if (thread < kRouterMaxRoutes * 4) {
    *reinterpret_cast<uint4*>(&s.out_w[thread / 4][4 * (thread % 4)]) = f.out_w;
  }
}

// Exchange-1 item `i` of this thread: token row and the first of its 8 columns (absolute).
struct ReduceItem {
  int row;
  int col0;
  bool active;  // the item exists (kRows x 4 items in all)
};

template <int kRows>
ZK_DEVICE ReduceItem reduce_item(int i, int thread, int rank) {
  const int item = thread + i * kClusterThreads;
  return ReduceItem{item / kSliceQuarters, kClusterSlice * rank + (item % kSliceQuarters) * 8,
                    item < kRows * kSliceQuarters};
}

// ---- exchanges ------------------------------------------------------------------------------------

// Row `row` columns [col0, col0 + 8) (of this CTA's slice) summed over the 8 received partials.
template <int kRows>
ZK_DEVICE void sum_partials(const ClusterSmem<kRows>& s, int row, int col0, float (&r)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) r[e] = 0.f;
#pragma unroll
  for (int src = 0; src < kRouterClusterSize; ++src) {
    const float4 lo = *reinterpret_cast<const float4*>(&s.partials[src][row][col0 % kClusterSlice]);
    const float4 hi = *reinterpret_cast<const float4*>(&s.partials[src][row][col0 % kClusterSlice + 4]);
    r[0] += lo.x; r[1] += lo.y; r[2] += lo.z; r[3] += lo.w;
    r[4] += hi.x; r[5] += hi.y; r[6] += hi.z; r[7] += hi.w;
  }
}

// This CTA's share of the logits, h2[:, slice] x W_out[:, slice]^T, pushed row by row into the CTA
// that owns the row (logit_parts[rank] there). h2: this CTA's columns of `act`.
template <int kRows>
ZK_DEVICE void push_partial_logits(ClusterSmem<kRows>& s, const uint16_t (*act)[kActPitch], int rank, int thread) {
  constexpr int kRowsPerCta = ClusterShape<kRows>::kRowsPerCta;
  const int route = thread % kRouterMaxRoutes;
  uint32_t w[kClusterSlice / 2];
#pragma unroll
  for (int k = 0; k < kClusterSlice / 2; k += 4) *reinterpret_cast<uint4*>(&w[k]) = *reinterpret_cast<const uint4*>(&s.out_w[route][k]);
#pragma unroll
  for (int i = 0; i < ClusterShape<kRows>::kLogitItems; ++i) {
    const int row = thread / kRouterMaxRoutes + i * (kClusterThreads / kRouterMaxRoutes);
    const uint32_t* h = reinterpret_cast<const uint32_t*>(&act[row][kClusterSlice * rank]);
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kClusterSlice / 2; ++k) {
      const uint32_t hk = h[k];
      dot = fmaf(bf16_lo(hk), bf16_lo(w[k]), dot);
      dot = fmaf(bf16_hi(hk), bf16_hi(w[k]), dot);
    }
    push_f32(&s.logit_parts[rank][row % kRowsPerCta][route], &s.logits_ready, row / kRowsPerCta, dot);
  }
}

template <int kRows>
__global__ void __cluster_dims__(kRouterClusterSize, 1, 1) __launch_bounds__(kClusterThreads, 1)
    zaya_router_cluster_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  using Shape = ClusterShape<kRows>;
  constexpr int kMTiles = Shape::kMTiles;
  constexpr int kRowsPerCta = Shape::kRowsPerCta;
  extern __shared__ uint8_t smem_raw[];
  ClusterSmem<kRows>& s = *reinterpret_cast<ClusterSmem<kRows>*>(align_smem_1024(smem_raw));
  const int rank = static_cast<int>(cluster_cta_rank());
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / kRouterClusterSize) * kRows;  // first token of the group
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, q = lane % 4;
  const int k_boxes = p.hidden / (kRouterClusterSize * 64);
  const int k_first = rank * k_boxes * 64;  // first column of this CTA's K slice

  allow_dependent_launch();
  if (thread == 0) {  // weights first: they do not depend on the kernel before this one
    for (int b = 0; b < k_boxes; ++b) mbar_init(smem_addr(&s.k_box_ready[b]), 1);
    mbar_init(smem_addr(&s.mlp_ready), 1);
    const uint64_t* exchange[5] = {&s.partials_ready, &s.sums_ready, &s.n_ready, &s.h1_ready, &s.logits_ready};
    const uint32_t bytes[5] = {Shape::kPartialsBytes, Shape::kSumsBytes, Shape::kNBytes, Shape::kH1Bytes,
                               Shape::kLogitsBytes};
    for (int i = 0; i < 5; ++i) mbar_init(smem_addr(exchange[i]), 1);
    mbar_init_fence();
    for (int i = 0; i < 5; ++i) mbar_arrive_expect_tx(smem_addr(exchange[i]), bytes[i]);
    for (int b = 0; b < k_boxes; ++b) {
      const uint32_t bar = smem_addr(&s.k_box_ready[b]);
      mbar_arrive_expect_tx(bar, kRows * 128 + kRouterWidth * 128);
      tma_load_2d(smem_addr(s.staging.load.down_w[b]), &maps.down_w, k_first + 64 * b, 0, bar);
      tma_load_2d(smem_addr(s.staging.load.down_w[b]) + 128 * 128, &maps.down_w, k_first + 64 * b, 128, bar);
    }
    const uint32_t bar = smem_addr(&s.mlp_ready);
    mbar_arrive_expect_tx(bar, 2 * 4 * kClusterSlice * 128);
    for (int b = 0; b < 4; ++b) {
      tma_load_2d(smem_addr(s.fc1_w[b]), &maps.fc1_w, 64 * b, kClusterSlice * rank, bar);
      tma_load_2d(smem_addr(s.fc2_w[b]), &maps.fc2_w, 64 * b, kClusterSlice * rank, bar);
    }
  }
  if (runs_fused_align(p, kRouterClusterSize)) prefill_fused_align_outputs(p, thread, kClusterThreads);
  ClusterPrefetch<kRows> f;
  prefetch_weights<kRows>(p, rank, thread, f);
  wait_for_prerequisite_grids();
  if (thread == 0) {
    for (int b = 0; b < k_boxes; ++b) {
      tma_load_2d(smem_addr(s.staging.load.x[b]), &maps.x, k_first + 64 * b, static_cast<int32_t>(row0),
                  smem_addr(&s.k_box_ready[b]));
    }
  }
#pragma unroll
  for (int i = 0; i < Shape::kReduceItems; ++i) {
    const ReduceItem it = reduce_item<kRows>(i, thread, rank);
    const int64_t token = row0 + it.row;
    f.r_prev[i] = (p.r_prev != nullptr && it.active && token < p.num_tokens)
                      ? *reinterpret_cast<const uint4*>(p.r_prev + token * p.r_prev_row_stride + it.col0)
                      : make_uint4(0u, 0u, 0u, 0u);
  }
  cluster_arrive_relaxed();  // after the barrier init; waited for before the first DSMEM store
  __syncthreads();  // the barriers are initialised before any thread waits on them

  // ---- down-projection partial: [kRows x 256] over this CTA's K slice; warp w owns columns [32w, 32w+32)
  float acc[kMTiles][4][4];
  down_slice_mma<kRows>(acc, s.k_box_ready, smem_addr(s.staging.load.x[0]), smem_addr(s.staging.load.down_w[0]),
                        k_boxes, warp, lane);
  store_weights<kRows>(f, s, thread);
  cluster_wait();  // every CTA of the cluster has started
  // Warp w's columns [32w, 32w+32) are CTA w's slice: pushed there as partials[rank].
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = 16 * mt + g, col = 8 * j + 2 * q;
      push_f32x2(&s.partials[rank][row][col], &s.partials_ready, warp, make_float2(acc[mt][j][0], acc[mt][j][1]));
      push_f32x2(&s.partials[rank][row + 8][col], &s.partials_ready, warp,
                 make_float2(acc[mt][j][2], acc[mt][j][3]));
    }
  __syncthreads();  // every thread's vector and W_out stores (store_weights) are visible to the CTA
  mbar_wait_cluster(smem_addr(&s.partials_ready), 0);  // the 8 partials of this CTA's slice

  // ---- exchange 1: 4 items (8 columns each) per token row of this CTA's slice
  float r[Shape::kReduceItems][8];
#pragma unroll
  for (int i = 0; i < Shape::kReduceItems; ++i) {
    const ReduceItem it = reduce_item<kRows>(i, thread, rank);
    float sum_sq = 0.f;
    if (it.active) {  // uniform per warp (whole rows of 4 items)
      sum_partials(s, it.row, it.col0, r[i]);
      const uint32_t words[4] = {f.r_prev[i].x, f.r_prev[i].y, f.r_prev[i].z, f.r_prev[i].w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        r[i][e] += s.vec.down_b[it.col0 + e];
        if (p.r_prev != nullptr) {
          r[i][e] = eda_update(r[i][e], s.vec.eda_scale[it.col0 + e], e % 2 ? bf16_hi(words[e / 2]) : bf16_lo(words[e / 2]));
        }
        sum_sq += r[i][e] * r[i][e];
      }
      sum_sq = row_sum<kSliceQuarters>(sum_sq);
      if (thread % kSliceQuarters == 0) {
#pragma unroll
        for (int cta = 0; cta < kRouterClusterSize; ++cta) {
          push_f32(&s.sum_squares[rank][it.row], &s.sums_ready, cta, sum_sq);
        }
      }
    }
  }
  mbar_wait_cluster(smem_addr(&s.sums_ready), 0);  // every CTA's row sums

  // ---- exchange 2: n = bf16(r / rms * norm_w), this CTA's slice, into every CTA's act_a
  uint16_t(*act_a)[kActPitch] = s.staging.exchange.act_a;
  uint16_t(*act_b)[kActPitch] = s.staging.exchange.act_b;
  // act_a and act_b overlay the x / W_down boxes. Every warp of every CTA is past its down-projection
  // here already (CTA w's partials came from warp w of all 8, and every CTA's row sums needed its
  // partials); the barrier states it locally, for compute-sanitizer's racecheck too.
  __syncthreads();
#pragma unroll
  for (int i = 0; i < Shape::kReduceItems; ++i) {
    const ReduceItem it = reduce_item<kRows>(i, thread, rank);
    if (!it.active) continue;
    const uint4 n = rms_normalize_piece<kRouterClusterSize>(&s.sum_squares[0][it.row], kRows, r[i],
                                                            &s.vec.norm_w[it.col0], p.eps);
#pragma unroll
    for (int cta = 0; cta < kRouterClusterSize; ++cta) push_u32x4(&act_a[it.row][it.col0], &s.n_ready, cta, n);
  }
  mbar_wait(smem_addr(&s.mlp_ready), 0);
  mbar_wait_cluster(smem_addr(&s.n_ready), 0);  // n complete

  const uint32_t fc1_boxes = smem_addr(s.fc1_w[0]), fc2_boxes = smem_addr(s.fc2_w[0]);
  constexpr int kWarps = kBlockThreads / 32;
  mlp_layer_columns<kRows, kClusterSlice, 1, kWarps>(act_a, act_b, fc1_boxes, s.vec.fc1_b, kClusterSlice * rank,
                                                     warp, lane);
  __syncthreads();  // this CTA's h1 columns are complete
  {  // its 16-byte pieces into the 7 other CTAs' act_b
    constexpr int kPieces = kClusterSlice / 8;
    for (int i = thread; i < kRows * kPieces; i += kClusterThreads) {
      const int row = i / kPieces, col = kClusterSlice * rank + 8 * (i % kPieces);
      const uint4 piece = *reinterpret_cast<const uint4*>(&act_b[row][col]);
#pragma unroll
      for (int cta = 0; cta < kRouterClusterSize; ++cta) {
        if (cta != rank) push_u32x4(&act_b[row][col], &s.h1_ready, cta, piece);
      }
    }
  }
  mbar_wait_cluster(smem_addr(&s.h1_ready), 0);  // h1 complete
  // h2 into act_a's columns of this CTA's slice: only this CTA reads them, and every n was received.
  mlp_layer_columns<kRows, kClusterSlice, 1, kWarps>(act_b, act_a, fc2_boxes, s.vec.fc2_b, kClusterSlice * rank,
                                                     warp, lane);
  __syncthreads();  // this CTA's h2 slice is complete
  push_partial_logits<kRows>(s, act_a, rank, thread);
  mbar_wait_cluster(smem_addr(&s.logits_ready), 0);  // every partial logit of this CTA's rows

  // ---- this CTA's kRowsPerCta tokens: sum of the 8 partial logits, softmax, biased top-1; warp per token
  for (int local_row = warp; local_row < kRowsPerCta; local_row += kClusterThreads / 32) {
    float logit = 0.f;
#pragma unroll
    for (int src = 0; src < kRouterClusterSize; ++src) logit += s.logit_parts[src][local_row][lane];
    const float logits[1] = {logit};
    const int route[1] = {lane};
    const float bias[1] = {s.vec.balancing_bias[lane]};
    const RouteChoice choice = route_top1<32, 1>(logits, route, bias, p.num_routes);
    const int64_t t = row0 + rank * kRowsPerCta + local_row;
    if (lane == 0 && t < p.num_tokens) store_route_outputs(p, t, choice);
  }
#pragma unroll
  for (int i = 0; i < Shape::kReduceItems; ++i) {
    const ReduceItem it = reduce_item<kRows>(i, thread, rank);
    const int64_t token = row0 + it.row;
    if (!it.active || token >= p.num_tokens) continue;
    uint4 out;
    out.x = pack_bf16x2_rn(r[i][0], r[i][1]);
    out.y = pack_bf16x2_rn(r[i][2], r[i][3]);
    out.z = pack_bf16x2_rn(r[i][4], r[i][5]);
    out.w = pack_bf16x2_rn(r[i][6], r[i][7]);
    *reinterpret_cast<uint4*>(p.r_out + token * p.r_out_row_stride + it.col0) = out;
  }
  if (runs_fused_align(p, kRouterClusterSize)) fused_align<kClusterThreads>(p, s.partials);  // read in exchange 1
}

}  // namespace sm90
}  // namespace zk
