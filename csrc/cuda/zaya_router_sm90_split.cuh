// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_split.cuh: the mid-T router (ZayaRouterVariant::kSplit), two kernels.
//
// Why: from ~100 to ~1K tokens no single layout keeps both the weight reads and the exchanges small.
// The cluster variant exchanges 7 KB of fp32 partials per token through DSMEM (~14 B/clk per SM for
// an all-to-all even as bulk pushes, H200 probe), and a CTA per 16 tokens that reads all 256 KB of
// fc weights spends its time on those reads. Here:
//   down: grid (T/64, 2, 4): CTA (m, n, s) computes the [64 x 128] fp32 partial product of x[64m..,
//         K slice s] and W_down[128n.., K slice s] with one warpgroup (wgmma m64n128k16; 128 CTAs at
//         T = 1K) and stores it to partials[s] in L2. Per CTA: 64 KB of x + 128 KB of W_down in
//         boxes of 8 and 16 KB, issued by one lane of each warp (one thread issuing 8 KB boxes
//         pulled ~26 B/clk, four issuers or 32 KB boxes 42-66 B/clk: H200 probe). 4 K slices of 128
//         columns rather than 8 of 256: the same loads per CTA within 20%, half the partials to
//         write and read back (4 KB per token; at T = 1K the 8 MB of the 8-slice layout took ~1.8 us
//         to store, and the mlp kernel's griddepcontrol.wait returned ~1.5 us after the last store).
//   mlp:  clusters of 4 (or 2) CTAs per kRows tokens; CTA c owns columns [sc, sc+s) of every
//         256-wide row (s = 64, or 128). It loads its columns of the 4 partials into registers, adds
//         bias and EDA -> r (its columns of r_out), sends the row sums of squares to the cluster; then
//         n, h1 in column slices pushed into every CTA of the cluster, fc1/fc2 on its s rows of the
//         weights (fetched before griddepcontrol.wait, under the down kernel), partial logits from
//         its h2 slice pushed to the row's owner, softmax and top-1 there. Groups of 16, 32 or 48
//         tokens (SplitMlpShape): 16 in clusters of 4 at two CTAs per SM up to 256 tokens, 16 in
//         clusters of 2 at one CTA per SM above (faster there, and T = 1K fits one wave), then, where
//         those do not fit, 16 in a compact form at three (fc2's weights loaded after fc1 into fc1's
//         space), then 32, then 48.
//         Every exchange is a push of st.async stores that complete a barrier in the receiving CTA,
//         which knows how many bytes to wait for: no cluster barrier, whose release half is a
//         GPU-scope memory fence (MEMBAR.ALL.GPU in the SASS) on every use.
// Per CTA of a cluster of 4 the mlp kernel reads 64 KB of weights and kRows x 1 KB of partials, and
// exchanges kRows x 384 B of bf16 through DSMEM: a quarter of the split-by-16-rows layout's weight
// traffic (a half in clusters of 2).
#pragma once

#include "zaya_router_sm90_blocks.cuh"
#include "zaya_router_sm90_route.cuh"

