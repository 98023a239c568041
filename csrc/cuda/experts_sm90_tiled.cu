// SPDX-License-Identifier: Apache-2.0
// experts_sm90_tiled.cu: host side of the tiled experts regime (experts_sm90_tiled.h): tensor maps, the
// persistent grid's size, and the launches of tiled_gemm_kernel (experts_sm90_tiled_kernel.cuh) for
// grouped_gemm, moe fc1 (+ the row gather before it) and moe fc2.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "experts_sm90_tiled.h"
#include "experts_sm90_tiled_kernel.cuh"

namespace zk {
namespace {

using tiled::EpilogueKind;
using tiled::TiledGemmArgs;

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda).
EncodeTiledFn encode_tiled() {
  static EncodeTiledFn fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* address = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &address, 12000, cudaEnableDefault, &found) ==
            cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      fn = reinterpret_cast<EncodeTiledFn>(address);
    }
  });
  return fn;
}

// [rows, cols] bf16, contiguous columns, `row_stride` elements between rows, read in [box_rows, 64] boxes
// with 128-byte swizzling; rows and columns past the tensor read as zeros (the K tail, the last tile).
bool encode_box_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t row_stride,
                    int box_rows) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {tiled::kTileK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Dynamic shared memory above 48 KB must be allowed per kernel and device, once.
template <auto kKernel>
cudaError_t allow_smem(int bytes) {
  constexpr int kMaxDevices = 64;
  static bool done[kMaxDevices] = {};
  static std::mutex mutex;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mutex);
  if (device < kMaxDevices && done[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && device < kMaxDevices) done[device] = true;
  return err;
}

int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
                                                   cudaSuccess) {
    cudaGetLastError();
    return 132;
  }
  return std::max(sms, 1);
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Units (or tiles) of any schedule of `rows` rows in `experts` segments: each segment adds at most one partial
// row tile. Their cost (tiled::segment_cost) is at most twice this.
int64_t tile_bound(int64_t rows, int64_t experts, int64_t col_tiles) {
  return (ceil_div(rows, tiled::kTileM) + experts) * col_tiles;
}

// Clusters of kKernel (kCluster CTAs of ~216 KB shared memory) that fit on the device at once, per kernel and
// device, once: a cluster sits in one GPC, so pairs may be fewer than SMs / 2. Falls back to SMs / kCluster.
template <auto kKernel, int kCluster>
int cluster_slots() {
  constexpr int kMaxDevices = 64;
  static int slots[kMaxDevices] = {};
  static std::mutex mutex;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return std::max(1, sm_count() / kCluster);
  std::lock_guard<std::mutex> lock(mutex);
  if (device < kMaxDevices && slots[device] > 0) return slots[device];
  int clusters = sm_count() / kCluster;
  if (kCluster > 1) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(kCluster * 64, 1, 1);
    config.blockDim = dim3(tiled::kThreads, 1, 1);
    config.dynamicSmemBytes = tiled::kSmemBytes;
    int found = 0;
    if (cudaOccupancyMaxActiveClusters(&found, kKernel, &config) == cudaSuccess && found >= 1) {
      clusters = found;
    } else {
      cudaGetLastError();  // clear the query's error
    }
  }
  clusters = std::max(clusters, 1);
  if (device < kMaxDevices) slots[device] = clusters;
  return clusters;
}

// TEMPORARY A/B switch between the two cluster sizes for the GPU rounds (ZAYA_TILED_CLUSTER=1|2, default 1):
// the slower one goes once measured.
int cluster_size() {
  const char* forced = std::getenv("ZAYA_TILED_CLUSTER");
  return forced != nullptr && forced[0] == '2' ? 2 : 1;
}

// One CTA per SM at most (one fits: ~216 KB of shared memory), fewer when there are fewer units. `args` has
// its maps and col_units for kCluster (launch_tiled).
template <EpilogueKind kKind, int kCluster>
const char* launch_tiled_cluster(const TiledGemmArgs& args, int64_t units, int64_t min_ctas, cudaStream_t stream) {
  constexpr auto kKernel = tiled::tiled_gemm_kernel<kKind, kCluster>;
  const cudaError_t err = allow_smem<kKernel>(tiled::kSmemBytes);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t wanted = std::max(units, ceil_div(min_ctas, kCluster));
  const int64_t clusters = std::max<int64_t>(1, std::min<int64_t>(cluster_slots<kKernel, kCluster>(), wanted));
  return launch_dependent(kKernel, dim3(static_cast<unsigned>(clusters * kCluster)), dim3(tiled::kThreads),
                          tiled::kSmemBytes, stream, args);
}

