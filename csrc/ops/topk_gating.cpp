// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::topk_gating: check tensors, fill TopkGatingParams, launch on the current
// stream. Backend-neutral (hipify maps the c10::cuda calls on ROCm).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/launch.h"
#include "checks.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::topk_gating";

void topk_gating_out(const at::Tensor& logits,  // [T, E'] bf16 | fp32
                     const std::optional<at::Tensor>& bias,  // [E'] fp32
                     int64_t k, bool renormalize, int64_t skip_index,
                     at::Tensor& weights,  // [T, k] fp32
                     at::Tensor& ids) {    // [T, k] int32
  check_dim(kOp, "logits", logits, 2);
  ZK_CHECK(logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kFloat, kOp,
              ": logits must be bfloat16 or float32, got ", logits.scalar_type());
  check_last_dim_contiguous(kOp, "logits", logits);
  const int64_t num_tokens = logits.size(0);
  const int64_t num_experts = logits.size(1);
  ZK_CHECK(num_experts >= 1 && num_experts <= kTopkMaxExperts, kOp, ": logits must have 1..", kTopkMaxExperts,
              " columns, got ", num_experts);
  ZK_CHECK(k >= 1 && k <= kTopkMaxK && k <= num_experts, kOp, ": k must be in 1..min(", kTopkMaxK,
              ", E'=", num_experts, "), got ", k);
  ZK_CHECK(skip_index >= -1 && skip_index < num_experts, kOp, ": skip_index must be -1 or in [0, ", num_experts,
              "), got ", skip_index);
  if (bias.has_value()) {
    check_same_device(kOp, "bias", *bias, logits);
    check_dtype(kOp, "bias", *bias, at::kFloat);
    check_shape(kOp, "bias", *bias, {num_experts});
    check_contiguous(kOp, "bias", *bias);
  }
  check_same_device(kOp, "weights", weights, logits);
  check_dtype(kOp, "weights", weights, at::kFloat);
  check_shape(kOp, "weights", weights, {num_tokens, k});
  check_last_dim_contiguous(kOp, "weights", weights);
  check_same_device(kOp, "ids", ids, logits);
  check_dtype(kOp, "ids", ids, at::kInt);
  check_shape(kOp, "ids", ids, {num_tokens, k});
  check_last_dim_contiguous(kOp, "ids", ids);
  if (num_tokens == 0) return;

  const c10::cuda::CUDAGuard device_guard(logits.device());
  TopkGatingParams params{};
  params.logits = logits.data_ptr();
  params.logits_dtype = logits.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  params.logits_row_stride = logits.stride(0);
  params.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  params.weights = weights.data_ptr<float>();
  params.weights_row_stride = weights.stride(0);
  params.ids = ids.data_ptr<int32_t>();
  params.ids_row_stride = ids.stride(0);
  params.num_tokens = num_tokens;
  params.num_experts = static_cast<int32_t>(num_experts);
  params.k = static_cast<int32_t>(k);
  params.skip_index = static_cast<int32_t>(skip_index);
  params.renormalize = renormalize;
  check_launch(kOp, launch_topk_gating(params, c10::cuda::getCurrentCUDAStream().stream()));
}

std::tuple<at::Tensor, at::Tensor> topk_gating(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                               int64_t k, bool renormalize, int64_t skip_index) {
  const int64_t num_tokens = logits.dim() > 0 ? logits.size(0) : 0;
  // A bad k is reported by the out form, into empty outputs (a huge k never reaches the allocator).
  const int64_t slots = k >= 1 && k <= kTopkMaxK ? k : 0;
  at::Tensor weights = at::empty({num_tokens, slots}, logits.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({num_tokens, slots}, logits.options().dtype(at::kInt));
  topk_gating_out(logits, bias, k, renormalize, skip_index, weights, ids);
  return {weights, ids};
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("topk_gating", &topk_gating);
  m.impl("topk_gating.out", &topk_gating_out);
}

}  // namespace zk