namespace zk {
namespace sm90 {

// ---- down -----------------------------------------------------------------------------------------

constexpr int kSplitDownRows = 64;       // tokens per down CTA: the wgmma M of one warpgroup
constexpr int kSplitDownCols = 128;      // output columns per down CTA: the wgmma N
constexpr int kSplitDownThreads = 128;   // one warpgroup
constexpr int kSplitMaxKBoxes = kRouterMaxHidden / kRouterSplitK / 64;
constexpr int kSplitIssuers = kSplitDownThreads / 32;  // one lane per warp issues every 4th K box

struct SplitDownSmem {
  uint8_t down_w[kSplitMaxKBoxes][kSplitDownCols * 128];  // [128 x 64] bf16 boxes, 128-byte swizzle
  uint8_t x[kSplitMaxKBoxes][kSplitDownRows * 128];       // [64 x 64] bf16 boxes
  uint64_t box_ready[kSplitMaxKBoxes];
};
constexpr int kSplitDownSmemBytes = static_cast<int>(sizeof(SplitDownSmem)) + 1024;  // + alignment slack
static_assert(kSplitDownSmemBytes <= 227 * 1024, "fits one SM's shared memory");

// The router vectors into L2 under the down-projection (one line prefetch per 128 bytes; they need no
// alignment): the mlp CTAs that start as the down CTAs leave their SMs find them there, not in HBM.
ZK_DEVICE void prefetch_router_vectors(const ZayaRouterParams& p, int lane) {
  constexpr int kLineElements = 64;
  constexpr int kVectorLines = kRouterWidth / kLineElements + 1;  // + 1: a vector need not start a line
  static_assert(5 * kVectorLines + 2 <= 32, "one lane per line");
  if (lane < 5 * kVectorLines) {
    const int v = lane / kVectorLines;
    const uint16_t* vector = v == 0 ? p.down_b : v == 1 ? p.eda_scale : v == 2 ? p.norm_w : v == 3 ? p.fc1_b : p.fc2_b;
    const int element = kLineElements * (lane % kVectorLines);
    if (vector != nullptr) prefetch_l2_line(vector + (element < kRouterWidth ? element : kRouterWidth - 1));
  } else if (lane >= 30) {
    prefetch_l2_line(p.balancing_bias + (lane == 30 ? 0 : p.num_routes - 1));
  }
}

__global__ void __launch_bounds__(kSplitDownThreads, 1)
    zaya_router_split_down_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  extern __shared__ uint8_t smem_raw[];
  SplitDownSmem& s = *reinterpret_cast<SplitDownSmem*>(align_smem_1024(smem_raw));
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSplitDownRows;
  const int col0 = static_cast<int>(blockIdx.y) * kSplitDownCols;
  const int slice = static_cast<int>(blockIdx.z);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k_boxes = p.hidden / (kRouterSplitK * 64);
  const int k_first = slice * k_boxes * 64;

  allow_dependent_launch();
  if (lane == 0) {  // W_down first: it does not depend on the kernel before this one
    for (int b = warp; b < k_boxes; b += kSplitIssuers) {
      const uint32_t bar = smem_addr(&s.box_ready[b]);
      mbar_init(bar, 1);
      mbar_init_fence();
      mbar_arrive_expect_tx(bar, kSplitDownCols * 128 + kSplitDownRows * 128);
      tma_load_2d(smem_addr(s.down_w[b]), &maps.down_w, k_first + 64 * b, col0, bar);
    }
  }
  if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && warp == 1) prefetch_router_vectors(p, lane);
  wait_for_prerequisite_grids();
  if (lane == 0) {
    for (int b = warp; b < k_boxes; b += kSplitIssuers) {
      tma_load_2d(smem_addr(s.x[b]), &maps.x, k_first + 64 * b, static_cast<int32_t>(row0), smem_addr(&s.box_ready[b]));
    }
  }
  __syncthreads();  // the barriers are initialised before any thread waits on them

  float acc[kSplitDownCols / 2];  // wgmma D layout: rows 16 warp + lane/4 (+8), columns 8i + 2q (+1)
  zero_accumulators(acc);
  for (int b = 0; b < k_boxes; ++b) {
    mbar_wait(smem_addr(&s.box_ready[b]), 0);
    const uint32_t x = smem_addr(s.x[b]), w = smem_addr(s.down_w[b]);
    fence_registers(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma_m64n128k16_ss(acc, wgmma_desc_sw128(x + kk * 32), wgmma_desc_sw128(w + kk * 32), b > 0 || kk > 0);
    }
    wgmma_commit();
  }
  wgmma_wait<0>();
  fence_registers(acc);

  // Each store instruction writes 8 rows x 32 contiguous bytes: whole 32-byte sectors.
  float* partial = p.partials + static_cast<int64_t>(slice) * p.num_tokens * kRouterWidth + col0;
  const int64_t row_a = row0 + 16 * warp + lane / 4, row_b = row_a + 8;
  const int q = lane % 4;
#pragma unroll
  for (int i = 0; i < kSplitDownCols / 8; ++i) {
    const int col = 8 * i + 2 * q;
    if (row_a < p.num_tokens) {
      *reinterpret_cast<float2*>(partial + row_a * kRouterWidth + col) = make_float2(acc[4 * i], acc[4 * i + 1]);
    }
    if (row_b < p.num_tokens) {
      *reinterpret_cast<float2*>(partial + row_b * kRouterWidth + col) = make_float2(acc[4 * i + 2], acc[4 * i + 3]);
    }
  }
}

