// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::cca_prep: check tensors (the same words as ops.py's _check_cca_prep, then what the
// kernel needs), fill CcaPrepParams, launch one kernel on the current stream. No host sync: the data-dependent
// preconditions (cu_seqlens from 0, non-decreasing, ending at T; seq_start >= 0; the new positions inside each
// block-table row, with pages in [0, num_pages)) are the caller's duty on the GPU, as ops.py documents. Rows
// past cu_seqlens[B] are left alone (q not written); a bad page id or position writes out of bounds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <utility>

#include "../common/launch.h"
#include "checks.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::cca_prep";

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

bool is_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf || t == at::kFloat; }

void check_float_param(const char* name, const at::Tensor& t, const at::Tensor& like, std::vector<int64_t> shape) {
  ZK_CHECK(is_float(t.scalar_type()), kOp, ": ", name,
           " must be torch.bfloat16 or torch.float16 or torch.float32, got ", t.scalar_type());
  check_shape(kOp, name, t, std::move(shape));
  check_same_device(kOp, name, t, like);
}

// What the kernel reads parameters as: bf16 or fp32, contiguous, 16-byte aligned (vector loads of conv2_w).
DType kernel_param(const char* name, const at::Tensor& t) {
  ZK_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat, kOp, ": the GPU kernel takes ", name,
           " as torch.bfloat16 or torch.float32, got ", t.scalar_type());
  check_contiguous(kOp, name, t);
  ZK_CHECK(aligned16(t), kOp, ": ", name, " must start on a 16-byte boundary");
  return t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
}

// reference.rope_cos_sin's inv_freq, computed by the same ATen calls on the CPU (so bit-identical), once per
// (theta, rotary_dim): 1 / theta ** (arange(0, rotary_dim, 2).float() / rotary_dim), fp32.
std::array<float, 64> inv_freq(double theta, int64_t rotary_dim) {
  static std::mutex mutex;
  static std::map<std::pair<double, int64_t>, std::array<float, 64>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(theta, rotary_dim);
  auto it = cache.find(key);
  if (it == cache.end()) {
    const at::Tensor exponent = at::arange(0, rotary_dim, 2, at::dtype(at::kLong)).to(at::kFloat) / rotary_dim;
    const at::Tensor freq = at::reciprocal(at::pow(theta, exponent)).contiguous();
    std::array<float, 64> values{};
    std::memcpy(values.data(), freq.data_ptr<float>(), sizeof(float) * freq.numel());
    it = cache.emplace(key, values).first;
  }
  return it->second;
}