// Encodes A ([a_rows, K], row stride a_stride) and B ([b_rows, K], contiguous) for the cluster size, sets
// col_units from the column tiles, and launches over the units of at most a_rows rows in `experts` segments.
template <EpilogueKind kKind>
const char* launch_tiled(TiledGemmArgs& args, const void* a, int64_t a_rows, int64_t a_stride, const void* b,
                         int64_t b_rows, int64_t col_tiles, int64_t min_ctas, cudaStream_t stream) {
  const int cluster = cluster_size();
  if (!encode_box_map(&args.a, a, a_rows, args.k, a_stride, tiled::kTileM / cluster) ||
      !encode_box_map(&args.b, b, b_rows, args.k, args.k, tiled::kBBoxRows)) {
    return "cuTensorMapEncodeTiled failed (tiled experts kernel)";
  }
  args.col_units = static_cast<int32_t>(ceil_div(col_tiles, cluster));
  const int64_t units = tile_bound(a_rows, args.num_experts, args.col_units);
  return cluster == 1 ? launch_tiled_cluster<kKind, 1>(args, units, min_ctas, stream)
                      : launch_tiled_cluster<kKind, 2>(args, units, min_ctas, stream);
}

constexpr int64_t kInt32Max = 2147483647;

}  // namespace

bool grouped_gemm_tiled_supported(const GroupedGemmParams& p) {
  const int64_t col_tiles = ceil_div(p.n, tiled::kTileN);
  return p.k >= 8 && p.k % 8 == 0 && p.n >= 1 && p.m >= 0 && p.num_experts >= 1 &&
         p.num_experts <= kExpertsMaxExperts && p.a_row_stride % 8 == 0 && aligned(p.a, 16) && aligned(p.w, 16) &&
         static_cast<int64_t>(p.num_experts) * p.n <= kInt32Max &&
         2 * tile_bound(p.m, p.num_experts, col_tiles) <= kInt32Max;
}

const char* launch_grouped_gemm_tiled_sm90(const GroupedGemmParams& p, void* stream) {
  if (p.m == 0 || p.n == 0) return nullptr;
  if (!grouped_gemm_tiled_supported(p)) {
    return "grouped_gemm (tiled sm90): needs K a multiple of 8 (>= 8), 16-byte aligned a rows and w, E <= 256";
  }
  TiledGemmArgs args{};
  args.offsets = p.expert_offsets;
  args.num_experts = p.num_experts;
  args.k = p.k;
  args.b_rows_per_expert = p.n;
  args.up_offset = 0;
  args.out = p.c;
  args.out_row_stride = p.c_row_stride;
  args.out_cols = p.n;
  args.rows = p.m;
  args.pair_stores = aligned(p.c, 4) && p.c_row_stride % 2 == 0;
  args.wide_stores = aligned(p.c, 16) && p.c_row_stride % 8 == 0 && p.n % 8 == 0;
  args.staged_stores = args.wide_stores;
  // Enough CTAs for the zero rows too when a few segments leave most of c outside them.
  const int64_t zero_ctas = ceil_div(static_cast<int64_t>(p.m) * p.n, 256 * 8 * 8);
  return launch_tiled<EpilogueKind::kPlain>(args, p.a, p.m, p.a_row_stride, p.w,
                                            static_cast<int64_t>(p.num_experts) * p.n, ceil_div(p.n, tiled::kTileN),
                                            zero_ctas, static_cast<cudaStream_t>(stream));
}

bool moe_mlp_tiled_supported(const MoeMlpParams& p) {
  const int64_t bound = std::max(tile_bound(p.capacity, p.num_experts, ceil_div(p.ffn, tiled::kSwigluCols)),
                                 tile_bound(p.capacity, p.num_experts, ceil_div(p.hidden, tiled::kTileN)));
  return p.hidden >= 8 && p.hidden % 8 == 0 && p.ffn >= 8 && p.ffn % 8 == 0 && p.num_experts >= 1 &&
         p.num_experts <= kExpertsMaxExperts && p.k >= 1 && aligned(p.w_fc1, 16) && aligned(p.w_fc2, 16) &&
         static_cast<int64_t>(p.num_experts) * 2 * p.ffn <= kInt32Max &&
         static_cast<int64_t>(p.num_experts) * p.hidden <= kInt32Max && 2 * bound <= kInt32Max;
}