// ---- mlp ------------------------------------------------------------------------------------------

constexpr int kMlpLayerBoxes = 4;  // K boxes of [slice x 64] per layer (fc1, fc2)
constexpr int kMlpNPerItem = 2;    // n8 tiles per warp item of the GELU layers

// kCompact (16-token groups only): 128 threads (one item of 8 columns per thread, one GELU-layer item
// per warp) and one layer's weights resident at a time (fc2's boxes replace fc1's after fc1, from L2),
// ~61 KB: three CTAs per SM, so that one wave holds T = 1K in 16-token groups (64 clusters; H200:
// 60 fit at two CTAs per SM, and 32-token groups ran the mlp steps in 8.0 us instead of 5.5). Else
// 256 threads and both layers resident: no fc2 load after fc1 (exposed for ~0.5 us in the compact
// form).
// kCtas: CTAs per cluster, each owning kRouterWidth / kCtas columns. 4, or 2 (16-token groups, both
// layers resident): 128 columns and ~160 KB per CTA, one CTA per SM, so that the clusters of T = 1K
// in 16-token groups (128 CTAs) fit one wave with every GELU-layer warp busy (8 items of 2 n8 tiles,
// as the 4-CTA form has at 32 tokens) and no SM shared between two mlp CTAs.
template <int kRows, bool kCompact, int kCtas = 4>
struct SplitMlpShape {
  static_assert(kRows % 16 == 0, "whole m16 tiles");
  static_assert(!kCompact || kRows == 16, "compact groups are 16 tokens");
  static_assert(kCtas == 4 || (kCtas == 2 && kRows == 16 && !kCompact), "the shapes the launcher picks");
  static constexpr int kGroupRows = kRows;
  static constexpr int kClusterCtas = kCtas;
  static constexpr int kSlice = kRouterWidth / kCtas;  // columns a CTA owns
  static constexpr int kPieces = kSlice / 8;           // 16-byte bf16 pieces per row of a slice
  static constexpr bool kOneLayerResident = kCompact;
  static constexpr int kThreads = kOneLayerResident ? 128 : 256;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kWeightBoxes = kOneLayerResident ? kMlpLayerBoxes : 2 * kMlpLayerBoxes;
  static_assert(kWeightBoxes == kWarps, "one issuing warp per resident weight box");
  static constexpr int kRowsPerCta = kRows / kCtas;  // tokens whose top-1 a CTA computes
  // Items (token row, 8 columns of the slice) per thread.
  static constexpr int kItems = (kRows * kPieces + kThreads - 1) / kThreads;
  // Bytes each CTA receives per exchange: row sums of squares and n from every CTA (itself too), h1
  // from the others, partial logits of its kRowsPerCta rows from every CTA.
  static constexpr uint32_t kSumsBytes = kCtas * kRows * 4;
  static constexpr uint32_t kNBytes = kRows * kRouterWidth * 2;
  static constexpr uint32_t kH1Bytes = (kCtas - 1) * kRows * kSlice * 2;
  static constexpr uint32_t kLogitsBytes = kCtas * kRowsPerCta * kRouterMaxRoutes * 4;
};

