// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::moe_mlp: check tensors (the words of zaya_kernels/ops.py _check_moe_mlp, then the
// kernels' own limits), fill MoeMlpParams, allocate the backend's workspace (one tensor from the caching
// allocator) and launch on the current stream. Tensor contents (offsets non-decreasing within
// sorted_token_ids, pair indices in [0, T*k], sorted_token_ids consistent with topk_ids) are the caller's
// duty on the GPU: checking them would read them back to the host.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "../common/launch.h"
#include "checks.h"
#include "experts.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::moe_mlp";

SkipMode parse_skip_mode(c10::string_view skip_mode) {
  if (skip_mode == "scaled_input") return SkipMode::kScaledInput;
  ZK_CHECK(skip_mode == "zero", kOp, ": skip_mode must be one of ('scaled_input', 'zero'), got '",
           std::string(skip_mode.data(), skip_mode.size()), "'");
  return SkipMode::kZero;
}

// x [T, H] bf16, topk_weights [T, k] fp32, topk_ids [T, k] int32, sorted_token_ids [capacity] int32,
// expert_offsets [E+1] int32, w_fc1 [E, 2F, H] bf16, w_fc2 [E, H, F] bf16.
SkipMode check_inputs(const at::Tensor& x, const at::Tensor& topk_weights, const at::Tensor& topk_ids,
                      const at::Tensor& sorted_token_ids, const at::Tensor& expert_offsets, const at::Tensor& w_fc1,
                      const at::Tensor& w_fc2, c10::string_view skip_mode) {
  check_dim(kOp, "x", x, 2);
  check_dtype(kOp, "x", x, at::kBFloat16);
  const int64_t tokens = x.size(0), hidden = x.size(1);
  expect_tensor(kOp, "topk_ids", topk_ids, x, 2, at::kInt);
  expect_tensor(kOp, "topk_weights", topk_weights, x, -1, at::kFloat);
  check_shape(kOp, "topk_weights", topk_weights, topk_ids.sizes().vec());
  ZK_CHECK(topk_ids.size(0) == tokens, kOp, ": topk_ids must have ", tokens, " rows, got ", topk_ids.size(0));
  expect_tensor(kOp, "w_fc1", w_fc1, x, 3, at::kBFloat16);
  const int64_t experts = w_fc1.size(0), two_f = w_fc1.size(1);
  ZK_CHECK(two_f % 2 == 0 && w_fc1.size(2) == hidden, kOp, ": w_fc1 must be [E, 2F, H=", hidden, "], got ",
           shape_str(w_fc1.sizes()));
  const int64_t ffn = two_f / 2;
  expect_tensor(kOp, "w_fc2", w_fc2, x, -1, at::kBFloat16);
  check_shape(kOp, "w_fc2", w_fc2, {experts, hidden, ffn});
  expect_tensor(kOp, "sorted_token_ids", sorted_token_ids, x, 1, at::kInt);
  expect_tensor(kOp, "expert_offsets", expert_offsets, x, -1, at::kInt);
  check_shape(kOp, "expert_offsets", expert_offsets, {experts + 1});
  const SkipMode mode = parse_skip_mode(skip_mode);
  // The kernels' limits.
  ZK_CHECK(experts >= 1 && experts <= kExpertsMaxExperts, kOp, ": w_fc1 must have 1..", kExpertsMaxExperts,
           " experts (w_fc1.shape[0]), got ", experts);
  ZK_CHECK(hidden >= 8 && hidden % 8 == 0, kOp,
           ": the kernels need H (x.shape[1]) a positive multiple of 8 (16-byte rows), got ", hidden);
  ZK_CHECK(ffn >= 8 && ffn % 8 == 0, kOp,
           ": the kernels need F (w_fc1.shape[1] / 2) a positive multiple of 8 (16-byte rows), got ", ffn);
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  const int64_t capacity = sorted_token_ids.size(0);
  // int32 indices: pairs and slots, and the work items ((capacity/8 + E) token chunks x H/16 row tiles).
  ZK_CHECK(topk_ids.numel() < kInt32Max && capacity < kInt32Max &&
               (capacity / 8 + experts + 1) * ((std::max(hidden, ffn) + 15) / 16) < kInt32Max,
           kOp, ": too many tokens for int32 indices, got T*k=", topk_ids.numel(), ", sorted_token_ids of ",
           capacity);
  check_vector_rows(kOp, "x", x);
  check_contiguous(kOp, "topk_weights", topk_weights);
  check_contiguous(kOp, "topk_ids", topk_ids);
  check_contiguous(kOp, "sorted_token_ids", sorted_token_ids);
  check_contiguous(kOp, "expert_offsets", expert_offsets);
  auto check_weights = [](const char* name, const at::Tensor& w) {
    check_contiguous(kOp, name, w);
    ZK_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, kOp, ": ", name,
             " must start on a 16-byte boundary, got address ", w.data_ptr());
  };
  check_weights("w_fc1", w_fc1);
  check_weights("w_fc2", w_fc2);
  return mode;
}