CcaPrepParams prep_params(const at::Tensor& proj, const at::Tensor& cu_seqlens, const at::Tensor& seq_start,
                          const at::Tensor& conv_state, const at::Tensor& value_state, const at::Tensor& conv1_w,
                          const at::Tensor& conv1_b, const at::Tensor& conv2_w, const at::Tensor& conv2_b,
                          const at::Tensor& temp, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_table, double rope_theta, int64_t rotary_dim, const at::Tensor& q) {
  // ---- ops.py's _check_cca_prep, in its order
  check_dim(kOp, "k_cache", k_cache, 4);
  check_dtype(kOp, "k_cache", k_cache, at::kBFloat16);
  const int64_t kv_heads = k_cache.size(2), head_dim = k_cache.size(3);
  check_dtype(kOp, "v_cache", v_cache, at::kBFloat16);
  check_shape(kOp, "v_cache", v_cache, k_cache.sizes().vec());
  check_same_device(kOp, "v_cache", v_cache, k_cache);
  check_dim(kOp, "proj", proj, 2);
  check_dtype(kOp, "proj", proj, at::kBFloat16);
  check_same_device(kOp, "proj", proj, k_cache);
  check_dim(kOp, "conv_state", conv_state, 3);
  check_dtype(kOp, "conv_state", conv_state, at::kFloat);
  check_same_device(kOp, "conv_state", conv_state, k_cache);
  const int64_t batch = conv_state.size(0), channels = conv_state.size(1);
  ZK_CHECK(head_dim > 0 && kv_heads > 0 && channels % head_dim == 0 && channels / head_dim > kv_heads &&
               (channels / head_dim - kv_heads) % kv_heads == 0,
           kOp, ": conv_state must be [B, (Hq+Hkv)*D, 2] with Hq a multiple of Hkv=", kv_heads, ", got ",
           shape_str(conv_state.sizes()));
  check_shape(kOp, "conv_state", conv_state, {batch, channels, 2});
  const int64_t value_width = kv_heads * head_dim / 2;
  check_dtype(kOp, "value_state", value_state, at::kFloat);
  check_shape(kOp, "value_state", value_state, {batch, value_width});
  check_same_device(kOp, "value_state", value_state, k_cache);
  ZK_CHECK(proj.size(1) == channels + 2 * value_width, kOp, ": proj must be [T, ", channels + 2 * value_width,
           "] (q|k|v1|v2), got ", shape_str(proj.sizes()));
  check_dtype(kOp, "cu_seqlens", cu_seqlens, at::kInt);
  check_shape(kOp, "cu_seqlens", cu_seqlens, {batch + 1});
  check_same_device(kOp, "cu_seqlens", cu_seqlens, k_cache);
  check_dtype(kOp, "seq_start", seq_start, at::kInt);
  check_shape(kOp, "seq_start", seq_start, {batch});
  check_same_device(kOp, "seq_start", seq_start, k_cache);
  check_float_param("conv1_w", conv1_w, k_cache, {channels, 1, 2});
  check_float_param("conv1_b", conv1_b, k_cache, {channels});
  check_float_param("conv2_w", conv2_w, k_cache, {channels, head_dim, 2});
  check_float_param("conv2_b", conv2_b, k_cache, {channels});
  check_float_param("temp", temp, k_cache, {kv_heads});
  check_dim(kOp, "block_table", block_table, 2);
  check_dtype(kOp, "block_table", block_table, at::kInt);
  check_same_device(kOp, "block_table", block_table, k_cache);
  ZK_CHECK(block_table.size(0) == batch, kOp, ": block_table must have B=", batch, " rows, got ",
           block_table.size(0));
  ZK_CHECK(rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0, kOp,
           ": rotary_dim must be even and in (0, ", head_dim, "], got ", rotary_dim);
  check_finite_positive(kOp, "rope_theta", rope_theta);
  const int64_t q_heads = channels / head_dim - kv_heads;
  const int64_t num_tokens = proj.size(0);
  check_same_device(kOp, "q", q, k_cache);
  check_dtype(kOp, "q", q, at::kBFloat16);
  check_shape(kOp, "q", q, {num_tokens, q_heads, head_dim});

  // ---- what the kernel needs
  ZK_CHECK(head_dim == kCcaHeadDim && kv_heads == kCcaKvHeads && q_heads == kCcaQHeads, kOp,
           ": the GPU kernel needs ZAYA1's geometry, head dim 128 with 8 query and 2 KV heads (proj [T, 1536]), got ",
           "k_cache of shape ", shape_str(k_cache.sizes()), " and conv_state of shape ", shape_str(conv_state.sizes()));
  check_last_dim_contiguous(kOp, "proj", proj);
  ZK_CHECK(proj.stride(0) % 8 == 0 && aligned16(proj), kOp,
           ": proj rows must be 16-byte aligned (row stride a multiple of 8 elements), got strides ",
           shape_str(proj.strides()));
  check_last_dim_contiguous(kOp, "q", q);
  ZK_CHECK(q.stride(0) % 8 == 0 && q.stride(1) % 8 == 0 && aligned16(q), kOp,
           ": q must start on a 16-byte boundary with token and head strides a multiple of 8 elements, got strides ",
           shape_str(q.strides()));
  check_contiguous(kOp, "conv_state", conv_state);
  check_contiguous(kOp, "value_state", value_state);
  check_contiguous(kOp, "k_cache", k_cache);
  check_contiguous(kOp, "v_cache", v_cache);
  ZK_CHECK(aligned16(conv_state) && aligned16(value_state) && aligned16(k_cache) && aligned16(v_cache), kOp,
           ": conv_state, value_state, k_cache and v_cache must start on 16-byte boundaries");
  check_contiguous(kOp, "cu_seqlens", cu_seqlens);
  check_contiguous(kOp, "seq_start", seq_start);
  ZK_CHECK(block_table.size(1) <= 1 || block_table.stride(1) == 1, kOp,
           ": block_table must have a contiguous last dimension, got strides ", shape_str(block_table.strides()));
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  ZK_CHECK(num_tokens < kInt32Max && batch < kInt32Max && k_cache.size(0) <= kInt32Max &&
               block_table.size(1) * k_cache.size(1) <= kInt32Max,
           kOp, ": token, sequence and page counts and the block-table capacity must fit int32");

  CcaPrepParams p{};
  p.proj = static_cast<const uint16_t*>(proj.data_ptr());
  p.proj_row_stride = proj.stride(0);
  p.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  p.seq_start = seq_start.data_ptr<int32_t>();
  p.conv_state = conv_state.data_ptr<float>();
  p.value_state = value_state.data_ptr<float>();
  p.conv1_w = conv1_w.data_ptr();
  p.conv1_w_dtype = kernel_param("conv1_w", conv1_w);
  p.conv1_b = conv1_b.data_ptr();
  p.conv1_b_dtype = kernel_param("conv1_b", conv1_b);
  p.conv2_w = conv2_w.data_ptr();
  p.conv2_w_dtype = kernel_param("conv2_w", conv2_w);
  p.conv2_b = conv2_b.data_ptr();
  p.conv2_b_dtype = kernel_param("conv2_b", conv2_b);
  p.temp = temp.data_ptr();
  p.temp_dtype = kernel_param("temp", temp);
  p.cache.k = static_cast<uint16_t*>(k_cache.data_ptr());
  p.cache.v = static_cast<uint16_t*>(v_cache.data_ptr());
  p.cache.block_table = block_table.data_ptr<int32_t>();
  p.cache.block_table_row_stride = block_table.stride(0);
  p.cache.num_pages = static_cast<int32_t>(k_cache.size(0));
  p.cache.page_size = static_cast<int32_t>(k_cache.size(1));
  p.cache.max_pages = static_cast<int32_t>(block_table.size(1));
  p.cache.kv_heads = static_cast<int32_t>(kv_heads);
  p.cache.head_dim = static_cast<int32_t>(head_dim);
  p.q = static_cast<uint16_t*>(q.data_ptr());
  p.q_token_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.num_tokens = static_cast<int32_t>(num_tokens);
  p.batch = static_cast<int32_t>(batch);
  p.rotary_dim = static_cast<int32_t>(rotary_dim);
  const std::array<float, 64> freq = inv_freq(rope_theta, rotary_dim);
  std::memcpy(p.inv_freq, freq.data(), sizeof(p.inv_freq));
  return p;
}

