// SPDX-License-Identifier: Apache-2.0
// experts_sm90_small.cu: launchers of the small-token (decode) regime kernels (experts_sm90_small.cuh).
// Every launch is a programmatic dependent launch: each kernel waits for the grid before it, and lets the
// next one start (fc2: its work list and L2 weight prefetch) while its own CTAs finish.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "experts_sm90_small.cuh"
#include "experts_sm90_small.h"

namespace zk {
namespace {

// 32-wide k chunks each warp loads before its first MMA: K = 2048 is one round (8 warps x 8 chunks).
constexpr int kChunksPerRound = 8;

int sm_count() {
  static std::atomic<int> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  if (device < 0 || device >= 64) device = 0;
  int n = cached[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 132;
    cached[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

dim3 persistent_grid() { return dim3(experts::kSmallCtasPerSm * sm_count()); }

}  // namespace

const char* launch_grouped_gemm_small_sm90(const GroupedGemmParams& params, StreamHandle stream) {
  experts::SmallArgs args{};
  args.gemm = params;
  return launch_dependent(experts::small_experts_kernel<experts::SmallStage::kGemm, kChunksPerRound>,
                          persistent_grid(), dim3(experts::kSmallThreads), 0, static_cast<cudaStream_t>(stream),
                          args);
}

int64_t moe_mlp_small_workspace_bytes(const MoeMlpParams& params) {
  const int64_t pairs = static_cast<int64_t>(params.num_tokens) * params.k;
  return moe_mlp_act_bytes(params.capacity, params.ffn) + moe_mlp_pair_out_bytes(pairs, params.hidden, params.k);
}

const char* launch_moe_mlp_small_sm90(const MoeMlpParams& params, StreamHandle stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  experts::SmallArgs args{};
  args.moe = params;
  args.act = static_cast<uint16_t*>(params.workspace);
  args.pair_out = params.k == 1 ? nullptr
                                : reinterpret_cast<float*>(static_cast<char*>(params.workspace) +
                                                           moe_mlp_act_bytes(params.capacity, params.ffn));
  const dim3 grid = persistent_grid(), block(experts::kSmallThreads);
  if (const char* err = launch_dependent(experts::small_experts_kernel<experts::SmallStage::kFc1, kChunksPerRound>,
                                         grid, block, 0, s, args)) {
    return err;
  }
  if (const char* err = launch_dependent(experts::small_experts_kernel<experts::SmallStage::kFc2, kChunksPerRound>,
                                         grid, block, 0, s, args)) {
    return err;
  }
  if (params.k == 1) return nullptr;  // fc2 wrote every row
  // k != 1: one thread per 8 columns of a token (T * H / 8 pieces), at most 4 CTAs per SM's worth.
  const int64_t pieces = static_cast<int64_t>(params.num_tokens) * (params.hidden / 8);
  const int64_t blocks = std::min<int64_t>((pieces + experts::kRowsThreads - 1) / experts::kRowsThreads,
                                           4 * static_cast<int64_t>(sm_count()));
  return launch_dependent(experts::moe_rows_kernel, dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1))),
                          dim3(experts::kRowsThreads), 0, s, params, static_cast<const float*>(args.pair_out));
}

}  // namespace zk
