// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90.cu: host side of the sm_90a router: tensor maps, launch shapes, and the launch of
// the variant the host launcher chose (ZayaRouterParams::variant; see csrc/common/params.h):
//   kCluster (zaya_router_sm90_cluster.cuh): clusters of 8 CTAs, K split, DSMEM exchange, mma.sync;
//   kTile    (zaya_router_sm90_tile.cuh):    persistent CTA pairs, 128 tokens each, TMA multicast, wgmma;
//   kSplit   (zaya_router_sm90_split.cuh):   a split-K down-projection through L2, then the rest in
//                                             clusters of 4 CTAs, each a quarter of the columns.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>

#include "../common/launch.h"
#include "zaya_router_sm90_cluster.cuh"
#include "zaya_router_sm90_split.cuh"
#include "zaya_router_sm90_tile.cuh"

namespace zk {
namespace {

using sm90::RouterTensorMaps;

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

// [rows, cols] bf16 with contiguous columns and `row_stride` elements between rows, read in boxes of
// [box_rows, 64] with 128-byte swizzling; out-of-range rows/columns read as zeros.
bool encode_bf16_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t row_stride,
                     int box_rows) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool encode_maps(RouterTensorMaps* maps, const ZayaRouterParams& p, int x_box_rows, int fc_box_rows) {
  return encode_bf16_map(&maps->x, p.x, p.num_tokens, p.hidden, p.x_row_stride, x_box_rows) &&
         encode_bf16_map(&maps->down_w, p.down_w, kRouterWidth, p.hidden, p.hidden, 128) &&
         encode_bf16_map(&maps->fc1_w, p.fc1_w, kRouterWidth, kRouterWidth, kRouterWidth, fc_box_rows) &&
         encode_bf16_map(&maps->fc2_w, p.fc2_w, kRouterWidth, kRouterWidth, kRouterWidth, fc_box_rows) &&
         encode_bf16_map(&maps->out_w, p.out_w, p.num_routes, kRouterWidth, kRouterWidth, kRouterMaxRoutes);
}

// Dynamic shared memory above 48 KB must be allowed per kernel and device, once (one instantiation,
// hence one flag table, per kernel).
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

// Clusters of kKernel (`cluster_size` CTAs of `threads` threads and `smem` bytes, the cluster size
// compiled in) that fit on the device at once, per kernel and device, once: a cluster must sit in one
// GPC, so this is below SMs / cluster_size (H200: 66 pairs of tile CTAs; 15 clusters of 8 router
// cluster CTAs, not 16). Falls back to `fallback` if the query fails.
template <auto kKernel>
int cluster_slots(int cluster_size, int threads, int smem, int fallback) {
  constexpr int kMaxDevices = 64;
  static int slots[kMaxDevices] = {};
  static std::mutex mutex;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return fallback;
  if (allow_smem<kKernel>(smem) != cudaSuccess) {
    cudaGetLastError();
    return fallback;
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (device < kMaxDevices && slots[device] > 0) return slots[device];
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(cluster_size * 64, 1, 1);
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = smem;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kKernel, &config) != cudaSuccess || clusters < 1) {
    cudaGetLastError();  // clear the query's error
    clusters = fallback;
  }
  if (device < kMaxDevices) slots[device] = clusters;
  return clusters;
}

template <int kRows>
int64_t cluster_variant_capacity() {  // tokens one wave of kRows-row clusters holds
  return kRows * static_cast<int64_t>(cluster_slots<sm90::zaya_router_cluster_kernel<kRows>>(
                     kRouterClusterSize, sm90::kClusterThreads, sm90::cluster_smem_bytes<kRows>(), 1));
}

int tile_cluster_slots() {
  int sms = 0, device = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return cluster_slots<sm90::zaya_router_tile_kernel>(sm90::kTileClusterSize, sm90::kTileThreads,
                                                     sm90::kTileSmemBytes, std::max(1, sms / 2));
}

