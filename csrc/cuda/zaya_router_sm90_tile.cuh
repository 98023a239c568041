// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_tile.cuh: the large-T router (ZayaRouterVariant::kTile).
//
// Why: at T = 64K the router is a [T x 2048] x [2048 x 256] GEMM (69 GFLOP, x = 256 MB read once) plus
// a small MLP (18 GFLOP), so it must run at tensor-core rate with x streamed once. Each CTA owns 128
// tokens x all 256 outputs, so the whole 256-wide row of every token stays in registers through the
// down-projection, RMSNorm, both GELU layers and the logits: nothing but r_out, weights and ids is
// ever written. CTAs come in clusters of 2 (two 128-token tiles) and every weight tile is TMA-multicast
// to both: each CTA fetches half, halving the ~1.3 MB of weights read from L2 per 128 tokens.
//
// Warp specialisation (384 threads): warpgroup 0 = producer (one thread issues TMA), warpgroups 1, 2 =
// consumers, each a 64-row half of the tile (wgmma m64nNk16, fp32 accumulators in registers).
// One pipeline of kTileStages stages of 48 KB carries, per tile, in order:
//   H/64 down steps   : x box [128 x 64] (own) + W_down box [256 x 64] (two multicast halves)
//   4 fc1 steps       : fc1 rows [64j, 64j+64) x all 256 K (4 boxes [64 x 64], two per CTA, multicast)
//   4 fc2 steps       : the same for fc2
//   1 out step        : out_w [32 x 256] (4 boxes [32 x 64], rows >= E' zero-filled)
// Consumers: down steps with wgmma m64n256k16 (A = x, B = W_down, both shared) -> 128 accumulators
// per thread = one 64x256 fp32 block; + bias, EDA, r_out, RMSNorm in registers; the normalised bf16
// row block IS the register A operand of the fc1 wgmma (see zaya_router_sm90_mma.cuh), fc1/fc2 run as
// 4 column chunks of m64n64k16 (+bias, GELU, bf16 -> next A operand), logits as one m64n32k16.
// A stage is released by every consumer warp of both CTAs (16 arrivals) once its wgmmas completed.
#pragma once

#include "zaya_router_sm90_epilogue.cuh"
#include "zaya_router_sm90_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace sm90 {

constexpr int kTileRows = 128;         // tokens per CTA: 2 consumer warpgroups x 64 (wgmma M)
constexpr int kTileThreads = 384;      // producer warpgroup + 2 consumer warpgroups
constexpr int kTileClusterSize = 2;    // CTAs sharing each multicast weight tile
constexpr int kTileStages = 4;         // 4 x 48 KB: the producer runs 3 stages (~3 us of loads) ahead
constexpr int kStageXBytes = kTileRows * 128;        // [128 x 64] bf16
constexpr int kStageWBytes = kRouterWidth * 128;     // [256 x 64] bf16
constexpr int kFcChunkRows = 64;                     // fc1/fc2 output rows per stage (wgmma N = 64)
constexpr int kMlpSteps = 2 * (kRouterWidth / kFcChunkRows) + 1;  // fc1 chunks, fc2 chunks, out_w
constexpr int kConsumerArrivals = kTileClusterSize * 2 * 4;       // consumer warps of the cluster
// Register budget (setmaxnreg): 24 + 2 x 240 = 504 <= 512 per thread slot of 3 warpgroups. The
// consumer peaks in the epilogue of the down-projection (128 accumulators + 64 words of r_prev) and in
// the GELU layers (64 words in + 64 out + 32 accumulators + 16 packed + GELU temporaries); at 240
// nothing spills (ptxas -v). The producer (one thread issuing TMA) fits 24.
constexpr int kProducerRegisters = 24;
constexpr int kConsumerRegisters = 240;
static_assert(kProducerRegisters + 2 * kConsumerRegisters <= 65536 / 128, "register file of one SM");
static_assert(kMlpSteps == 9, "fc1: 4 chunks, fc2: 4 chunks, out_w: 1");
static_assert(kFcChunkRows * kRouterWidth * 2 == kStageWBytes, "an fc chunk fills a W stage");

