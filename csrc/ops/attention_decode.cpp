// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::attention_decode: check tensors (the same words as ops.py's
// _check_attention_decode, then what the kernel needs), plan the split-KV (common/attention_decode_plan.cuh),
// allocate the splits' partials from the caching allocator, launch on the current stream. No host sync: the
// data-dependent preconditions (0 <= seq_lens[b] <= max_pages * page_size; the pages of positions
// [0, seq_lens[b]) in [0, num_pages)) are the caller's duty on the GPU, as ops.py documents. A negative
// seq_lens reads as 0 (zero output); a length past the block-table row or a bad page id reads out of bounds.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "../common/attention_decode_plan.cuh"
#include "../common/launch.h"
#include "checks.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::attention_decode";
constexpr int64_t kKernelHeadDim = 128;  // common/attention_decode.cuh decode::kHeadDim

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// [B, H, D] with a contiguous last dim, 16-byte aligned rows (q is read and out written in 16 / 8-byte pieces).
void check_rows(const char* name, const at::Tensor& t) {
  check_last_dim_contiguous(kOp, name, t);
  ZK_CHECK(t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && aligned16(t), kOp, ": ", name,
           " must start on a 16-byte boundary with batch and head strides a multiple of 8 elements, got strides ",
           shape_str(t.strides()));
}