template <int kRows>
const char* launch_cluster_variant(const ZayaRouterParams& p, cudaStream_t stream) {
  RouterTensorMaps maps;
  if (!encode_maps(&maps, p, kRows, sm90::kClusterSlice)) return "cuTensorMapEncodeTiled failed (router tensor maps)";
  constexpr int kSmem = sm90::cluster_smem_bytes<kRows>();
  const cudaError_t err = allow_smem<sm90::zaya_router_cluster_kernel<kRows>>(kSmem);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t groups = (p.num_tokens + kRows - 1) / kRows;
  return launch_dependent(sm90::zaya_router_cluster_kernel<kRows>, dim3(static_cast<unsigned>(groups * kRouterClusterSize)),
                          dim3(sm90::kClusterThreads), kSmem, stream, maps, p);
}

const char* launch_tile_variant(const ZayaRouterParams& p, cudaStream_t stream) {
  RouterTensorMaps maps;
  if (!encode_maps(&maps, p, sm90::kTileRows, sm90::kFcChunkRows)) {
    return "cuTensorMapEncodeTiled failed (router tensor maps)";
  }
  const cudaError_t err = allow_smem<sm90::zaya_router_tile_kernel>(sm90::kTileSmemBytes);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t tiles = (p.num_tokens + sm90::kTileRows - 1) / sm90::kTileRows;
  const int64_t pairs = (tiles + 1) / 2;
  const int clusters = static_cast<int>(std::min<int64_t>(pairs, tile_cluster_slots()));
  return launch_dependent(sm90::zaya_router_tile_kernel, dim3(clusters * sm90::kTileClusterSize),
                          dim3(sm90::kTileThreads), sm90::kTileSmemBytes, stream, maps, p);
}

// Tokens one wave of kRows-row mlp clusters surely holds: the occupancy query's clusters less a margin.
// The clusters launch while the down CTAs still hold SMs, and at exactly the query's count (H200: 60
// clusters of 4 at two CTAs per SM, T = 960) some started only as others ended: 1/8 kept free for
// clusters of 4. Clusters of 2 at one CTA per SM pack without that loss (H200: the query gives 66,
// and T = 1024's 64 ran as one wave): 1/32.
template <class Shape>
int64_t split_variant_capacity() {
  const int clusters = cluster_slots<sm90::zaya_router_split_mlp_kernel<Shape>>(
      Shape::kClusterCtas, Shape::kThreads, sm90::split_mlp_smem_bytes<Shape>(), 1);
  const int margin = clusters / (Shape::kClusterCtas == 2 ? 32 : 8);
  return Shape::kGroupRows * static_cast<int64_t>(std::max(1, clusters - margin));
}

template <class Shape>
const char* launch_split_rows(const ZayaRouterParams& p, cudaStream_t stream) {
  constexpr int kRows = Shape::kGroupRows;
  RouterTensorMaps maps;
  if (!encode_maps(&maps, p, sm90::kSplitDownRows, Shape::kSlice)) {
    return "cuTensorMapEncodeTiled failed (router tensor maps)";
  }
  constexpr int kMlpSmem = sm90::split_mlp_smem_bytes<Shape>();
  cudaError_t err = allow_smem<sm90::zaya_router_split_down_kernel>(sm90::kSplitDownSmemBytes);
  if (err == cudaSuccess) err = allow_smem<sm90::zaya_router_split_mlp_kernel<Shape>>(kMlpSmem);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const auto down_tiles = static_cast<unsigned>((p.num_tokens + sm90::kSplitDownRows - 1) / sm90::kSplitDownRows);
  const auto groups = static_cast<unsigned>((p.num_tokens + kRows - 1) / kRows);
  if (const char* error = launch_dependent(sm90::zaya_router_split_down_kernel,
                                           dim3(down_tiles, kRouterWidth / sm90::kSplitDownCols, kRouterSplitK),
                                           dim3(sm90::kSplitDownThreads), sm90::kSplitDownSmemBytes, stream, maps, p)) {
    return error;
  }
  return launch_dependent(sm90::zaya_router_split_mlp_kernel<Shape>, dim3(groups * Shape::kClusterCtas),
                          dim3(Shape::kThreads), kMlpSmem, stream, maps, p);
}