void cca_prep_out(const at::Tensor& proj,         // [T, 1536] bf16
                  const at::Tensor& cu_seqlens,   // [B + 1] int32
                  const at::Tensor& seq_start,    // [B] int32
                  at::Tensor& conv_state,         // [B, 1280, 2] fp32, in/out
                  at::Tensor& value_state,        // [B, 128] fp32, in/out
                  const at::Tensor& conv1_w,      // [1280, 1, 2] bf16 | fp32
                  const at::Tensor& conv1_b,      // [1280]
                  const at::Tensor& conv2_w,      // [1280, 128, 2]
                  const at::Tensor& conv2_b,      // [1280]
                  const at::Tensor& temp,         // [2]
                  at::Tensor& k_cache,            // [num_pages, page_size, 2, 128] bf16, in/out
                  at::Tensor& v_cache,            // [num_pages, page_size, 2, 128] bf16, in/out
                  const at::Tensor& block_table,  // [B, max_pages] int32
                  double rope_theta, int64_t rotary_dim,
                  at::Tensor& q) {                // [T, 8, 128] bf16
  const CcaPrepParams params = prep_params(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b,
                                           conv2_w, conv2_b, temp, k_cache, v_cache, block_table, rope_theta,
                                           rotary_dim, q);
  if (params.num_tokens == 0 || params.batch == 0) return;
  const c10::cuda::CUDAGuard device_guard(proj.device());
  check_launch(kOp, launch_cca_prep(params, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor cca_prep(const at::Tensor& proj, const at::Tensor& cu_seqlens, const at::Tensor& seq_start,
                    at::Tensor& conv_state, at::Tensor& value_state, const at::Tensor& conv1_w,
                    const at::Tensor& conv1_b, const at::Tensor& conv2_w, const at::Tensor& conv2_b,
                    const at::Tensor& temp, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& block_table,
                    double rope_theta, int64_t rotary_dim) {
  const int64_t heads = conv_state.dim() == 3 && k_cache.dim() == 4 && k_cache.size(3) > 0
                            ? conv_state.size(1) / k_cache.size(3) - k_cache.size(2)
                            : 0;
  at::Tensor q = at::empty({proj.dim() == 2 ? proj.size(0) : 0, heads > 0 ? heads : 0,
                            k_cache.dim() == 4 ? k_cache.size(3) : 0},
                           proj.options().dtype(at::kBFloat16));
  cca_prep_out(proj, cu_seqlens, seq_start, conv_state, value_state, conv1_w, conv1_b, conv2_w, conv2_b, temp,
               k_cache, v_cache, block_table, rope_theta, rotary_dim, q);
  return q;
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("cca_prep", &cca_prep);
  m.impl("cca_prep.out", &cca_prep_out);
}

}  // namespace zk