AttentionDecodeParams decode_params(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                    const at::Tensor& block_table, const at::Tensor& seq_lens,
                                    std::optional<double> softmax_scale, const at::Tensor& out) {
  // ---- ops.py's _check_attention_decode (through _check_paged_attention), in its order
  check_dim(kOp, "q", q, 3);
  check_dtype(kOp, "q", q, at::kBFloat16);
  const int64_t batch = q.size(0);
  check_dim(kOp, "k_cache", k_cache, 4);
  check_dtype(kOp, "k_cache", k_cache, at::kBFloat16);
  check_same_device(kOp, "k_cache", k_cache, q);
  check_dtype(kOp, "v_cache", v_cache, at::kBFloat16);
  check_shape(kOp, "v_cache", v_cache, k_cache.sizes().vec());
  check_same_device(kOp, "v_cache", v_cache, q);
  const int64_t kv_heads = k_cache.size(2), head_dim = k_cache.size(3);
  ZK_CHECK(q.size(2) == head_dim, kOp, ": q head dim must equal the cache's ", head_dim, ", got ", q.size(2));
  ZK_CHECK(kv_heads > 0 && q.size(1) % kv_heads == 0, kOp, ": q heads (", q.size(1),
           ") must be a multiple of the KV heads (", kv_heads, ")");
  check_dim(kOp, "block_table", block_table, 2);
  check_dtype(kOp, "block_table", block_table, at::kInt);
  check_same_device(kOp, "block_table", block_table, q);
  ZK_CHECK(block_table.size(0) == batch, kOp, ": block_table must have B=", batch, " rows, got ",
           block_table.size(0));
  check_dtype(kOp, "seq_lens", seq_lens, at::kInt);
  check_shape(kOp, "seq_lens", seq_lens, {batch});
  check_same_device(kOp, "seq_lens", seq_lens, q);
  if (softmax_scale.has_value()) check_finite_positive(kOp, "softmax_scale", *softmax_scale);
  check_same_device(kOp, "out", out, q);
  check_dtype(kOp, "out", out, at::kBFloat16);
  check_shape(kOp, "out", out, q.sizes().vec());

  // ---- what the kernel needs
  const int64_t q_heads = q.size(1);
  ZK_CHECK(head_dim == kKernelHeadDim && q_heads == kDecodeGroup * kv_heads, kOp,
           ": the GPU kernel needs head dim 128 and 4 query heads per KV head (ZAYA1: 8 over 2), got q of shape ",
           shape_str(q.sizes()), " over KV heads ", kv_heads);
  const int64_t page_size = k_cache.size(1), num_pages = k_cache.size(0), max_pages = block_table.size(1);
  ZK_CHECK(page_size >= 1, kOp, ": k_cache must have page_size >= 1, got shape ", shape_str(k_cache.sizes()));
  check_contiguous(kOp, "k_cache", k_cache);
  check_contiguous(kOp, "v_cache", v_cache);
  ZK_CHECK(aligned16(k_cache) && aligned16(v_cache), kOp, ": k_cache and v_cache must start on 16-byte boundaries");
  ZK_CHECK(max_pages <= 1 || block_table.stride(1) == 1, kOp,
           ": block_table must have a contiguous last dimension, got strides ", shape_str(block_table.strides()));
  check_contiguous(kOp, "seq_lens", seq_lens);
  check_rows("q", q);
  check_rows("out", out);
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  // 2^30 keys: split starts and ends (int32 in the kernel) stay below 2^31 after rounding to kDecodeKeyStep.
  ZK_CHECK(num_pages <= kInt32Max && max_pages * page_size <= (int64_t{1} << 30) && batch * q_heads <= kInt32Max,
           kOp, ": page counts and B * Hq must fit int32 and the block-table capacity max_pages * page_size 2^30");

  AttentionDecodeParams p{};
  p.q = static_cast<const uint16_t*>(q.data_ptr());
  p.q_batch_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.cache.k = static_cast<uint16_t*>(k_cache.data_ptr());
  p.cache.v = static_cast<uint16_t*>(v_cache.data_ptr());
  p.cache.block_table = block_table.data_ptr<int32_t>();
  p.cache.block_table_row_stride = block_table.stride(0);
  p.cache.num_pages = static_cast<int32_t>(num_pages);
  p.cache.page_size = static_cast<int32_t>(page_size);
  p.cache.max_pages = static_cast<int32_t>(max_pages);
  p.cache.kv_heads = static_cast<int32_t>(kv_heads);
  p.cache.head_dim = static_cast<int32_t>(head_dim);
  p.seq_lens = seq_lens.data_ptr<int32_t>();
  p.out = static_cast<uint16_t*>(out.data_ptr());
  p.out_batch_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.batch = static_cast<int32_t>(batch);
  p.q_heads = static_cast<int32_t>(q_heads);
  p.softmax_scale = static_cast<float>(softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  return p;
}

void attention_decode_out(const at::Tensor& q,            // [B, Hq, D] bf16
                          const at::Tensor& k_cache,      // [num_pages, page_size, Hkv, D] bf16
                          const at::Tensor& v_cache,      // [num_pages, page_size, Hkv, D] bf16
                          const at::Tensor& block_table,  // [B, max_pages] int32
                          const at::Tensor& seq_lens,     // [B] int32
                          std::optional<double> softmax_scale,
                          at::Tensor& out) {              // [B, Hq, D] bf16
  AttentionDecodeParams params = decode_params(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, out);
  if (params.batch == 0) return;
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t capacity = static_cast<int64_t>(params.cache.max_pages) * params.cache.page_size;
  const DecodeSplitPlan plan = decode_split_plan(capacity, static_cast<int64_t>(params.batch) * params.cache.kv_heads,
                                                 num_sms);
  params.num_splits = plan.num_splits;
  params.split_keys = plan.split_keys;
  ZK_CHECK(static_cast<int64_t>(params.batch) * params.cache.kv_heads * plan.num_splits <=
               std::numeric_limits<int32_t>::max(),
           kOp, ": B * Hkv * splits must fit int32, got B=", params.batch, " splits=", plan.num_splits);
  at::Tensor partials;  // [B, Hq, splits, D + 2] fp32: o, then (max, sum); stream-ordered caching allocator
  if (plan.num_splits > 1) {
    const int64_t slots = static_cast<int64_t>(params.batch) * params.q_heads * plan.num_splits;
    partials = at::empty({slots * (kKernelHeadDim + 2)}, q.options().dtype(at::kFloat));
    params.partial_o = partials.data_ptr<float>();
    params.partial_ml = params.partial_o + slots * kKernelHeadDim;
  }
  check_launch(kOp, launch_attention_decode(params, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_table, const at::Tensor& seq_lens,
                            std::optional<double> softmax_scale) {
  at::Tensor out = at::empty(q.sizes(), q.options());
  attention_decode_out(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("attention_decode", &attention_decode);
  m.impl("attention_decode.out", &attention_decode_out);
}

}  // namespace zk