// Above this many tokens 16-token groups run in clusters of 2 (one CTA per SM, 128 columns each) rather
// than of 4 (two per SM): route at T = 256 / 384 / 512 / 768 / 1024, us, clusters of 4 vs 2 (H200,
// graph, zaya_route): 11.4 vs 11.8, 12.6 vs 12.3, 13.2 vs 12.5, 14.3 vs 13.9, 20.2 (two waves) vs 14.4.
constexpr int64_t kSplitPairMinTokens = 256;

// Tokens per mlp cluster: 16 in the form that is faster at T (kSplitPairMinTokens) if its clusters all
// fit on the GPU at once, since a second wave doubles the kernel's time; else the fewest that fit.
const char* launch_split_variant(const ZayaRouterParams& p, cudaStream_t stream) {
  if (p.partials == nullptr) return "the split variant needs its workspace (zaya_router_workspace_bytes)";
  using namespace sm90;
  SplitGroup group = p.split_group;
  if (group == SplitGroup::kAuto) {
    const bool pair_fits = p.num_tokens <= split_variant_capacity<SplitMlp16Pair>();
    group = p.num_tokens > kSplitPairMinTokens && pair_fits               ? SplitGroup::k16Pair
            : p.num_tokens <= split_variant_capacity<SplitMlp16>()        ? SplitGroup::k16
            : pair_fits                                                   ? SplitGroup::k16Pair
            : p.num_tokens <= split_variant_capacity<SplitMlp16Compact>() ? SplitGroup::k16Compact
            : p.num_tokens <= split_variant_capacity<SplitMlp32>()        ? SplitGroup::k32
                                                                          : SplitGroup::k48;
  }
  switch (group) {
    case SplitGroup::k16: return launch_split_rows<SplitMlp16>(p, stream);
    case SplitGroup::k16Pair: return launch_split_rows<SplitMlp16Pair>(p, stream);
    case SplitGroup::k16Compact: return launch_split_rows<SplitMlp16Compact>(p, stream);
    case SplitGroup::k32: return launch_split_rows<SplitMlp32>(p, stream);
    default: return launch_split_rows<SplitMlp48>(p, stream);
  }
}

}  // namespace

int64_t zaya_router_workspace_bytes(const ZayaRouterParams& params) {
  return params.variant == ZayaRouterVariant::kSplit
             ? int64_t{kRouterSplitK} * params.num_tokens * kRouterWidth * static_cast<int64_t>(sizeof(float))
             : 0;
}

const char* launch_zaya_router(const ZayaRouterParams& params, StreamHandle stream_handle) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  if (params.variant == ZayaRouterVariant::kTile) return launch_tile_variant(params, stream);
  if (params.variant == ZayaRouterVariant::kSplit) return launch_split_variant(params, stream);
  // Tokens per cluster: 16 while the groups all fit on the GPU at once (a second wave would double the
  // time); on the H200 (15 clusters fit) the automatic choice stays there (T <= kRouterClusterMaxTokens
  // = 128). Else 32 (the largest group the exchange buffers allow), in waves: a forced cluster launch,
  // or GPUs where fewer clusters fit.
  if (params.num_tokens <= cluster_variant_capacity<16>()) return launch_cluster_variant<16>(params, stream);
  return launch_cluster_variant<32>(params, stream);
}

// Up to kRouteFusedMaxTokens the cluster and split variants' last kernel sorts the ids itself
// (zaya_router_sm90_route.cuh); the tile variant's T, or a forced tile variant, gets moe_align's own
// launch, which overlaps the router's tail as a programmatic dependent launch.
const char* launch_zaya_route(const ZayaRouterParams& params, StreamHandle stream_handle) {
  ZayaRouterParams p = params;
  const bool fused = p.route_ready != nullptr && p.num_tokens <= kRouteFusedMaxTokens &&
                     p.variant != ZayaRouterVariant::kTile;
  if (!fused) p.route_ready = nullptr;
  if (const char* error = launch_zaya_router(p, stream_handle)) return error;
  return fused ? nullptr : launch_moe_align(p.align, stream_handle);
}

}  // namespace zk