const char* launch_moe_fc1_swiglu_tiled_sm90(const MoeMlpParams& p, uint16_t* x_sorted, uint16_t* act,
                                             void* stream) {
  if (p.num_tokens == 0 || p.capacity == 0) return nullptr;
  if (!moe_mlp_tiled_supported(p)) return "moe_mlp (tiled sm90): needs H and F multiples of 8, E <= 256";
  if (x_sorted == nullptr || act == nullptr || !aligned(x_sorted, 16) || !aligned(act, 16)) {
    return "moe_mlp (tiled sm90): x_sorted and act must be 16-byte aligned workspace buffers";
  }
  const auto s = static_cast<cudaStream_t>(stream);
  tiled::GatherArgs gather{};
  gather.x = p.x;
  gather.x_row_stride = p.x_row_stride;
  gather.sorted_token_ids = p.sorted_token_ids;
  gather.offsets = p.expert_offsets;
  gather.num_experts = p.num_experts;
  gather.num_pairs = p.num_tokens * p.k;
  gather.top_k = p.k;
  gather.hidden = p.hidden;
  gather.capacity = p.capacity;
  gather.wide_loads = aligned(p.x, 16) && p.x_row_stride % 8 == 0;
  gather.x_sorted = x_sorted;
  // 8 CTAs of 256 threads per SM: each copies one 4 KB row at a time, ~32 KB in flight per SM.
  const int64_t gather_ctas = std::min<int64_t>(p.capacity, 8 * static_cast<int64_t>(sm_count()));
  if (const char* error = launch_dependent(tiled::gather_rows_kernel, dim3(static_cast<unsigned>(gather_ctas)),
                                           dim3(tiled::kGatherThreads), 0, s, gather)) {
    return error;
  }
  TiledGemmArgs args{};
  args.offsets = p.expert_offsets;
  args.num_experts = p.num_experts;
  args.k = p.hidden;
  args.b_rows_per_expert = 2 * p.ffn;
  args.up_offset = p.ffn;
  args.out = act;
  args.out_row_stride = p.ffn;
  args.out_cols = p.ffn;
  args.rows = p.capacity;
  args.sorted_token_ids = p.sorted_token_ids;
  args.num_pairs = p.num_tokens * p.k;
  args.top_k = p.k;
  args.pair_stores = 1;
  args.staged_stores = 1;
  return launch_tiled<EpilogueKind::kSwiglu>(args, x_sorted, p.capacity, p.hidden, p.w_fc1,
                                             static_cast<int64_t>(p.num_experts) * 2 * p.ffn,
                                             ceil_div(p.ffn, tiled::kSwigluCols), 1, s);
}

const char* launch_moe_fc2_combine_tiled_sm90(const MoeMlpParams& p, const uint16_t* act, float* pair_out_or_null,
                                              void* stream) {
  if (p.num_tokens == 0 || p.capacity == 0) return nullptr;
  if (!moe_mlp_tiled_supported(p)) return "moe_mlp (tiled sm90): needs H and F multiples of 8, E <= 256";
  if (act == nullptr || !aligned(act, 16)) return "moe_mlp fc2 (tiled sm90): act must be a 16-byte aligned buffer";
  if ((p.k > 1) != (pair_out_or_null != nullptr) || (pair_out_or_null != nullptr && !aligned(pair_out_or_null, 16))) {
    return "moe_mlp fc2 (tiled sm90): pair_out (16-byte aligned) is needed exactly when k > 1";
  }
  TiledGemmArgs args{};
  args.offsets = p.expert_offsets;
  args.num_experts = p.num_experts;
  args.k = p.ffn;
  args.b_rows_per_expert = p.hidden;
  args.up_offset = 0;
  args.out_cols = p.hidden;
  args.rows = p.capacity;
  args.sorted_token_ids = p.sorted_token_ids;
  args.topk_weights = p.topk_weights;
  args.num_pairs = p.num_tokens * p.k;
  args.top_k = p.k;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t w_rows = static_cast<int64_t>(p.num_experts) * p.hidden, col_tiles = ceil_div(p.hidden, tiled::kTileN);
  if (p.k == 1) {
    args.out = p.out;
    args.out_row_stride = p.out_row_stride;
    args.pair_stores = aligned(p.out, 4) && p.out_row_stride % 2 == 0;
    args.staged_stores = aligned(p.out, 16) && p.out_row_stride % 8 == 0;  // H % 8 == 0 (supported)
    return launch_tiled<EpilogueKind::kCombineBf16>(args, act, p.capacity, p.ffn, p.w_fc2, w_rows, col_tiles, 1, s);
  }
  args.out = pair_out_or_null;
  args.out_row_stride = p.hidden;
  args.pair_stores = 1;
  return launch_tiled<EpilogueKind::kCombineF32>(args, act, p.capacity, p.ffn, p.w_fc2, w_rows, col_tiles, 1, s);
}

}  // namespace zk
