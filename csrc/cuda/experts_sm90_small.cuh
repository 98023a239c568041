// SPDX-License-Identifier: Apache-2.0
// experts_sm90_small.cuh: the small-token (decode) regime of grouped_gemm and moe_mlp on sm_90a: the
// weight-bandwidth-bound case, where each active expert's weights must stream from HBM through every SM.
//
// Swap-AB (common/experts_schedule.h): an item is 16 weight rows x 8 tokens of one expert, computed as
// mma.m16n8k16 with the weight rows as A and the tokens as B. The CTA's 8 warps split K: warp w takes the
// 32-wide k chunks w*U .. w*U+U-1, w*U + 8U .. and so on, loads all of its U chunks (2U weight vectors
// and U token vectors of 16 bytes per lane) before its first MMA, then the 8 partial 16x8 tiles are summed
// through shared memory in warp order (deterministic). At ZAYA1's K = 2048 and U = 8 one item is one round
// of loads: 64 KB of weights in flight per CTA, two CTAs per SM (registers <= 128 per thread), ~17 MB
// over the 132 SMs, which Little's law asks of 4.2 TB/s at ~1 us of loaded latency... several times over.
//
// The persistent grid (2 CTAs per SM) walks the items that every CTA derives from expert_offsets in
// shared memory (no host sync). Three stages share the loop and differ in their operands and epilogue:
//   kGemm: grouped_gemm, B = rows of a, c[row, n] = bf16(acc); the rows of c outside every segment zeroed.
//   kFc1:  moe_mlp fc1, B = x[pair / k] gathered through sorted_token_ids, A = gate rows 8t.. and up rows
//          F + 8t.. (SwiGLU epilogue local to the item), act[slot, j] = bf16(SiLU(gate) * up).
//   kFc2:  moe_mlp fc2, B = act[slot], scattered to token order with the combine weight: k == 1:
//          out[t, n] = bf16(w * acc); k > 1: pair_out[pair, n] = w * acc (fp32, combined by the rows kernel).
//          With k == 1 the kernel also writes the rows of tokens that run no expert (skip route / zero).
// fc2 is a programmatic dependent launch: before waiting for fc1 it derives its work list from the
// (router-written, fc1-read) offsets and pulls its first items' weights into L2, then after the wait it
// derives the list again from fresh loads, so the prefetch can only be wasted, never wrong.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "../common/compat.h"
#include "../common/experts_rows.cuh"
#include "../common/experts_schedule.h"
#include "../common/params.h"
#include "zaya_router_sm90_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace experts {

constexpr int kSmallWarps = 8;
constexpr int kSmallThreads = kSmallWarps * 32;
constexpr int kSmallCtasPerSm = 2;
// Token pairs up to which a CTA counts each expert's real rows from topk_ids (T*k loads of 4 bytes per CTA,
// 8 per thread, in parallel with the offsets): without the counts, a segment padded to block_m = 64 would
// be 8 token chunks for one token (T = 1), and 7 of 8 items would stream weights for padding. Above it the
// items cover the padded segments; at those T padding is a small share and pad rows cost no stores.
constexpr int32_t kCountFromIdsMaxPairs = 2048;
static_assert(kExpertsMaxExperts <= kSmallThreads, "the work-list scan gives each expert one thread");

enum class SmallStage : int32_t { kGemm = 0, kFc1 = 1, kFc2 = 2 };

struct SmallArgs {
  GroupedGemmParams gemm;  // kGemm
  MoeMlpParams moe;        // kFc1, kFc2
  uint16_t* act;           // [capacity, F] bf16 (params.h workspace layout), kFc1 / kFc2
  float* pair_out;         // [T*k, H] fp32, k > 1, kFc2
};

// ---- loads ------------------------------------------------------------------------------------------