struct TileSmem {
  struct Stage {
    uint8_t x[kStageXBytes];  // [128 x 64] bf16 tokens x K (down steps only)
    uint8_t w[kStageWBytes];  // [256 x 64] W_down box | 4 x [64 x 64] fc boxes | 4 x [32 x 64] out_w boxes
  } stages[kTileStages];
  RouterVectors vec;
  uint64_t full[kTileStages];   // producer's expect_tx + the TMA bytes landing in this CTA
  uint64_t empty[kTileStages];  // kConsumerArrivals: every consumer warp of both CTAs is done with it
};
constexpr int kTileSmemBytes = static_cast<int>(sizeof(TileSmem)) + 1024;  // + alignment slack
static_assert(sizeof(TileSmem::Stage) % 1024 == 0, "every stage box starts on a 1024-byte boundary");
static_assert(kTileSmemBytes <= 227 * 1024, "fits one SM's shared memory");

template <int kRegisters>
ZK_DEVICE void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegisters));
}
template <int kRegisters>
ZK_DEVICE void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegisters));
}

// Running position in the stage ring, identical in the producer and the consumers.
struct RingPosition {
  int stage = 0;
  uint32_t phase = 0;
  ZK_DEVICE void advance() {
    if (++stage == kTileStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

ZK_DEVICE int tile_count(int64_t num_tokens) { return static_cast<int>((num_tokens + kTileRows - 1) / kTileRows); }

// The consumers pull their tile's r_prev rows (read with plain loads by the down-projection
// epilogue) into L2 this many down steps before the last one: ~8 x 0.55 us, several DRAM latencies
// ahead, yet late enough that the x stream (~15 MB of it chip-wide in that time) does not evict them
// first. Without it, those loads were the epilogue's largest stall (ncu, H200, T = 64K).
constexpr int kPrefetchLeadSteps = 8;

ZK_DEVICE void tile_producer(const RouterTensorMaps& maps, const ZayaRouterParams& p, TileSmem& s, uint32_t rank) {
  const int down_steps = p.hidden / 64;
  const int num_tiles = tile_count(p.num_tokens);
  const int num_pairs = (num_tiles + 1) / 2;
  constexpr uint16_t kBoth = 0b11;
  RingPosition ring;
  for (int pair = cluster_id_x(); pair < num_pairs; pair += cluster_count_x()) {
    const int tile = 2 * pair + static_cast<int>(rank);
    const bool has_rows = tile < num_tiles;  // the last pair's second tile may lie past T
    for (int step = 0; step < down_steps + kMlpSteps; ++step) {
      mbar_wait(smem_addr(&s.empty[ring.stage]), ring.phase ^ 1u);
      const uint32_t full = smem_addr(&s.full[ring.stage]);
      const uint32_t x_dst = smem_addr(s.stages[ring.stage].x);
      const uint32_t w_dst = smem_addr(s.stages[ring.stage].w);
      if (step < down_steps) {
        mbar_arrive_expect_tx(full, (has_rows ? kStageXBytes : 0) + kStageWBytes);
        if (has_rows) tma_load_2d(x_dst, &maps.x, 64 * step, tile * kTileRows, full);
        tma_load_2d_multicast(w_dst + rank * (kStageWBytes / 2), &maps.down_w, 64 * step, 128 * rank, full, kBoth);
      } else if (step < down_steps + kMlpSteps - 1) {
        const int mlp_step = step - down_steps;
        const CUtensorMap* map = mlp_step < 4 ? &maps.fc1_w : &maps.fc2_w;
        mbar_arrive_expect_tx(full, kStageWBytes);
        for (uint32_t box = 2 * rank; box < 2 * rank + 2; ++box) {
          tma_load_2d_multicast(w_dst + box * (kFcChunkRows * 128), map, 64 * box, kFcChunkRows * (mlp_step % 4), full,
                                kBoth);
        }
      } else {
        mbar_arrive_expect_tx(full, 4 * kRouterMaxRoutes * 128);
        for (uint32_t box = 2 * rank; box < 2 * rank + 2; ++box) {
          tma_load_2d_multicast(w_dst + box * (kRouterMaxRoutes * 128), &maps.out_w, 64 * box, 0, full, kBoth);
        }
      }
      ring.advance();
    }
  }
}

// Every consumer warp of both CTAs signals that it is done reading a stage.
ZK_DEVICE void release_stage(TileSmem& s, int stage, int lane) {
  __syncwarp();
  if (lane == 0) {
    const uint32_t bar = smem_addr(&s.empty[stage]);
    for (uint32_t cta = 0; cta < kTileClusterSize; ++cta) mbar_arrive_cluster(bar, cta);
  }
}

// Appends the 4 k-blocks of A fragments of a GELU layer's newest output chunk to `out`, whose
// older chunks move down one place: after the 4 chunks of a layer, out[4c + kb] holds chunk c. The
// shift (48 moves per chunk) lets the chunk loop stay rolled with constant register indices.
ZK_DEVICE void shift_in_chunk(uint32_t (&out)[16][4], const uint32_t (&frag)[4][4]) {
#pragma unroll
  for (int kb = 0; kb < 12; ++kb)
#pragma unroll
    for (int w = 0; w < 4; ++w) out[kb][w] = out[kb + 4][w];
#pragma unroll
  for (int kb = 0; kb < 4; ++kb)
#pragma unroll
    for (int w = 0; w < 4; ++w) out[12 + kb][w] = frag[kb][w];
}

// One GELU layer on the register-resident rows: out = bf16(GELU(in W^T + b)), in/out as wgmma A
// fragments (16 k-blocks x 4 words) of the warpgroup's 64 rows; W arrives as 4 chunks of 64 rows.
// The chunk loop is rolled on purpose: unrolled, the two layers were 126 KB of SASS (32 GELUs x 4
// chunks each), the consumers' instruction fetch missed, and "no instruction" stalls were half of
// all consumer samples in the tile kernel at T = 64K (ncu, H200).
ZK_DEVICE void tile_gelu_layer(TileSmem& s, RingPosition& ring, const uint32_t (&in)[16][4], uint32_t (&out)[16][4],
                               const float* bias, int lane) {
  const int q = lane % 4;
  // Defined before the shifts read it, so that `out`'s registers (n's, for the second layer) are
  // free until this layer.
#pragma unroll
  for (int kb = 0; kb < 16; ++kb)
#pragma unroll
    for (int w = 0; w < 4; ++w) out[kb][w] = 0u;
#pragma unroll 1
  for (int chunk = 0; chunk < kRouterWidth / kFcChunkRows; ++chunk) {
    mbar_wait(smem_addr(&s.full[ring.stage]), ring.phase);
    const uint32_t w = smem_addr(s.stages[ring.stage].w);
    float c[32];
    zero_accumulators(c);
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < 16; ++kb) {
      wgmma_m64n64k16_rs(c, in[kb], wgmma_desc_sw128(w + (kb / 4) * (kFcChunkRows * 128) + (kb % 4) * 32), kb > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(c);
    release_stage(s, ring.stage, lane);
    ring.advance();
    uint32_t frag[4][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 b = load_vector_pair(&bias[kFcChunkRows * chunk + 8 * i + 2 * q]);
      frag[i / 2][(i % 2) * 2 + 0] = pack_bf16x2_rn(gelu_erf(c[4 * i] + b.x), gelu_erf(c[4 * i + 1] + b.y));
      frag[i / 2][(i % 2) * 2 + 1] = pack_bf16x2_rn(gelu_erf(c[4 * i + 2] + b.x), gelu_erf(c[4 * i + 3] + b.y));
    }
    shift_in_chunk(out, frag);
  }
}

ZK_DEVICE void tile_consumer(const ZayaRouterParams& p, TileSmem& s, uint32_t rank) {
  const int consumer = threadIdx.x / 128 - 1;  // 64-row half of the tile
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int q = lane % 4;
  const int down_steps = p.hidden / 64;
  const int num_tiles = tile_count(p.num_tokens);
  const int num_pairs = (num_tiles + 1) / 2;
  const RouterVectors& vec = s.vec;
  RingPosition ring;
  for (int pair = cluster_id_x(); pair < num_pairs; pair += cluster_count_x()) {
    const int tile = 2 * pair + static_cast<int>(rank);
    // This thread's two token rows (wgmma D layout): a = 16 warp + lane/4 of the half, b = a + 8.
    const int64_t row_a = static_cast<int64_t>(tile) * kTileRows + 64 * consumer + 16 * warp + lane / 4;
    const int64_t row_b = row_a + 8;
    const bool valid_a = row_a < p.num_tokens, valid_b = row_b < p.num_tokens;

    // ---- down-projection: d[64 x 256] in 128 fp32 registers; one wgmma group kept in flight
    float acc[128];
    zero_accumulators(acc);
    int previous_stage = -1;
    const int prefetch_step = down_steps > kPrefetchLeadSteps ? down_steps - kPrefetchLeadSteps : 0;
    for (int step = 0; step < down_steps; ++step) {
      if (step == prefetch_step && p.r_prev != nullptr && q == 0) {  // one lane per row pair
        if (valid_a) prefetch_l2_bulk(p.r_prev + row_a * p.r_prev_row_stride, kRouterWidth * 2);
        if (valid_b) prefetch_l2_bulk(p.r_prev + row_b * p.r_prev_row_stride, kRouterWidth * 2);
      }
      mbar_wait(smem_addr(&s.full[ring.stage]), ring.phase);
      const uint32_t x = smem_addr(s.stages[ring.stage].x) + consumer * (64 * 128);
      const uint32_t w = smem_addr(s.stages[ring.stage].w);
      fence_registers(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        wgmma_m64n256k16_ss(acc, wgmma_desc_sw128(x + kk * 32), wgmma_desc_sw128(w + kk * 32), step > 0 || kk > 0);
      }
      wgmma_commit();
      wgmma_wait<1>();
      fence_registers(acc);
      if (previous_stage >= 0) release_stage(s, previous_stage, lane);
      previous_stage = ring.stage;
      ring.advance();
    }
    wgmma_wait<0>();
    fence_registers(acc);
    release_stage(s, previous_stage, lane);

    // ---- r = d + b [+ eda * r_prev] (stored as r_out), sum of squares per row
    uint32_t prev_a[32], prev_b[32];  // bf16 pairs of r_prev at this thread's columns 8i + 2q
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int col = 8 * i + 2 * q;
      prev_a[i] = (p.r_prev != nullptr && valid_a)
                      ? *reinterpret_cast<const uint32_t*>(p.r_prev + row_a * p.r_prev_row_stride + col) : 0u;
      prev_b[i] = (p.r_prev != nullptr && valid_b)
                      ? *reinterpret_cast<const uint32_t*>(p.r_prev + row_b * p.r_prev_row_stride + col) : 0u;
    }
    float sum_sq_a = 0.f, sum_sq_b = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int col = 8 * i + 2 * q;
      const float2 down_b = load_vector_pair(&vec.down_b[col]);
      const float2 eda_scale = load_vector_pair(&vec.eda_scale[col]);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float bias = e ? down_b.y : down_b.x, scale = e ? eda_scale.y : eda_scale.x;
        float ra = acc[4 * i + e] + bias;
        float rb = acc[4 * i + 2 + e] + bias;
        if (p.r_prev != nullptr) {
          ra = eda_update(ra, scale, e ? bf16_hi(prev_a[i]) : bf16_lo(prev_a[i]));
          rb = eda_update(rb, scale, e ? bf16_hi(prev_b[i]) : bf16_lo(prev_b[i]));
        }
        acc[4 * i + e] = ra;
        acc[4 * i + 2 + e] = rb;
        sum_sq_a += ra * ra;
        sum_sq_b += rb * rb;
      }
      if (valid_a) {
        *reinterpret_cast<uint32_t*>(p.r_out + row_a * p.r_out_row_stride + col) =
            pack_bf16x2_rn(acc[4 * i], acc[4 * i + 1]);
      }
      if (valid_b) {
        *reinterpret_cast<uint32_t*>(p.r_out + row_b * p.r_out_row_stride + col) =
            pack_bf16x2_rn(acc[4 * i + 2], acc[4 * i + 3]);
      }
    }
    const float inv_rms_a = rms_inverse(row_sum<4>(sum_sq_a), kRouterWidth, p.eps);
    const float inv_rms_b = rms_inverse(row_sum<4>(sum_sq_b), kRouterWidth, p.eps);

    // ---- n = bf16(r / rms * norm_w) as the A fragments of fc1 (k-block kb = columns 16kb..16kb+15)
    uint32_t act[16][4], hidden[16][4];
#pragma unroll
    for (int kb = 0; kb < 16; ++kb)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int i = 2 * kb + half;
        const float2 norm_w = load_vector_pair(&vec.norm_w[8 * i + 2 * q]);
        const float w0 = norm_w.x, w1 = norm_w.y;
        act[kb][2 * half] = pack_bf16x2_rn(rms_normalize(acc[4 * i], inv_rms_a, w0),
                                           rms_normalize(acc[4 * i + 1], inv_rms_a, w1));
        act[kb][2 * half + 1] = pack_bf16x2_rn(rms_normalize(acc[4 * i + 2], inv_rms_b, w0),
                                               rms_normalize(acc[4 * i + 3], inv_rms_b, w1));
      }

    // ---- h1 = GELU(fc1), h2 = GELU(fc2), register to register
    tile_gelu_layer(s, ring, act, hidden, vec.fc1_b, lane);
    tile_gelu_layer(s, ring, hidden, act, vec.fc2_b, lane);

    // ---- logits [64 x 32] (routes >= E' are zero columns), softmax, biased top-1
    mbar_wait(smem_addr(&s.full[ring.stage]), ring.phase);
    const uint32_t w = smem_addr(s.stages[ring.stage].w);
    float logits[16];
    zero_accumulators(logits);
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < 16; ++kb) {
      wgmma_m64n32k16_rs(logits, act[kb], wgmma_desc_sw128(w + (kb / 4) * (kRouterMaxRoutes * 128) + (kb % 4) * 32),
                         kb > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(logits);
    release_stage(s, ring.stage, lane);
    ring.advance();
    float logit_a[8], logit_b[8], bias[8];
    int route[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 balancing = load_vector_pair(&vec.balancing_bias[8 * i + 2 * q]);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        route[2 * i + e] = 8 * i + 2 * q + e;
        logit_a[2 * i + e] = logits[4 * i + e];
        logit_b[2 * i + e] = logits[4 * i + 2 + e];
        bias[2 * i + e] = e ? balancing.y : balancing.x;
      }
    }
    const RouteChoice choice_a = route_top1<4, 8>(logit_a, route, bias, p.num_routes);
    const RouteChoice choice_b = route_top1<4, 8>(logit_b, route, bias, p.num_routes);
    if (q == 0 && valid_a) store_route(p, row_a, choice_a);
    if (q == 0 && valid_b) store_route(p, row_b, choice_b);
  }
}