template <class Shape>
struct SplitMlpSmem {
  static constexpr int kRows = Shape::kGroupRows;
  // fc1's rows [sc, sc+s) (s = the slice, c = the rank) as K boxes of [s x 64], then fc2's (in place of
  // fc1's when one layer is resident)
  uint8_t fc_w[Shape::kWeightBoxes][Shape::kSlice * 128];
  uint8_t out_w[Shape::kSlice / 64][kRouterMaxRoutes * 128];  // W_out[:, sc:sc+s] as [32 x 64] boxes, rows >= E' zero
  uint16_t act_a[kRows][kActPitch];                // n (all columns), then h2 (this CTA's columns)
  uint16_t act_b[kRows][kActPitch];                // h1 (all columns)
  RouterVectors vec;
  float sum_squares[Shape::kClusterCtas][kRows];  // [source CTA][row]
  float logit_parts[Shape::kClusterCtas][Shape::kRowsPerCta][kRouterMaxRoutes];  // [source CTA]
  uint64_t weights_ready;                          // one arrival per issuing warp; phase 1: fc2 (one layer)
  // The exchanges: st.async from the cluster's CTAs complete these (SplitMlpShape has the bytes).
  uint64_t sums_ready;
  uint64_t n_ready;
  uint64_t h1_ready;
  uint64_t logits_ready;
};

template <class Shape>
constexpr int split_mlp_smem_bytes() {
  return static_cast<int>(sizeof(SplitMlpSmem<Shape>)) + 1024;  // + alignment slack
}
// The group shapes the launcher picks from (smallest first: the least work per CTA).
using SplitMlp16 = SplitMlpShape<16, false>;
using SplitMlp16Pair = SplitMlpShape<16, false, 2>;
using SplitMlp16Compact = SplitMlpShape<16, true>;
using SplitMlp32 = SplitMlpShape<32, false>;
using SplitMlp48 = SplitMlpShape<48, false>;
static_assert(split_mlp_smem_bytes<SplitMlp48>() <= 227 * 1024, "the largest group fits one SM's shared memory");
// CTAs per SM (228 KB, 1 KB of it reserved per CTA): the more, the more clusters one wave holds (H200:
// 30 clusters of 4 at one, 60 at two), the fewer tokens per cluster at a given T.
template <class Shape>
constexpr int split_mlp_ctas_per_sm() {
  return Shape::kOneLayerResident ? 3 : Shape::kGroupRows <= 32 && Shape::kClusterCtas == 4 ? 2 : 1;
}
static_assert(split_mlp_smem_bytes<SplitMlp16Pair>() <= 227 * 1024, "a 2-CTA cluster's CTA fits one SM");
static_assert(3 * (split_mlp_smem_bytes<SplitMlp16Compact>() + 1024) <= 228 * 1024, "three compact CTAs fit one SM");
static_assert(2 * (split_mlp_smem_bytes<SplitMlp32>() + 1024) <= 228 * 1024, "two 32-token CTAs fit one SM");

// Item `i` of this thread: token row and the first of its 8 columns (absolute).
struct SliceItem {
  int row;
  int col;
  bool active;  // the item exists (kRows x 8 of them); uniform per warp
};

template <class Shape>
ZK_DEVICE SliceItem slice_item(int i, int thread, int col_base) {
  const int index = thread + i * Shape::kThreads;
  return SliceItem{index / Shape::kPieces, col_base + 8 * (index % Shape::kPieces),
                   index < Shape::kGroupRows * Shape::kPieces};
}

// This CTA's h2 columns times W_out's matching columns: a [kRows x 32] partial of the logits, each
// row stored into logit_parts[rank] of the CTA that owns the row. Items: (m16 tile, n8 tile of 4).
template <class Shape>
ZK_DEVICE void push_slice_logits(SplitMlpSmem<Shape>& s, int rank, int warp, int lane) {
  constexpr int kRows = Shape::kGroupRows;
  constexpr int kRowsPerCta = Shape::kRowsPerCta;
  constexpr int kNTiles = kRouterMaxRoutes / 8;
  const int g = lane / 4, q = lane % 4;
  for (int item = warp; item < kRows / 16 * kNTiles; item += Shape::kWarps) {
    const int mt = item / kNTiles, nt = item % kNTiles;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int k32 = 0; k32 < Shape::kSlice / 32; ++k32) {
      uint32_t b[4];  // b0/b1 of k16 steps 2 k32 and 2 k32 + 1
      {
        const int m = lane / 8, n = 8 * nt + lane % 8, k = 32 * k32 + 8 * m;
        ldmatrix_x4(b, smem_addr(s.out_w[k / 64]) + swizzle128_offset(n, k % 64));
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[4];
        const int k = Shape::kSlice * rank + 32 * k32 + 16 * h + (lane / 16) * 8;
        ldmatrix_x4(a, smem_addr(&s.act_a[16 * mt + lane % 16][k]));
        mma_bf16_16816(c, a, b[2 * h], b[2 * h + 1]);
      }
    }
    const int col = 8 * nt + 2 * q;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = 16 * mt + g + 8 * half;
      float* part = &s.logit_parts[rank][row % kRowsPerCta][col];
      const int owner = row / kRowsPerCta;
      push_f32(part, &s.logits_ready, owner, c[2 * half]);
      push_f32(part + 1, &s.logits_ready, owner, c[2 * half + 1]);
    }
  }
}

