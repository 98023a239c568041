// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_kernel.cuh: the persistent, warp-specialised grouped GEMM of the tiled experts regime:
//   c[rows of segment e, 256 columns] = A[rows] @ B_e^T, 128 x 256 x 64 tiles, bf16 in, fp32 accumulate.
// 384 threads: warpgroup 0 is the producer (one thread issues TMA; setmaxnreg frees its registers),
// warpgroups 1 and 2 the consumers (64 rows each, or both the 64 rows of a half tile and 128 columns each;
// epilogue through per-warp staging buffers, experts_sm90_tiled_epilogue.cuh).
// Why 128 x 256: a k-step reads 48 KB of A + B from L2 for 4.2 MFLOP (85 FLOP per byte): at 755 TFLOP/s
// that is ~8.9 TB/s of L2 reads chip-wide; 128 x 128 tiles would need 1.5x as many bytes per FLOP.
// Every CTA derives the tile list from expert_offsets (experts_sm90_tiled_schedule.cuh).
#pragma once

#include "../common/compat.h"
#include "experts_sm90_tiled_epilogue.cuh"
#include "experts_sm90_tiled_load.cuh"
#include "experts_sm90_tiled_mma.cuh"
#include "zaya_router_sm90_epilogue.cuh"  // align_smem_1024

namespace zk {
namespace tiled {

// Register budget (setmaxnreg): 40 + 2 x 232 = 504 <= 512 per thread slot of 3 warpgroups. The consumer
// holds 128 accumulators plus the epilogue's addresses; the producer's one thread walks the tile list.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
static_assert(kProducerRegisters + 2 * kConsumerRegisters <= 65536 / 128, "register file of one SM");

template <int kRegisters>
ZK_DEVICE void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegisters));
}
template <int kRegisters>
ZK_DEVICE void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegisters));
}

// Warp 0: the segment starts into shared memory and cost_prefix[e] = cost of the units of the experts before e
// (a warp scan over 8 experts per lane; E <= 256).
ZK_DEVICE void load_schedule(const TiledGemmArgs& args, TiledSmem& s, int lane) {
  const int num = args.num_experts;
  for (int e = lane; e <= num; e += 32) s.offsets[e] = args.offsets[e];
  __syncwarp();
  constexpr int kPerLane = kExpertsMaxExperts / 32;
  int32_t costs[kPerLane];
  int32_t sum = 0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = kPerLane * lane + j;
    costs[j] = e < num ? segment_cost(s.offsets[e + 1] - s.offsets[e], args.col_units) : 0;
    sum += costs[j];
  }
  int32_t inclusive = sum;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int32_t v = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  int32_t running = inclusive - sum;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = kPerLane * lane + j;
    if (e < num) s.cost_prefix[e] = running;
    running += costs[j];
  }
  if (lane == 31) s.cost_prefix[num] = inclusive;
}

template <EpilogueKind kKind, int kCluster>
ZK_DEVICE void tiled_consumer(const TiledGemmArgs& args, TiledSmem& s, int rank) {
  const int consumer = threadIdx.x / 128 - 1;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int32_t steps = k_steps(args);
  RingPosition ring;
  for_each_tile<kCluster>(args, s, rank, [&](const TileCoords& t) {
    if (t.half()) {
      float acc[64];
      tiled_mainloop<kCluster, 64>(s, ring, steps, consumer, lane, acc);
      store_tile<kKind, 64>(args, s, t, acc, consumer, warp, lane);
    } else {
      float acc[128];
      tiled_mainloop<kCluster, 128>(s, ring, steps, consumer, lane, acc);
      store_tile<kKind, 128>(args, s, t, acc, consumer, warp, lane);
    }
  });
  if constexpr (kKind == EpilogueKind::kPlain) zero_rows_outside_segments(args, s, threadIdx.x - 128, 256);
}

// kCluster: 1, or 2 CTAs (adjacent column tiles of one row tile) sharing each A box by TMA multicast, which
// cuts the L2 -> SM bytes per k-step from 48 KB to 40 KB per CTA.
template <EpilogueKind kKind, int kCluster>
__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads, 1)
    tiled_gemm_kernel(const __grid_constant__ TiledGemmArgs args) {
  extern __shared__ uint8_t smem_raw[];
  TiledSmem& s = *reinterpret_cast<TiledSmem*>(sm90::align_smem_1024(smem_raw));
  const int rank = kCluster == 1 ? 0 : static_cast<int>(sm90::cluster_cta_rank());
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      sm90::mbar_init(sm90::smem_addr(&s.full[i]), 1);
      sm90::mbar_init(sm90::smem_addr(&s.empty[i]), kConsumerWarps * kCluster);
    }
    sm90::mbar_init_fence();
    sm90::tma_prefetch_descriptor(&args.a);
    sm90::tma_prefetch_descriptor(&args.b);
  }
  // No allow_dependent_launch(): a dependent kernel started early would only hold SMs that this
  // persistent grid's last tiles could use.
  wait_for_prerequisite_grids();  // A, the offsets and the moe schedule come from the kernels before this
  if (threadIdx.x < 32) load_schedule(args, s, threadIdx.x);
  if constexpr (kCluster == 1) {
    __syncthreads();
  } else {
    sm90::cluster_sync();  // the peer's barriers exist before any multicast or remote arrival targets them
  }
  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == 0) tiled_producer<kCluster>(args, s, rank);
  } else {
    setmaxnreg_inc<kConsumerRegisters>();
    tiled_consumer<kKind, kCluster>(args, s, rank);
  }
  if constexpr (kCluster > 1) {
    __syncwarp();
    sm90::cluster_sync();  // no CTA leaves while its peer may still multicast into it or arrive on its barriers
  }
}

}  // namespace tiled
}  // namespace zk