__global__ void __cluster_dims__(kTileClusterSize, 1, 1) __launch_bounds__(kTileThreads, 1)
    zaya_router_tile_kernel(const __grid_constant__ RouterTensorMaps maps, const ZayaRouterParams p) {
  extern __shared__ uint8_t smem_raw[];
  TileSmem& s = *reinterpret_cast<TileSmem*>(align_smem_1024(smem_raw));
  const uint32_t rank = cluster_cta_rank();
  if (threadIdx.x == 0) {
    for (int i = 0; i < kTileStages; ++i) {
      mbar_init(smem_addr(&s.full[i]), 1);
      mbar_init(smem_addr(&s.empty[i]), kConsumerArrivals);
    }
    mbar_init_fence();
    tma_prefetch_descriptor(&maps.x);
    tma_prefetch_descriptor(&maps.down_w);
  }
  // No allow_dependent_launch(): a dependent kernel launched at this kernel's start would only wait,
  // holding SMs that the last tiles of this persistent grid could use.
  store_router_vectors(fetch_router_vectors<kTileThreads>(p, threadIdx.x), s.vec, threadIdx.x);
  wait_for_prerequisite_grids();  // x and r_prev may come from the kernel before this one
  cluster_sync();  // both CTAs' barriers exist before any multicast or remote arrive targets them
  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == 0) tile_producer(maps, p, s, rank);
  } else {
    setmaxnreg_inc<kConsumerRegisters>();
    tile_consumer(p, s, rank);
  }
  __syncwarp();
  cluster_sync();  // no CTA leaves while its peer may still multicast into it or arrive on its barriers
}

}  // namespace sm90
}  // namespace zk
