// SPDX-License-Identifier: Apache-2.0
// experts_sm90.cu: launch_grouped_gemm / launch_moe_mlp (common/launch.h) on sm_90a: the choice between the
// two regimes of the experts kernels.
//
// small (experts_sm90_small.*): swap-AB mma.sync, 16 weight rows x 8 tokens per item, every SM streaming
//   weight rows. Weight bytes are read once per 8 tokens of an expert (from L2 after the first chunk), so it
//   is the right kernel while each active expert has few tokens: the GEMMs are bound by weight bandwidth up
//   to ~185 FLOP/byte on the H200 (PERF.md), i.e. ~185 tokens per expert, and at T = 1 one expert's 25.2 MB
//   (floor ~6 us) must reach all 132 SMs, which 64-row wgmma tiles cannot do (16-64 tiles for fc1).
// tiled (experts_sm90_tiled.h, D1): persistent wgmma/TMA tiles of 128 rows, tensor-core-bound.
// Until the tiled kernels are in the build every T runs the small regime (correct at every T; slow above a
// few hundred tokens: the weights are re-read from L2 once per 8 tokens).
#include <cuda_runtime.h>

#include "../common/launch.h"
#include "experts_sm90_small.h"

namespace zk {
namespace {

constexpr const char* kTiledMissing = "the tiled experts regime (ZAYA_EXPERTS_REGIME=tiled) is not in this build";

}  // namespace

int64_t grouped_gemm_workspace_bytes(const GroupedGemmParams&) { return 0; }

const char* launch_grouped_gemm(const GroupedGemmParams& params, StreamHandle stream) {
  if (params.m == 0 || params.n == 0) return nullptr;
  if (params.regime == ExpertsRegime::kTiled) return kTiledMissing;
  return launch_grouped_gemm_small_sm90(params, stream);
}

int64_t moe_mlp_workspace_bytes(const MoeMlpParams& params) {
  if (params.num_tokens == 0) return 0;
  return moe_mlp_small_workspace_bytes(params);
}

const char* launch_moe_mlp(const MoeMlpParams& params, StreamHandle stream) {
  if (params.num_tokens == 0) return nullptr;
  if (params.regime == ExpertsRegime::kTiled) return kTiledMissing;
  return launch_moe_mlp_small_sm90(params, stream);
}

}  // namespace zk
