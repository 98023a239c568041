// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled_mma.cuh: the consumers' mainloop of the tiled experts kernel. Consumer warpgroup c
// (0 or 1) multiplies rows [64c, 64c + 64) of the tile's A boxes by the 256 B rows, one wgmma m64n256k16 per
// k16 (4 per stage), fp32 accumulators in registers (128 per thread, layout in zaya_router_sm90_mma.cuh).
// One wgmma group stays in flight: a stage is released once the group after it has been issued and the
// group reading it has completed.
#pragma once

#include "experts_sm90_tiled_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace tiled {

// Every consumer warp says it is done reading a stage, to every CTA of the cluster (whose producers write
// into it by multicast): kConsumerWarps x kCluster arrivals complete a phase.
template <int kCluster>
ZK_DEVICE void release_stage(TiledSmem& s, int stage, int lane) {
  __syncwarp();
  if (lane == 0) {
    const uint32_t bar = sm90::smem_addr(&s.empty[stage]);
    if constexpr (kCluster == 1) {
      mbar_arrive_local(bar);
    } else {
      for (uint32_t cta = 0; cta < kCluster; ++cta) sm90::mbar_arrive_cluster(bar, cta);
    }
  }
}

// acc = this warpgroup's part of the tile's product over `steps` k-steps of the ring (zeros when steps == 0):
// kAcc = 128, a full tile: A rows [64c, 64c + 64) x all 256 B rows (wgmma m64n256k16);
// kAcc = 64, a half tile: A rows [0, 64) x B rows [128c, 128c + 128) (m64n128k16), half the MMA work.
template <int kCluster, int kAcc>
ZK_DEVICE void tiled_mainloop(TiledSmem& s, RingPosition& ring, int32_t steps, int consumer, int lane,
                              float (&acc)[kAcc]) {
  constexpr bool kHalf = kAcc == 64;
  const uint32_t a_offset = kHalf ? 0u : consumer * (64 * 128);
  const uint32_t b_offset = kHalf ? consumer * (kTileN / 2 * 128) : 0u;
  sm90::zero_accumulators(acc);
  int previous_stage = -1;
  for (int32_t step = 0; step < steps; ++step) {
    sm90::mbar_wait(sm90::smem_addr(&s.full[ring.stage]), ring.phase);
    const uint32_t a = sm90::smem_addr(s.stages[ring.stage].a) + a_offset;
    const uint32_t b = sm90::smem_addr(s.stages[ring.stage].b) + b_offset;
    sm90::fence_registers(acc);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) {
      const uint64_t desc_a = sm90::wgmma_desc_sw128(a + kk * 32), desc_b = sm90::wgmma_desc_sw128(b + kk * 32);
      if constexpr (kHalf) {
        sm90::wgmma_m64n128k16_ss(acc, desc_a, desc_b, true);
      } else {
        sm90::wgmma_m64n256k16_ss(acc, desc_a, desc_b, true);
      }
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();
    sm90::fence_registers(acc);
    if (previous_stage >= 0) release_stage<kCluster>(s, previous_stage, lane);
    previous_stage = ring.stage;
    ring.advance();
  }
  sm90::wgmma_wait<0>();
  sm90::fence_registers(acc);
  if (previous_stage >= 0) release_stage<kCluster>(s, previous_stage, lane);
}

}  // namespace tiled
}  // namespace zk