// Weights: read once per item, never reused by this SM soon: keep them out of L1.
ZK_DEVICE uint4 load_weight16(const uint16_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Token rows: re-read by the 8 warps and by the items of other row tiles: L1-cached, coherent (act was
// written by the previous kernel).
ZK_DEVICE uint4 load_token16(const uint16_t* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Bypasses L1: the pre-wait work list of fc2 reads what earlier grids wrote, from L2.
ZK_DEVICE int32_t load_l2_i32(const int32_t* p) {
  int32_t v;
  asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// ---- stage geometry ----------------------------------------------------------------------------------

template <SmallStage S>
struct Stage;

template <>
struct Stage<SmallStage::kGemm> {
  static constexpr bool kSwiglu = false;
  ZK_DEVICE static const uint16_t* weights(const SmallArgs& a) { return a.gemm.w; }
  ZK_DEVICE static int32_t weight_rows(const SmallArgs& a) { return a.gemm.n; }
  ZK_DEVICE static int32_t out_columns(const SmallArgs& a) { return a.gemm.n; }
  ZK_DEVICE static int32_t depth(const SmallArgs& a) { return a.gemm.k; }
  ZK_DEVICE static const int32_t* offsets(const SmallArgs& a) { return a.gemm.expert_offsets; }
  ZK_DEVICE static int32_t num_experts(const SmallArgs& a) { return a.gemm.num_experts; }
  ZK_DEVICE static int32_t row_limit(const SmallArgs& a) { return a.gemm.m; }
};

template <>
struct Stage<SmallStage::kFc1> {
  static constexpr bool kSwiglu = true;
  ZK_DEVICE static const uint16_t* weights(const SmallArgs& a) { return a.moe.w_fc1; }
  ZK_DEVICE static int32_t weight_rows(const SmallArgs& a) { return 2 * a.moe.ffn; }
  ZK_DEVICE static int32_t out_columns(const SmallArgs& a) { return a.moe.ffn; }
  ZK_DEVICE static int32_t depth(const SmallArgs& a) { return a.moe.hidden; }
  ZK_DEVICE static const int32_t* offsets(const SmallArgs& a) { return a.moe.expert_offsets; }
  ZK_DEVICE static int32_t num_experts(const SmallArgs& a) { return a.moe.num_experts; }
  ZK_DEVICE static int32_t row_limit(const SmallArgs& a) { return a.moe.capacity; }
};

template <>
struct Stage<SmallStage::kFc2> {
  static constexpr bool kSwiglu = false;
  ZK_DEVICE static const uint16_t* weights(const SmallArgs& a) { return a.moe.w_fc2; }
  ZK_DEVICE static int32_t weight_rows(const SmallArgs& a) { return a.moe.hidden; }
  ZK_DEVICE static int32_t out_columns(const SmallArgs& a) { return a.moe.hidden; }
  ZK_DEVICE static int32_t depth(const SmallArgs& a) { return a.moe.ffn; }
  ZK_DEVICE static const int32_t* offsets(const SmallArgs& a) { return a.moe.expert_offsets; }
  ZK_DEVICE static int32_t num_experts(const SmallArgs& a) { return a.moe.num_experts; }
  ZK_DEVICE static int32_t row_limit(const SmallArgs& a) { return a.moe.capacity; }
};

// ---- the work list -------------------------------------------------------------------------------------

struct SmallShared {
  // First and 16-byte aligned: the accumulators are stored as float2 (8-byte aligned addresses required;
  // after the int32 arrays they sat at byte 3108, the misaligned-address fault of GPU round 1).
  alignas(16) float partial[2][kSmallWarps][kRowTile][kTokenTile];  // per-warp accumulators, double-buffered by item
  int32_t prefix[kExpertsMaxExperts + 1];  // items before expert e; prefix[E] = all items
  int32_t start[kExpertsMaxExperts];       // first row (slot) of expert e
  int32_t count[kExpertsMaxExperts];       // rows (slots) of expert e that hold tokens
  int32_t warp_total[kSmallWarps];
};
static_assert(offsetof(SmallShared, partial) % 16 == 0, "float2 stores into SmallShared::partial");

// Every CTA builds the same list: expert e's rows are [offsets[e], offsets[e+1]) clamped to the row
// limit, cut to its real token count where topk_ids are counted (moe_mlp, T*k <= kCountFromIdsMaxPairs).
// kL2: loads bypass L1 (fc2's pre-wait pass). Ends with a __syncthreads.
template <SmallStage S, bool kL2>
ZK_DEVICE void build_work_list(const SmallArgs& a, SmallShared& sh) {
  using G = Stage<S>;
  const int tid = threadIdx.x;
  const int32_t experts = G::num_experts(a);
  const int32_t* offsets = G::offsets(a);
  auto load = [](const int32_t* p) { return kL2 ? load_l2_i32(p) : *p; };
  int32_t lo = 0, hi = 0;
  if (tid < experts) {
    lo = load(offsets + tid);
    hi = load(offsets + tid + 1);
  }
  const int32_t pairs = S == SmallStage::kGemm ? 0 : a.moe.num_tokens * a.moe.k;
  const bool count_ids = S != SmallStage::kGemm && pairs <= kCountFromIdsMaxPairs;
  if (count_ids) {
    if (tid < experts) sh.count[tid] = 0;
    __syncthreads();
    for (int32_t p = tid; p < pairs; p += kSmallThreads) {
      const int32_t id = load(a.moe.topk_ids + p);
      if (id >= 0 && id < experts) atomicAdd(&sh.count[id], 1);
    }
    __syncthreads();
  }
  int32_t items = 0;
  if (tid < experts) {
    const int32_t limit = G::row_limit(a);
    const int32_t start = min(max(lo, 0), limit);
    int32_t count = min(max(hi, start), limit) - start;
    if (count_ids) count = min(count, sh.count[tid]);
    sh.start[tid] = start;
    sh.count[tid] = count;
    items = token_chunks(count) * static_cast<int32_t>(row_tiles(G::out_columns(a), G::kSwiglu));
  }
  // Exclusive scan of items over the CTA: within warps by shuffles, then the warp totals.
  const int lane = tid & 31, warp = tid >> 5;
  int32_t inclusive = items;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int32_t v = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  if (lane == 31) sh.warp_total[warp] = inclusive;
  __syncthreads();
  int32_t before = 0;
#pragma unroll
  for (int w = 0; w < kSmallWarps; ++w) before += w < warp ? sh.warp_total[w] : 0;
  if (tid < experts) sh.prefix[tid] = before + inclusive - items;
  if (tid == experts - 1) sh.prefix[experts] = before + inclusive;
  __syncthreads();
}

// ---- one item ----------------------------------------------------------------------------------------

// Where an item's operands and outputs are.
struct ItemPlace {
  int32_t expert;
  int32_t tile;       // row tile
  int32_t row0;       // first row (slot) of its 8 token rows
  int32_t row_end;    // end of the expert's token rows
};

template <SmallStage S>
ZK_DEVICE ItemPlace place_item(const SmallArgs& a, const SmallShared& sh, int32_t item) {
  const int e = find_expert(sh.prefix, Stage<S>::num_experts(a), item);
  const ItemCoords at = item_coords(item - sh.prefix[e], token_chunks(sh.count[e]));
  return ItemPlace{e, at.tile, sh.start[e] + at.chunk * kTokenTile, sh.start[e] + sh.count[e]};
}

// The pair index of slot `row` of moe_mlp's schedule, or -1 (outside the expert's rows, or padding).
ZK_DEVICE int32_t slot_pair(const MoeMlpParams& p, int32_t row, int32_t row_end) {
  if (row >= row_end) return -1;
  const int32_t pair = p.sorted_token_ids[row];
  return pair >= 0 && pair < p.num_tokens * p.k ? pair : -1;
}

// This lane's B row (token g of the item) or nullptr.
template <SmallStage S>
ZK_DEVICE const uint16_t* token_row(const SmallArgs& a, const ItemPlace& at, int g) {
  const int32_t row = at.row0 + g;
  if constexpr (S == SmallStage::kGemm) {
    return row < at.row_end ? a.gemm.a + row * a.gemm.a_row_stride : nullptr;
  } else {
    const int32_t pair = slot_pair(a.moe, row, at.row_end);
    if (pair < 0) return nullptr;
    if constexpr (S == SmallStage::kFc1) return a.moe.x + static_cast<int64_t>(pair / a.moe.k) * a.moe.x_row_stride;
    return a.act + static_cast<int64_t>(row) * a.moe.ffn;
  }
}

// This lane's two weight rows (A rows g and g + 8 of the item's tile) or nullptr.
template <SmallStage S>
ZK_DEVICE void weight_rows(const SmallArgs& a, const ItemPlace& at, int g, const uint16_t*& r0,
                           const uint16_t*& r1) {
  using G = Stage<S>;
  const int64_t k = G::depth(a);
  const uint16_t* base = G::weights(a) + static_cast<int64_t>(at.expert) * G::weight_rows(a) * k;
  int64_t row0, row1;
  bool valid;
  if constexpr (G::kSwiglu) {
    row0 = swiglu_weight_row(at.tile, g, a.moe.ffn);
    row1 = swiglu_weight_row(at.tile, g + 8, a.moe.ffn);
    valid = static_cast<int64_t>(at.tile) * 8 + g < a.moe.ffn;
  } else {
    row0 = plain_weight_row(at.tile, g);
    row1 = plain_weight_row(at.tile, g + 8);
    valid = true;
  }
  r0 = valid && row0 < G::weight_rows(a) ? base + row0 * k : nullptr;
  r1 = valid && row1 < G::weight_rows(a) ? base + row1 * k : nullptr;
}

// acc (this lane's c0..c3 of the 16x8 tile) += this warp's share of K: chunks warp*U + j*8U + u.
template <int U>
ZK_DEVICE void mainloop(float (&acc)[4], const uint16_t* w0, const uint16_t* w1, const uint16_t* b, int32_t depth,
                        int warp, int lane) {
  const int32_t chunks = (depth + kKChunk - 1) / kKChunk;
  const int32_t lane_k = lane_chunk_k(lane);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int32_t first = warp * U; first < chunks; first += kSmallWarps * U) {
    uint4 va[U], vb[U], vt[U];
    // All weight loads first: issue is in order, and the token row's address may still wait on the
    // sorted_token_ids load.
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int32_t kk = (first + u) * kKChunk + lane_k;  // kk < depth implies kk + 8 <= depth (depth % 8 == 0)
      va[u] = w0 != nullptr && kk < depth ? load_weight16(w0 + kk) : zero;
      vb[u] = w1 != nullptr && kk < depth ? load_weight16(w1 + kk) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int32_t kk = (first + u) * kKChunk + lane_k;
      vt[u] = b != nullptr && kk < depth ? load_token16(b + kk) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t wa[4] = {va[u].x, va[u].y, va[u].z, va[u].w};
      const uint32_t wb[4] = {vb[u].x, vb[u].y, vb[u].z, vb[u].w};
      const uint32_t tok[4] = {vt[u].x, vt[u].y, vt[u].z, vt[u].w};
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        uint32_t a[4], b[2];
        mma_a_fragment(wa, wb, s, a);
        mma_b_fragment(tok, s, b);
        sm90::mma_bf16_16816(acc, a, b[0], b[1]);
      }
    }
  }
}

ZK_DEVICE float silu(float v) { return v / (1.f + __expf(-v)); }

// Sum of the 8 warps' partials of tile element (r, t), in warp order.
ZK_DEVICE float tile_sum(const float (&part)[kSmallWarps][kRowTile][kTokenTile], int r, int t) {
  float s = 0.f;
#pragma unroll
  for (int w = 0; w < kSmallWarps; ++w) s += part[w][r][t];
  return s;
}

template <SmallStage S>
ZK_DEVICE void epilogue(const SmallArgs& a, const ItemPlace& at, const float (&part)[kSmallWarps][kRowTile][kTokenTile],
                        int tid) {
  if constexpr (S == SmallStage::kFc1) {
    if (tid >= 8 * kTokenTile) return;
    const int jj = tid % 8, t = tid / 8;
    const int64_t j = static_cast<int64_t>(at.tile) * 8 + jj;
    const int32_t row = at.row0 + t;
    if (j >= a.moe.ffn || slot_pair(a.moe, row, at.row_end) < 0) return;
    const float gate = tile_sum(part, jj, t), up = tile_sum(part, jj + 8, t);
    a.act[static_cast<int64_t>(row) * a.moe.ffn + j] = float_to_bf16(silu(gate) * up);
  } else {
    if (tid >= kRowTile * kTokenTile) return;
    const int r = tid % kRowTile, t = tid / kRowTile;
    const int64_t n = static_cast<int64_t>(at.tile) * kRowTile + r;
    const int32_t row = at.row0 + t;
    if constexpr (S == SmallStage::kGemm) {
      if (n >= a.gemm.n || row >= at.row_end) return;
      a.gemm.c[row * a.gemm.c_row_stride + n] = float_to_bf16(tile_sum(part, r, t));
    } else {
      if (n >= a.moe.hidden) return;
      const int32_t pair = slot_pair(a.moe, row, at.row_end);
      if (pair < 0) return;
      const float v = a.moe.topk_weights[pair] * tile_sum(part, r, t);
      if (a.moe.k == 1) {
        a.moe.out[static_cast<int64_t>(pair) * a.moe.out_row_stride + n] = float_to_bf16(v);
      } else {
        a.pair_out[static_cast<int64_t>(pair) * a.moe.hidden + n] = v;
      }
    }
  }
}

// fc2 before its wait: its first items' weight rows (16 rows of F bf16 each) into L2.
ZK_DEVICE void prefetch_first_items(const SmallArgs& a, const SmallShared& sh, int tid) {
  constexpr int kItems = 2;
  const int32_t item = blockIdx.x + (tid / kRowTile) * gridDim.x;
  if (tid >= kItems * kRowTile || item >= sh.prefix[a.moe.num_experts]) return;
  const ItemPlace at = place_item<SmallStage::kFc2>(a, sh, item);
  const int64_t row = plain_weight_row(at.tile, tid % kRowTile);
  if (row >= a.moe.hidden) return;
  const uint16_t* w = a.moe.w_fc2 + (static_cast<int64_t>(at.expert) * a.moe.hidden + row) * a.moe.ffn;
  sm90::prefetch_l2_bulk(w, static_cast<uint32_t>(a.moe.ffn) * 2u);
}

template <SmallStage S, int U>
__global__ void __launch_bounds__(kSmallThreads, kSmallCtasPerSm) small_experts_kernel(const SmallArgs a) {
  __shared__ SmallShared sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if constexpr (S == SmallStage::kFc2) {
    build_work_list<S, true>(a, sh);
    prefetch_first_items(a, sh, tid);
    __syncthreads();  // the list is rebuilt below: every thread is done reading this one
  }
  wait_for_prerequisite_grids();
  build_work_list<S, false>(a, sh);
  allow_dependent_launch();  // our next kernel waits for this grid's completion before it reads anything
  if constexpr (S == SmallStage::kGemm) zero_outside_rows(a.gemm, grid_thread(), grid_threads());
  if constexpr (S == SmallStage::kFc2) {
    if (a.moe.k == 1) moe_rows(a.moe, nullptr, grid_thread(), grid_threads());
  }
  const int32_t total = sh.prefix[Stage<S>::num_experts(a)];
  int parity = 0;
  for (int32_t item = blockIdx.x; item < total; item += gridDim.x, parity ^= 1) {
    const ItemPlace at = place_item<S>(a, sh, item);
    const int g = lane_group(lane);
    const uint16_t* b = token_row<S>(a, at, g);
    const uint16_t *w0, *w1;
    weight_rows<S>(a, at, g, w0, w1);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    mainloop<U>(acc, w0, w1, b, Stage<S>::depth(a), warp, lane);
    // c0, c1: row g, tokens 2q, 2q+1; c2, c3: row g + 8 (mma.m16n8k16 C layout).
    const int q = lane % 4;
    auto& part = sh.partial[parity][warp];
    *reinterpret_cast<float2*>(&part[g][2 * q]) = make_float2(acc[0], acc[1]);
    *reinterpret_cast<float2*>(&part[g + 8][2 * q]) = make_float2(acc[2], acc[3]);
    __syncthreads();  // one barrier per item: the partials alternate between two buffers
    epilogue<S>(a, at, sh.partial[parity], tid);
  }
}

}  // namespace experts
}  // namespace zk
