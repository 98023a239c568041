// SPDX-License-Identifier: Apache-2.0
// experts_gfx942.hip: zaya::grouped_gemm and zaya::moe_mlp on MI300X (gfx942, CDNA3, wave64). Compiled
// and checked at the ISA level only (tools/compile_hip.sh); no MI300X has run it (DESIGN.md §5).
//
//   grouped_gemm: one launch of experts_gemm_kernel<bm, kStore, split> over the segments
//                 [0, off[0]) | experts | [off[E], M) (rows outside the experts are written as zeros).
//   moe_mlp:      [memset of the split counters] -> fc1 (rows gathered through sorted_token_ids,
//                 SwiGLU epilogue -> act [capacity, F] bf16 in the workspace) -> fc2 (act rows,
//                 combine-weight epilogue: bf16 rows scattered to token order when k == 1, fp32 pair
//                 rows otherwise) -> experts::moe_rows_kernel (common/experts_rows.cuh, shared with the
//                 CUDA backend: skip route / unrouted tokens when k == 1; the k > 1 sum).
// The plan (bm, split) comes from the shapes alone (or params.regime: kSmall = the split-K path,
// kTiled = none) (experts_gfx942::gemm_plan, the numbers behind it in
// common/mfma_layout_experts.h), so the workspace size is known on the host without reading a device
// value, and every launch is graph-capturable. The plan assumes an MI300X's 304 CUs (kPlanCus): a
// smaller part only runs more split slices per CU, a constant keeps the workspace size and the plan
// the same function of the shapes.
//
// Workspace (grouped_gemm_workspace_bytes / moe_mlp_workspace_bytes; the launchers in csrc/ops allocate
// it from torch's caching allocator, uninitialised):
//   grouped_gemm: [split counters][split partials] (0 bytes without a split)
//   moe_mlp:      [act: capacity x F bf16][pair_out: T k x H fp32, k > 1 only] (params.h's shared layout:
//                 moe_mlp_act_bytes, moe_mlp_pair_out_bytes) then [counters][partials]
//                 (counters and partials sized for the larger of fc1 and fc2, reused by both: the
//                 finisher of every tile resets its counter, so fc2 starts from zeros again).
#include "../common/experts_rows.cuh"
#include "../common/launch.h"
#include "experts_gfx942_gemm.h"

