// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::attention_prefill: check tensors (the same words as ops.py's
// _check_attention_prefill, then what the kernel needs), fill AttentionPrefillParams, launch on the
// current stream. No host sync: the data-dependent preconditions (cu_seqlens_q from 0, non-decreasing,
// ending at T; every n_b <= seq_lens_k[b]; the pages of positions [0, seq_lens_k[b]) inside the
// block-table row and in [0, num_pages)) are the caller's duty on the GPU, as ops.py documents; the
// kernel stays memory-safe if they fail (a page id outside the cache and a block-table column past the
// row read as zeros), but the output is then undefined.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "../common/launch.h"
#include "checks.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::attention_prefill";
constexpr int64_t kKernelHeadDim = 128;  // csrc/cuda/attention_prefill_sm90_schedule.cuh kPrefillHeadDim
constexpr int64_t kKernelGroup = 4;      // kPrefillGroup: query heads per KV head

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// [T, H, D] with a contiguous last dim, strides of whole 16-byte pieces and a 16-byte aligned start
// (q is read by TMA; out is written in 4-byte pairs, the same rule keeps the two alike).
void check_rows(const char* name, const at::Tensor& t) {
  check_last_dim_contiguous(kOp, name, t);
  ZK_CHECK(t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && aligned16(t), kOp, ": ", name,
           " must start on a 16-byte boundary with token and head strides a multiple of 8 elements, got strides ",
           shape_str(t.strides()));
}

void check_int_vector(const char* name, const at::Tensor& t) {
  check_contiguous(kOp, name, t);
}

AttentionPrefillParams prefill_params(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& block_table, const at::Tensor& cu_seqlens_q,
                                      const at::Tensor& seq_lens_k, std::optional<double> softmax_scale, bool causal,
                                      const at::Tensor& out) {
  // ---- ops.py's _check_attention_prefill, in its order
  check_dim(kOp, "cu_seqlens_q", cu_seqlens_q, 1);
  check_dtype(kOp, "cu_seqlens_q", cu_seqlens_q, at::kInt);
  const int64_t batch = cu_seqlens_q.size(0) - 1;
  ZK_CHECK(batch >= 0, kOp, ": cu_seqlens_q must have B+1 >= 1 entries");
  check_dim(kOp, "q", q, 3);
  check_dtype(kOp, "q", q, at::kBFloat16);
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
  check_same_device(kOp, "cu_seqlens_q", cu_seqlens_q, q);
  check_dtype(kOp, "seq_lens_k", seq_lens_k, at::kInt);
  check_shape(kOp, "seq_lens_k", seq_lens_k, {batch});
  check_same_device(kOp, "seq_lens_k", seq_lens_k, q);
  if (softmax_scale.has_value()) {
    const double s = *softmax_scale;
    ZK_CHECK(std::isfinite(s) && s > 0, kOp, ": softmax_scale must be a finite number > 0, got ", s);
  }
  check_same_device(kOp, "out", out, q);
  check_dtype(kOp, "out", out, at::kBFloat16);
  check_shape(kOp, "out", out, q.sizes().vec());

  // ---- what the sm_90a kernel needs
  const int64_t q_heads = q.size(1);
  ZK_CHECK(head_dim == kKernelHeadDim && q_heads == kKernelGroup * kv_heads, kOp,
           ": the GPU kernel needs head dim 128 and 4 query heads per KV head (ZAYA1: 8 over 2), got q of shape ",
           shape_str(q.sizes()), " over KV heads ", kv_heads);
  const int64_t page_size = k_cache.size(1), num_pages = k_cache.size(0);
  ZK_CHECK(page_size >= 1, kOp, ": k_cache must have page_size >= 1, got shape ", shape_str(k_cache.sizes()));
  check_contiguous(kOp, "k_cache", k_cache);
  check_contiguous(kOp, "v_cache", v_cache);
  ZK_CHECK(aligned16(k_cache) && aligned16(v_cache), kOp, ": k_cache and v_cache must start on 16-byte boundaries");
  ZK_CHECK(block_table.size(1) <= 1 || block_table.stride(1) == 1, kOp,
           ": block_table must have a contiguous last dimension, got strides ", shape_str(block_table.strides()));
  check_int_vector("cu_seqlens_q", cu_seqlens_q);
  check_int_vector("seq_lens_k", seq_lens_k);
  check_rows("q", q);
  check_rows("out", out);
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  ZK_CHECK(q.size(0) <= kInt32Max && num_pages <= kInt32Max && block_table.size(1) <= kInt32Max &&
               batch <= kInt32Max,
           kOp, ": token, page and block-table counts must fit int32");

  AttentionPrefillParams p{};
  p.q = static_cast<const uint16_t*>(q.data_ptr());
  p.q_token_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.cache.k = static_cast<uint16_t*>(k_cache.data_ptr());
  p.cache.v = static_cast<uint16_t*>(v_cache.data_ptr());
  p.cache.block_table = block_table.data_ptr<int32_t>();
  p.cache.block_table_row_stride = block_table.stride(0);
  p.cache.num_pages = static_cast<int32_t>(num_pages);
  p.cache.page_size = static_cast<int32_t>(page_size);
  p.cache.max_pages = static_cast<int32_t>(block_table.size(1));
  p.cache.kv_heads = static_cast<int32_t>(kv_heads);
  p.cache.head_dim = static_cast<int32_t>(head_dim);
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  p.seq_lens_k = seq_lens_k.data_ptr<int32_t>();
  p.out = static_cast<uint16_t*>(out.data_ptr());
  p.out_token_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.num_tokens = static_cast<int32_t>(q.size(0));
  p.batch = static_cast<int32_t>(batch);
  p.q_heads = static_cast<int32_t>(q_heads);
  p.softmax_scale = static_cast<float>(softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  p.causal = causal ? 1 : 0;
  return p;
}

void attention_prefill_out(const at::Tensor& q,             // [T, Hq, D] bf16
                           const at::Tensor& k_cache,       // [num_pages, page_size, Hkv, D] bf16
                           const at::Tensor& v_cache,       // [num_pages, page_size, Hkv, D] bf16
                           const at::Tensor& block_table,   // [B, max_pages] int32
                           const at::Tensor& cu_seqlens_q,  // [B + 1] int32
                           const at::Tensor& seq_lens_k,    // [B] int32
                           std::optional<double> softmax_scale, bool causal,
                           at::Tensor& out) {               // [T, Hq, D] bf16
  const AttentionPrefillParams params =
      prefill_params(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale, causal, out);
  if (params.num_tokens == 0 || params.batch == 0) return;
  const c10::cuda::CUDAGuard device_guard(q.device());
  check_launch(kOp, launch_attention_prefill(params, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor attention_prefill(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& block_table, const at::Tensor& cu_seqlens_q,
                             const at::Tensor& seq_lens_k, std::optional<double> softmax_scale, bool causal) {
  at::Tensor out = at::empty(q.sizes(), q.options());
  attention_prefill_out(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens_k, softmax_scale, causal, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("attention_prefill", &attention_prefill);
  m.impl("attention_prefill.out", &attention_prefill_out);
}

}  // namespace zk
