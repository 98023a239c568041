// SPDX-License-Identifier: Apache-2.0
// zaya_router_gfx942_mfma.h: register types and the one MFMA the gfx942 router uses,
// v_mfma_f32_32x32x8_bf16 (wave64: D[32x32] fp32 += A[32x8] bf16 . B[8x32] bf16), fed from "K runs":
// the 64 contiguous bytes (32 bf16) of one row that a lane holds for one 64-wide K block
// (router_gfx942::kblock_col in common/mfma_layout.h: step j of the block uses dwords 2j, 2j+1).
#pragma once

#include <stdint.h>

#include "../common/compat.h"
#include "../common/mfma_layout.h"

namespace zk {
namespace gfx942 {

using u32x2 = uint32_t __attribute__((ext_vector_type(2)));
using u32x4 = uint32_t __attribute__((ext_vector_type(4)));
using bf16x4 = short __attribute__((ext_vector_type(4)));   // the builtin's A/B operand type (2 VGPRs)
using f32x16 = float __attribute__((ext_vector_type(16)));  // the 32x32 accumulator (16 VGPRs/AGPRs)

using router_gfx942::kKBlock;
using router_gfx942::kStepsPerKBlock;
using router_gfx942::kThreads;
using router_gfx942::kTokensPerNTile;
using router_gfx942::kWaves;

// 32 bf16 of one row, K-block columns [32h, 32h + 32) for lane half h: 4 x 16 bytes = 16 VGPRs.
struct KRun {
  u32x4 q[4];
};

// The A or B operand of MFMA step `step` (0..7, a compile-time constant after unrolling).
ZK_DEVICE bf16x4 step_operand(const KRun& run, int step) {
  const u32x4 v = run.q[step / 2];
  const u32x2 d = (step % 2) ? v.zw : v.xy;
  return __builtin_bit_cast(bf16x4, d);
}

ZK_DEVICE void mfma_32x32x8(f32x16& acc, bf16x4 a, bf16x4 b) {
  acc = __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(a, b, acc, 0, 0, 0);
}

// acc[n] += A(weights K block) . B(activations K block of N tile n), the block's 8 steps.
template <int kNT>
ZK_DEVICE void mfma_kblock(f32x16 (&acc)[kNT], const KRun& a, const KRun (&b)[kNT]) {
#pragma unroll
  for (int step = 0; step < kStepsPerKBlock; ++step) {
    const bf16x4 a_op = step_operand(a, step);
#pragma unroll
    for (int n = 0; n < kNT; ++n) mfma_32x32x8(acc[n], a_op, step_operand(b[n], step));
  }
}

template <int kNT>
ZK_DEVICE void zero(f32x16 (&acc)[kNT]) {
#pragma unroll
  for (int n = 0; n < kNT; ++n) acc[n] = f32x16{};
}

using router_gfx942::acc_feature;

}  // namespace gfx942
}  // namespace zk