namespace zk {
namespace experts_hip {

constexpr int kPlanCus = 304;  // MI300X (and MI325X)

struct Layout {
  GemmPlan fc1, fc2;
  int64_t act, pair_out, counters, partials, total;  // byte offsets, total = size
};

template <int kBm, Epilogue kEpi, bool kSplit>
const char* launch_gemm(const GemmArgs& args, int64_t grid, hipStream_t stream) {
  hipLaunchKernelGGL((experts_gemm_kernel<kBm, kEpi, kSplit>), dim3(static_cast<uint32_t>(grid)), dim3(kThreads), 0,
                     stream, args);
  return last_launch_error();
}

template <Epilogue kEpi>
const char* launch_planned(GemmArgs args, const GemmPlan& plan, hipStream_t stream) {
  if (plan.grid <= 0) return nullptr;
  if (plan.grid > 0x7fffffff) return "experts (gfx942): too many tiles for one launch";
  args.mtiles = plan.mtiles;
  args.split = plan.split;
  args.kblocks = plan.kblocks;
  const bool split = plan.split > 1;
  if (plan.bm == 128) {
    return split ? launch_gemm<128, kEpi, true>(args, plan.grid, stream)
                 : launch_gemm<128, kEpi, false>(args, plan.grid, stream);
  }
  return split ? launch_gemm<64, kEpi, true>(args, plan.grid, stream)
               : launch_gemm<64, kEpi, false>(args, plan.grid, stream);
}

// gemm_plan's `force`: 1 = the split-K kernels, 2 = none, 0 = by shape.
int forced(ExpertsRegime regime) {
  return regime == ExpertsRegime::kSmall ? 1 : (regime == ExpertsRegime::kTiled ? 2 : 0);
}

GemmPlan grouped_plan(const GroupedGemmParams& p) {
  return gemm_plan(p.m, p.num_experts + 2, p.n, false, p.k, kPlanCus, 0, forced(p.regime));
}

// block_m of moe_align, recovered from capacity = T k + E (block_m - 1); 0 when it does not divide.
int moe_block_m(const MoeMlpParams& p) {
  const int64_t extra = int64_t{p.capacity} - int64_t{p.num_tokens} * p.k;
  if (p.num_experts <= 0 || extra < 0 || extra % p.num_experts != 0) return 0;
  return static_cast<int>(extra / p.num_experts + 1);
}

Layout moe_layout(const MoeMlpParams& p) {
  Layout l{};
  const int64_t pairs = int64_t{p.num_tokens} * p.k;
  const int block_m = moe_block_m(p);
  // bm = block_m when it is a tile height (one m-tile per padded block); else chosen by the plan, with
  // the tight bound when block_m divides 64 (and so 128).
  const int bm_fixed = (block_m == 64 || block_m == 128) ? block_m : 0;
  const int64_t rows = moe_bound_rows(pairs, p.capacity, block_m, bm_fixed != 0 ? bm_fixed : 64);
  l.fc1 = gemm_plan(rows, p.num_experts, p.ffn, true, p.hidden, kPlanCus, bm_fixed, forced(p.regime));
  l.fc2 = gemm_plan(rows, p.num_experts, p.hidden, false, p.ffn, kPlanCus, bm_fixed, forced(p.regime));
  int64_t at = 0;
  l.act = at;
  at += moe_mlp_act_bytes(p.capacity, p.ffn);
  l.pair_out = at;
  at += moe_mlp_pair_out_bytes(pairs, p.hidden, p.k);
  l.counters = at;
  at += counters_bytes(l.fc1) > counters_bytes(l.fc2) ? counters_bytes(l.fc1) : counters_bytes(l.fc2);
  l.partials = at;
  at += partials_bytes(l.fc1) > partials_bytes(l.fc2) ? partials_bytes(l.fc1) : partials_bytes(l.fc2);
  l.total = at;
  return l;
}

const char* check_gemm_shape(int64_t n, int64_t k) {
  if (k <= 0 || k % 8 != 0) return "experts (gfx942): K must be a positive multiple of 8 (16-byte row loads)";
  if (n % 4 != 0) return "experts (gfx942): N must be a multiple of 4 (8-byte output pieces)";
  return nullptr;
}

}  // namespace experts_hip

int64_t grouped_gemm_workspace_bytes(const GroupedGemmParams& params) {
  const experts_gfx942::GemmPlan plan = experts_hip::grouped_plan(params);
  return experts_gfx942::counters_bytes(plan) + experts_gfx942::partials_bytes(plan);
}

const char* launch_grouped_gemm(const GroupedGemmParams& params, StreamHandle stream_handle) {
  using namespace experts_hip;
  if (params.m <= 0 || params.n <= 0) return nullptr;
  if (const char* error = check_gemm_shape(params.n, params.k)) return error;
  if (params.a_row_stride % 8 != 0) return "grouped_gemm (gfx942): a's row stride must be a multiple of 8";
  const hipStream_t stream = static_cast<hipStream_t>(stream_handle);
  const GemmPlan plan = grouped_plan(params);
  GemmArgs args{};
  args.a = params.a;
  args.a_row_stride = params.a_row_stride;
  args.gather = false;
  args.sorted_ids = nullptr;
  args.w = params.w;
  args.w_expert_stride = int64_t{params.n} * params.k;
  args.offsets = params.expert_offsets;
  args.num_experts = params.num_experts;
  args.m = params.m;
  args.with_outer = true;
  args.n = params.n;
  args.k = params.k;
  args.c = params.c;
  args.c_row_stride = params.c_row_stride;
  if (plan.split > 1) {
    uint8_t* ws = static_cast<uint8_t*>(params.workspace);
    if (ws == nullptr) return "grouped_gemm (gfx942): the split-K plan needs grouped_gemm_workspace_bytes of workspace";
    args.counters = reinterpret_cast<uint32_t*>(ws);
    args.partials = reinterpret_cast<float*>(ws + counters_bytes(plan));
    const hipError_t err = hipMemsetAsync(args.counters, 0, counters_bytes(plan), stream);
    if (err != hipSuccess) return hipGetErrorString(err);
  }
  return launch_planned<Epilogue::kStore>(args, plan, stream);
}

int64_t moe_mlp_workspace_bytes(const MoeMlpParams& params) {
  return params.num_tokens > 0 ? experts_hip::moe_layout(params).total : 0;
}

const char* launch_moe_mlp(const MoeMlpParams& params, StreamHandle stream_handle) {
  using namespace experts_hip;
  if (params.num_tokens <= 0) return nullptr;
  if (params.hidden <= 0 || params.ffn <= 0 || params.hidden % 8 != 0 || params.ffn % 8 != 0) {
    return "moe_mlp (gfx942): hidden and ffn must be positive multiples of 8 (16-byte row loads)";
  }
  if (params.x_row_stride % 8 != 0) return "moe_mlp (gfx942): x's row stride must be a multiple of 8";
  if (params.workspace == nullptr) return "moe_mlp (gfx942): needs moe_mlp_workspace_bytes of workspace";
  const hipStream_t stream = static_cast<hipStream_t>(stream_handle);
  const Layout l = moe_layout(params);
  uint8_t* ws = static_cast<uint8_t*>(params.workspace);
  uint16_t* act = reinterpret_cast<uint16_t*>(ws + l.act);
  float* pair_out = params.k > 1 ? reinterpret_cast<float*>(ws + l.pair_out) : nullptr;
  const int64_t counter_bytes = l.partials - l.counters;
  if (counter_bytes > 0) {
    const hipError_t err = hipMemsetAsync(ws + l.counters, 0, counter_bytes, stream);
    if (err != hipSuccess) return hipGetErrorString(err);
  }

  GemmArgs fc1{};
  fc1.a = params.x;
  fc1.a_row_stride = params.x_row_stride;
  fc1.gather = true;
  fc1.sorted_ids = params.sorted_token_ids;
  fc1.w = params.w_fc1;
  fc1.w_expert_stride = int64_t{2} * params.ffn * params.hidden;
  fc1.offsets = params.expert_offsets;
  fc1.num_experts = params.num_experts;
  fc1.m = params.capacity;
  fc1.with_outer = false;
  fc1.n = params.ffn;
  fc1.k = params.hidden;
  fc1.ffn = params.ffn;
  fc1.c = act;
  fc1.c_row_stride = params.ffn;
  fc1.num_pairs = params.num_tokens * params.k;
  fc1.top_k = params.k;
  fc1.partials = reinterpret_cast<float*>(ws + l.partials);
  fc1.counters = reinterpret_cast<uint32_t*>(ws + l.counters);
  if (const char* error = launch_planned<Epilogue::kSwiGlu>(fc1, l.fc1, stream)) return error;

  GemmArgs fc2 = fc1;
  fc2.a = act;
  fc2.a_row_stride = params.ffn;
  fc2.gather = false;
  fc2.w = params.w_fc2;
  fc2.w_expert_stride = int64_t{params.hidden} * params.ffn;
  fc2.n = params.hidden;
  fc2.k = params.ffn;
  fc2.ffn = 0;
  fc2.c = params.out;
  fc2.c_row_stride = params.out_row_stride;
  fc2.topk_weights = params.topk_weights;
  fc2.pair_out = pair_out;
  if (const char* error = launch_planned<Epilogue::kCombine>(fc2, l.fc2, stream)) return error;

  // one piece (8 columns of a token) per thread up to 4 rounds of 8 workgroups on each of 304 CUs,
  // grid-stride beyond
  const int64_t pieces = int64_t{params.num_tokens} * (params.hidden / 8);
  const int64_t blocks = (pieces + experts::kRowsThreads - 1) / experts::kRowsThreads;
  const int64_t grid = blocks < 4 * 8 * kPlanCus ? blocks : 4 * 8 * kPlanCus;
  hipLaunchKernelGGL(experts::moe_rows_kernel, dim3(static_cast<uint32_t>(grid)), dim3(experts::kRowsThreads), 0,
                     stream, params, static_cast<const float*>(pair_out));
  return last_launch_error();
}

}  // namespace zk
