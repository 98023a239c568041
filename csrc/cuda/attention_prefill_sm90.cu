// SPDX-License-Identifier: Apache-2.0
// attention_prefill_sm90.cu: host side of the sm_90a prefill attention: the tensor maps of q and of
// the paged K/V cache, the persistent grid, the launch (kernel: attention_prefill_sm90.cuh).
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "../common/launch.h"
#include "attention_prefill_sm90.cuh"

namespace zk {
namespace {

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

// A bf16 tensor of `rank` dims (dims[0] innermost and contiguous; byte strides of dims 1..rank-1), read
// in boxes whose inner extent is 64 elements (128 bytes) with 128-byte swizzling.
bool encode_bf16(CUtensorMap* map, const void* base, int rank, const cuuint64_t* dims, const cuuint64_t* strides,
                 const cuuint32_t* box) {
  const EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims,
                strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool encode_maps(sm90::PrefillTensorMaps* maps, const AttentionPrefillParams& p) {
  const PagedKvCache& c = p.cache;
  const cuuint64_t q_dims[3] = {static_cast<cuuint64_t>(c.head_dim), static_cast<cuuint64_t>(p.q_heads),
                                static_cast<cuuint64_t>(p.num_tokens)};
  const cuuint64_t q_strides[2] = {static_cast<cuuint64_t>(p.q_head_stride) * 2,
                                   static_cast<cuuint64_t>(p.q_token_stride) * 2};
  const cuuint32_t q_box[3] = {64, sm90::kPrefillGroup, sm90::kPrefillTileTokens};
  const cuuint64_t kv_dims[4] = {static_cast<cuuint64_t>(c.head_dim), static_cast<cuuint64_t>(c.kv_heads),
                                 static_cast<cuuint64_t>(c.page_size), static_cast<cuuint64_t>(c.num_pages)};
  const cuuint64_t slot_bytes = static_cast<cuuint64_t>(c.kv_heads) * c.head_dim * 2;
  const cuuint64_t kv_strides[3] = {static_cast<cuuint64_t>(c.head_dim) * 2, slot_bytes, slot_bytes * c.page_size};
  const cuuint32_t kv_box[4] = {64, 1, static_cast<cuuint32_t>(sm90::prefill_box_slots(c.page_size)), 1};
  return encode_bf16(&maps->q, p.q, 3, q_dims, q_strides, q_box) &&
         encode_bf16(&maps->k, c.k, 4, kv_dims, kv_strides, kv_box) &&
         encode_bf16(&maps->v, c.v, 4, kv_dims, kv_strides, kv_box);
}

// Per device and kernel, once: the SM count, and the kernel's dynamic shared memory limit raised.
template <bool kOverlap>
cudaError_t prepare_device(int* sms) {
  constexpr int kMaxDevices = 64;
  static int sm_count[kMaxDevices] = {};
  static std::mutex mutex;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mutex);
  if (device < kMaxDevices && sm_count[device] > 0) {
    *sms = sm_count[device];
    return cudaSuccess;
  }
  err = cudaFuncSetAttribute(sm90::attention_prefill_kernel<kOverlap>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             sm90::kPrefillSmemBytes);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess && device < kMaxDevices) sm_count[device] = *sms;
  return err;
}

template <bool kOverlap>
const char* launch_schedule(const sm90::PrefillTensorMaps& maps, const AttentionPrefillParams& params,
                            cudaStream_t stream) {
  int sms = 0;
  const cudaError_t err = prepare_device<kOverlap>(&sms);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  // One CTA per SM (225 KB of shared memory each), never more CTAs than tiles.
  const int64_t tiles = sm90::prefill_tile_bound(params.num_tokens, params.batch, params.cache.kv_heads);
  const int grid = static_cast<int>(std::min<int64_t>(tiles, sms));
  return launch_dependent(sm90::attention_prefill_kernel<kOverlap>, dim3(grid), dim3(sm90::kPrefillThreads),
                          sm90::kPrefillSmemBytes, stream, maps, params);
}

}  // namespace

const char* launch_attention_prefill(const AttentionPrefillParams& params, StreamHandle stream) {
  if (params.num_tokens == 0 || params.batch == 0) return nullptr;
  if (params.cache.head_dim != sm90::kPrefillHeadDim || params.q_heads != sm90::kPrefillGroup * params.cache.kv_heads) {
    return "the sm_90a kernel needs head dim 128 and 4 query heads per KV head";
  }
  sm90::PrefillTensorMaps maps;
  if (!encode_maps(&maps, params)) return "cuTensorMapEncodeTiled failed (attention_prefill tensor maps)";
  // ZAYA_PREFILL_SCHEDULE=overlap: the intra-warpgroup overlap (PV of one block under the softmax of the
  // next), until it has passed the GPU tests; else version 1 (softmax and GEMMs back to back).
  const char* schedule = std::getenv("ZAYA_PREFILL_SCHEDULE");
  if (schedule != nullptr && std::strcmp(schedule, "overlap") == 0) {
    return launch_schedule<true>(maps, params, static_cast<cudaStream_t>(stream));
  }
  return launch_schedule<false>(maps, params, static_cast<cudaStream_t>(stream));
}

}  // namespace zk