template <class Shape>
__global__ void __cluster_dims__(Shape::kClusterCtas, 1, 1)
    __launch_bounds__(Shape::kThreads, split_mlp_ctas_per_sm<Shape>())
    zaya_router_split_mlp_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  constexpr int kRows = Shape::kGroupRows;
  constexpr int kRowsPerCta = Shape::kRowsPerCta;
  constexpr int kItems = Shape::kItems;
  extern __shared__ uint8_t smem_raw[];
  SplitMlpSmem<Shape>& s = *reinterpret_cast<SplitMlpSmem<Shape>*>(align_smem_1024(smem_raw));
  const int rank = static_cast<int>(cluster_cta_rank());
  constexpr int kCtas = Shape::kClusterCtas, kSlice = Shape::kSlice, kPieces = Shape::kPieces;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / kCtas) * kRows;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int col_base = kSlice * rank;

  allow_dependent_launch();
  if (thread == 0) {
    mbar_init(smem_addr(&s.weights_ready), Shape::kWeightBoxes);
    const uint64_t* exchange[4] = {&s.sums_ready, &s.n_ready, &s.h1_ready, &s.logits_ready};
    const uint32_t bytes[4] = {Shape::kSumsBytes, Shape::kNBytes, Shape::kH1Bytes, Shape::kLogitsBytes};
    for (int i = 0; i < 4; ++i) mbar_init(smem_addr(exchange[i]), 1);
    mbar_init_fence();
    for (int i = 0; i < 4; ++i) mbar_arrive_expect_tx(smem_addr(exchange[i]), bytes[i]);
  }
  cluster_arrive_relaxed();  // after the barrier init; waited for before the first DSMEM store
  __syncthreads();
  if (runs_fused_align(p, kCtas)) prefill_fused_align_outputs(p, thread, Shape::kThreads);
  if (lane == 0) {  // weights first (they do not depend on the down kernel): one box per warp
    const uint32_t bar = smem_addr(&s.weights_ready);
    const CUtensorMap* map = warp < kMlpLayerBoxes ? &maps.fc1_w : &maps.fc2_w;
    constexpr int kOutBoxes = kSlice / 64;
    mbar_arrive_expect_tx(bar, kSlice * 128 + (warp == 0 ? kOutBoxes * kRouterMaxRoutes * 128 : 0));
    tma_load_2d(smem_addr(s.fc_w[warp]), map, 64 * (warp % kMlpLayerBoxes), col_base, bar);
    if (warp == 0) {
      for (int b = 0; b < kOutBoxes; ++b) tma_load_2d(smem_addr(s.out_w[b]), &maps.out_w, col_base + 64 * b, 0, bar);
    }
    // fc2's rows for this CTA into L2 now, so that its boxes come from there after fc1 (32 KB,
    // contiguous; the base is 16-byte aligned as its tensor map requires)
    if (Shape::kOneLayerResident && warp == 1) {
      prefetch_l2_bulk(p.fc2_w + col_base * kRouterWidth, kSlice * kRouterWidth * 2);
    }
  }
  const RouterVectorEntries<Shape::kThreads> vectors = fetch_router_vectors<Shape::kThreads>(p, thread);

  wait_for_prerequisite_grids();  // the partials (and r_prev) come from the kernels before this one
  // This thread's 8 columns of the kRouterSplitK partials and of r_prev: every load in flight before the first add
  // (zeros past T, as the down kernel stores nothing there).
  float4 part[kItems][kRouterSplitK][2];
  uint4 prev[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
    const int64_t token = row0 + it.row;
    const bool valid = it.active && token < p.num_tokens;
#pragma unroll
    for (int sl = 0; sl < kRouterSplitK; ++sl) {
      const float4* src =
          reinterpret_cast<const float4*>(p.partials + (sl * p.num_tokens + token) * kRouterWidth + it.col);
      part[i][sl][0] = valid ? src[0] : make_float4(0.f, 0.f, 0.f, 0.f);
      part[i][sl][1] = valid ? src[1] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    prev[i] = (p.r_prev != nullptr && valid)
                  ? *reinterpret_cast<const uint4*>(p.r_prev + token * p.r_prev_row_stride + it.col)
                  : make_uint4(0u, 0u, 0u, 0u);
  }
  // The vectors only now, fetched before the wait: a CTA that starts as the down kernel ends (T >= 768)
  // reaches griddepcontrol.wait ~0.8 us sooner than when it stored them first (H200 timeline, T = 768).
  // Their stores wait for the fetch (from HBM when the weights are cold); left free, the compiler put
  // them before 9 of the 12 partial loads (SASS). __syncwarp orders memory accesses, so every partial
  // load is issued above it.
  __syncwarp();
  store_router_vectors(vectors, s.vec, thread);
  __syncthreads();  // vectors stored

  // ---- r = sum of the partials + bias [+ EDA], this CTA's columns; row sums of squares to the cluster
  float r[kItems][8];
  float sum_sq[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
#pragma unroll
    for (int e = 0; e < 8; ++e) r[i][e] = 0.f;
    if (it.active) {
#pragma unroll
      for (int sl = 0; sl < kRouterSplitK; ++sl) {
        const float4 lo = part[i][sl][0], hi = part[i][sl][1];
        r[i][0] += lo.x; r[i][1] += lo.y; r[i][2] += lo.z; r[i][3] += lo.w;
        r[i][4] += hi.x; r[i][5] += hi.y; r[i][6] += hi.z; r[i][7] += hi.w;
      }
      const uint32_t words[4] = {prev[i].x, prev[i].y, prev[i].z, prev[i].w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        r[i][e] += s.vec.down_b[it.col + e];
        if (p.r_prev != nullptr) {
          const float prev_e = e % 2 ? bf16_hi(words[e / 2]) : bf16_lo(words[e / 2]);
          r[i][e] = eda_update(r[i][e], s.vec.eda_scale[it.col + e], prev_e);
        }
      }
    }
    sum_sq[i] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) sum_sq[i] += r[i][e] * r[i][e];
    sum_sq[i] = row_sum<kPieces>(sum_sq[i]);
  }
  cluster_wait();  // every CTA of the cluster has started
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
    if (it.active && thread % kPieces == 0) {
#pragma unroll
      for (int cta = 0; cta < kCtas; ++cta) {
        push_f32(&s.sum_squares[rank][it.row], &s.sums_ready, cta, sum_sq[i]);
      }
    }
  }
  mbar_wait_cluster(smem_addr(&s.sums_ready), 0);  // every CTA's row sums

  // ---- n = bf16(r / rms * norm_w): this CTA's columns, into act_a of every CTA
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
    if (!it.active) continue;
    const uint4 n = rms_normalize_piece<kCtas>(&s.sum_squares[0][it.row], kRows, r[i], &s.vec.norm_w[it.col],
                                                          p.eps);