void moe_mlp_out(const at::Tensor& x, const at::Tensor& topk_weights, const at::Tensor& topk_ids,
                 const at::Tensor& sorted_token_ids, const at::Tensor& expert_offsets, const at::Tensor& w_fc1,
                 const at::Tensor& w_fc2, c10::string_view skip_mode,
                 at::Tensor& out) {  // [T, H] bf16
  const SkipMode mode =
      check_inputs(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2, skip_mode);
  check_same_device(kOp, "out", out, x);
  check_dtype(kOp, "out", out, at::kBFloat16);
  check_shape(kOp, "out", out, {x.size(0), x.size(1)});
  check_vector_rows(kOp, "out", out);
  if (x.size(0) == 0) return;
  const c10::cuda::CUDAGuard device_guard(x.device());
  MoeMlpParams params{};
  params.x = static_cast<const uint16_t*>(x.data_ptr());
  params.x_row_stride = x.stride(0);
  params.topk_weights = topk_weights.data_ptr<float>();
  params.topk_ids = topk_ids.data_ptr<int32_t>();
  params.sorted_token_ids = sorted_token_ids.data_ptr<int32_t>();
  params.expert_offsets = expert_offsets.data_ptr<int32_t>();
  params.w_fc1 = static_cast<const uint16_t*>(w_fc1.data_ptr());
  params.w_fc2 = static_cast<const uint16_t*>(w_fc2.data_ptr());
  params.out = static_cast<uint16_t*>(out.data_ptr());
  params.out_row_stride = out.stride(0);
  params.num_tokens = static_cast<int32_t>(x.size(0));
  params.k = static_cast<int32_t>(topk_ids.size(1));
  params.hidden = static_cast<int32_t>(x.size(1));
  params.ffn = static_cast<int32_t>(w_fc1.size(1) / 2);
  params.num_experts = static_cast<int32_t>(w_fc1.size(0));
  params.capacity = static_cast<int32_t>(sorted_token_ids.size(0));
  params.skip_mode = mode;
  params.regime = experts_regime_from_env(kOp);
  // One workspace tensor from the caching allocator (stream-ordered: reused only after these kernels).
  at::Tensor scratch;
  if (const int64_t bytes = moe_mlp_workspace_bytes(params); bytes > 0) {
    scratch = at::empty({bytes}, x.options().dtype(at::kByte));
    params.workspace = scratch.data_ptr();
  }
  check_launch(kOp, launch_moe_mlp(params, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor moe_mlp(const at::Tensor& x, const at::Tensor& topk_weights, const at::Tensor& topk_ids,
                   const at::Tensor& sorted_token_ids, const at::Tensor& expert_offsets, const at::Tensor& w_fc1,
                   const at::Tensor& w_fc2, c10::string_view skip_mode) {
  check_inputs(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2, skip_mode);
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  moe_mlp_out(x, topk_weights, topk_ids, sorted_token_ids, expert_offsets, w_fc1, w_fc2, skip_mode, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("moe_mlp", &moe_mlp);
  m.impl("moe_mlp.out", &moe_mlp_out);
}

}  // namespace zk