#pragma unroll
    for (int cta = 0; cta < kCtas; ++cta) push_u32x4(&s.act_a[it.row][it.col], &s.n_ready, cta, n);
  }
  mbar_wait(smem_addr(&s.weights_ready), 0);
  mbar_wait_cluster(smem_addr(&s.n_ready), 0);  // n complete

  // ---- h1 = GELU(n fc1^T + b1): this CTA's columns, then into act_b of every CTA
  mlp_layer_columns<kRows, kSlice, kMlpNPerItem, Shape::kWarps>(s.act_a, s.act_b, smem_addr(s.fc_w[0]),
                                                                   s.vec.fc1_b, col_base, warp, lane);
  __syncthreads();  // this CTA's h1 columns are complete; every warp is done with fc1's boxes
  if constexpr (Shape::kOneLayerResident) {
    if (lane == 0) {  // fc2's boxes into fc1's space, one per warp, under the h1 exchange
      fence_proxy_async_shared();
      const uint32_t bar = smem_addr(&s.weights_ready);
      mbar_arrive_expect_tx(bar, kSlice * 128);
      tma_load_2d(smem_addr(s.fc_w[warp]), &maps.fc2_w, 64 * warp, col_base, bar);
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
    if (!it.active) continue;
    const uint4 piece = *reinterpret_cast<const uint4*>(&s.act_b[it.row][it.col]);
#pragma unroll
    for (int cta = 0; cta < kCtas; ++cta) {
      if (cta != rank) push_u32x4(&s.act_b[it.row][it.col], &s.h1_ready, cta, piece);
    }
  }
  mbar_wait_cluster(smem_addr(&s.h1_ready), 0);  // h1 complete

  // ---- h2 = GELU(h1 fc2^T + b2), this CTA's columns (over its n columns: only this CTA reads them)
  if constexpr (Shape::kOneLayerResident) mbar_wait(smem_addr(&s.weights_ready), 1);
  const uint32_t fc2_boxes = smem_addr(s.fc_w[Shape::kOneLayerResident ? 0 : kMlpLayerBoxes]);
  mlp_layer_columns<kRows, kSlice, kMlpNPerItem, Shape::kWarps>(s.act_b, s.act_a, fc2_boxes, s.vec.fc2_b, col_base,
                                                                   warp, lane);
  __syncthreads();  // this CTA's h2 columns are complete
  push_slice_logits<Shape>(s, rank, warp, lane);
  // Every partial logit of this CTA's rows landed. Every write into this CTA's shared memory has now
  // landed (each exchange was waited for), so it may exit on its own.
  mbar_wait_cluster(smem_addr(&s.logits_ready), 0);

  // ---- this CTA's kRowsPerCta tokens: the 4 partial logits summed, softmax, biased top-1. Two tokens
  // per warp, 16 lanes each holding routes l and l + 16: the 12 tokens of a 48-row group take one
  // round, not two, and each reduction one shuffle step less.
  for (int base = 2 * warp; base < kRowsPerCta; base += 2 * Shape::kWarps) {
    const int local_row = base + lane / 16;
    const int row = local_row < kRowsPerCta ? local_row : kRowsPerCta - 1;  // a spare half-warp repeats a row
    float logits[2], bias[2];
    int route[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      route[c] = lane % 16 + 16 * c;
      logits[c] = 0.f;
#pragma unroll
      for (int cta = 0; cta < kCtas; ++cta) logits[c] += s.logit_parts[cta][row][route[c]];
      bias[c] = s.vec.balancing_bias[route[c]];
    }
    const RouteChoice choice = route_top1<16, 2>(logits, route, bias, p.num_routes);
    const int64_t t = row0 + rank * kRowsPerCta + local_row;
    if (lane % 16 == 0 && local_row < kRowsPerCta && t < p.num_tokens) store_route_outputs(p, t, choice);
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const SliceItem it = slice_item<Shape>(i, thread, col_base);
    const int64_t token = row0 + it.row;
    if (!it.active || token >= p.num_tokens) continue;
    const uint4 bits = make_uint4(pack_bf16x2_rn(r[i][0], r[i][1]), pack_bf16x2_rn(r[i][2], r[i][3]),
                                  pack_bf16x2_rn(r[i][4], r[i][5]), pack_bf16x2_rn(r[i][6], r[i][7]));
    *reinterpret_cast<uint4*>(p.r_out + token * p.r_out_row_stride + it.col) = bits;
  }
  if (runs_fused_align(p, kCtas)) {
    __syncthreads();  // no thread reads the weight boxes any more (fc2 was the last)
    fused_align<Shape::kThreads>(p, s.fc_w);
  }
}

}  // namespace sm90
}  // namespace zk
